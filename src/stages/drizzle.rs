//! Stage `drizzle`: every chunk owner drizzles the exposures overlapping its chunk (Fruchter & Hook
//! 2002 square kernel, in plan order so sums are reproducible) into SCI, WHT, CON and the variance
//! planes, and writes the chunk into the band's HDF5 store with collective MPI-IO. With
//! `drizzle.variance_planes = false` (the JWST ResampleStep's `enable_err = False`) the variance
//! planes are neither read nor drizzled, and the store holds SCI, WHT and CON only.
//!
//! One chunk is held at a time: each rank loops over as many rounds as the busiest rank has chunks,
//! writing `None` (an empty selection) once it has none left, because the writes are collective.

use super::corrections::{Corrections, OutlierFlags};
use super::pieces::{read_piece, Want};
use crate::config::{Config, WeightType};
use crate::dist::{Comm, CommExt};
use crate::error::Context;
use crate::io::hdf5::{BandStore, Dtype, ProductSpec};
use crate::kernels::drizzle::{par_drizzle_add_window, DrizzleAccum, DrizzleParams};
use crate::plan::{CalMeta, Chunk, Plan};
use ndarray::Array2;
use std::path::Path;

/// The float products of the store, in the order of the mosaic's extensions.
pub const F32_PRODUCTS: [&str; 6] = ["SCI", "ERR", "WHT", "VAR_POISSON", "VAR_RNOISE", "VAR_FLAT"];
/// The float products without the variance planes (`drizzle.variance_planes = false`).
pub const F32_PRODUCTS_NO_VAR: [&str; 2] = ["SCI", "WHT"];

/// The float products of the store: [`F32_PRODUCTS`], or [`F32_PRODUCTS_NO_VAR`] without the
/// variance planes.
pub fn f32_products(variance_planes: bool) -> &'static [&'static str] {
    if variance_planes {
        &F32_PRODUCTS
    } else {
        &F32_PRODUCTS_NO_VAR
    }
}
/// The HDF5 group (the stage name).
pub const GROUP: &str = "drizzle";
/// The stage name.
pub const STAGE: &str = "drizzle";

/// Number of 32-bit context planes for `n` exposures.
pub fn context_planes(n: usize) -> usize {
    n.div_ceil(32).max(1)
}

/// A drizzled chunk.
pub struct ChunkOut {
    pub chunk: usize,
    pub y0: usize,
    pub x0: usize,
    /// The [`f32_products`]: SCI, ERR, WHT, VAR_POISSON, VAR_RNOISE, VAR_FLAT, or SCI, WHT.
    pub planes: Vec<Array2<f32>>,
    pub context: ndarray::Array3<u32>,
    pub pixels_in: usize,
}

/// Drizzle one chunk.
///
/// # Errors
/// A failed read, naming the file.
pub fn drizzle_chunk(
    c: &Chunk,
    plan: &Plan,
    metas: &[CalMeta],
    cfg: &Config,
    flags: &OutlierFlags,
    corr: &Corrections,
) -> crate::Result<ChunkOut> {
    let grid = plan.grid.wcs();
    let (ny, nx) = (c.y1 - c.y0, c.x1 - c.x0);
    let variance = cfg.drizzle.variance_planes;
    let n_var = if variance { 3 } else { 0 };
    let mut acc = DrizzleAccum::with_origin([c.y0, c.x0], ny, nx, n_var, plan.exposures.len());
    let dp = DrizzleParams { pixfrac: cfg.drizzle.pixfrac };
    let wt = cfg.drizzle.weight_type;
    // without variance planes only VAR_RNOISE is read, and only for ivm weights
    let want = Want { vars: variance, rnoise: wt == WeightType::Ivm, err: false };
    let mut pixels_in = 0;
    for &k in &c.exposures {
        let m = &metas[k];
        let Some(piece) = read_piece(m, k, &grid, c.y0..c.y1, c.x0..c.x1, 3, (0, 0), want, corr)
            .with_context(|| format!("drizzle: reading {}", m.path.display()))?
        else {
            continue;
        };
        let w = piece.weights(m, wt, Some(flags))?;
        let views: Vec<_> = match &piece.vars {
            Some(v) if variance => v.iter().map(|a| a.view()).collect(),
            _ => vec![],
        };
        let st = par_drizzle_add_window(
            piece.sci.view(),
            w.view(),
            piece.pixmap.view(),
            &views,
            &piece.inner,
            k,
            &dp,
            &mut acc,
        );
        pixels_in += st.pixels_used;
    }
    let out = acc.finish();
    if !variance {
        let planes = vec![out.sci, out.wht];
        return Ok(ChunkOut { chunk: c.index, y0: c.y0, x0: c.x0, planes, context: out.context, pixels_in });
    }
    let [vp, vr, vf]: [Array2<f32>; 3] = out.var.try_into().expect("three variance planes");
    let err = {
        let mut e = vp.clone();
        e.zip_mut_with(&vr, |a, b| *a += b);
        e.zip_mut_with(&vf, |a, b| *a += b);
        e.mapv_inplace(f32::sqrt);
        e
    };
    let planes = vec![out.sci, err, out.wht, vp, vr, vf];
    Ok(ChunkOut { chunk: c.index, y0: c.y0, x0: c.x0, planes, context: out.context, pixels_in })
}

/// Run the stage: drizzle the owned chunks and write the band store at `store` (collective).
///
/// # Errors
/// A failed read or write on any rank.
#[allow(clippy::too_many_arguments)]
pub fn run(
    comm: &dyn Comm,
    plan: &Plan,
    metas: &[CalMeta],
    cfg: &Config,
    flags: &OutlierFlags,
    corr: &Corrections,
    store: &Path,
    attrs: &[(&str, String)],
    progress: &mut super::progress::Progress,
) -> crate::Result<()> {
    let nplanes = context_planes(plan.exposures.len());
    let f32_names = f32_products(cfg.drizzle.variance_planes);
    let mut products: Vec<ProductSpec> =
        f32_names.iter().map(|n| ProductSpec { name: n.to_string(), dtype: Dtype::F32, planes: 1 }).collect();
    products.push(ProductSpec { name: "CON".into(), dtype: Dtype::U32, planes: nplanes });
    // rank 0 asks the file system, so that every rank takes the same branch before the collective create
    comm.on_root_then_broadcast(0, || crate::io::hdf5::check_room(store, plan.grid.ny, plan.grid.nx, &products))?;
    let bs = comm.agree(
        // every chunk of the plan is written and the chunks tile the grid: no fill pass
        BandStore::create_unfilled(
            store,
            comm.hdf5_handle(),
            GROUP,
            plan.grid.ny,
            plan.grid.nx,
            plan.chunk_px,
            &products,
            attrs,
        )
        .with_context(|| format!("creating the band store {}", store.display())),
    )?;
    let mine: Vec<&Chunk> = plan.chunks_of(comm.rank()).collect();
    let mut counts = [mine.len() as f64];
    comm.all_reduce_max_f64(&mut counts);
    let rounds = counts[0] as usize;
    let mut failure: Option<crate::Error> = None;
    for round in 0..rounds {
        let out = match (mine.get(round), &failure) {
            (Some(c), None) => match drizzle_chunk(c, plan, metas, cfg, flags, corr) {
                Ok(o) => Some(o),
                Err(e) => {
                    failure = Some(e);
                    None
                }
            },
            _ => None,
        };
        // every rank enters every collective write; a failed write is kept, not returned, so that
        // no rank leaves the others waiting in the next one
        for (i, name) in f32_names.iter().enumerate() {
            let block = out.as_ref().map(|o| (o.y0, o.x0, o.planes[i].view()));
            let w = bs.write_block_f32(name, block).with_context(|| format!("writing {name} to {}", store.display()));
            if let (Err(e), None) = (w, &failure) {
                failure = Some(e);
            }
        }
        for p in 0..nplanes {
            let plane = out.as_ref().map(|o| o.context.index_axis(ndarray::Axis(0), p).to_owned());
            let block = out.as_ref().zip(plane.as_ref()).map(|(o, a)| (o.y0, o.x0, a.view()));
            let w = bs.write_block_u32("CON", p, block).with_context(|| format!("writing CON to {}", store.display()));
            if let (Err(e), None) = (w, &failure) {
                failure = Some(e);
            }
        }
        let mut done = [out.as_ref().map_or(0.0, |o| o.pixels_in as f64), if out.is_some() { 1.0 } else { 0.0 }];
        comm.all_reduce_sum_f64(&mut done);
        progress.add(done[1] as usize, done[0] / 1e6);
        if round == 0 {
            crate::fault::point("drizzle.chunk", comm.rank());
        }
    }
    let closed = bs.close().with_context(|| format!("closing {}", store.display()));
    let mine = match (failure, closed) {
        (Some(e), _) | (None, Err(e)) => Err(e),
        (None, Ok(())) => Ok(()),
    };
    Ok(comm.agree(mine)?)
}

/// The `drizzle` stage for the runner: the band store `drizzle/<band>.h5`, written collectively
/// under a temporary name and renamed when closed.
///
/// # Errors
/// As [`run`], or a failed rename (on every rank).
pub(crate) fn stage(ctx: &super::runner::Ctx, b: &super::runner::Band) -> crate::Result<super::runner::Written> {
    let (comm, cfg, plan, prov) = (ctx.comm, ctx.cfg, &b.plan, ctx.prov);
    let store = store_path(&cfg.run.output_dir, &plan.band);
    let partial = crate::io::temp_path(&store);
    comm.on_root_then_broadcast(0, || crate::io::make_dir(store.parent().expect("has parent")))?;
    let attrs = [
        ("tessera_version", prov.tessera_version.clone()),
        ("config_sha256", prov.config_sha256.clone()),
        ("config_toml", prov.config_toml.clone()),
        ("ranks", prov.ranks.to_string()),
        ("threads_per_rank", prov.threads_per_rank.to_string()),
        ("band", plan.band.clone()),
    ];
    let root = comm.rank() == 0;
    let mut progress =
        super::progress::Progress::new(STAGE, "chunks", plan.chunks.len(), cfg.run.progress_interval_s, root);
    run(comm, plan, &b.metas, cfg, &b.flags, &b.corr, &partial, &attrs, &mut progress)?;
    progress.finish();
    comm.barrier();
    comm.on_root_then_broadcast(0, || -> Result<(), String> {
        crate::io::finish(&partial, &store).map_err(|e| e.to_string())
    })?;
    Ok(Default::default())
}

/// The band store of `band` under `output_dir`.
pub fn store_path(output_dir: &Path, band: &str) -> std::path::PathBuf {
    output_dir.join(STAGE).join(format!("{band}.h5"))
}

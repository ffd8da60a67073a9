//! Stage `outlier`: cosmic rays and other outliers, JWST-style (OutlierDetectionStep, imaging).
//!
//! 1. Each exposure's weight threshold (`maskpt` x its typical weight) is computed by the exposure's
//!    owner from its input weights, scaled by the output/input pixel-area ratio, and shared, with
//!    its typical noise (the median ERR of its usable pixels) when `outlier.low_coverage_min` is on.
//! 2. Each chunk owner drizzles every overlapping exposure individually onto its chunk, in row bands
//!    sized from the memory budget, and takes the per-pixel median of the stack. With
//!    `outlier.low_coverage_min`: where two or three remain and the median is over twice the
//!    smallest value, the smallest (cosmic rays are positive); and where an exposure's value there
//!    also stands more than `snr1` times its noise above the smallest, that exposure is left out of
//!    the median within [`shield_px`] of the pixel (unless it is also significantly below the
//!    others nearby, as at a source's pixel phase), so that the fainter pixels of its cosmic ray do
//!    not leak into the median and shield themselves
//!    ([`median_stack_shielded`](crate::kernels::outlier::median_stack_shielded)). The row bands are
//!    drizzled with a halo of twice that width, so the median does not depend on where bands and
//!    chunks end.
//! 3. Chunk owners exchange halo strips of the median (`Comm::exchange`), so each owns
//!    median(chunk + halo).
//! 4. For every exposure pixel whose centre lands in its chunk, the owner blots the median back
//!    (bicubic by default), computes the blot derivative, and applies the two-threshold test.
//! 5. Flags are all-gathered: every rank holds them for the drizzle.
//!
//! Every decision is made by exactly one owner from values that do not depend on where chunk edges
//! fall, so the flags are the same for any rank count and chunk layout.

use super::corrections::{Corrections, OutlierFlags};
use super::pieces::{exposure_weights, read_piece, resample_alone, Part, Piece, Want};
use crate::config::{Config, OutlierConfig, WeightType};
use crate::dist::{Comm, CommExt};
use crate::error::Context;
use crate::geom::TanSip;
use crate::io::fits::read_region_f32;
use crate::kernels::outlier::{
    flag_outliers_window, interp_bicubic, interp_bilinear, median_stack_shielded, median_stack_with, weight_threshold,
    OutlierParams, Shield,
};
use crate::kernels::stats::median_mut;
use crate::plan::{CalMeta, Chunk, Plan};
use ndarray::{s, Array2, Array3};

use std::ops::Range;

/// The stage name.
pub const STAGE: &str = "outlier";

fn params(o: &OutlierConfig) -> OutlierParams {
    OutlierParams { snr1: o.snr1, snr2: o.snr2, scale1: o.scale1, scale2: o.scale2, maskpt: o.maskpt, backg: 0.0 }
}

/// Halo width in output pixels: the flag test of a pixel looks 2 input pixels away (derivative and
/// the 3x3 smoothing), plus two output pixels for the bicubic blot's taps, plus slack.
pub fn halo_px(plan: &Plan, metas: &[CalMeta]) -> usize {
    let s_in = metas.iter().map(|m| m.wcs.pixel_scale_arcsec()).fold(0.0, f64::max);
    (3.0 * s_in / plan.grid.pixscale_arcsec).ceil() as usize + 3
}

/// Half-width, in output pixels, of the square around a cosmic ray's seed over which its exposure
/// is left out of the median: one input pixel beyond the seed (the ray's neighbours) plus the two
/// output pixels the bicubic blot reaches, `ceil(s_in / s_out + 2)` for the coarsest input scale
/// (5 for NIRCam LW onto 0.031"/px, 3 for SW).
pub fn shield_px(plan: &Plan, metas: &[CalMeta]) -> usize {
    let s_in = metas.iter().map(|m| m.wcs.pixel_scale_arcsec()).fold(0.0, f64::max);
    (s_in / plan.grid.pixscale_arcsec + 2.0).ceil() as usize
}

/// The median of an exposure's ERR over its usable pixels (positive input weight, finite positive
/// ERR), the noise scale of [`Shield`]; NaN when there is none (then it never seeds).
fn typical_noise(m: &CalMeta, w: &Array2<f32>) -> crate::Result<f32> {
    let [ny, nx] = m.shape;
    let err = read_region_f32(&m.path, "ERR", 0..ny, 0..nx)?;
    let mut v: Vec<f64> = err
        .iter()
        .zip(w)
        .filter(|(e, w)| **w > 0.0 && e.is_finite() && **e > 0.0)
        .map(|(e, _)| f64::from(*e))
        .collect();
    Ok(if v.is_empty() { f32::NAN } else { median_mut(&mut v) as f32 })
}

/// Run the stage.
///
/// # Errors
/// A failed read on any rank (ranks agree before failing).
pub fn run(
    comm: &dyn Comm,
    plan: &Plan,
    metas: &[CalMeta],
    cfg: &Config,
    corr: &Corrections,
) -> crate::Result<OutlierFlags> {
    let grid = plan.grid.wcs();
    let oc = &cfg.outlier;
    let wt = cfg.drizzle.weight_type;
    // 1. thresholds per exposure, by exposure owners
    // The threshold is NaN for an exposure without a usable weight (nothing masked, as in JWST):
    // it travels as its bits, since JSON has no NaN (serde_json would send null).
    // The noise likewise (bits of an f32).
    let mine: Vec<(usize, u64, u32)> = agree(comm, || -> crate::Result<Vec<(usize, u64, u32)>> {
        plan.exposures_of(comm.rank())
            .map(|e| {
                let m = &metas[e.index];
                let reading = || format!("outlier: reading {}", m.path.display());
                let w = exposure_weights(m, wt).with_context(reading)?;
                let area = (plan.grid.pixscale_arcsec / m.wcs.pixel_scale_arcsec()).powi(2);
                let noise = if oc.low_coverage_min { typical_noise(m, &w).with_context(reading)? } else { f32::NAN };
                Ok((e.index, (weight_threshold(w.view(), oc.maskpt) * area).to_bits(), noise.to_bits()))
            })
            .collect()
    })?;
    let mut thresholds = vec![0f64; metas.len()];
    let mut noise = vec![f32::NAN; metas.len()];
    for part in comm.all_gather_bytes(&serde_json::to_vec(&mine)?) {
        for (i, t, e) in serde_json::from_slice::<Vec<(usize, u64, u32)>>(&part)? {
            thresholds[i] = f64::from_bits(t);
            noise[i] = f32::from_bits(e);
        }
    }

    // 2. medians of owned chunks
    let halo = halo_px(plan, metas);
    let budget = cfg.run.mem_budget_mb as usize * 1024 * 1024 / 2;
    let owned: Vec<&Chunk> = plan.chunks_of(comm.rank()).collect();
    let stats = Stats { thresholds: &thresholds, noise: &noise, shield_px: shield_px(plan, metas) };
    let medians: Vec<Array2<f32>> = agree(comm, || -> crate::Result<Vec<Array2<f32>>> {
        owned.iter().map(|c| chunk_median(c, plan, metas, &grid, &stats, oc, wt, budget, corr)).collect()
    })?;

    // 3. halo exchange
    let extended = exchange_halos(comm, plan, &owned, &medians, halo)?;

    // 4. blot and flag the exposure pixels each chunk owns
    let p = params(oc);
    let local: Vec<(usize, Vec<u64>)> = agree(comm, || -> crate::Result<Vec<(usize, Vec<u64>)>> {
        let mut out = vec![];
        for (c, (med, r0)) in owned.iter().zip(&extended) {
            for &k in &c.exposures {
                out.push((k, flag_chunk_exposure(c, k, &metas[k], &grid, med, *r0, &p, oc.blot_bicubic, corr)?));
            }
        }
        Ok(out)
    })?;

    // 5. share
    let mut per_exposure = vec![vec![]; metas.len()];
    for part in comm.all_gather_bytes(&serde_json::to_vec(&local)?) {
        for (k, v) in serde_json::from_slice::<Vec<(usize, Vec<u64>)>>(&part)? {
            per_exposure[k].extend(v);
        }
    }
    for v in &mut per_exposure {
        v.sort_unstable();
        v.dedup();
    }
    Ok(OutlierFlags { per_exposure })
}

/// Run `f` on every rank; every rank learns whether all succeeded before any returns an error
/// ([`CommExt::agree`]).
pub(crate) fn agree<T>(comm: &dyn Comm, f: impl FnOnce() -> crate::Result<T>) -> crate::Result<T> {
    Ok(comm.agree(f())?)
}

/// Per-exposure values every chunk's median needs (step 1), and the shield's reach.
struct Stats<'a> {
    thresholds: &'a [f64],
    noise: &'a [f32],
    shield_px: usize,
}

#[allow(clippy::too_many_arguments)]
fn chunk_median(
    c: &Chunk,
    plan: &Plan,
    metas: &[CalMeta],
    grid: &TanSip,
    stats: &Stats,
    oc: &OutlierConfig,
    wt: WeightType,
    budget_bytes: usize,
    corr: &Corrections,
) -> crate::Result<Array2<f32>> {
    let (ny, nx) = (c.y1 - c.y0, c.x1 - c.x0);
    let mut median = Array2::from_elem((ny, nx), f32::NAN);
    if c.exposures.is_empty() {
        return Ok(median);
    }
    // the shield needs the stack within 2 shield_px of every pixel: bands are drizzled with that
    // halo, from every exposure that reaches it (those of the chunks the halo touches)
    let halo = if oc.low_coverage_min { 2 * stats.shield_px } else { 0 };
    let (rows_x, cols) = extended_rect(c, plan, halo);
    let exposures = exposures_over(plan, &rows_x, &cols);
    let n = exposures.len();
    let wx = cols.len();
    // rows per band within the budget: per stack element sci and wht (4 + 4 bytes) and the shield's
    // planes (`below` and `seen` 4 each, `near` 1), and one accumulator row
    let band = (budget_bytes / (n * wx * 17 + wx * 32)).saturating_sub(2 * halo).clamp(1, ny);
    let th: Vec<f64> = exposures.iter().map(|&k| stats.thresholds[k]).collect();
    let noise: Vec<f32> = exposures.iter().map(|&k| stats.noise[k]).collect();
    let shield = Shield { noise: &noise, nsigma: oc.snr1, radius: stats.shield_px };
    let mut y = 0;
    while y < ny {
        let inner = c.y0 + y..(c.y0 + y + band).min(c.y1);
        let h = inner.len();
        let rows = inner.start.saturating_sub(halo)..(inner.end + halo).min(plan.grid.ny);
        let mut stack = Array3::from_elem((n, rows.len(), wx), f32::NAN);
        let mut wht = Array3::<f32>::zeros((n, rows.len(), wx));
        for (j, &k) in exposures.iter().enumerate() {
            let m = &metas[k];
            let Some(acc) = resample_alone(m, k, grid, rows.clone(), cols.clone(), wt, oc.pixfrac, corr, Part::Whole)
                .with_context(|| format!("outlier: reading {}", m.path.display()))?
            else {
                continue;
            };
            let out = acc.finish();
            stack.slice_mut(s![j, .., ..]).assign(&out.sci);
            wht.slice_mut(s![j, .., ..]).assign(&out.wht);
        }
        let out = median.slice_mut(s![y..y + h, ..]);
        if oc.low_coverage_min {
            let (r0, c0) = (inner.start - rows.start, c.x0 - cols.start);
            median_stack_shielded(stack.view(), wht.view(), &th, &shield, r0..r0 + h, c0..c0 + nx, out);
        } else {
            median_stack_with(stack.view(), wht.view(), &th, false, out);
        }
        y += h;
    }
    Ok(median)
}

/// The exposures of every chunk that meets the rectangle `rows x cols`, in ascending order: all
/// that can land on it.
fn exposures_over(plan: &Plan, rows: &Range<usize>, cols: &Range<usize>) -> Vec<usize> {
    let k = plan.chunk_px;
    let mut out: Vec<usize> = (rows.start / k..rows.end.div_ceil(k).min(plan.chunks_y))
        .flat_map(|cy| (cols.start / k..cols.end.div_ceil(k).min(plan.chunks_x)).map(move |cx| (cy, cx)))
        .flat_map(|(cy, cx)| plan.chunks[cy * plan.chunks_x + cx].exposures.iter().copied())
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// The extended rectangle (chunk plus halo, clipped to the grid) of a chunk: rows, cols.
fn extended_rect(c: &Chunk, plan: &Plan, halo: usize) -> (Range<usize>, Range<usize>) {
    (
        c.y0.saturating_sub(halo)..(c.y1 + halo).min(plan.grid.ny),
        c.x0.saturating_sub(halo)..(c.x1 + halo).min(plan.grid.nx),
    )
}

fn intersect(a: &Range<usize>, b: &Range<usize>) -> Range<usize> {
    a.start.max(b.start)..a.end.min(b.end).max(a.start.max(b.start))
}

/// Send every neighbour's owner the strip of our median that lies in its halo; build median(chunk +
/// halo) for our chunks. Returns, per owned chunk, the extended median and its origin (y, x).
#[allow(clippy::type_complexity)]
fn exchange_halos(
    comm: &dyn Comm,
    plan: &Plan,
    owned: &[&Chunk],
    medians: &[Array2<f32>],
    halo: usize,
) -> crate::Result<Vec<(Array2<f32>, (usize, usize))>> {
    let mut sends: Vec<(usize, Vec<u8>)> = vec![];
    for (c, med) in owned.iter().zip(medians) {
        for dy in -1i64..=1 {
            for dx in -1i64..=1 {
                let (ny_, nx_) = (c.cy as i64 + dy, c.cx as i64 + dx);
                if (dy, dx) == (0, 0)
                    || ny_ < 0
                    || nx_ < 0
                    || ny_ >= plan.chunks_y as i64
                    || nx_ >= plan.chunks_x as i64
                {
                    continue;
                }
                let nb = &plan.chunks[ny_ as usize * plan.chunks_x + nx_ as usize];
                let (er, ec) = extended_rect(nb, plan, halo);
                let (r, cc) = (intersect(&er, &(c.y0..c.y1)), intersect(&ec, &(c.x0..c.x1)));
                if r.is_empty() || cc.is_empty() {
                    continue;
                }
                let strip = med.slice(s![r.start - c.y0..r.end - c.y0, cc.start - c.x0..cc.end - c.x0]);
                let mut msg = Vec::with_capacity(48 + strip.len() * 4);
                let body_len = 40 + strip.len() * 4;
                msg.extend((body_len as u64).to_le_bytes());
                for v in [nb.index, r.start, cc.start, r.len(), cc.len()] {
                    msg.extend((v as u64).to_le_bytes());
                }
                for v in strip.iter() {
                    msg.extend(v.to_le_bytes());
                }
                sends.push((nb.owner, msg));
            }
        }
    }
    let received = comm.exchange(sends);
    let mut out: Vec<(Array2<f32>, (usize, usize))> = owned
        .iter()
        .zip(medians)
        .map(|(c, med)| {
            let (er, ec) = extended_rect(c, plan, halo);
            let mut a = Array2::from_elem((er.len(), ec.len()), f32::NAN);
            a.slice_mut(s![c.y0 - er.start..c.y1 - er.start, c.x0 - ec.start..c.x1 - ec.start]).assign(med);
            (a, (er.start, ec.start))
        })
        .collect();
    let pos: std::collections::HashMap<usize, usize> = owned.iter().enumerate().map(|(i, c)| (c.index, i)).collect();
    let u64_at = |b: &[u8], i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().expect("8 bytes")) as usize;
    for (_src, bytes) in received {
        let mut off = 0;
        while off < bytes.len() {
            let len = u64_at(&bytes[off..], 0);
            let body = &bytes[off + 8..off + 8 + len];
            let (idx, y0, x0, h, w) =
                (u64_at(body, 0), u64_at(body, 1), u64_at(body, 2), u64_at(body, 3), u64_at(body, 4));
            let i =
                *pos.get(&idx).with_context(|| format!("halo for chunk {idx} sent to a rank that does not own it"))?;
            let (a, (oy, ox)) = &mut out[i];
            let vals = &body[40..];
            for yy in 0..h {
                for xx in 0..w {
                    let k = (yy * w + xx) * 4;
                    a[[y0 + yy - *oy, x0 + xx - *ox]] = f32::from_le_bytes(vals[k..k + 4].try_into().expect("4 bytes"));
                }
            }
            off += 8 + len;
        }
    }
    Ok(out)
}

/// Flags of the pixels of exposure `k` whose centres land in chunk `c`, as global linear indices.
#[allow(clippy::too_many_arguments)]
fn flag_chunk_exposure(
    c: &Chunk,
    k: usize,
    meta: &CalMeta,
    grid: &TanSip,
    med: &Array2<f32>,
    origin: (usize, usize),
    p: &OutlierParams,
    bicubic: bool,
    corr: &Corrections,
) -> crate::Result<Vec<u64>> {
    let Some(piece): Option<Piece> = read_piece(
        meta,
        k,
        grid,
        c.y0..c.y1,
        c.x0..c.x1,
        3,
        (0, 0),
        Want { vars: false, rnoise: false, err: true },
        corr,
    )
    .with_context(|| format!("outlier: reading {}", meta.path.display()))?
    else {
        return Ok(vec![]);
    };
    let (h, w) = piece.sci.dim();
    // Blot positions: the absolute grid position rounded to f32 (as drizzle's blot does), then the
    // extended region's origin subtracted, exactly, so the interpolation weights are the same bits
    // whichever chunk evaluates them.
    let (oyf, oxf) = (origin.0 as f32, origin.1 as f32);
    let mut blot = Array2::from_elem((h, w), f32::NAN);
    for ((y, x), b) in blot.indexed_iter_mut() {
        let (xa, ya) = (piece.pixmap[[y, x, 0]] as f32, piece.pixmap[[y, x, 1]] as f32);
        let (xr, yr) = ((xa - oxf) as f64, (ya - oyf) as f64);
        *b = if bicubic { interp_bicubic(med.view(), xr, yr) } else { interp_bilinear(med.view(), xr, yr) };
    }
    let flags = flag_outliers_window(piece.sci.view(), piece.err.view(), blot.view(), 0..h, 0..w, p);
    let (cy0, cy1, cx0, cx1) = (c.y0 as f64 - 0.5, c.y1 as f64 - 0.5, c.x0 as f64 - 0.5, c.x1 as f64 - 0.5);
    let nx = meta.shape[1] as u64;
    let mut out = vec![];
    for ((y, x), &f) in flags.indexed_iter() {
        if !f || piece.dq[[y, x]] & super::pieces::BAD_BITS != 0 {
            continue;
        }
        let (xo, yo) = (piece.pixmap[[y, x, 0]], piece.pixmap[[y, x, 1]]);
        if xo >= cx0 && xo < cx1 && yo >= cy0 && yo < cy1 {
            out.push((piece.rows.start + y) as u64 * nx + (piece.cols.start + x) as u64);
        }
    }
    Ok(out)
}

/// The `outlier` stage for the runner: the flags in `outlier/flags.json`.
///
/// # Errors
/// As [`run`], or a failed write.
pub(crate) fn stage(ctx: &super::runner::Ctx, b: &super::runner::Band) -> crate::Result<super::runner::Written> {
    let (comm, cfg, metas) = (ctx.comm, ctx.cfg, &b.metas);
    let t = std::time::Instant::now();
    let f = run(comm, &b.plan, metas, cfg, &b.corr)?;
    if comm.rank() == 0 {
        let path = cfg.run.output_dir.join(STAGE).join("flags.json");
        let files: Vec<String> = metas.iter().map(CalMeta::file_name).collect();
        let nx: Vec<usize> = metas.iter().map(|m| m.shape[1]).collect();
        crate::io::json::write_json(&path, &f.report(&files, &nx))?;
        let npix: usize = metas.iter().map(|m| m.shape[0] * m.shape[1]).sum();
        tracing::info!(
            "[outlier] {} pixels flagged ({:.3}% of {:.1} Mpix) in {:.1} s, written to {}",
            f.total(),
            100.0 * f.total() as f64 / npix as f64,
            npix as f64 / 1e6,
            t.elapsed().as_secs_f64(),
            path.display()
        );
    }
    if cfg.outlier.write_crf {
        // every owner writes its exposures' copies; the ranks agree before anyone fails
        let bits = crate::kernels::dq::DO_NOT_USE | crate::kernels::dq::OUTLIER;
        let history = ["tessera outlier: flagged pixels marked DO_NOT_USE + OUTLIER in DQ".to_string()];
        let errors: Vec<String> = b
            .plan
            .exposures_of(comm.rank())
            .filter_map(|e| {
                let m = &metas[e.index];
                let dst = cfg.run.output_dir.join(STAGE).join(crf_name(m));
                crate::io::fits::copy_with_wcs_and_flags(
                    &m.path,
                    &dst,
                    &[],
                    &[],
                    &history,
                    &f.per_exposure[e.index],
                    bits,
                )
                .err()
                .map(|e| e.to_string())
            })
            .collect();
        let mine = if errors.is_empty() { Ok(()) } else { Err(errors.join("; ")) };
        comm.agree(mine).map_err(|e| crate::err!("writing the *_crf.fits copies: {e}"))?;
    }
    Ok(Default::default())
}

/// `<cal name without _cal.fits>_crf.fits`.
pub fn crf_name(m: &CalMeta) -> String {
    let name = m.file_name();
    let stem = name.strip_suffix("_cal.fits").or_else(|| name.strip_suffix(".fits")).unwrap_or(&name);
    format!("{stem}_crf.fits")
}

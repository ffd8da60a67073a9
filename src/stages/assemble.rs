//! Stage `assemble`: the multi-extension mosaic FITS (SCI, ERR, DQ, WHT, CON, VAR_POISSON,
//! VAR_RNOISE, VAR_FLAT, or without the variance planes SCI, DQ, WHT, CON; JWST EXTNAMEs;
//! celestial WCS; BUNIT; provenance in HISTORY), streamed from
//! the band store in row blocks on rank 0 so that no rank ever holds the whole mosaic. Written to a
//! temporary name and renamed when complete.

use super::drizzle::{context_planes, f32_products, GROUP};
use super::Provenance;
use crate::error::Context;
use crate::io::fits::{card_int, card_text, Card, ExtKind, ExtSpec, MosaicWriter};
use crate::io::hdf5::{read_rows_f32, read_rows_u32};
use crate::kernels::dq;
use crate::plan::{CalMeta, Plan};

/// The stage name.
pub const STAGE: &str = "assemble";
use std::path::Path;

/// Write the mosaic FITS `out` from the band store (rank 0 only); without `variance_planes`
/// (`drizzle.variance_planes = false`) the store and the mosaic have no ERR and VAR_* planes.
///
/// # Errors
/// Store reads or FITS writes, naming the file.
pub fn run(
    plan: &Plan,
    metas: &[CalMeta],
    store: &Path,
    out: &Path,
    row_block: usize,
    variance_planes: bool,
    prov: &Provenance,
) -> crate::Result<()> {
    let (ny, nx) = (plan.grid.ny, plan.grid.nx);
    let wcs_cards = plan.grid.wcs().to_cards();
    let with_wcs = |unit: Option<&str>| -> Vec<Card> {
        let mut c: Vec<Card> =
            unit.map(|u| vec![card_text("BUNIT", u, "physical units of the array values")]).unwrap_or_default();
        c.extend(wcs_cards.iter().cloned());
        c
    };
    let nplanes = context_planes(plan.exposures.len());
    let mut exts = vec![
        ExtSpec { name: "SCI".into(), kind: ExtKind::F32, planes: 1, cards: with_wcs(Some("MJy/sr")) },
        ExtSpec { name: "ERR".into(), kind: ExtKind::F32, planes: 1, cards: with_wcs(Some("MJy/sr")) },
        ExtSpec { name: "DQ".into(), kind: ExtKind::U32, planes: 1, cards: with_wcs(None) },
        ExtSpec { name: "WHT".into(), kind: ExtKind::F32, planes: 1, cards: with_wcs(None) },
        ExtSpec { name: "CON".into(), kind: ExtKind::U32, planes: nplanes, cards: vec![] },
        ExtSpec { name: "VAR_POISSON".into(), kind: ExtKind::F32, planes: 1, cards: with_wcs(Some("(MJy/sr)^2")) },
        ExtSpec { name: "VAR_RNOISE".into(), kind: ExtKind::F32, planes: 1, cards: with_wcs(Some("(MJy/sr)^2")) },
        ExtSpec { name: "VAR_FLAT".into(), kind: ExtKind::F32, planes: 1, cards: with_wcs(Some("(MJy/sr)^2")) },
    ];
    let products = f32_products(variance_planes);
    exts.retain(|e| e.kind != ExtKind::F32 || products.contains(&e.name.as_str()));
    let first = &metas[0];
    let primary = vec![
        card_text("TELESCOP", "JWST", "telescope used to acquire the data"),
        card_text("INSTRUME", &first.instrument, "instrument used to acquire the data"),
        card_text("FILTER", &first.filter, "name of the filter element used"),
        card_text("PUPIL", &first.pupil, "name of the pupil element used"),
        card_text("TARGPROP", &first.target, "proposer's name for the target"),
        card_text("BAND", &plan.band, "tessera band"),
        card_int("NINPUTS", metas.len() as i64, "number of input exposures"),
        card_text("ORIGIN", "TESSERA", "mosaic made by tessera"),
    ];
    let mut history = prov.history();
    history.push(format!("inputs: {} exposures", metas.len()));
    for m in metas {
        history.push(format!("input {}", m.file_name()));
    }
    let mut w = MosaicWriter::create(out, ny, nx, &primary, &history, exts)
        .with_context(|| format!("creating {}", out.display()))?;
    let mut y = 0;
    while y < ny {
        let rows = y..(y + row_block).min(ny);
        let mut wht = None;
        for &name in products {
            let block = read_rows_f32(store, GROUP, name, rows.clone())?;
            w.write_rows_f32(name, y, block.view())?;
            if name == "WHT" {
                wht = Some(block);
            }
        }
        let wht = wht.expect("WHT is a product");
        let dqb = wht.mapv(|v| if v > 0.0 { 0u32 } else { dq::DO_NOT_USE | dq::NON_SCIENCE });
        w.write_rows_u32("DQ", 0, y, dqb.view())?;
        for p in 0..nplanes {
            let block = read_rows_u32(store, GROUP, "CON", p, rows.clone())?;
            w.write_rows_u32("CON", p, y, block.view())?;
        }
        y = rows.end;
    }
    w.finish()?;
    Ok(())
}

/// The `assemble` stage for the runner: rank 0 streams the band store into the `-o` mosaic.
///
/// # Errors
/// No `-o` mosaic named, or as [`run`] (on every rank).
pub(crate) fn stage(ctx: &super::runner::Ctx, b: &super::runner::Band) -> crate::Result<super::runner::Written> {
    use crate::dist::CommExt;
    let (comm, cfg, plan) = (ctx.comm, ctx.cfg, &b.plan);
    let Some(output) = ctx.output else {
        crate::bail!("assemble needs the mosaic to write: give -o MOSAIC.fits");
    };
    let store = super::drizzle::store_path(&cfg.run.output_dir, &plan.band);
    comm.on_root_then_broadcast(0, || -> Result<(), String> {
        let t = std::time::Instant::now();
        run(plan, &b.metas, &store, output, cfg.assemble.row_block, cfg.drizzle.variance_planes, ctx.prov)
            .map_err(|e| format!("{e:#}"))?;
        tracing::info!(
            "[assemble] {} ({}x{}) in {:.1} s",
            output.display(),
            plan.grid.nx,
            plan.grid.ny,
            t.elapsed().as_secs_f64()
        );
        Ok(())
    })?;
    Ok(Default::default())
}

//! `destripe_multi`: residual NIRCam stripes from each exposure's difference against the other
//! exposures (pjpipe `multi_tile_destripe` pass A, SPEC section 3 stage 6; the numerics are in
//! [`kernels::destripe::multi_tile_model`](crate::kernels::destripe::multi_tile_model)).
//!
//! By step, for every NIRCam exposure, by its owner:
//! - the weighted average of every *other* overlapping exposure is drizzled directly onto this
//!   exposure's own pixel grid (its TAN-SIP WCS taken as the output grid; square kernel, pixfrac 1,
//!   the `drizzle.weight_type` weights, all earlier corrections subtracted by
//!   [`resample_alone`](super::pieces::resample_alone)), summed in exposure order. This is the
//!   average image blotted back to the exposure, without the second interpolation, and without the
//!   exposure's own stripes (pjpipe includes them, which removes only `1 - 1/N` of them);
//! - the difference exposure - average goes to the per-amplifier sigma-clipped row medians with
//!   the 20% fallback; the model is appended to the [`Corrections`];
//! - models are all-gathered in rank order; rank 0 writes `destripe_multi/destripe_multi.json` and
//!   `destripe_multi/<band>.h5` (as `destripe` does).
//!
//! Not implemented yet (named in the mosaic's warning): pjpipe's large-scale second pass (stripes
//! common to all exposures, found on the average with a median filter of ~rows/10 across the stripe
//! direction); the kernels for it exist (`large_scale_smooth`, `stripe_direction`).

use super::destripe::{applies_to, rms, write_store, DestripeReport, ExposureReport};
use super::pieces::{resample_alone, Corrections, Part, BAD_BITS};
use crate::config::Config;
use crate::dist::{Comm, CommExt};
use crate::io::fits::{read_region_dq, read_region_f32};
use crate::kernels::destripe::{par_multi_tile_model, AmpLayout, MultiTileParams, StripeModel};
use crate::plan::{CalMeta, Plan};
use anyhow::Context;
use ndarray::Array2;

/// The stage name (CLI, TOML section, HDF5 group, output folder).
pub const STAGE: &str = "destripe_multi";

/// The model of exposure `index` and the number of other exposures it was compared with. With
/// `destripe.png`, also writes `destripe_multi/<file stem>.png` (difference, model, corrected).
///
/// # Errors
/// A failed read (naming file and extension) or a kernel parameter error.
pub fn exposure_model(
    metas: &[CalMeta],
    index: usize,
    cfg: &Config,
    prior: &Corrections,
) -> anyhow::Result<(StripeModel, usize)> {
    let me = &metas[index];
    let [ny, nx] = me.shape;
    let mut wsum = Array2::<f64>::zeros((ny, nx));
    let mut swsum = Array2::<f64>::zeros((ny, nx));
    let mut used = 0;
    // level's tile planes are given in output-grid pixels, and here the grid is this exposure's own
    // frame: leave them out on both sides (they are smooth; the row medians look for stripes)
    let prior = &Corrections { plane: vec![], ..prior.clone() };
    for (k, m) in metas.iter().enumerate() {
        if k == index || m.band() != me.band() {
            continue;
        }
        let Some(acc) = resample_alone(m, k, &me.wcs, 0..ny, 0..nx, cfg.drizzle.weight_type, 1.0, prior, Part::Whole)?
        else {
            continue;
        };
        if !acc.wsum.iter().any(|&w| w > 0.0) {
            continue;
        }
        used += 1;
        wsum += &acc.wsum;
        swsum += &acc.sci_wsum;
    }
    if used == 0 {
        return Ok((StripeModel::zero(ny, nx), 0));
    }
    let mut sci = read_region_f32(&me.path, "SCI", 0..ny, 0..nx)?;
    prior.apply_window(index, 0..ny, 0..nx, &mut sci);
    let dq = read_region_dq(&me.path, 0..ny, 0..nx)?;
    let diff = Array2::from_shape_fn((ny, nx), |(y, x)| {
        let w = wsum[[y, x]];
        if w > 0.0 && sci[[y, x]].is_finite() && sci[[y, x]] != 0.0 {
            (f64::from(sci[[y, x]]) - swsum[[y, x]] / w) as f32
        } else {
            f32::NAN
        }
    });
    let bad = dq.mapv(|v| v & BAD_BITS != 0);
    let full = me.subarray.trim().eq_ignore_ascii_case("FULL");
    let p = MultiTileParams {
        amps: if full && nx >= 4 { AmpLayout::Columns { width_px: nx / 4 } } else { AmpLayout::WholeRows },
        sigma: cfg.destripe.sigma,
        dilate_size: cfg.destripe.dilate_size,
        min_mask_frac: cfg.destripe.min_mask_frac,
        ..MultiTileParams::default()
    };
    let model = par_multi_tile_model(diff.view(), bad.view(), &p).with_context(|| me.path.display().to_string())?;
    if cfg.destripe.png {
        let file = me.file_name();
        let png = cfg.run.output_dir.join(STAGE).join(format!("{}.png", file.trim_end_matches(".fits")));
        super::destripe::plot_model(
            &png,
            &format!("destripe_multi {file}"),
            &diff,
            &model.to_array(),
            "exposure - average",
        )?;
    }
    Ok((model, used))
}

/// Run the stage on top of `prior` corrections (those of `destripe` and `level`).
///
/// # Errors
/// A failed read or kernel error on any rank (all ranks return it), or a failed product write.
pub fn run(
    comm: &dyn Comm,
    plan: &Plan,
    metas: &[CalMeta],
    cfg: &Config,
    prior: &Corrections,
) -> anyhow::Result<(Corrections, DestripeReport)> {
    let results = super::on_exposure_owners(
        comm,
        plan,
        STAGE,
        |k| applies_to(&metas[k]),
        |k| exposure_model(metas, k, cfg, prior),
    )?;
    let (models, others): (Vec<Option<StripeModel>>, Vec<usize>) =
        results.into_iter().map(|r| r.map_or((None, 0), |(m, u)| (Some(m), u))).unzip();
    let mut report = DestripeReport::default();
    for (k, m) in metas.iter().enumerate() {
        let file = m.file_name();
        let (status, rms, amps) = match &models[k] {
            Some(s) if others[k] > 0 => {
                (format!("destriped against {} other exposures", others[k]), rms(&s.to_array()), s.amps.len())
            }
            Some(_) => {
                report.notes.push(format!("{file}: no other exposure overlaps it; no multi-exposure model"));
                ("passed through: no overlapping exposure".to_string(), 0.0, 0)
            }
            None => (format!("passed through: {} is not NIRCam", m.instrument), 0.0, 0),
        };
        report.exposures.push(ExposureReport { file, status, model_rms_mjysr: rms, amps });
    }
    let out = cfg.run.output_dir.join(STAGE);
    comm.on_root_then_broadcast(0, || -> anyhow::Result<()> {
        std::fs::create_dir_all(&out).with_context(|| out.display().to_string())?;
        crate::io::json::write_json(&out.join("destripe_multi.json"), &report)?;
        write_store(&out.join(format!("{}.h5", plan.band)), STAGE, metas, &models)?;
        Ok(())
    })?;
    Ok((prior.with_stripes(models), report))
}

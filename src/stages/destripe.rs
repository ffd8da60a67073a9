//! `destripe`: NIRCam 1/f stripes removed from each exposure using that exposure alone (pjpipe
//! `single_tile_destripe`, SPEC section 3 stage 3; the numerics are in
//! [`kernels::destripe`](crate::kernels::destripe)).
//!
//! By step:
//! - each exposure's owner (from the plan) reads its whole SCI and DQ and computes the stripe model
//!   on rayon: four amplifiers of `nx / 4` columns and the 4-pixel reference border on full frames,
//!   whole rows and no border on subarrays; the seed of the Gaussian fill is
//!   `destripe.seed + exposure index`, so the model does not depend on who computes it;
//! - the models, in their factored form (a few kB each), are all-gathered in rank order;
//! - the result is the prior [`Corrections`] with the models appended, which
//!   [`read_piece`](super::pieces::read_piece) subtracts in every later stage;
//! - rank 0 writes `destripe/destripe.json` (per exposure: status, model rms) and the band store
//!   `destripe/<band>.h5` (group `destripe`, one dataset per exposure, named by its file stem, the
//!   dense model `[y, x]` in MJy/sr; NaN outside a smaller exposure).
//!
//! MIRI exposures are passed through with a note; an exposure that cannot be read fails the stage
//! on every rank (ranks agree first). What does not live here: the multi-exposure pass
//! (`destripe_multi`), plotting.

use super::corrections::Corrections;
use super::pieces::BAD_BITS;
use crate::config::Config;
use crate::dist::{Comm, CommExt};
use crate::error::Context;
use crate::io::fits::{read_region_dq, read_region_f32};
use crate::io::hdf5::{BandStore, ProductSpec};
use crate::kernels::destripe::{par_single_tile_model, AmpLayout, ButterworthParams, SingleTileParams, StripeModel};
use crate::plan::{CalMeta, Plan};
use serde::{Deserialize, Serialize};

/// The stage name (CLI, TOML section, HDF5 group, output folder).
pub const STAGE: &str = "destripe";

/// What happened to one exposure.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExposureReport {
    /// File name.
    pub file: String,
    /// `destriped`, or `passed through: <why>`.
    pub status: String,
    /// Rms of the model subtracted, MJy/sr (0 when none).
    pub model_rms_mjysr: f64,
    /// Amplifiers used (4 on full frames, 1 on subarrays).
    pub amps: usize,
    /// `destripe_multi` only: rms of the large-scale pass's model, MJy/sr (`model_rms_mjysr` is
    /// pass A's); absent when the pass did not run on this exposure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub large_scale_rms_mjysr: Option<f64>,
    /// `destripe_multi` only: the stripe direction the large-scale pass smoothed across on this
    /// exposure's frame (`horizontal`; `isotropic` when the band's exposures are rotated 10 deg or
    /// more from each other, e.g. two rolls).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub large_scale_direction: Option<String>,
}

/// The stage's report (`destripe/destripe.json`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DestripeReport {
    pub exposures: Vec<ExposureReport>,
    /// Exposures passed through, with the reason (MIRI, destriping disabled).
    pub notes: Vec<String>,
    /// `destripe_multi` only: per iteration of pass A, the largest rms of an exposure's update,
    /// MJy/sr (the iterations stop below `destripe_multi.convergence_mjysr`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pass_a_update_rms_mjysr: Vec<f64>,
    /// `destripe_multi` with the joint solve (`destripe_multi.method`): its size, and per clipping
    /// round the residuals' sigma, the cells kept, the conjugate-gradient iterations and the final
    /// relative residual.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub joint: Option<crate::kernels::destripe::JointSummary>,
}

/// Side of a NIRCam full-frame detector, pixels.
pub const NIRCAM_FULL_PX: usize = 2048;

/// The kernel parameters for an exposure of `shape` `[ny, nx]` with SUBARRAY `subarray`.
///
/// Full frames have four amplifiers of `nx / 4` columns and the 4-pixel reference border;
/// subarrays (SUBARRAY other than FULL) one amplifier reading whole rows and no border. A full frame
/// smaller than NIRCam's 2048^2 is a scaled-down stand-in (the simulator's `small` and `tiny`
/// sizes shrink the detector and the scene together): the Butterworth cutoff is scaled up by
/// `2048 / n` and the median-filter scales are kept up to `n / 4` rows (511 on a real frame), so
/// the method sees the same geometry as on a real detector.
pub fn params_for(cfg: &Config, shape: [usize; 2], subarray: &str, index: usize) -> SingleTileParams {
    let full = subarray.trim().eq_ignore_ascii_case("FULL");
    let [ny, nx] = shape;
    let d = &cfg.destripe;
    let n = ny.max(nx).max(1);
    let (cutoff, scales) = if full && n < NIRCAM_FULL_PX {
        let f = NIRCAM_FULL_PX as f64 / n as f64;
        let kept: Vec<usize> = d.filter_scales.iter().copied().filter(|&s| s <= n / 4).collect();
        ((d.cutoff_ratio * f).min(0.5), if kept.is_empty() { vec![d.filter_scales[0]] } else { kept })
    } else {
        (d.cutoff_ratio, d.filter_scales.clone())
    };
    SingleTileParams {
        amps: if full && nx >= 4 { AmpLayout::Columns { width_px: nx / 4 } } else { AmpLayout::WholeRows },
        ref_border_px: if full { 4 } else { 0 },
        filter_scales: scales,
        min_mask_frac: d.min_mask_frac,
        sigma: d.sigma,
        dilate_size: d.dilate_size,
        butterworth: ButterworthParams { cutoff_ratio: cutoff, ..Default::default() },
        seed: d.seed.wrapping_add(index as u64),
        ..SingleTileParams::default()
    }
}

/// Whether the stage applies to this exposure (NIRCam only).
pub fn applies_to(meta: &CalMeta) -> bool {
    meta.instrument.trim().eq_ignore_ascii_case("NIRCAM")
}

/// The stripe model of exposure `index` (read whole; `prior` subtracted first). With
/// `destripe.png`, also writes `destripe/<file stem>.png` (data, model, corrected).
///
/// # Errors
/// A failed read (naming file and extension), a kernel parameter error or a failed PNG write.
pub fn exposure_model(meta: &CalMeta, index: usize, cfg: &Config, prior: &Corrections) -> crate::Result<StripeModel> {
    let [ny, nx] = meta.shape;
    let mut sci = read_region_f32(&meta.path, "SCI", 0..ny, 0..nx)?;
    prior.apply_window(index, 0..ny, 0..nx, &mut sci);
    let dq = read_region_dq(&meta.path, 0..ny, 0..nx)?;
    let bad = dq.mapv(|v| v & BAD_BITS != 0);
    let p = params_for(cfg, meta.shape, &meta.subarray, index);
    let model = par_single_tile_model(sci.view(), bad.view(), &p).with_context(|| meta.path.display().to_string())?;
    if cfg.destripe.png {
        let png = cfg.run.output_dir.join(STAGE).join(format!("{}.png", meta.file_name().trim_end_matches(".fits")));
        plot_model(&png, &format!("destripe {}", meta.file_name()), &sci, &model.to_array(), "data")?;
    }
    Ok(model)
}

/// The PNG of one exposure's model, like the paper's Figures 4, 6 and 7: `data` (`what`), the
/// stripe model (symmetric range) and `data - model`, the data panels on one range.
///
/// # Errors
/// A failed directory creation or PNG write, naming the path.
pub(crate) fn plot_model(
    png: &std::path::Path,
    title: &str,
    data: &ndarray::Array2<f32>,
    model: &ndarray::Array2<f32>,
    what: &str,
) -> crate::Result<()> {
    use crate::io::plot::{display_range, image_panels, robust_range, Panel};
    if let Some(dir) = png.parent() {
        crate::io::make_dir(dir)?;
    }
    let corrected = data - model;
    // a difference against the other exposures is noise, stripes and a few residuals: a symmetric
    // robust range shows the stripes; a plain exposure gets its 1-99% range
    let range = if what == "data" { display_range(data.view()) } else { robust_range(data.view(), 4.0) };
    let a = model.iter().fold(0.0f32, |a, v| if v.is_finite() { a.max(v.abs()) } else { a }).max(1e-6);
    let panels = [
        Panel { title: what.to_string(), data: data.view(), range: Some(range) },
        Panel { title: "stripe model".to_string(), data: model.view(), range: Some((-a, a)) },
        Panel { title: "corrected".to_string(), data: corrected.view(), range: Some(range) },
    ];
    image_panels(png, title, &panels)?;
    Ok(())
}

pub(crate) fn rms(a: &ndarray::Array2<f32>) -> f64 {
    if a.is_empty() {
        return 0.0;
    }
    (a.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / a.len() as f64).sqrt()
}

/// Run the stage on top of `prior` corrections: returns the corrections with the stripe models
/// added, and the report (written by rank 0 with the band store).
///
/// # Errors
/// A failed read or kernel error on any rank (all ranks return it), or a failed product write.
pub fn run(
    comm: &dyn Comm,
    plan: &Plan,
    metas: &[CalMeta],
    cfg: &Config,
    prior: &Corrections,
) -> crate::Result<(Corrections, DestripeReport)> {
    // owners compute their exposures' models
    let models = super::on_exposure_owners(
        comm,
        plan,
        STAGE,
        cfg.run.progress_interval_s,
        |k| applies_to(&metas[k]),
        |k| exposure_model(&metas[k], k, cfg, prior),
    )?;

    let mut report = DestripeReport::default();
    for (k, m) in metas.iter().enumerate() {
        let (status, model_rms_mjysr, amps) = match &models[k] {
            Some(s) => ("destriped".to_string(), rms(&s.to_array()), s.amps.len()),
            None => {
                let why = format!("passed through: {} is not NIRCam (1/f destriping is for NIRCam)", m.instrument);
                report.notes.push(format!("{}: {why}", m.file_name()));
                (why, 0.0, 0)
            }
        };
        report.exposures.push(ExposureReport {
            file: m.file_name(),
            status,
            model_rms_mjysr,
            amps,
            large_scale_rms_mjysr: None,
            large_scale_direction: None,
        });
    }
    let out = cfg.run.output_dir.join(STAGE);
    comm.on_root_then_broadcast(0, || -> crate::Result<()> {
        crate::io::make_dir(&out)?;
        crate::io::json::write_json(&out.join("destripe.json"), &report)?;
        let parts: Vec<Vec<&StripeModel>> = models.iter().map(|m| m.iter().collect()).collect();
        write_store(&out.join(format!("{}.h5", plan.band)), STAGE, metas, &parts)?;
        Ok(())
    })?;
    Ok((prior.with_stripes(models), report))
}

/// The models into `path`, group `group` (serial HDF5 on the calling rank), written under a temporary
/// name: per exposure the dense sum `[y, x]` of its `models` (none: no dataset), built one exposure at
/// a time so that only one dense model is held.
pub(crate) fn write_store(
    path: &std::path::Path,
    group: &str,
    metas: &[CalMeta],
    models: &[Vec<&StripeModel>],
) -> crate::Result<()> {
    let present: Vec<(String, &Vec<&StripeModel>)> = metas
        .iter()
        .zip(models)
        .filter(|(_, s)| !s.is_empty())
        .map(|(m, s)| (m.file_name().trim_end_matches(".fits").to_string(), s))
        .collect();
    if present.is_empty() {
        return Ok(());
    }
    let ny = present.iter().flat_map(|(_, s)| s.iter().map(|m| m.ny)).max().unwrap_or(1).max(1);
    let nx = present.iter().flat_map(|(_, s)| s.iter().map(|m| m.nx)).max().unwrap_or(1).max(1);
    let specs: Vec<ProductSpec> = present.iter().map(|(name, _)| ProductSpec::f32_image(name)).collect();
    let tmp = crate::io::temp_path(path);
    let store = BandStore::create(&tmp, None, group, ny, nx, 256, &specs, &[("units", "MJy/sr".to_string())])?;
    for (name, parts) in &present {
        let mut a = parts[0].to_array();
        for m in &parts[1..] {
            a += &m.to_array();
        }
        store.write_block_f32(name, Some((0, 0, a.view())))?;
    }
    store.close()?;
    crate::io::finish(&tmp, path)?;
    Ok(())
}

/// The `destripe` stage for the runner: the models, and their part of the corrections in
/// `destripe/corrections.json`.
///
/// # Errors
/// As [`run`].
pub(crate) fn stage(ctx: &super::runner::Ctx, b: &super::runner::Band) -> crate::Result<super::runner::Written> {
    let (comm, cfg, metas) = (ctx.comm, ctx.cfg, &b.metas);
    let t = std::time::Instant::now();
    let none = Corrections::none(metas.len());
    let (c, report) = run(comm, &b.plan, metas, cfg, &none)?;
    if comm.rank() == 0 {
        let dir = cfg.run.output_dir.join(STAGE);
        crate::io::json::write_json(&dir.join(super::runner::CORRECTIONS), &c.stripes_beyond(&none))?;
        for note in &report.notes {
            tracing::warn!("[destripe] {note}");
        }
        let done = report.exposures.iter().filter(|e| e.status == "destriped").count();
        tracing::info!(
            "[destripe] {done} of {} exposures destriped; models in {} ({:.1} s)",
            metas.len(),
            dir.display(),
            t.elapsed().as_secs_f64()
        );
    }
    Ok(Default::default())
}

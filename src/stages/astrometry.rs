//! Stage `astrometry`: absolute astrometry of the mosaic against a reference catalogue (SPEC stage
//! 10; pjpipe astrometric_align, with tweakwcs' matching built in Rust), and tweakback.
//!
//! By step (rank 0 unless said):
//! 1. Point sources of the mosaic SCI (pixels with zero weight masked) with `kernels::sources`,
//!    projected through the mosaic WCS onto its tangent plane; the catalogue (`io::catalog`: CSV,
//!    ECSV or FITS with ra, dec) projected onto the same plane.
//! 2. Two matches, each from the original WCS (pjpipe's iterations): a **wide** one (histogram shift
//!    search within `search_radius_arcsec`, tolerance `wide_tolerance_arcsec`, geometry `shift`),
//!    then a **strict** one starting from the wide shift (no histogram, tolerance
//!    `strict_tolerance_arcsec`, geometry `rshift`, rotation about the tangent point, each source
//!    weighted by its centroid error combined with the catalogue noise, both scaled to the residuals:
//!    `kernels::matching::match_catalogs_weighted`). Either failing
//!    (too few sources, no overlap, no significant peak, too few or chance matches) leaves every WCS
//!    unchanged, with a warning that says why; the run continues.
//! 3. On success the mosaic FITS gets the corrected WCS in every imaging extension (with HISTORY),
//!    and every exposure owner writes its tweakback files `astrometry/<name>_tweakback.fits`: the cal
//!    file with the same correction applied to its (aligned) SCI WCS.
//! 4. Products: `astrometry/astrometry.json` (both fits, the correction, warnings),
//!    `astrometry/matches.csv` (matched reference and mosaic positions, before and after) and
//!    `astrometry/<band>_residuals.png` (the residual scatter before and after).
//!
//! A band that is not `[astrometry] reference_band` applies the reference band's solution
//! (`solution_file`) unchanged, as pjpipe's align_mapping does for MIRI.

use super::align::{detect_with_errors, fwhm_arcsec, project};
use super::corrections::OutlierFlags;
use crate::config::Config;
use crate::dist::{Comm, CommExt};
use crate::geom::{tangent_arcsec_to_sky, SkyCorrection};
use crate::io::fits::{copy_with_wcs, copy_with_wcs_and_flags, read_ext_f32};
use crate::kernels::matching::{
    match_catalogs, match_catalogs_weighted, FitGeometry, MatchParams, MatchResult, Transform,
};
use crate::plan::{CalMeta, Plan};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Stage name: CLI, TOML section, output folder.
pub const STAGE: &str = "astrometry";

/// Extensions of the mosaic FITS that carry the celestial WCS.
pub const WCS_EXTENSIONS: [&str; 7] = ["SCI", "ERR", "DQ", "WHT", "VAR_POISSON", "VAR_RNOISE", "VAR_FLAT"];

/// One match step in the report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepFit {
    /// "wide" or "strict".
    pub step: String,
    pub geometry: String,
    pub shift_arcsec: [f64; 2],
    pub rotation_deg: f64,
    pub n_matches: usize,
    pub rms_arcsec: f64,
    pub shift_err_arcsec: [f64; 2],
    pub rotation_err_deg: f64,
    /// "" on success, else why it failed.
    pub failure: String,
}

/// `astrometry/astrometry.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AstrometryFile {
    pub band: String,
    pub catalog: String,
    /// "solved" or "from <file>".
    pub method: String,
    pub n_image_sources: usize,
    pub n_catalog_sources: usize,
    pub steps: Vec<StepFit>,
    /// The correction applied (absent when the WCS was kept).
    pub correction: Option<SkyCorrection>,
    pub tweakback: Vec<String>,
    pub warnings: Vec<String>,
}

fn step_fit(
    step: &str,
    geometry: FitGeometry,
    r: &Result<MatchResult, crate::kernels::matching::MatchError>,
) -> StepFit {
    let mut s = StepFit {
        step: step.into(),
        geometry: if geometry == FitGeometry::Shift { "shift" } else { "rshift" }.into(),
        shift_arcsec: [0.0, 0.0],
        rotation_deg: 0.0,
        n_matches: 0,
        rms_arcsec: 0.0,
        shift_err_arcsec: [0.0, 0.0],
        rotation_err_deg: 0.0,
        failure: String::new(),
    };
    match r {
        Ok(m) => {
            s.shift_arcsec = m.transform.shift_arcsec;
            s.rotation_deg = m.transform.rotation_deg;
            s.n_matches = m.n_matches;
            s.rms_arcsec = m.rms_arcsec;
            s.shift_err_arcsec = m.shift_err_arcsec;
            s.rotation_err_deg = m.rotation_err_deg;
        }
        Err(e) => s.failure = e.to_string(),
    }
    s
}

/// Whether the stage has something to do: a catalogue, or a reference band's solution to apply.
pub fn wanted(cfg: &Config, band: &str, catalog: Option<&Path>) -> bool {
    let a = &cfg.astrometry;
    catalog.is_some() || (a.solution_file.is_some() && a.reference_band.as_deref().is_some_and(|b| b != band))
}

/// Run the stage after `assemble` wrote `mosaic`. `metas` are the (aligned) exposures of the plan.
/// Returns the report, the same on every rank.
///
/// # Errors
/// Unreadable mosaic, unwritable products (all ranks return it). A catalogue that cannot be read
/// or matched is a warning, not an error.
#[allow(clippy::too_many_arguments)]
pub fn run(
    comm: &dyn Comm,
    plan: &Plan,
    metas: &[CalMeta],
    flags: &OutlierFlags,
    cfg: &Config,
    mosaic: &Path,
    catalog: Option<&Path>,
) -> crate::Result<AstrometryFile> {
    let dir = cfg.run.output_dir.join(STAGE);
    let report: AstrometryFile = comm.on_root_then_broadcast(0, || -> Result<AstrometryFile, String> {
        crate::io::make_dir(&dir).map_err(|e| e.to_string())?;
        let a = &cfg.astrometry;
        let from_file = match (&a.reference_band, &a.solution_file) {
            (Some(rb), Some(f)) if *rb != plan.band => Some(f.clone()),
            _ => None,
        };
        let mut r = match from_file {
            Some(f) => {
                let mut r: AstrometryFile =
                    crate::io::json::read_json(&f).map_err(|e| format!("astrometry.solution_file: {e}"))?;
                if r.correction.is_none() {
                    r.warnings = vec![format!("{} holds no solution ({}): the WCS is kept", f.display(), r.band)];
                } else {
                    r.warnings = vec![];
                }
                r.method = format!("from {} ({})", f.display(), r.band);
                r.band = plan.band.clone();
                r.tweakback = vec![];
                r
            }
            None => match catalog {
                Some(c) => solve(plan, cfg, mosaic, c, &dir).map_err(|e| format!("{e:#}"))?,
                None => return Err("no reference catalogue (--catalog or astrometry.catalog)".to_string()),
            },
        };
        if let Some(c) = &r.correction {
            let wcs = c.apply(&plan.grid.wcs());
            let history = vec![format!(
                "tessera astrometry: shift ({:.4}, {:.4}) arcsec E,N, rotation {:.6} deg against {}",
                c.shift_arcsec[0], c.shift_arcsec[1], c.rotation_deg, r.catalog
            )];
            copy_with_wcs(mosaic, mosaic, &WCS_EXTENSIONS, &wcs.to_cards(), &history).map_err(|e| e.to_string())?;
            r.tweakback = metas.iter().map(|m| tweakback_name(&dir, m).to_string_lossy().into_owned()).collect();
        }
        Ok(r)
    })?;
    // tweakback: every exposure owner writes its own files
    if let Some(c) = &report.correction {
        let history = vec![format!(
            "tessera astrometry tweakback: shift ({:.4}, {:.4}) arcsec E,N, rotation {:.6} deg about ({:.8}, {:.8})",
            c.shift_arcsec[0], c.shift_arcsec[1], c.rotation_deg, c.tangent_deg[0], c.tangent_deg[1]
        )];
        let mut errors = vec![];
        for e in plan.exposures_of(comm.rank()) {
            let m = &metas[e.index];
            let wcs = c.apply(&m.wcs);
            // the outlier flags in DQ, as the JWST pipeline's outlier step leaves them
            let flagged = flags.per_exposure.get(e.index).map_or(&[][..], Vec::as_slice);
            let bits = crate::kernels::dq::DO_NOT_USE | crate::kernels::dq::OUTLIER;
            let dst = tweakback_name(&dir, m);
            if let Err(err) = copy_with_wcs_and_flags(&m.path, &dst, &["SCI"], &wcs.to_cards(), &history, flagged, bits)
            {
                errors.push(err.to_string());
            }
        }
        let all = comm.gather_values(0, &errors)?;
        comm.on_root_then_broadcast(0, || -> Result<(), String> {
            let all: Vec<String> = all.expect("root").into_iter().flatten().collect();
            if all.is_empty() {
                Ok(())
            } else {
                Err(format!("tweakback: {}", all.join("; ")))
            }
        })?;
    }
    if comm.rank() == 0 {
        for w in &report.warnings {
            tracing::warn!("[astrometry] {w}");
        }
        crate::io::json::write_json(&dir.join("astrometry.json"), &report)?;
    }
    Ok(report)
}

/// `<dir>/<cal name without _cal.fits>_tweakback.fits`.
pub fn tweakback_name(dir: &Path, m: &CalMeta) -> PathBuf {
    let name = m.file_name();
    let stem = name.strip_suffix("_cal.fits").or_else(|| name.strip_suffix(".fits")).unwrap_or(&name);
    dir.join(format!("{stem}_tweakback.fits"))
}

/// Rank 0: detect, read the catalogue, match in two steps, write the matched-source table.
fn solve(plan: &Plan, cfg: &Config, mosaic: &Path, catalog: &Path, dir: &Path) -> crate::Result<AstrometryFile> {
    let a = &cfg.astrometry;
    let grid = plan.grid.wcs();
    let tangent = plan.grid.crval_deg;
    let mut r = AstrometryFile {
        band: plan.band.clone(),
        catalog: catalog.display().to_string(),
        method: "solved".into(),
        n_image_sources: 0,
        n_catalog_sources: 0,
        steps: vec![],
        correction: None,
        tweakback: vec![],
        warnings: vec![],
    };
    let sci = read_ext_f32(mosaic, "SCI")?;
    let wht = read_ext_f32(mosaic, "WHT")?;
    let mask = ndarray::Zip::from(&sci).and(&wht).map_collect(|s, w| !s.is_finite() || w.is_nan() || *w <= 0.0);
    let fwhm_px = fwhm_arcsec(a.fwhm_arcsec, &plan.band, plan.instrument) / plan.grid.pixscale_arcsec;
    let (px, err_px) = match detect_with_errors(sci.view(), mask.view(), fwhm_px, a.threshold_sigma, a.brightest) {
        Ok(p) => p,
        Err(e) => {
            r.warnings.push(format!("no sources in {}: {e}; the WCS is kept", mosaic.display()));
            return Ok(r);
        }
    };
    let img = project(&grid, &px, tangent);
    r.n_image_sources = img.len();
    let refs_sky = match crate::io::catalog::read_radec(catalog) {
        Ok(c) => c,
        Err(e) => {
            r.warnings.push(format!("catalogue not read ({e}); the WCS is kept"));
            return Ok(r);
        }
    };
    let refs: Vec<[f64; 2]> = refs_sky
        .iter()
        .map(|p| {
            let (x, y) = crate::geom::sky_to_tangent_arcsec((tangent[0], tangent[1]), p[0], p[1]);
            [x, y]
        })
        .filter(|p| p[0].is_finite() && p[1].is_finite())
        .collect();
    // only the catalogue near the mosaic matters (the match statistics use the density)
    let [nx, ny] = [plan.grid.nx as f64, plan.grid.ny as f64];
    let m = a.search_radius_arcsec / plan.grid.pixscale_arcsec;
    let near: Vec<[f64; 2]> = refs
        .iter()
        .copied()
        .filter(|p| {
            let (ra, dec) = tangent_arcsec_to_sky((tangent[0], tangent[1]), p[0], p[1]);
            grid.sky_to_pixel(ra, dec).is_ok_and(|(x, y)| {
                x > -m && y > -m && x < nx + m && y < ny + m && {
                    let (i, j) = (x.round(), y.round());
                    // inside the covered area (weight > 0 at the nearest pixel, when on the grid)
                    i < 0.0 || j < 0.0 || i >= nx || j >= ny || !mask[[j as usize, i as usize]]
                }
            })
        })
        .collect();
    r.n_catalog_sources = near.len();
    if near.is_empty() {
        r.warnings.push(format!(
            "none of the {} sources of {} falls on the mosaic: the catalogue does not overlap the field; the WCS is kept",
            refs_sky.len(),
            catalog.display()
        ));
        return Ok(r);
    }
    let wide = MatchParams {
        geometry: FitGeometry::Shift,
        use_histogram: true,
        search_radius_arcsec: a.search_radius_arcsec,
        bin_arcsec: None,
        initial: Transform::identity([0.0, 0.0]),
        tolerance_arcsec: a.wide_tolerance_arcsec,
        min_matches: a.min_matches,
        ..MatchParams::default()
    };
    let w = match_catalogs(&img, &near, &wide);
    r.steps.push(step_fit("wide", FitGeometry::Shift, &w));
    let Ok(w) = w else {
        r.warnings.push(format!(
            "wide match of {} mosaic sources against {} catalogue sources failed: {}; the WCS is kept",
            img.len(),
            near.len(),
            r.steps[0].failure
        ));
        return Ok(r);
    };
    let strict = MatchParams {
        geometry: FitGeometry::RShift,
        use_histogram: false,
        search_radius_arcsec: a.search_radius_arcsec,
        initial: w.transform,
        tolerance_arcsec: a.strict_tolerance_arcsec,
        min_matches: a.min_matches,
        ..MatchParams::default()
    };
    // the strict fit weights every source by its centroid error (faint MIRI sources have several
    // times the centroid noise of bright ones) combined with the catalogue's noise
    let err: Vec<f64> = err_px.iter().map(|e| e * plan.grid.pixscale_arcsec).collect();
    let s = match_catalogs_weighted(&img, Some(&err), &near, &strict);
    r.steps.push(step_fit("strict", FitGeometry::RShift, &s));
    let Ok(s) = s else {
        r.warnings.push(format!("strict match failed: {}; the WCS is kept", r.steps[1].failure));
        return Ok(r);
    };
    let t = s.transform;
    let corr = SkyCorrection {
        tangent_deg: tangent,
        shift_arcsec: t.shift_arcsec,
        rotation_deg: t.rotation_deg,
        centre_arcsec: t.centre_arcsec,
    };
    // matched-source table
    let mut csv = String::from(
        "ref_ra_deg,ref_dec_deg,mosaic_x,mosaic_y,before_ra_deg,before_dec_deg,after_ra_deg,after_dec_deg,\
         before_dxi_mas,before_deta_mas,after_dxi_mas,after_deta_mas\n",
    );
    let sky = |p: [f64; 2]| tangent_arcsec_to_sky((tangent[0], tangent[1]), p[0], p[1]);
    for &(i, k) in &s.pairs {
        let (p, q) = (img[i], near[k]);
        let c = t.apply(p);
        let (rr, rd) = sky(q);
        let (br, bd) = sky(p);
        let (ar, ad) = sky(c);
        csv.push_str(&format!(
            "{rr:.10},{rd:.10},{:.4},{:.4},{br:.10},{bd:.10},{ar:.10},{ad:.10},{:.3},{:.3},{:.3},{:.3}\n",
            px[i][0],
            px[i][1],
            1e3 * (p[0] - q[0]),
            1e3 * (p[1] - q[1]),
            1e3 * (c[0] - q[0]),
            1e3 * (c[1] - q[1])
        ));
    }
    crate::io::json::write_text(&dir.join("matches.csv"), &csv)?;
    residual_png(&dir.join(format!("{}_residuals.png", plan.band)), plan, catalog, &img, &near, &s)?;
    r.correction = Some(corr);
    Ok(r)
}

/// The residual scatter of the matched sources before and after the correction (as the PHANGS-JWST
/// paper's Figures 12 and 13), mas.
fn residual_png(
    path: &Path,
    plan: &Plan,
    catalog: &Path,
    img: &[[f64; 2]],
    refs: &[[f64; 2]],
    fit: &MatchResult,
) -> Result<(), crate::io::IoError> {
    use crate::io::plot::{charts, Chart, Series, Style};
    let series = |label: &str, f: &dyn Fn([f64; 2]) -> [f64; 2]| {
        let d: Vec<[f64; 2]> = fit
            .pairs
            .iter()
            .map(|&(i, k)| {
                let p = f(img[i]);
                [1e3 * (p[0] - refs[k][0]), 1e3 * (p[1] - refs[k][1])]
            })
            .collect();
        let rms = (d.iter().map(|v| v[0] * v[0] + v[1] * v[1]).sum::<f64>() / d.len().max(1) as f64).sqrt();
        Series {
            label: format!("{label}: {} sources, rms {rms:.1} mas", d.len()),
            x: d.iter().map(|v| v[0]).collect(),
            y: d.iter().map(|v| v[1]).collect(),
        }
    };
    let chart = |title: &str, s: Series| Chart {
        title: title.into(),
        xlabel: "dRA cos(Dec) [mas]".into(),
        ylabel: "dDec [mas]".into(),
        style: Style::Points,
        series: vec![s],
    };
    let name = catalog.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    charts(
        path,
        &format!("{} mosaic minus {name}", plan.band),
        &[
            chart("before", series("before", &|p| p)),
            chart("after shift + rotation", series("after", &|p| fit.transform.apply(p))),
        ],
    )
}

/// The `astrometry` stage for the runner: the mosaic against the reference catalogue (or the
/// reference band's solution), the `-o` mosaic's WCS corrected and tweakback files written.
///
/// # Errors
/// No `-o` mosaic known, or as [`run`].
pub(crate) fn stage(ctx: &super::runner::Ctx, b: &super::runner::Band) -> crate::Result<super::runner::Written> {
    let (comm, cfg) = (ctx.comm, ctx.cfg);
    let Some(output) = ctx.output else {
        crate::bail!("astrometry needs the mosaic: give -o MOSAIC.fits");
    };
    let t = std::time::Instant::now();
    let r = run(comm, &b.plan, &b.metas, &b.flags, cfg, output, ctx.catalog)?;
    if comm.rank() == 0 {
        match &r.correction {
            Some(c) => tracing::info!(
                "[astrometry] shift ({:.1}, {:.1}) mas E,N, rotation {:.5} deg ({}, {} matches); mosaic WCS \
                 updated, {} tweakback files in {} ({:.1} s)",
                1e3 * c.shift_arcsec[0],
                1e3 * c.shift_arcsec[1],
                c.rotation_deg,
                r.method,
                r.steps.last().map_or(0, |s| s.n_matches),
                r.tweakback.len(),
                cfg.run.output_dir.join(STAGE).display(),
                t.elapsed().as_secs_f64()
            ),
            None => tracing::warn!("[astrometry] no solution: the mosaic and exposure WCSs are unchanged"),
        }
    }
    Ok(super::runner::Written { rewrote_mosaic: r.correction.is_some(), ..Default::default() })
}

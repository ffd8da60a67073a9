//! Stage `align`: relative astrometry between visits (SPEC stage 4; pjpipe get_wcs_adjust and
//! apply_wcs_adjust, with tweakreg's detection, histogram search and clipped fit built in Rust).
//!
//! All exposures and detectors of a visit share the guide star, so they move rigidly: one shift per
//! visit, in arcsec on the sky (east, north, in the tangent plane of the output grid), solved in the
//! reference band (F300M for NIRCam, F1000W for MIRI; `[align] reference_band`) and applied to every
//! band of the same visit (`[align] shifts_file` names the reference band's `align.json`).
//!
//! By step:
//! 1. **Detection**, by the exposure's owner: point sources in SCI (DQ-masked) with
//!    `kernels::sources`, projected through the header WCS onto the grid's tangent plane.
//! 2. **Matching**, on rank 0: the sources of each visit are merged (a star seen in several
//!    dithers becomes one position, their mean); every pair of visits is matched with
//!    `kernels::matching` (histogram shift search, clipped shift fit). A pair that fails says why in
//!    the report and is left out.
//! 3. **Solve**, on rank 0: the visit shifts `c` minimise `sum w_ab |c_b - c_a - d_ab|^2` over the
//!    matched pairs (`d_ab` the measured offset, `w_ab` its inverse variance), with the mean shift of
//!    each connected group of visits fixed at zero (the gauge: absolute positions are the
//!    `astrometry` stage's job). A visit with no matched pair keeps its WCS, with a warning.
//! 4. The shifts are broadcast; every rank applies them to the exposure WCSs (`geom::SkyCorrection`)
//!    and the caller re-plans with the corrected headers, so that every later stage (level, outlier,
//!    drizzle, through `pieces`) sees only the aligned WCS.
//!
//! Product: `<output_dir>/align/align.json` (shifts per visit, pair fits, per-exposure source counts
//! and CRVALs before and after, warnings).

use super::simulate::survey::psf_fwhm_arcsec;
use crate::config::{Config, Instrument};
use crate::dist::{Comm, CommExt};
use crate::geom::{sky_to_tangent_arcsec, SkyCorrection, TanSip};
use crate::io::fits::{read_region_dq, read_region_f32};
use crate::kernels::matching::{match_catalogs, FitGeometry, MatchParams, Transform};
use crate::kernels::sources::{par_find_sources, FindParams};
use crate::plan::{CalMeta, Plan};
use ndarray::{Array2, ArrayView2};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Stage name: CLI, TOML section, output folder.
pub const STAGE: &str = "align";

/// One exposure's sources on the tangent plane (arcsec), or why there are none.
type Detected = Result<Vec<[f64; 2]>, String>;

/// The shift of one visit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VisitShift {
    /// Visit key (`jw09999001001`).
    pub visit: String,
    /// Correction added to every position of the visit, `[east, north]`, arcsec.
    pub shift_arcsec: [f64; 2],
    /// Exposures (files) of the visit in this band.
    pub n_exposures: usize,
    /// Point sources of the visit after merging the dithers.
    pub n_sources: usize,
    /// Visit pairs with a successful match that involve this visit.
    pub n_pairs: usize,
    /// True if the shift was measured (false: no matched pair, WCS kept).
    pub solved: bool,
}

/// The match of two visits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PairFit {
    pub visit_a: String,
    pub visit_b: String,
    /// Measured offset `position in a - position in b`, arcsec (zero when failed).
    pub offset_arcsec: [f64; 2],
    pub n_matches: usize,
    /// 2-D rms of the matched positions after the fit, arcsec.
    pub rms_arcsec: f64,
    /// Departure of the solved shifts from this pair's offset, arcsec.
    pub residual_arcsec: [f64; 2],
    /// "" on success, else why the match failed.
    pub failure: String,
}

/// One exposure in the report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExposureShift {
    pub file: String,
    pub visit: String,
    /// Point sources detected (after selection); `None` if the exposure could not be read.
    pub n_sources: Option<usize>,
    pub crval_before_deg: [f64; 2],
    pub crval_after_deg: [f64; 2],
}

/// `align/align.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlignFile {
    pub band: String,
    pub reference_band: String,
    /// "solved" or "from <file>".
    pub method: String,
    /// Tangent point of the frame the shifts are expressed in, deg.
    pub tangent_deg: [f64; 2],
    pub visits: Vec<VisitShift>,
    pub pairs: Vec<PairFit>,
    pub exposures: Vec<ExposureShift>,
    pub warnings: Vec<String>,
}

impl AlignFile {
    /// The correction of `visit` (identity when the visit is not listed).
    pub fn correction(&self, visit: &str) -> SkyCorrection {
        let s = self.visits.iter().find(|v| v.visit == visit).map_or([0.0, 0.0], |v| v.shift_arcsec);
        SkyCorrection::shift(self.tangent_deg, s)
    }
}

/// The default reference band of an instrument (PHANGS Cycle 1: F300M for NIRCam, F1000W for MIRI).
pub fn default_reference_band(instrument: Instrument) -> &'static str {
    match instrument {
        Instrument::Miri => "F1000W",
        _ => "F300M",
    }
}

/// PSF FWHM in arcsec for detection: the configured value, else the band's (PHANGS table).
pub fn fwhm_arcsec(configured: Option<f64>, band: &str, instrument: Instrument) -> f64 {
    configured.unwrap_or_else(|| psf_fwhm_arcsec(band, instrument))
}

/// Point sources of an image (`[y, x]`, bad pixels `true` in `mask`), positions 0-based pixels.
pub(crate) fn detect(
    image: ArrayView2<f32>,
    mask: ArrayView2<bool>,
    fwhm_px: f64,
    threshold_sigma: f64,
    brightest: usize,
) -> Result<Vec<[f64; 2]>, String> {
    let mut p = FindParams::new(fwhm_px.clamp(0.5, 50.0));
    p.threshold_sigma = threshold_sigma;
    p.brightest = Some(brightest);
    let list = par_find_sources(image, Some(mask), &p).map_err(|e| e.to_string())?;
    Ok(list.sources.iter().map(|s| [s.x, s.y]).collect())
}

/// [`detect`] with each source's relative centroid error, pixels: `FWHM / S/N` (the S/N of the
/// fitted amplitude). Its scale is fitted to the match residuals by the caller
/// (`kernels::matching::match_catalogs_weighted`), so only its variation between sources matters.
pub(crate) fn detect_with_errors(
    image: ArrayView2<f32>,
    mask: ArrayView2<bool>,
    fwhm_px: f64,
    threshold_sigma: f64,
    brightest: usize,
) -> Result<(Vec<[f64; 2]>, Vec<f64>), String> {
    let fwhm_px = fwhm_px.clamp(0.5, 50.0);
    let mut p = FindParams::new(fwhm_px);
    p.threshold_sigma = threshold_sigma;
    p.brightest = Some(brightest);
    let list = par_find_sources(image, Some(mask), &p).map_err(|e| e.to_string())?;
    let pos = list.sources.iter().map(|s| [s.x, s.y]).collect();
    let err = list.sources.iter().map(|s| fwhm_px / s.snr.max(1e-3)).collect();
    Ok((pos, err))
}

/// Detect the point sources of one exposure and project them onto the tangent plane at `tangent`.
fn exposure_sources(
    meta: &CalMeta,
    tangent: [f64; 2],
    fwhm_arcsec: f64,
    cfg: &Config,
) -> Result<Vec<[f64; 2]>, String> {
    let [ny, nx] = meta.shape;
    let sci = read_region_f32(&meta.path, "SCI", 0..ny, 0..nx).map_err(|e| e.to_string())?;
    let dq = read_region_dq(&meta.path, 0..ny, 0..nx).map_err(|e| e.to_string())?;
    let mask: Array2<bool> = dq.mapv(|d| d & super::pieces::BAD_BITS != 0);
    let fwhm_px = fwhm_arcsec / meta.wcs.pixel_scale_arcsec();
    let a = &cfg.align;
    let px = detect(sci.view(), mask.view(), fwhm_px, a.threshold_sigma, a.brightest)?;
    Ok(project(&meta.wcs, &px, tangent))
}

/// Pixel positions through `wcs` onto the tangent plane at `tangent`, arcsec `[east, north]`.
pub(crate) fn project(wcs: &TanSip, px: &[[f64; 2]], tangent: [f64; 2]) -> Vec<[f64; 2]> {
    px.iter()
        .map(|p| {
            let (ra, dec) = wcs.pixel_to_sky(p[0], p[1]);
            let (xi, eta) = sky_to_tangent_arcsec((tangent[0], tangent[1]), ra, dec);
            [xi, eta]
        })
        .collect()
}

/// Merge positions closer than `radius` (greedy in input order; a cluster's position is the mean of
/// its members), so a star seen in several dithers of a visit counts once.
fn merge(points: &[[f64; 2]], radius: f64) -> Vec<[f64; 2]> {
    let mut sums: Vec<([f64; 2], usize)> = vec![];
    let cell = radius.max(1e-6);
    let mut grid: BTreeMap<(i64, i64), Vec<usize>> = BTreeMap::new();
    for p in points {
        let (gx, gy) = ((p[0] / cell).floor() as i64, (p[1] / cell).floor() as i64);
        let mut best: Option<(f64, usize)> = None;
        for dx in -1..=1 {
            for dy in -1..=1 {
                for &k in grid.get(&(gx + dx, gy + dy)).into_iter().flatten() {
                    let (s, n) = sums[k];
                    let c = [s[0] / n as f64, s[1] / n as f64];
                    let d = (c[0] - p[0]).hypot(c[1] - p[1]);
                    if d <= radius && best.is_none_or(|(bd, bk)| d < bd || (d == bd && k < bk)) {
                        best = Some((d, k));
                    }
                }
            }
        }
        match best {
            Some((_, k)) => {
                sums[k].0[0] += p[0];
                sums[k].0[1] += p[1];
                sums[k].1 += 1;
            }
            None => {
                grid.entry((gx, gy)).or_default().push(sums.len());
                sums.push((*p, 1));
            }
        }
    }
    sums.iter().map(|(s, n)| [s[0] / *n as f64, s[1] / *n as f64]).collect()
}

/// Solve `min sum w |c_b - c_a - d|^2` per axis with the mean of each connected group at zero.
/// Returns the shifts and whether each visit is connected to at least one other.
fn solve_shifts(n: usize, pairs: &[(usize, usize, [f64; 2], f64)]) -> (Vec<[f64; 2]>, Vec<usize>) {
    // connected components (union-find, smallest index as the root)
    let mut parent: Vec<usize> = (0..n).collect();
    fn find(p: &mut [usize], i: usize) -> usize {
        let mut r = i;
        while p[r] != r {
            r = p[r];
        }
        r
    }
    for &(a, b, _, _) in pairs {
        let (ra, rb) = (find(&mut parent, a), find(&mut parent, b));
        if ra != rb {
            let (lo, hi) = (ra.min(rb), ra.max(rb));
            parent[hi] = lo;
        }
    }
    let comp: Vec<usize> = (0..n).map(|i| find(&mut parent, i)).collect();
    let mut shifts = vec![[0.0; 2]; n];
    let mut roots: Vec<usize> = comp.clone();
    roots.sort_unstable();
    roots.dedup();
    for r in roots {
        let members: Vec<usize> = (0..n).filter(|&i| comp[i] == r).collect();
        let m = members.len();
        if m < 2 {
            continue;
        }
        let pos: BTreeMap<usize, usize> = members.iter().enumerate().map(|(k, &i)| (i, k)).collect();
        for axis in 0..2 {
            // (L + J) c = b: the Laplacian plus the all-ones matrix fixes the mean at zero
            let mut a = vec![vec![1.0f64; m + 1]; m];
            for row in a.iter_mut() {
                row[m] = 0.0;
            }
            for &(i, j, d, w) in pairs.iter().filter(|p| comp[p.0] == r) {
                let (ki, kj) = (pos[&i], pos[&j]);
                a[ki][ki] += w;
                a[kj][kj] += w;
                a[ki][kj] -= w;
                a[kj][ki] -= w;
                a[kj][m] += w * d[axis];
                a[ki][m] -= w * d[axis];
            }
            let x = gauss_solve(a);
            for (k, &i) in members.iter().enumerate() {
                shifts[i][axis] = x[k];
            }
        }
    }
    (shifts, comp)
}

/// Gaussian elimination with partial pivoting on the augmented matrix `[A | b]`.
fn gauss_solve(mut a: Vec<Vec<f64>>) -> Vec<f64> {
    let m = a.len();
    for c in 0..m {
        let p = (c..m).max_by(|&i, &j| a[i][c].abs().total_cmp(&a[j][c].abs())).expect("non-empty");
        a.swap(c, p);
        let piv = a[c][c];
        let pivot_row = a[c].clone();
        for row in a.iter_mut().skip(c + 1) {
            let f = row[c] / piv;
            if f != 0.0 {
                for (v, p) in row.iter_mut().zip(&pivot_row).skip(c) {
                    *v -= f * p;
                }
            }
        }
    }
    let mut x = vec![0.0; m];
    for r in (0..m).rev() {
        let s: f64 = (r + 1..m).map(|k| a[r][k] * x[k]).sum();
        x[r] = (a[r][m] - s) / a[r][r];
    }
    x
}

/// Run the stage: the aligned exposure metadata (same order as `metas`) and the report, identical on
/// every rank. The report is written to `<output_dir>/align/align.json` by rank 0.
///
/// # Errors
/// An unreadable `[align] shifts_file`, an unwritable report (all ranks return it).
pub fn run(comm: &dyn Comm, plan: &Plan, metas: &[CalMeta], cfg: &Config) -> crate::Result<(Vec<CalMeta>, AlignFile)> {
    let band = plan.band.clone();
    let reference_band =
        cfg.align.reference_band.clone().unwrap_or_else(|| default_reference_band(plan.instrument).to_string());
    let tangent = plan.grid.crval_deg;
    let report: AlignFile = if band != reference_band && cfg.align.shifts_file.is_some() {
        let path = cfg.align.shifts_file.clone().expect("checked");
        comm.on_root_then_broadcast(0, || -> Result<AlignFile, String> {
            let f: AlignFile = crate::io::json::read_json(&path).map_err(|e| format!("align.shifts_file: {e}"))?;
            Ok(from_reference(plan, metas, &f, &band, &path))
        })?
    } else {
        let mut notes = vec![];
        if band != reference_band {
            notes.push(format!(
                "band {band} is not the reference band {reference_band} and align.shifts_file is not set: \
                 the visit shifts are solved in {band}"
            ));
        }
        let fwhm = fwhm_arcsec(cfg.align.fwhm_arcsec, &band, plan.instrument);
        let mine: Vec<(usize, Detected)> = plan
            .exposures_of(comm.rank())
            .map(|e| (e.index, exposure_sources(&metas[e.index], tangent, fwhm, cfg)))
            .collect();
        let gathered = comm.gather_values(0, &mine)?;
        comm.on_root_then_broadcast(0, || -> Result<AlignFile, String> {
            let mut per_exp: Vec<Option<Detected>> = vec![None; metas.len()];
            for (i, r) in gathered.expect("root gathers").into_iter().flatten() {
                per_exp[i] = Some(r);
            }
            Ok(solve(plan, metas, cfg, tangent, fwhm, &reference_band, per_exp, notes))
        })?
    };
    let aligned = apply(plan, metas, &report);
    if comm.rank() == 0 {
        for w in &report.warnings {
            tracing::warn!("[align] {w}");
        }
        let path = cfg.run.output_dir.join(STAGE).join("align.json");
        crate::io::json::write_json(&path, &report)?;
    }
    Ok((aligned, report))
}

/// The report for shifts taken from the reference band's file.
fn from_reference(plan: &Plan, metas: &[CalMeta], f: &AlignFile, band: &str, path: &std::path::Path) -> AlignFile {
    let mut warnings = vec![];
    let mut visits: BTreeMap<String, VisitShift> = BTreeMap::new();
    for e in &plan.exposures {
        let v = visits.entry(e.visit.clone()).or_insert_with(|| {
            let found = f.visits.iter().find(|x| x.visit == e.visit && x.solved);
            if found.is_none() {
                warnings.push(format!(
                    "visit {} has no solved shift in {} ({}): its WCS is kept",
                    e.visit,
                    path.display(),
                    f.band
                ));
            }
            VisitShift {
                visit: e.visit.clone(),
                shift_arcsec: found.map_or([0.0, 0.0], |x| x.shift_arcsec),
                n_exposures: 0,
                n_sources: 0,
                n_pairs: 0,
                solved: found.is_some(),
            }
        });
        v.n_exposures += 1;
    }
    let mut out = AlignFile {
        band: band.to_string(),
        reference_band: f.band.clone(),
        method: format!("from {}", path.display()),
        tangent_deg: f.tangent_deg,
        visits: visits.into_values().collect(),
        pairs: vec![],
        exposures: vec![],
        warnings,
    };
    out.exposures = exposure_rows(plan, metas, &out, &vec![None; metas.len()]);
    out
}

fn exposure_rows(plan: &Plan, metas: &[CalMeta], f: &AlignFile, counts: &[Option<usize>]) -> Vec<ExposureShift> {
    plan.exposures
        .iter()
        .zip(metas)
        .zip(counts)
        .map(|((e, m), n)| ExposureShift {
            file: m.file_name(),
            visit: e.visit.clone(),
            n_sources: *n,
            crval_before_deg: m.wcs.crval_deg,
            crval_after_deg: f.correction(&e.visit).apply(&m.wcs).crval_deg,
        })
        .collect()
}

/// Rank 0: merge per visit, match visit pairs, solve.
#[allow(clippy::too_many_arguments)]
fn solve(
    plan: &Plan,
    metas: &[CalMeta],
    cfg: &Config,
    tangent: [f64; 2],
    fwhm: f64,
    reference_band: &str,
    per_exp: Vec<Option<Detected>>,
    notes: Vec<String>,
) -> AlignFile {
    let mut warnings = notes;
    let mut counts = vec![None; metas.len()];
    let mut by_visit: BTreeMap<String, (Vec<[f64; 2]>, usize)> = BTreeMap::new();
    for (i, (e, r)) in plan.exposures.iter().zip(per_exp).enumerate() {
        let entry = by_visit.entry(e.visit.clone()).or_default();
        entry.1 += 1;
        match r {
            Some(Ok(p)) => {
                counts[i] = Some(p.len());
                entry.0.extend(p);
            }
            Some(Err(msg)) => warnings.push(format!("{}: no sources ({msg})", e.path.display())),
            None => warnings.push(format!("{}: no detection result", e.path.display())),
        }
    }
    let names: Vec<String> = by_visit.keys().cloned().collect();
    let merged: Vec<Vec<[f64; 2]>> = by_visit.values().map(|(p, _)| merge(p, 0.5 * fwhm)).collect();
    let a = &cfg.align;
    let params = MatchParams {
        geometry: FitGeometry::Shift,
        use_histogram: true,
        search_radius_arcsec: a.search_radius_arcsec,
        bin_arcsec: None,
        initial: Transform::identity([0.0, 0.0]),
        tolerance_arcsec: a.tolerance_arcsec,
        min_matches: a.min_matches,
        ..MatchParams::default()
    };
    let mut pairs = vec![];
    let mut fits = vec![];
    for i in 0..names.len() {
        for j in i + 1..names.len() {
            let r = match_catalogs(&merged[j], &merged[i], &params);
            let mut pf = PairFit {
                visit_a: names[i].clone(),
                visit_b: names[j].clone(),
                offset_arcsec: [0.0, 0.0],
                n_matches: 0,
                rms_arcsec: 0.0,
                residual_arcsec: [0.0, 0.0],
                failure: String::new(),
            };
            match r {
                Ok(m) => {
                    let d = m.transform.shift_arcsec;
                    let e2 = m.shift_err_arcsec[0].powi(2) + m.shift_err_arcsec[1].powi(2);
                    fits.push((i, j, d, 1.0 / e2.max(1e-10)));
                    pf.offset_arcsec = d;
                    pf.n_matches = m.n_matches;
                    pf.rms_arcsec = m.rms_arcsec;
                }
                Err(e) => pf.failure = e.to_string(),
            }
            pairs.push(pf);
        }
    }
    let (shifts, _) = solve_shifts(names.len(), &fits);
    let mut n_pairs = vec![0usize; names.len()];
    for &(i, j, _, _) in &fits {
        n_pairs[i] += 1;
        n_pairs[j] += 1;
    }
    for (pf, k) in pairs.iter_mut().filter(|p| p.failure.is_empty()).zip(0..) {
        let (i, j, d, _) = fits[k];
        pf.residual_arcsec = [shifts[j][0] - shifts[i][0] - d[0], shifts[j][1] - shifts[i][1] - d[1]];
    }
    let visits: Vec<VisitShift> = names
        .iter()
        .enumerate()
        .map(|(k, v)| VisitShift {
            visit: v.clone(),
            shift_arcsec: shifts[k],
            n_exposures: by_visit[v].1,
            n_sources: merged[k].len(),
            n_pairs: n_pairs[k],
            solved: n_pairs[k] > 0,
        })
        .collect();
    if names.len() < 2 {
        warnings.push("a single visit: nothing to align relative to, the WCS is kept".into());
    } else {
        for v in visits.iter().filter(|v| !v.solved) {
            let why: Vec<String> = pairs
                .iter()
                .filter(|p| (p.visit_a == v.visit || p.visit_b == v.visit) && !p.failure.contains("do not overlap"))
                .map(|p| format!("with {}: {}", if p.visit_a == v.visit { &p.visit_b } else { &p.visit_a }, p.failure))
                .collect();
            warnings.push(format!(
                "visit {} ({} point sources): no match with any other visit, its WCS is kept{}",
                v.visit,
                v.n_sources,
                if why.is_empty() { String::new() } else { format!(" ({})", why.join("; ")) }
            ));
        }
    }
    let mut out = AlignFile {
        band: plan.band.clone(),
        reference_band: reference_band.to_string(),
        method: "solved".into(),
        tangent_deg: tangent,
        visits,
        pairs,
        exposures: vec![],
        warnings,
    };
    out.exposures = exposure_rows(plan, metas, &out, &counts);
    out
}

/// The exposures' metadata with the visit shifts of `f` applied to their WCSs (`metas` in the order
/// of `plan`'s exposure table, whose visits name the shifts).
pub fn apply(plan: &Plan, metas: &[CalMeta], f: &AlignFile) -> Vec<CalMeta> {
    metas
        .iter()
        .zip(&plan.exposures)
        .map(|(m, e)| CalMeta { wcs: f.correction(&e.visit).apply(&m.wcs), ..m.clone() })
        .collect()
}

/// The `align` stage for the runner: the shifts in `align/align.json`, and the plan rebuilt from the
/// aligned WCSs in `align/plan.json` (later stages rebuild it themselves from the shifts).
///
/// # Errors
/// As [`run`], or a plan error after alignment.
pub(crate) fn stage(ctx: &super::runner::Ctx, b: &super::runner::Band) -> crate::Result<super::runner::Written> {
    let (comm, cfg) = (ctx.comm, ctx.cfg);
    let t = std::time::Instant::now();
    let (m, report) = run(comm, &b.plan, &b.metas, cfg)?;
    let p = crate::plan::build_plan(&m, &cfg.plan, cfg.run.mem_budget_mb, comm.size())
        .map_err(|e| crate::err!("plan after align: {e}"))?;
    if comm.rank() == 0 {
        let solved = report.visits.iter().filter(|v| v.solved).count();
        let rms = (report.visits.iter().map(|v| v.shift_arcsec[0].powi(2) + v.shift_arcsec[1].powi(2)).sum::<f64>()
            / report.visits.len().max(1) as f64)
            .sqrt();
        super::plan::write_plan(&cfg.run.output_dir.join(STAGE).join("plan.json"), &p)?;
        tracing::info!(
            "[align] {solved} of {} visits aligned ({}), rms shift {:.1} mas; report in {} ({:.1} s)",
            report.visits.len(),
            report.method,
            1000.0 * rms,
            cfg.run.output_dir.join(STAGE).display(),
            t.elapsed().as_secs_f64()
        );
    }
    Ok(Default::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shifts_solve_a_chain_and_a_loop_with_zero_mean() {
        // truth c = [0.1, -0.2], [-0.05, 0.3], [0.0, 0.0], [0.2, 0.1] (mean not zero); offsets
        // d_ab = c_b - c_a, with one inconsistent loop edge of low weight
        let c = [[0.1, -0.2], [-0.05, 0.3], [0.0, 0.0], [0.2, 0.1]];
        let d = |a: usize, b: usize| [c[b][0] - c[a][0], c[b][1] - c[a][1]];
        let pairs = vec![(0, 1, d(0, 1), 100.0), (1, 2, d(1, 2), 50.0), (2, 3, d(2, 3), 80.0), (0, 3, d(0, 3), 10.0)];
        let (s, comp) = solve_shifts(4, &pairs);
        let mean = [c.iter().map(|v| v[0]).sum::<f64>() / 4.0, c.iter().map(|v| v[1]).sum::<f64>() / 4.0];
        for k in 0..4 {
            for ax in 0..2 {
                assert!((s[k][ax] - (c[k][ax] - mean[ax])).abs() < 1e-12, "{s:?}");
            }
        }
        assert!(comp.iter().all(|&r| r == 0));
        // a visit with no pair stays at zero, another group gets its own gauge
        let (s, comp) = solve_shifts(5, &[(0, 1, [0.2, 0.0], 1.0), (3, 4, [0.0, -0.4], 1.0)]);
        assert_eq!(s[2], [0.0, 0.0]);
        assert!((s[0][0] + 0.1).abs() < 1e-12 && (s[1][0] - 0.1).abs() < 1e-12);
        assert!((s[3][1] - 0.2).abs() < 1e-12 && (s[4][1] + 0.2).abs() < 1e-12);
        assert_eq!(comp, vec![0, 0, 2, 3, 3]);
    }

    #[test]
    fn merge_joins_repeats_and_keeps_neighbours() {
        let p = [[0.0, 0.0], [10.0, 0.0], [0.01, 0.0], [10.0, 0.02], [0.2, 0.0]];
        let m = merge(&p, 0.05);
        assert_eq!(m.len(), 3);
        assert!((m[0][0] - 0.005).abs() < 1e-12);
        assert!((m[1][1] - 0.01).abs() < 1e-12);
        assert_eq!(m[2], [0.2, 0.0]);
    }
}

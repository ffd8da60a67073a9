//! Stage `prep`: what must happen to the exposures before they are compared (SPEC stage prep).
//!
//! - **DQ masks**: DO_NOT_USE and NON_SCIENCE pixels are excluded by every read
//!   ([`super::pieces::BAD_BITS`]); prep reports how many there are.
//! - **MIRI Lyot coronagraph**: full-frame MIRI exposures get their Lyot box (rows 735-1023,
//!   columns 0-289) as a separate image for level matching ([`crate::plan::CalMeta::lyot_box`]); the
//!   `level` stage matches it and the two parts are recombined through one correction table.
//! - **MIRI off-source background**: for each science exposure, the off-source dither group closest
//!   in time (mid-exposure) is combined per pixel (sigma-clipped mean, `prep.off_sigma`, as the JWST
//!   pipeline's `bkg_subtract`) and subtracted. The corrected exposure is written to
//!   `<output_dir>/prep/<file>` with `DT_BGR` (days, science minus background mid-time) in its
//!   primary header, and later stages read that copy. Subarrays, and exposures whose shape no off
//!   exposure shares, pass through with a note.
//!
//! Each science exposure is handled by its owner rank; the results are all-gathered so every rank
//! ends with the same exposure table. The report is `<output_dir>/prep/prep.json`.

use crate::config::Config;
use crate::dist::Comm;
use crate::error::Context;
use crate::io::fits::{card_real, card_text, read_region_dq, read_region_f32, write_corrected_copy};
use crate::kernels::background::clipped_mean_stack;
use crate::kernels::dq;
use crate::kernels::level::ClipParams;
use crate::plan::{CalMeta, Plan};
use ndarray::Array2;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The output folder and log target.
pub const STAGE: &str = "prep";

/// What prep did to one science exposure.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrepRow {
    pub file: String,
    /// Pixels flagged DO_NOT_USE or NON_SCIENCE.
    pub masked_px: u64,
    /// The Lyot box matched separately, `[y0, y1, x0, x1]`.
    pub lyot_box: Option<[usize; 4]>,
    /// The off-source dither group subtracted and its files.
    pub off_group: Option<String>,
    pub off_files: Vec<String>,
    /// Science mid-time minus the off group's mean mid-time, days.
    pub dt_bgr_days: Option<f64>,
    /// Median of the subtracted background, MJy/sr.
    pub background_median_mjysr: Option<f64>,
    /// The corrected copy later stages read.
    pub written: Option<PathBuf>,
}

/// The stage report.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PrepReport {
    pub exposures: Vec<PrepRow>,
    pub notes: Vec<String>,
}

/// One off-source dither group.
struct OffGroup<'a> {
    key: String,
    members: Vec<&'a CalMeta>,
    /// Mean mid-exposure time, MJD.
    t_mjd: f64,
}

fn off_groups<'a>(offs: &'a [CalMeta]) -> Vec<OffGroup<'a>> {
    let mut by_key: BTreeMap<String, Vec<&CalMeta>> = BTreeMap::new();
    for m in offs {
        by_key.entry(format!("{}_{}", m.id.dither_group_key(), m.detector.to_ascii_lowercase())).or_default().push(m);
    }
    by_key
        .into_iter()
        .map(|(key, members)| {
            let t_mjd = members.iter().map(|m| m.expmid_mjd).sum::<f64>() / members.len() as f64;
            OffGroup { key, members, t_mjd }
        })
        .collect()
}

/// The off group closest in time to `m` among those of the same detector and frame shape (first
/// in key order on ties).
fn closest_group(m: &CalMeta, groups: &[OffGroup]) -> Option<usize> {
    groups
        .iter()
        .enumerate()
        .filter(|(_, g)| g.members.iter().all(|o| o.shape == m.shape && o.detector.eq_ignore_ascii_case(&m.detector)))
        .min_by(|a, b| (m.expmid_mjd - a.1.t_mjd).abs().total_cmp(&(m.expmid_mjd - b.1.t_mjd).abs()))
        .map(|(i, _)| i)
}

/// Combine the members of an off group: per-pixel clipped mean of their good pixels.
fn combine(g: &OffGroup, clip: &ClipParams) -> crate::Result<Array2<f32>> {
    let mut sci = vec![];
    let mut good = vec![];
    for m in &g.members {
        let [ny, nx] = m.shape;
        let s = read_region_f32(&m.path, "SCI", 0..ny, 0..nx)?;
        let d = read_region_dq(&m.path, 0..ny, 0..nx)?;
        good.push(d.mapv(|v| v & super::pieces::BAD_BITS == 0));
        sci.push(s);
    }
    let views: Vec<_> = sci.iter().map(|a| a.view()).collect();
    let gviews: Vec<_> = good.iter().map(|a| a.view()).collect();
    Ok(clipped_mean_stack(&views, &gviews, clip))
}

fn median_finite(a: &Array2<f32>) -> Option<f64> {
    let mut v: Vec<f32> = a.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    let k = v.len() / 2;
    Some(f64::from(*v.select_nth_unstable_by(k, f32::total_cmp).1))
}

/// Run prep on the plan's exposures; returns the exposure table later stages use (paths of the
/// corrected copies, DT_BGR) and the report (written by rank 0).
///
/// # Errors
/// A failed read or write on any rank (all ranks return an error).
pub fn run(
    comm: &dyn Comm,
    plan: &Plan,
    metas: &[CalMeta],
    offs: &[CalMeta],
    cfg: &Config,
) -> crate::Result<(Vec<CalMeta>, PrepReport)> {
    let pc = &cfg.prep;
    let dir = cfg.run.output_dir.join(STAGE);
    let miri = metas.iter().any(|m| m.instrument.trim().eq_ignore_ascii_case("MIRI"));
    let mut notes = vec![];
    let groups = if miri && pc.off_background { off_groups(offs) } else { vec![] };
    if miri && pc.off_background && groups.is_empty() {
        notes.push(format!(
            "prep: no MIRI off-source exposures of band {} found (TARGPROP containing `{}`, off/ folders, \
             prep.off_inputs): no off-source background subtracted",
            plan.band, pc.off_name
        ));
    }
    if !miri && !offs.is_empty() {
        notes.push(format!("prep: {} off-source exposures ignored: off-source backgrounds are for MIRI", offs.len()));
    }
    let clip = ClipParams { sigma: pc.off_sigma, maxiters: None };

    // per owned exposure; each rank combines an off group once, when one of its exposures needs it
    let mut combined: BTreeMap<usize, Array2<f32>> = BTreeMap::new();
    let rows = super::on_exposure_owners(
        comm,
        plan,
        STAGE,
        cfg.run.progress_interval_s,
        |_| true,
        |k| -> crate::Result<PrepRow> {
            let m = &metas[k];
            let [ny, nx] = m.shape;
            let dqa = read_region_dq(&m.path, 0..ny, 0..nx)?;
            let masked_px = dqa.iter().filter(|&&v| v & super::pieces::BAD_BITS != 0).count() as u64;
            let lyot_box = if pc.lyot_separate { m.lyot_box() } else { None };
            let mut row = PrepRow {
                file: m.file_name(),
                masked_px,
                lyot_box,
                off_group: None,
                off_files: vec![],
                dt_bgr_days: None,
                background_median_mjysr: None,
                written: None,
            };
            let full = m.subarray.trim().eq_ignore_ascii_case("FULL");
            if let (true, Some(g)) = (full, closest_group(m, &groups)) {
                if let std::collections::btree_map::Entry::Vacant(e) = combined.entry(g) {
                    e.insert(
                        combine(&groups[g], &clip)
                            .with_context(|| format!("prep: combining the off-source group {}", groups[g].key))?,
                    );
                }
                let bg = &combined[&g];
                let mut sci = read_region_f32(&m.path, "SCI", 0..ny, 0..nx)?;
                let mut dqn = dqa;
                ndarray::Zip::from(&mut sci).and(&mut dqn).and(bg).for_each(|s, d, &b| {
                    if b.is_finite() {
                        *s -= b;
                    } else {
                        *s = f32::NAN;
                        *d |= dq::DO_NOT_USE;
                    }
                });
                let group = &groups[g];
                let dt = m.expmid_mjd - group.t_mjd;
                let dst = dir.join(m.file_name());
                let names: Vec<String> = group.members.iter().map(|o| o.file_name()).collect();
                let cards = [
                    card_real("DT_BGR", dt, "[d] science minus background mid-time (tessera prep)"),
                    card_text("BKGSUB", "T", "off-source background subtracted (tessera prep)"),
                ];
                let mut history = vec![format!(
                    "tessera prep: subtracted the {}-sigma clipped mean of {} off-source exposures",
                    pc.off_sigma,
                    names.len()
                )];
                history.extend(names.iter().map(|n| format!("  off: {n}")));
                write_corrected_copy(&m.path, &dst, &sci, &dqn, &cards, &history)?;
                row.off_group = Some(group.key.clone());
                row.off_files = names;
                row.dt_bgr_days = Some(dt);
                row.background_median_mjysr = median_finite(bg);
                row.written = Some(dst);
            }
            Ok(row)
        },
    )?;
    let all: Vec<(usize, PrepRow)> =
        rows.into_iter().enumerate().map(|(k, r)| (k, r.expect("every exposure has an owner"))).collect();
    let mut new_metas = metas.to_vec();
    for (k, r) in &all {
        if let Some(p) = &r.written {
            new_metas[*k].path = p.clone();
            new_metas[*k].dt_bgr_days = r.dt_bgr_days;
        }
    }
    let passed =
        all.iter().filter(|(k, r)| r.written.is_none() && !metas[*k].subarray.eq_ignore_ascii_case("FULL")).count();
    if miri && !groups.is_empty() && passed > 0 {
        notes.push(format!("prep: {passed} subarray exposures passed through without off-source background"));
    }
    let report = PrepReport { exposures: all.into_iter().map(|(_, r)| r).collect(), notes };
    if comm.rank() == 0 {
        for n in &report.notes {
            tracing::warn!("{n}");
        }
        crate::io::json::write_json(&dir.join("prep.json"), &report)?;
        let subtracted = report.exposures.iter().filter(|r| r.written.is_some()).count();
        let lyot = report.exposures.iter().filter(|r| r.lyot_box.is_some()).count();
        tracing::info!(
            "[prep] {} exposures: {} with off-source background subtracted, {} with a Lyot box matched separately",
            report.exposures.len(),
            subtracted,
            lyot
        );
    }
    Ok((new_metas, report))
}

/// The `prep` stage for the runner (its report and the corrected copies are its products).
///
/// # Errors
/// As [`run`].
pub(crate) fn stage(ctx: &super::runner::Ctx, b: &super::runner::Band) -> crate::Result<super::runner::Written> {
    run(ctx.comm, &b.plan, &b.metas, &b.offs, ctx.cfg)?;
    Ok(Default::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(name: &str, t: f64, det: &str, shape: [usize; 2]) -> CalMeta {
        let s = 0.11 / 3600.0;
        let wcs = crate::geom::TanSip::tan([10.0, -30.0], [50.0, 50.0], [[-s, 0.0], [0.0, s]]);
        CalMeta {
            path: PathBuf::from(name),
            instrument: "MIRI".into(),
            detector: det.into(),
            filter: "F770W".into(),
            pupil: "CLEAR".into(),
            target: "NGC_OFF".into(),
            id: crate::plan::ExposureId {
                program: "09999".into(),
                observation: name[..3].into(),
                visit: "001".into(),
                visit_group: "02".into(),
                sequence: "2".into(),
                activity: "02".into(),
                exposure: "00001".into(),
            },
            expstart_mjd: t,
            expmid_mjd: t,
            expend_mjd: t,
            effexptm_s: 88.8,
            subarray: "FULL".into(),
            shape,
            bunit: "MJy/sr".into(),
            wcs,
            dt_bgr_days: None,
        }
    }

    #[test]
    fn the_closest_off_group_in_time_of_the_same_frame_is_chosen() {
        let offs = vec![
            meta("001a", 100.0, "MIRIMAGE", [64, 72]),
            meta("001b", 100.2, "MIRIMAGE", [64, 72]),
            meta("002a", 101.0, "MIRIMAGE", [64, 72]),
            meta("003a", 100.45, "MIRIMAGE", [32, 32]),
        ];
        let groups = off_groups(&offs);
        assert_eq!(groups.len(), 3);
        assert!((groups[0].t_mjd - 100.1).abs() < 1e-12);
        // 100.5 is 0.4 from group 001 (mean 100.1), 0.5 from 002, 0.05 from 003 (other shape)
        assert_eq!(closest_group(&meta("sci", 100.5, "MIRIMAGE", [64, 72]), &groups), Some(0));
        assert_eq!(closest_group(&meta("sci", 100.7, "MIRIMAGE", [64, 72]), &groups), Some(1));
        assert_eq!(closest_group(&meta("sci", 100.7, "MIRIMAGE", [32, 32]), &groups), Some(2));
        assert_eq!(closest_group(&meta("sci", 100.7, "MIRIMAGE", [16, 16]), &groups), None);
    }
}

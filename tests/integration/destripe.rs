//! NIRCam 1/f destriping end to end: the stripe power left in the final mosaic against the simulated
//! truth (with `--no-destripe` as the control), a stripe-free scene whose models must stay below
//! 0.001 MJy/sr without an imprint of the galaxy, the same models for 1 to 4 ranks, and the bad
//! inputs (MIRI passed through, subarrays, every pixel masked).

use crate::common::{cached, mpirun, ok, simulate, tmp};
use ndarray::Array2;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use tessera::geom::TanSip;
use tessera::io::fits::{read_ext_f32, read_header, read_image};
use tessera::stages::simulate::Truth;

/// Small NIRCam scene (256^2 detectors, 1 tile x 2 dithers) with the default 1/f stripes.
fn striped_scene(instrument: &str) -> PathBuf {
    let d = crate::common::run_dir(&format!("destripe-striped-{instrument}"));
    let inst = format!("simulate.instrument=\"{instrument}\"");
    simulate(
        &d,
        &[&inst, "simulate.size=\"small\"", "simulate.tiles=\"1x1\"", "simulate.dithers=2", "simulate.seed=11"],
    );
    d
}

/// A small striped LW scene of 1 tile x 4 dithers (each exposure compared with 3 others), seeded.
fn lw_one_tile_four_dithers(seed: u64) -> tempfile::TempDir {
    let keep = tmp();
    let seed = format!("simulate.seed={seed}");
    simulate(
        keep.path(),
        &[
            "simulate.instrument=\"nircam_lw\"",
            "simulate.size=\"small\"",
            "simulate.tiles=\"1x1\"",
            "simulate.dithers=4",
            &seed,
        ],
    );
    keep
}

fn lw_scene() -> &'static Path {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| striped_scene("nircam_lw"))
}

/// An LW scene without any 1/f noise, on `medium` detectors (1024^2, amps of 256 columns): on the
/// `small` 256^2 detectors the noise of a 60-pixel amp-row median alone is ~0.0016 MJy/sr, above the
/// paper's 0.001 target, whatever the method does.
fn clean_scene() -> &'static Path {
    static D: OnceLock<PathBuf> = OnceLock::new();
    cached(
        &D,
        &[
            "simulate.instrument=\"nircam_lw\"",
            "simulate.size=\"medium\"",
            "simulate.tiles=\"1x1\"",
            "simulate.dithers=1",
            "simulate.seed=11",
            "simulate.stripe_rms_mjysr=0.0",
        ],
    )
}

/// `tessera mosaic` under `mpirun -n n`: `flags` are `--set` pairs (given before the subcommand)
/// or mosaic flags (after it).
fn run(n: usize, dir: &Path, work: &Path, flags: &[&str]) -> PathBuf {
    let out = work.join("m.fits");
    let (d, o) = (dir.to_str().unwrap().to_string(), out.to_str().unwrap().to_string());
    let mut args: Vec<&str> = vec!["--set", "run.output_dir=\"out\""];
    let mut after: Vec<&str> = vec![];
    let mut i = 0;
    while i < flags.len() {
        if flags[i] == "--set" {
            args.extend_from_slice(&flags[i..i + 2]);
            i += 2;
        } else {
            after.push(flags[i]);
            i += 1;
        }
    }
    args.extend_from_slice(&["mosaic", &d, "-o", &o]);
    args.extend_from_slice(&after);
    ok(&mpirun(n, work, &args));
    out
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The truth sky under each pixel of exposure `path` (nearest truth pixel), NaN off the truth grid.
fn truth_under(dir: &Path, path: &Path) -> Array2<f64> {
    let t: Truth = tessera::io::json::read_json(&dir.join("truth/truth.json")).unwrap();
    let (tsky, _) = read_image(&dir.join("truth/truth_sky.fits")).unwrap();
    let tw = t.truth_grid.wcs();
    let meta = tessera::io::fits::read_cal_meta(path).unwrap();
    let [ny, nx] = meta.shape;
    Array2::from_shape_fn((ny, nx), |(y, x)| {
        let (ra, dec) = meta.wcs.pixel_to_sky(x as f64, y as f64);
        let Ok((tx, ty)) = tw.sky_to_pixel(ra, dec) else { return f64::NAN };
        let (i, j) = (tx.round(), ty.round());
        if i < 0.0 || j < 0.0 || i as usize >= tsky.ncols() || j as usize >= tsky.nrows() {
            return f64::NAN;
        }
        f64::from(tsky[[j as usize, i as usize]])
    })
}

/// Stripe power of `r` `[y, x]` in the detector frame over `sel`, inside the 4-px border: per-amp
/// (`amps` of equal width) row medians and column medians, each about its mean, in quadrature.
/// With `scales`, only the part of each median profile below the largest scale is counted: the
/// profile minus its successive median filtering at `scales` (see `in_band_scales`).
fn detector_stripe_power(r: &Array2<f64>, sel: &Array2<bool>, amps: usize, scales: &[usize]) -> f64 {
    let (ny, nx) = r.dim();
    let b = 4;
    let w = nx / amps;
    let mut rows = vec![];
    for a in 0..amps {
        let cols = (a * w).max(b)..((a + 1) * w).min(nx - b);
        let lines: Vec<Vec<f64>> =
            (b..ny - b).map(|y| cols.clone().filter(|&x| sel[[y, x]]).map(|x| r[[y, x]]).collect()).collect();
        rows.push(lines);
    }
    let line_rms = |lines: Vec<Vec<f64>>| -> (f64, usize) {
        let mut meds: Vec<f64> = lines.into_iter().filter(|l| l.len() >= 10).map(|mut l| median(&mut l)).collect();
        if meds.len() < 10 {
            return (0.0, 0);
        }
        if !scales.is_empty() {
            let mut rest = meds.clone();
            for &k in scales {
                rest = tessera::kernels::destripe::median_filter_1d(&rest, k);
            }
            meds.iter_mut().zip(&rest).for_each(|(v, r)| *v -= r);
        }
        let m = meds.iter().sum::<f64>() / meds.len() as f64;
        meds.iter_mut().for_each(|v| *v -= m);
        (meds.iter().map(|v| v * v).sum::<f64>(), meds.len())
    };
    let (mut ss, mut n) = (0.0, 0);
    for l in rows {
        let (a, k) = line_rms(l);
        ss += a;
        n += k;
    }
    let rows_rms = (ss / n.max(1) as f64).sqrt();
    let cols: Vec<Vec<f64>> =
        (b..nx - b).map(|x| (b..ny - b).filter(|&y| sel[[y, x]]).map(|y| r[[y, x]]).collect()).collect();
    let (cs, cn) = line_rms(cols);
    (rows_rms.powi(2) + cs / cn.max(1) as f64).sqrt()
}

/// The band the single-tile method is built for: the Butterworth high-pass it measures on keeps
/// (gain > 0.97) periods shorter than `0.4 / cutoff` rows (80 rows on a 2048-row frame); wider
/// stripes are `destripe_multi`'s by design (pjpipe, and the PHANGS paper's section 3.2). The
/// filter removing them from a profile: a median filter of that many rows.
fn in_band_scales(cutoff_ratio: f64) -> Vec<usize> {
    let k = (0.4 / cutoff_ratio).round() as usize;
    vec![k | 1]
}

/// The single-tile stage against the truth stripes, per exposure, in the fainter and the brighter
/// half of the scene. The single-tile method by design keeps stripes wider than its high-pass cutoff
/// (most of a 1/f spectrum's power; the final-mosaic tests below measure the whole chain). Measured
/// (LW, small scene): in-band 83% (empty) and 62% (emission) removed, full band 21%. This test guards what the stage does today.
#[test]
fn single_tile_destriping_removes_the_in_band_stripes() {
    for (name, dir) in [("LW", lw_scene().to_path_buf()), ("SW", striped_scene("nircam_sw"))] {
        let w = tmp();
        run(2, &dir, w.path(), &[]);
        let t: Truth = tessera::io::json::read_json(&dir.join("truth/truth.json")).unwrap();
        let (_, cfg) = tessera::config::load(None, &[]).unwrap();
        let (mut b2, mut a2, mut fb2, mut fa2) = ([0.0f64; 2], [0.0f64; 2], [0.0f64; 2], [0.0f64; 2]);
        for e in &t.exposures {
            let path = dir.join(&e.file);
            let meta = tessera::io::fits::read_cal_meta(&path).unwrap();
            let truth = truth_under(&dir, &path);
            let (stripes, _) = read_image(&dir.join("truth").join(e.stripe_file.as_ref().unwrap())).unwrap();
            let stripes = stripes.mapv(f64::from);
            let m =
                stored_model(w.path(), &meta.band(), e.file.trim_end_matches(".fits"), meta.shape[0]).mapv(f64::from);
            let mut v: Vec<f64> = truth.iter().copied().filter(|v| v.is_finite()).collect();
            let med = median(&mut v);
            let sels = [truth.mapv(|t| t.is_finite() && t <= med), truth.mapv(|t| t.is_finite() && t > med)];
            let p = tessera::stages::destripe::params_for(&cfg, meta.shape, &meta.subarray, 0);
            let band = in_band_scales(p.butterworth.cutoff_ratio);
            let resid = &stripes - &m;
            for (k, sel) in sels.iter().enumerate() {
                b2[k] += detector_stripe_power(&stripes, sel, 4, &band).powi(2);
                a2[k] += detector_stripe_power(&resid, sel, 4, &band).powi(2);
                fb2[k] += detector_stripe_power(&stripes, sel, 4, &[]).powi(2);
                fa2[k] += detector_stripe_power(&resid, sel, 4, &[]).powi(2);
            }
        }
        for (k, area) in ["empty", "emission"].iter().enumerate() {
            let (before, after) = (b2[k].sqrt(), a2[k].sqrt());
            let (fbefore, fafter) = (fb2[k].sqrt(), fa2[k].sqrt());
            eprintln!(
                "{name} {area}, single-tile: in-band stripe power {before:.5} -> {after:.5} MJy/sr ({:.1}% removed); \
                 full band {fbefore:.5} -> {fafter:.5} ({:.1}% removed)",
                100.0 * (1.0 - after / before),
                100.0 * (1.0 - fafter / fbefore)
            );
            // measured LW: 83% (empty), 62% (emission: the galaxy's high-passed residual and its
            // masks leave less to measure on); SW 72% (empty); guarded at 65% and 50%
            let limit = if k == 0 { 0.35 } else { 0.5 };
            assert!(after <= limit * before, "{name} {area}: in-band {before} -> {after}");
            assert!(fafter < fbefore, "{name} {area}: full band {fbefore} -> {fafter}");
        }
    }
}

/// A survey observed at two rolls 50 deg apart (`simulate.rolls_deg`) runs through the whole
/// pipeline. destripe_multi's large-scale pass smooths along each exposure's own columns at one roll
/// and at two (its row profile is taken along the exposure's rows); with two rolls the automatic
/// method solves jointly and pass B is left out, with a note; with `method = "iterate"` every
/// exposure gets both passes' models.
#[test]
fn two_rolls_large_scale_pass_along_own_columns_and_not_after_the_joint_solve() {
    for (rolls, n, method) in [("[0.0]", 4, "auto"), ("[0.0, 50.0]", 8, "auto"), ("[0.0, 50.0]", 8, "iterate")] {
        let d = tmp();
        let r = format!("simulate.rolls_deg={rolls}");
        simulate(d.path(), &["simulate.size=\"tiny\"", "simulate.tiles=\"1x1\"", "simulate.dithers=2", &r]);
        let w = tmp();
        let m = format!("destripe_multi.method=\"{method}\"");
        run(2, d.path(), w.path(), &["--set", "outlier.enabled=false", "--set", &m]);
        let report: tessera::stages::destripe::DestripeReport =
            tessera::io::json::read_json(&w.path().join("out/destripe_multi/destripe_multi.json")).unwrap();
        assert_eq!(report.exposures.len(), n, "{rolls}: {report:?}");
        let joint = rolls != "[0.0]" && method == "auto";
        assert_eq!(report.joint.is_some(), joint, "{rolls} {method}: {report:?}");
        let noted = report.notes.iter().any(|s| s.contains("pass B is not run after the joint solve"));
        assert_eq!(noted, joint, "{rolls} {method}: {:?}", report.notes);
        for e in &report.exposures {
            assert!(e.model_rms_mjysr > 0.0, "{rolls} {method}: {e:?}");
            if joint {
                assert!(e.large_scale_rms_mjysr.is_none() && e.large_scale_direction.is_none(), "{e:?}");
            } else {
                assert_eq!(e.large_scale_direction.as_deref(), Some("horizontal"), "{rolls} {method}: {e:?}");
                assert!(e.large_scale_rms_mjysr.unwrap() > 0.0, "{rolls} {method}: {e:?}");
            }
        }
    }
}

/// The dense stripe model of exposure `stem` from the band store.
fn stored_model(work: &Path, band: &str, stem: &str, ny: usize) -> Array2<f32> {
    let h5 = work.join(format!("out/destripe/{band}.h5"));
    tessera::io::hdf5::read_rows_f32(&h5, "destripe", stem, 0..ny).unwrap()
}

/// The rms of model `m` of exposure `path` inside the 4-pixel border, its correlation with the truth
/// sky under its pixels (nearest truth pixel), and the truth's rms there.
fn model_against_truth(dir: &Path, path: &Path, m: &Array2<f32>) -> (f64, f64, f64) {
    let t: Truth = tessera::io::json::read_json(&dir.join("truth/truth.json")).unwrap();
    let (tsky, _) = read_image(&dir.join("truth/truth_sky.fits")).unwrap();
    let tw = t.truth_grid.wcs();
    let (ny, nx) = m.dim();
    let ew = TanSip::from_cards(&read_header(path, "SCI").unwrap()).unwrap();
    let (mut a, mut b) = (vec![], vec![]);
    for y in 4..ny - 4 {
        for x in 4..nx - 4 {
            let (ra, dec) = ew.pixel_to_sky(x as f64, y as f64);
            let Ok((tx, ty)) = tw.sky_to_pixel(ra, dec) else { continue };
            let (i, j) = (tx.round(), ty.round());
            if i < 0.0 || j < 0.0 || i as usize >= tsky.ncols() || j as usize >= tsky.nrows() {
                continue;
            }
            a.push(f64::from(m[[y, x]]));
            b.push(f64::from(tsky[[j as usize, i as usize]]));
        }
    }
    let n = a.len() as f64;
    let rms = (a.iter().map(|v| v * v).sum::<f64>() / n).sqrt();
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let cov: f64 = a.iter().zip(&b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
    let corr = if va > 0.0 { cov / (va * vb).sqrt() } else { 0.0 };
    (rms, corr, (vb / n).sqrt())
}

#[test]
fn a_stripe_free_scene_loses_no_emission() {
    let dir = clean_scene();
    let w = tmp();
    run(1, dir, w.path(), &["--set", "outlier.enabled=false"]);
    let t: Truth = tessera::io::json::read_json(&dir.join("truth/truth.json")).unwrap();
    let band = tessera::io::fits::read_cal_meta(&dir.join(&t.exposures[0].file)).unwrap().band();
    for e in &t.exposures {
        let path = dir.join(&e.file);
        let ny = tessera::io::fits::read_cal_meta(&path).unwrap().shape[0];
        let m = stored_model(w.path(), &band, e.file.trim_end_matches(".fits"), ny);
        let (rms, corr, truth_rms) = model_against_truth(dir, &path, &m);
        eprintln!("{}: model rms {rms:.6} MJy/sr, corr with truth {corr:+.4} (truth rms {truth_rms:.3})", e.file);
        assert!(truth_rms > 0.05, "no emission under {} to imprint", e.file);
        assert!(rms < 1e-3, "{}: model rms {rms}", e.file);
        assert!(corr.abs() < 0.05, "{}: corr {corr}", e.file);
    }
}

/// A `medium` LW scene (1024^2 detectors: see `clean_scene`) of one tile with `dithers` dithers per
/// roll at `rolls`, without 1/f noise unless `stripes`.
fn multi_scene(dithers: usize, rolls: &str, stripes: bool) -> tempfile::TempDir {
    let keep = tmp();
    let (d, r) = (format!("simulate.dithers={dithers}"), format!("simulate.rolls_deg={rolls}"));
    let mut sets = vec![
        "simulate.instrument=\"nircam_lw\"",
        "simulate.size=\"medium\"",
        "simulate.tiles=\"1x1\"",
        "simulate.seed=11",
        "simulate.pointing_error_arcsec=0.0",
        &d,
        &r,
    ];
    if !stripes {
        sets.push("simulate.stripe_rms_mjysr=0.0");
    }
    simulate(keep.path(), &sets);
    keep
}

/// `destripe_multi` on the scene in `dir` (2 ranks, up to that stage, `destripe_multi.method =
/// method`): per exposure its pass-A (or joint) model rms and pass-B model rms (0 when not run) from
/// the report, and the rms and correlation with the truth of everything it subtracts (its band
/// store).
fn multi_models(dir: &Path, method: &str) -> Vec<(String, f64, f64, f64, f64, f64)> {
    let w = tmp();
    let m = format!("destripe_multi.method=\"{method}\"");
    let flags = ["--set", "outlier.enabled=false", "--set", "run.stop_after=\"destripe_multi\"", "--set", &m];
    run(2, dir, w.path(), &flags);
    let report: tessera::stages::destripe::DestripeReport =
        tessera::io::json::read_json(&w.path().join("out/destripe_multi/destripe_multi.json")).unwrap();
    let t: Truth = tessera::io::json::read_json(&dir.join("truth/truth.json")).unwrap();
    t.exposures
        .iter()
        .map(|e| {
            let path = dir.join(&e.file);
            let meta = tessera::io::fits::read_cal_meta(&path).unwrap();
            let r = report.exposures.iter().find(|r| r.file == e.file).unwrap();
            assert!(r.status.starts_with("destriped"), "{}: {}", e.file, r.status);
            let h5 = w.path().join(format!("out/destripe_multi/{}.h5", meta.band()));
            let stem = e.file.trim_end_matches(".fits");
            let m = tessera::io::hdf5::read_rows_f32(&h5, "destripe_multi", stem, 0..meta.shape[0]).unwrap();
            let (rms, corr, truth_rms) = model_against_truth(dir, &path, &m);
            let b = r.large_scale_rms_mjysr.unwrap_or(0.0);
            eprintln!(
                "{} ({method}): pass A / joint {:.6}, pass B {b:.6}, total {rms:.6} MJy/sr, corr with truth {corr:+.4} (truth rms \
                 {truth_rms:.3})",
                e.file, r.model_rms_mjysr
            );
            (e.file.clone(), r.model_rms_mjysr, b, rms, corr, truth_rms)
        })
        .collect()
}

/// Issue 19's stripe-free criterion for `destripe_multi` (pass A, or the joint solve, and pass B):
/// on stripe-free `medium` scenes, one roll with 2 dithers and two rolls 50 deg apart with one
/// dither each (the rolls overlap on part of each frame: rows barely covered by the others), with the
/// automatic method (pass A and pass B on one roll, the joint solve alone on two), no model shows an
/// imprint of the galaxy (correlation with the truth below 0.05), and on one roll every model and
/// their sum stay below 0.001 MJy/sr rms. NOT met on two rolls: the joint solve's models are 0.0019
/// to 0.0027 MJy/sr (rows and columns a few overlap pixels constrain; a prior that fixed it cost the
/// full band, see `JOINT_PRIOR_PER_AMP_PX`), held here to 0.003. With pass A iterated and pass B on
/// the two-roll scene (`method = "iterate"`, the fallback over the memory budget) pass A's models
/// are below 0.001 and pass B's 0.0008 to 0.00103 MJy/sr (0.004 to 0.008 before it smoothed along
/// the exposure's columns): held to 0.0012 and a sum of 0.0015. The control, the two-roll scene with
/// the simulator's stripes, has models well above the limit.
#[test]
fn destripe_multi_on_stripe_free_scenes_loses_no_emission() {
    for (dithers, rolls, methods) in [(2, "[0.0]", &["auto"][..]), (1, "[0.0, 50.0]", &["auto", "iterate"][..])] {
        let keep = multi_scene(dithers, rolls, false);
        for method in methods {
            let (limit_a, limit_b, limit_sum) = match (rolls, *method) {
                ("[0.0]", _) => (1e-3, 1e-3, 1e-3),
                (_, "auto") => (3e-3, 1e-3, 3e-3),
                _ => (1e-3, 1.2e-3, 1.5e-3),
            };
            for (file, a, b, rms, corr, truth_rms) in multi_models(keep.path(), method) {
                let at = format!("{file} ({dithers} dithers, rolls {rolls}, {method})");
                assert!(truth_rms > 0.05, "no emission under {at} to imprint");
                assert!(a < limit_a, "{at}: pass A / joint model rms {a}");
                assert!(b < limit_b, "{at}: pass B model rms {b}");
                assert!(rms < limit_sum, "{at}: the models' sum: rms {rms}");
                assert!(corr.abs() < 0.05, "{at}: corr {corr}");
            }
        }
    }
    let keep = multi_scene(1, "[0.0, 50.0]", true);
    let striped = multi_models(keep.path(), "auto");
    let largest = striped.iter().map(|v| v.1.max(v.2)).fold(0.0, f64::max);
    assert!(largest > 3e-3, "the striped control's models are not above the limit: {largest}");
}

#[test]
fn stripe_models_are_identical_for_1_to_4_ranks() {
    let dir = lw_scene();
    let mut first: Option<(Vec<u8>, Vec<u8>)> = None;
    for n in 1..=4 {
        let w = tmp();
        let out = run(n, dir, w.path(), &["--set", "outlier.enabled=false", "--set", "level.enabled=false"]);
        let report = std::fs::read(w.path().join("out/destripe/destripe.json")).unwrap();
        let sci = read_ext_f32(&out, "SCI").unwrap();
        let bytes: Vec<u8> = sci.iter().flat_map(|v| v.to_le_bytes()).collect();
        match &first {
            None => first = Some((report, bytes)),
            Some((r1, b1)) => {
                assert!(&report == r1, "destripe report differs between 1 and {n} ranks");
                assert!(&bytes == b1, "mosaic differs between 1 and {n} ranks");
            }
        }
    }
}

#[test]
fn miri_is_passed_through_with_a_note() {
    let dir = crate::common::tiny_miri();
    let w = tmp();
    let o = w.path().join("m.fits");
    let out = mpirun(
        1,
        w.path(),
        &["--set", "run.output_dir=\"out\"", "mosaic", dir.to_str().unwrap(), "-o", o.to_str().unwrap()],
    );
    ok(&out);
    let r: serde_json::Value = tessera::io::json::read_json(&w.path().join("out/destripe/destripe.json")).unwrap();
    let ex = r["exposures"].as_array().unwrap();
    assert!(!ex.is_empty());
    for e in ex {
        assert!(e["status"].as_str().unwrap().starts_with("passed through"), "{e}");
        assert_eq!(e["model_rms_mjysr"].as_f64().unwrap(), 0.0);
    }
    assert!(String::from_utf8_lossy(&out.stderr).contains("not NIRCam"), "no note in the log");
}

#[test]
fn subarrays_and_fully_masked_exposures_work() {
    use tessera::io::fits::{card_text, read_cal, write_cal};
    let src = lw_scene();
    let d = tmp();
    let files = crate::common::cal_files(src);
    let names: Vec<String> = files.iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect();
    let nsub = 64;
    for (k, f) in files.iter().enumerate() {
        let mut img = read_cal(f).unwrap();
        let mut cards = crate::fits_io::identity_cards(&img.meta);
        if k == 0 {
            // a 64-row subarray at the detector origin: same WCS, whole rows
            let rows = ndarray::s![0..nsub, ..];
            img.sci = img.sci.slice(rows).to_owned();
            img.err = img.err.slice(rows).to_owned();
            img.dq = img.dq.slice(rows).to_owned();
            for v in [&mut img.var_poisson, &mut img.var_rnoise, &mut img.var_flat, &mut img.area] {
                *v = v.as_ref().map(|a| a.slice(rows).to_owned());
            }
            img.meta.shape = [nsub, img.sci.ncols()];
            cards.push(card_text("SUBARRAY", "SUB64P", ""));
        } else {
            cards.push(card_text("SUBARRAY", "FULL", ""));
        }
        if k == 1 {
            img.dq.fill(tessera::kernels::dq::DO_NOT_USE);
        }
        write_cal(&d.path().join(&names[k]), &img, &cards, &[]).unwrap();
    }
    let w = tmp();
    run(1, d.path(), w.path(), &["--set", "outlier.enabled=false"]);
    let r: serde_json::Value = tessera::io::json::read_json(&w.path().join("out/destripe/destripe.json")).unwrap();
    let ex = r["exposures"].as_array().unwrap();
    let find = |name: &str| ex.iter().find(|e| e["file"] == name).unwrap().clone();
    let sub = find(&names[0]);
    assert_eq!(sub["status"], "destriped");
    assert_eq!(sub["amps"], 1, "a subarray is read by one amplifier");
    assert_eq!(find(&names[1])["model_rms_mjysr"].as_f64().unwrap(), 0.0, "every pixel masked: zero model");
    // the subarray's model against its truth stripes
    let t: Truth = tessera::io::json::read_json(&src.join("truth/truth.json")).unwrap();
    let e = t.exposures.iter().find(|e| e.file == names[0]).unwrap();
    let (truth, _) = read_image(&src.join("truth").join(e.stripe_file.as_ref().unwrap())).unwrap();
    let band = tessera::io::fits::read_cal_meta(&d.path().join(&names[0])).unwrap().band();
    let m = stored_model(w.path(), &band, names[0].trim_end_matches(".fits"), nsub);
    let nx = m.ncols();
    let row_rms = |f: &dyn Fn(usize, usize) -> f64| {
        let mut meds: Vec<f64> = (0..nsub).map(|y| median(&mut (0..nx).map(|x| f(y, x)).collect::<Vec<_>>())).collect();
        let mean = meds.iter().sum::<f64>() / nsub as f64;
        meds.iter_mut().for_each(|v| *v -= mean);
        (meds.iter().map(|v| v * v).sum::<f64>() / nsub as f64).sqrt()
    };
    let before = row_rms(&|y, x| f64::from(truth[[y, x]]));
    let after = row_rms(&|y, x| f64::from(truth[[y, x]] - m[[y, x]]));
    eprintln!("subarray: row stripes {before:.5} -> {after:.5} MJy/sr");
    // full-band stripes of a 64-row subarray: no reference border, one amp; much of the power is
    // wider than the cutoff (see single_tile_destriping_removes_the_in_band_stripes)
    assert!(after < 0.5 * before, "{before} -> {after}");
}

/// Full-band stripe power per exposure (truth stripes minus the models subtracted), single-tile
/// alone and single plus multi (passes A and B), on an LW scene of 4 dithers (each exposure compared
/// with the 3 others): per exposure the multi-exposure passes must remove more. (In the final
/// mosaic they gain less: see `check_final_mosaic`.)
#[test]
fn multi_exposure_pass_removes_more_of_the_full_band_stripes() {
    let keep = lw_one_tile_four_dithers(12);
    let dir = keep.path().to_path_buf();
    let w = tmp();
    run(2, &dir, w.path(), &[]);
    let t: Truth = tessera::io::json::read_json(&dir.join("truth/truth.json")).unwrap();
    let (mut b2, mut s2, mut m2) = (0.0, 0.0, 0.0);
    for e in &t.exposures {
        let path = dir.join(&e.file);
        let meta = tessera::io::fits::read_cal_meta(&path).unwrap();
        let (stripes, _) = read_image(&dir.join("truth").join(e.stripe_file.as_ref().unwrap())).unwrap();
        let stripes = stripes.mapv(f64::from);
        let stem = e.file.trim_end_matches(".fits");
        let ny = meta.shape[0];
        let m1 = stored_model(w.path(), &meta.band(), stem, ny).mapv(f64::from);
        let h5 = w.path().join(format!("out/destripe_multi/{}.h5", meta.band()));
        let mm = tessera::io::hdf5::read_rows_f32(&h5, "destripe_multi", stem, 0..ny).unwrap().mapv(f64::from);
        let sel = stripes.mapv(|_| true);
        b2 += detector_stripe_power(&stripes, &sel, 4, &[]).powi(2);
        s2 += detector_stripe_power(&(&stripes - &m1), &sel, 4, &[]).powi(2);
        m2 += detector_stripe_power(&(&stripes - &m1 - &mm), &sel, 4, &[]).powi(2);
    }
    let (b, s, m) = (b2.sqrt(), s2.sqrt(), m2.sqrt());
    eprintln!(
        "LW 4 dithers, full band: {b:.5} -> single {s:.5} ({:.1}% removed) -> single+multi {m:.5} ({:.1}% removed)",
        100.0 * (1.0 - s / b),
        100.0 * (1.0 - m / b)
    );
    assert!(m < s, "the multi-exposure pass made the stripes worse: {s} -> {m}");
}

#[test]
fn png_per_exposure_on_request() {
    let dir = lw_scene();
    let w = tmp();
    run(1, dir, w.path(), &["--set", "destripe.png=true", "--set", "outlier.enabled=false"]);
    for f in crate::common::cal_files(dir) {
        let stem = f.file_name().unwrap().to_string_lossy().trim_end_matches(".fits").to_string();
        for (stage, suffix) in [("destripe", ""), ("destripe_multi", ""), ("destripe_multi", "_large_scale")] {
            let png = w.path().join(format!("out/{stage}/{stem}{suffix}.png"));
            let bytes = std::fs::read(&png).unwrap_or_else(|e| panic!("{}: {e}", png.display()));
            assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{} is not a PNG", png.display());
        }
    }
    // and none without the flag
    let w0 = tmp();
    run(1, dir, w0.path(), &["--set", "outlier.enabled=false"]);
    let pngs = std::fs::read_dir(w0.path().join("out/destripe"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "png"));
    assert_eq!(pngs.count(), 0);
}

/// Stripe power of a mosaic residual `r` `[y, x]` (NaN = unknown) along the stripes: pixels are
/// binned by their row and by their column in the detector frame of `det` (the TAN part of one
/// exposure's WCS, extended over the whole mosaic: every exposure of a visit has the same
/// orientation), through the mosaic WCS `mw`; the medians of the bins with at least 20 selected
/// pixels (`sel`), each profile about its mean; rows and columns in quadrature. Returned twice: the
/// full band, and the stripes narrower than `scale` rows (each profile minus its median filter of
/// `scale` bins: the band destripe_multi's large-scale pass is built for).
fn mosaic_stripe_power(r: &Array2<f64>, sel: &Array2<bool>, mw: &TanSip, det: &TanSip, scale: usize) -> (f64, f64) {
    let (ny, nx) = r.dim();
    let mut rows: std::collections::BTreeMap<i64, Vec<f64>> = Default::default();
    let mut cols: std::collections::BTreeMap<i64, Vec<f64>> = Default::default();
    for y in 0..ny {
        for x in 0..nx {
            if !sel[[y, x]] || !r[[y, x]].is_finite() {
                continue;
            }
            let (ra, dec) = mw.pixel_to_sky(x as f64, y as f64);
            let (dx, dy) = det.sky_to_pixel(ra, dec).unwrap();
            rows.entry(dy.round() as i64).or_default().push(r[[y, x]]);
            cols.entry(dx.round() as i64).or_default().push(r[[y, x]]);
        }
    }
    let profile_ms = |bins: &std::collections::BTreeMap<i64, Vec<f64>>, narrow: bool| -> f64 {
        let mut meds: Vec<f64> = bins.values().filter(|v| v.len() >= 20).map(|v| median(&mut v.clone())).collect();
        if narrow {
            let smooth = tessera::kernels::destripe::median_filter_1d(&meds, scale);
            meds.iter_mut().zip(&smooth).for_each(|(v, s)| *v -= s);
        }
        let m = meds.iter().sum::<f64>() / meds.len().max(1) as f64;
        meds.iter().map(|v| (v - m).powi(2)).sum::<f64>() / meds.len().max(1) as f64
    };
    (
        (profile_ms(&rows, false) + profile_ms(&cols, false)).sqrt(),
        (profile_ms(&rows, true) + profile_ms(&cols, true)).sqrt(),
    )
}

/// The residual of mosaic `m` against `reference` (same grid), NaN where either is unknown, and
/// the mosaic WCS.
fn mosaic_residual(m: &Path, reference: &Array2<f64>) -> (Array2<f64>, TanSip) {
    let sci = read_ext_f32(m, "SCI").unwrap().mapv(f64::from);
    let mw = TanSip::from_cards(&read_header(m, "SCI").unwrap()).unwrap();
    assert_eq!(sci.dim(), reference.dim(), "{}: not on the reference grid", m.display());
    let r = ndarray::Zip::from(&sci).and(reference).map_collect(|&a, &b| {
        if a.is_finite() && b.is_finite() && a != 0.0 {
            a - b
        } else {
            f64::NAN
        }
    });
    (r, mw)
}

/// The metric on the final mosaic, on a 2x2-tile x 4-dither scene: the stripe power
/// (`mosaic_stripe_power`) of the mosaic minus the mosaic of its stripe-free twin (the same
/// simulation, seed and noise, with `stripe_rms_mjysr = 0`, mosaicked without destriping), in the
/// fainter and the brighter half of the truth sky, for no destriping, single-tile alone and
/// single-tile + destripe_multi (passes A and B). Also against the truth sky itself (nearest truth
/// pixel), which adds the noise and resampling floor. Returns the stripe rms per [band][area][run],
/// band 0 the full band, 1 the stripes narrower than the large-scale filter.
fn final_mosaic_stripe_power(instrument: &str, seed: &str) -> [[[f64; 4]; 2]; 2] {
    let sets = |stripes: bool| {
        let mut v = vec![
            format!("simulate.instrument=\"{instrument}\""),
            "simulate.size=\"small\"".to_string(),
            "simulate.tiles=\"2x2\"".to_string(),
            "simulate.dithers=4".to_string(),
            format!("simulate.seed={seed}"),
            "simulate.pointing_error_arcsec=0.0".to_string(),
        ];
        if !stripes {
            v.push("simulate.stripe_rms_mjysr=0.0".to_string());
        }
        v
    };
    let (keep_s, keep_t) = (tmp(), tmp());
    let (striped, twin) = (keep_s.path().to_path_buf(), keep_t.path().to_path_buf());
    for (d, s) in [(&striped, true), (&twin, false)] {
        let v = sets(s);
        simulate(d, &v.iter().map(String::as_str).collect::<Vec<_>>());
    }
    let common = ["--set", "outlier.enabled=false"];
    let wt = tmp();
    let twin_m = run(2, &twin, wt.path(), &[&common[..], &["--no-destripe"]].concat());
    let reference = read_ext_f32(&twin_m, "SCI").unwrap().mapv(f64::from);
    // the truth sky on the mosaic grid (nearest truth pixel)
    let t: Truth = tessera::io::json::read_json(&striped.join("truth/truth.json")).unwrap();
    let (tsky, _) = read_image(&striped.join("truth/truth_sky.fits")).unwrap();
    let tw = t.truth_grid.wcs();
    let twin_w = TanSip::from_cards(&read_header(&twin_m, "SCI").unwrap()).unwrap();
    let truth_on_grid = Array2::from_shape_fn(reference.dim(), |(y, x)| {
        let (ra, dec) = twin_w.pixel_to_sky(x as f64, y as f64);
        let Ok((tx, ty)) = tw.sky_to_pixel(ra, dec) else { return f64::NAN };
        let (i, j) = (tx.round(), ty.round());
        if i < 0.0 || j < 0.0 || i as usize >= tsky.ncols() || j as usize >= tsky.nrows() {
            return f64::NAN;
        }
        f64::from(tsky[[j as usize, i as usize]])
    });
    let mut v: Vec<f64> = ndarray::Zip::from(&truth_on_grid).and(&reference).fold(vec![], |mut acc, &t, &r| {
        if t.is_finite() && r.is_finite() && r != 0.0 {
            acc.push(t);
        }
        acc
    });
    let med = median(&mut v);
    let sels = [truth_on_grid.mapv(|t| t.is_finite() && t <= med), truth_on_grid.mapv(|t| t.is_finite() && t > med)];
    let det = {
        let e = &t.exposures[0];
        let w = tessera::io::fits::read_cal_meta(&striped.join(&e.file)).unwrap().wcs;
        TanSip::tan(w.crval_deg, w.crpix, w.cd)
    };
    let runs: [(&str, Vec<&str>); 4] = [
        ("no destriping", vec!["--no-destripe"]),
        ("single-tile", vec!["--set", "destripe_multi.enabled=false"]),
        ("single-tile + destripe_multi", vec![]),
        ("single-tile + destripe_multi pass A only", vec!["--set", "destripe_multi.large_scale=false"]),
    ];
    let scale = tessera::kernels::destripe::default_large_scale_filter_px({
        tessera::io::fits::read_cal_meta(&striped.join(&t.exposures[0].file)).unwrap().shape[0]
    });
    let mut power = [[[0.0; 4]; 2]; 2];
    for (k, (name, flags)) in runs.iter().enumerate() {
        let w = tmp();
        let m = run(2, &striped, w.path(), &[&common[..], &flags[..]].concat());
        let (r, mw) = mosaic_residual(&m, &reference);
        let (rt, _) = mosaic_residual(&m, &truth_on_grid);
        for (a, area) in ["empty", "emission"].iter().enumerate() {
            let (full, narrow) = mosaic_stripe_power(&r, &sels[a], &mw, &det, scale);
            (power[0][a][k], power[1][a][k]) = (full, narrow);
            let (pt, _) = mosaic_stripe_power(&rt, &sels[a], &mw, &det, scale);
            eprintln!(
                "{instrument} final mosaic, {area}, {name}: stripe rms {full:.5} MJy/sr against the stripe-free twin \
                 ({narrow:.5} narrower than {scale} rows), {pt:.5} against the truth sky"
            );
        }
    }
    for (b, band) in ["full band", &format!("narrower than {scale} rows")].iter().enumerate() {
        for (a, area) in ["empty", "emission"].iter().enumerate() {
            let [n, s, m, _] = power[b][a];
            eprintln!(
                "{instrument} {area}, {band}: stripe power (rms^2) removed: single-tile {:.1}%, single + multi {:.1}% \
                 (rms: {:.1}% and {:.1}%)",
                100.0 * (1.0 - (s / n).powi(2)),
                100.0 * (1.0 - (m / n).powi(2)),
                100.0 * (1.0 - s / n),
                100.0 * (1.0 - m / n)
            );
        }
    }
    power
}

/// The final-mosaic stripe power against what is achieved today (issue 5 asks >= 90% of the power
/// removed; NOT met, see the NOTE): the order none > single-tile > single-tile + destripe_multi in
/// the full band; destripe_multi's large-scale pass better than pass A alone in empty areas (and not
/// more than 5% worse in emission); of the stripes narrower than the large-scale filter, at least
/// 70% of the power removed in empty areas and 30% in emission.
///
/// NOTE, measured (power removed, full band / narrower than 25 rows): LW seed 21: empty 32% / 77%,
/// emission 24% / 69%; SW seed 22: empty 40% / 87%, emission 39% / 36%. About 70% of the control's
/// power is in stripes wider than rows / 10: those of the exposures covering a pixel add up in the
/// mosaic the same way whatever relative correction is made, and on a survey with one orientation
/// no data-only method tells them from sky structure running along the rows (pjpipe's passes leave
/// them too). Pass A alone adds noise on these small detectors (row medians over 64-column amps).
/// The same metric on 1024^2 detectors, implemented again in Python, is in BENCHMARKS.md
/// (`scripts/bench --stripes small,medium`): narrow band 95% / 90% (LW) and 86% / 81% (SW) removed,
/// full band still -10% to 48%; a second roll 50 deg away does not lift the full band either.
fn check_final_mosaic(instrument: &str, seed: &str) {
    let p = final_mosaic_stripe_power(instrument, seed);
    for (a, area) in ["empty", "emission"].iter().enumerate() {
        let [none, single, multi, pass_a] = p[0][a];
        assert!(single < none && multi < single, "{instrument} {area} full band: {:?}", p[0][a]);
        let limit = if a == 0 { 1.0 } else { 1.05 };
        assert!(multi < limit * pass_a, "{instrument} {area}: the large-scale pass did not help: {:?}", p[0][a]);
        let [none, _, multi, _] = p[1][a];
        let kept = if a == 0 { 0.3 } else { 0.7 };
        assert!(multi * multi < kept * none * none, "{instrument} {area} narrow band: {:?}", p[1][a]);
    }
}

#[test]
fn final_mosaic_stripes_lw() {
    check_final_mosaic("nircam_lw", "21");
}

#[test]
fn final_mosaic_stripes_sw() {
    check_final_mosaic("nircam_sw", "22");
}

/// The largest fraction of one detector row that outlier rejection flagged, over every exposure, in
/// `outlier/flags.json` under `work`.
fn largest_flagged_row_fraction(work: &Path) -> f64 {
    let r: serde_json::Value = tessera::io::json::read_json(&work.join("out/outlier/flags.json")).unwrap();
    let mut worst = 0.0f64;
    for e in r["exposures"].as_array().unwrap() {
        let nx = e["nx"].as_u64().unwrap() as usize;
        let mut per_row: std::collections::BTreeMap<usize, usize> = Default::default();
        for p in e["pixels"].as_array().unwrap() {
            *per_row.entry(p.as_u64().unwrap() as usize / nx).or_default() += 1;
        }
        worst = per_row.values().fold(worst, |w, &n| w.max(n as f64 / nx as f64));
    }
    worst
}

/// What `scripts/demo` relies on: with the simulator's default 1/f stripes on, outlier rejection
/// flags cosmic rays, not whole rows. The control, the same scene without destriping, flags long
/// runs of row pixels where the stripes of one exposure stand out of the median (measured: up to a
/// third of a row and more); with destriping no row has even a tenth of its pixels flagged.
#[test]
fn outlier_flags_no_whole_rows_on_a_striped_scene() {
    let keep = lw_one_tile_four_dithers(1);
    let dir = keep.path().to_path_buf();
    let stop = ["--set", "run.stop_after=\"outlier\""];
    let control = tmp();
    run(2, &dir, control.path(), &[&stop[..], &["--no-destripe"]].concat());
    let destriped = tmp();
    run(2, &dir, destriped.path(), &stop);
    let (c, d) = (largest_flagged_row_fraction(control.path()), largest_flagged_row_fraction(destriped.path()));
    eprintln!("largest flagged fraction of a row: no destriping {c:.3}, destriped {d:.3}");
    assert!(c > 0.25, "the control flags no long runs along rows ({c}): nothing to show");
    assert!(d < 0.1, "a row has {d} of its pixels flagged after destriping");
}

/// Issue 19's two-roll case: on a survey observed at two rolls 50 deg apart (1 tile x 4 dithers per
/// roll, LW), where both rolls overlap, the full-band stripe power left in the final mosaic (the
/// residual against the mosaic of the stripe-free twin, binned along each roll's rows and columns,
/// the power averaged over the two rolls' frames). Only a constant is a function of both rolls'
/// rows, so the joint least-squares solve of every exposure's row and column stripes (the
/// automatic `destripe_multi.method` on two rolls) separates even the stripes wider than any filter
/// from the sky; pjpipe's pass A, once and iterated (`method = "iterate"`), is reported beside it.
///
/// KNOWN SHORTFALL: the issue asks at least 75% of the full-band power removed there; NOT met.
/// Measured here (load average 7 on 2 cores): none 0.0179 MJy/sr rms full band; pass A once 14% /
/// 91% (full / narrow band) removed, iterated 14% / 89%, joint 26% / 93% (joint without pass B 27% /
/// 94%). Per exposure the joint solve removes 94% of the truth stripes' power (single-tile alone
/// 43%); what is left in the mosaic is mostly the stripes' widest modes in the rows one roll alone
/// covers (there a profile all dithers of a roll share is in the null space) and the level
/// offsets `level` found on striped data. This test guards what is achieved: at least 20% of the
/// full band and 85% of the narrow band with the joint solve, the joint solve better than pass A
/// iterated, and iterating pass A not worse than one pass.
#[test]
fn two_rolls_remove_the_full_band_where_they_overlap() {
    let sets = |stripes: bool| {
        let mut v = vec![
            "simulate.instrument=\"nircam_lw\"",
            "simulate.size=\"small\"",
            "simulate.tiles=\"1x1\"",
            "simulate.dithers=4",
            "simulate.seed=21",
            "simulate.pointing_error_arcsec=0.0",
            "simulate.rolls_deg=[0.0, 50.0]",
        ];
        if !stripes {
            v.push("simulate.stripe_rms_mjysr=0.0");
        }
        v
    };
    let (keep_s, keep_t) = (tmp(), tmp());
    let (striped, twin) = (keep_s.path().to_path_buf(), keep_t.path().to_path_buf());
    simulate(&striped, &sets(true));
    simulate(&twin, &sets(false));
    let common = ["--set", "outlier.enabled=false"];
    let wt = tmp();
    let twin_m = run(2, &twin, wt.path(), &[&common[..], &["--no-destripe"]].concat());
    let reference = read_ext_f32(&twin_m, "SCI").unwrap().mapv(f64::from);
    let mw = TanSip::from_cards(&read_header(&twin_m, "SCI").unwrap()).unwrap();
    let t: Truth = tessera::io::json::read_json(&striped.join("truth/truth.json")).unwrap();
    // each roll's frame (its first exposure's TAN part) and where both rolls cover the mosaic
    let ntiles = t.exposures.iter().map(|e| e.tile).max().unwrap() + 1;
    let metas: Vec<(usize, tessera::plan::CalMeta)> = t
        .exposures
        .iter()
        .map(|e| (e.tile * 2 / ntiles, tessera::io::fits::read_cal_meta(&striped.join(&e.file)).unwrap()))
        .collect();
    let frames: Vec<TanSip> = (0..2)
        .map(|r| {
            let w = &metas.iter().find(|(k, _)| *k == r).unwrap().1.wcs;
            TanSip::tan(w.crval_deg, w.crpix, w.cd)
        })
        .collect();
    let overlap = Array2::from_shape_fn(reference.dim(), |(y, x)| {
        let (ra, dec) = mw.pixel_to_sky(x as f64, y as f64);
        (0..2).all(|r| {
            metas.iter().filter(|(k, _)| *k == r).any(|(_, m)| {
                let Ok((px, py)) = m.wcs.sky_to_pixel(ra, dec) else { return false };
                px > -0.5 && py > -0.5 && px < m.shape[1] as f64 - 0.5 && py < m.shape[0] as f64 - 0.5
            })
        })
    });
    assert!(overlap.iter().filter(|&&v| v).count() > 10_000, "the rolls hardly overlap");
    let scale = tessera::kernels::destripe::default_large_scale_filter_px(metas[0].1.shape[0]);
    let power = |flags: &[&str]| -> (f64, f64) {
        let w = tmp();
        let m = run(2, &striped, w.path(), &[&common[..], flags].concat());
        let (r, mw) = mosaic_residual(&m, &reference);
        let p: Vec<(f64, f64)> = frames.iter().map(|f| mosaic_stripe_power(&r, &overlap, &mw, f, scale)).collect();
        let ms = |i: usize| (p.iter().map(|v| if i == 0 { v.0 * v.0 } else { v.1 * v.1 }).sum::<f64>() / 2.0).sqrt();
        (ms(0), ms(1))
    };
    let none = power(&["--no-destripe"]);
    let once = power(&["--set", "destripe_multi.method=\"iterate\"", "--set", "destripe_multi.max_iterations=1"]);
    let iterated = power(&["--set", "destripe_multi.method=\"iterate\""]);
    let joint = power(&[]);
    let pct = |a: f64, b: f64| 100.0 * (1.0 - (a / b).powi(2));
    for (name, p) in [("pass A once", once), ("pass A iterated", iterated), ("joint", joint)] {
        eprintln!(
            "two rolls, overlap: stripe rms full / narrow: none {:.5} / {:.5}; {name} {:.5} / {:.5} ({:.0}% / {:.0}% \
             removed)",
            none.0,
            none.1,
            p.0,
            p.1,
            pct(p.0, none.0),
            pct(p.1, none.1),
        );
    }
    assert!(none.0 > 0.002, "the control has no stripes to remove: {none:?}");
    assert!(joint.0 * joint.0 <= 0.8 * none.0 * none.0, "full band: {none:?} -> {joint:?}");
    assert!(joint.1 * joint.1 <= 0.15 * none.1 * none.1, "narrow band: {none:?} -> {joint:?}");
    assert!(
        joint.0 < 0.97 * iterated.0,
        "the joint solve is no better than pass A iterated: {iterated:?} -> {joint:?}"
    );
    assert!(iterated.0 <= 1.05 * once.0, "iterating made the full band worse: {once:?} -> {iterated:?}");
}

/// On two rolls the automatic setting solves jointly only when the solve's observations fit the
/// memory budget: this 16-file two-roll scene needs about 96 MiB on one rank, so under a 64 MiB budget
/// pass A is iterated instead, with a warning naming both keys (under 4096 MiB the two-roll test
/// above solves jointly).
#[test]
fn two_rolls_over_the_memory_budget_iterate_pass_a_with_a_warning() {
    let d = tmp();
    simulate(
        d.path(),
        &[
            "simulate.instrument=\"nircam_lw\"",
            "simulate.size=\"small\"",
            "simulate.tiles=\"1x1\"",
            "simulate.dithers=4",
            "simulate.rolls_deg=[0.0, 50.0]",
        ],
    );
    let w = tmp();
    let o = w.path().join("m.fits");
    let out = mpirun(
        1,
        w.path(),
        &[
            "--set",
            "run.output_dir=\"out\"",
            "--set",
            "run.mem_budget_mb=64",
            "--set",
            "run.stop_after=\"destripe_multi\"",
            "--set",
            "outlier.enabled=false",
            "mosaic",
            d.path().to_str().unwrap(),
            "-o",
            o.to_str().unwrap(),
        ],
    );
    ok(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pass A is iterated instead") && err.contains("run.mem_budget_mb = 64"),
        "no fallback warning: {err}"
    );
    let report: tessera::stages::destripe::DestripeReport =
        tessera::io::json::read_json(&w.path().join("out/destripe_multi/destripe_multi.json")).unwrap();
    assert!(report.joint.is_none(), "solved jointly over the budget: {:?}", report.joint);
    assert!(report.pass_a_update_rms_mjysr.len() > 1, "pass A not iterated: {:?}", report.pass_a_update_rms_mjysr);
}

//! The `align` and `astrometry` stages end to end on simulated NIRCam LW scenes with per-visit
//! pointing errors, a global offset and rotation: visit shifts against the simulator's truth, 1..4
//! ranks, the outlier stage with and without alignment, a field without point sources; absolute
//! positions and rotation of the tweakback exposures and of the mosaic against the truth, and
//! catalogues that do not overlap or are wrong.

use crate::common::{cached, cal_files, mpirun, ok, simulate, tessera, tmp, truth};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use tessera::geom::{sky_to_tangent_arcsec, TanSip};
use tessera::io::fits::{read_cal, read_cal_meta};
use tessera::kernels::matching::{fit_transform, FitGeometry};
use tessera::plan::Plan;
use tessera::stages::align::AlignFile;
use tessera::stages::astrometry::AstrometryFile;

/// The visits of [`scene`]: 2x2 tiles x 2 dithers of 256^2 px detectors, per-visit pointing errors
/// of 0.15" rms (|error| 0.05-0.42" for this seed), global offset 0.25" and rotation 0.01 deg.
const VISITS: [&str; 5] = [
    "simulate.size=\"small\"",
    "simulate.tiles=\"2x2\"",
    "simulate.dithers=2",
    "simulate.pointing_error_arcsec=0.15",
    "simulate.seed=5",
];

/// Small LW scene (F300M, the reference band) of [`VISITS`].
fn scene() -> &'static Path {
    static D: OnceLock<PathBuf> = OnceLock::new();
    cached(&D, &VISITS)
}

/// Another band observed in the same visits (the same seed gives the same pointing errors).
fn same_visits(filter: &str) -> tempfile::TempDir {
    let d = tmp();
    let f = format!("simulate.filter=\"{filter}\"");
    simulate(d.path(), &[&VISITS[..], &[f.as_str()]].concat());
    assert_eq!(truth(d.path()).visit_errors, truth(scene()).visit_errors);
    d
}

fn run_mosaic(dir: &Path, work: &Path, extra: &[&str]) -> PathBuf {
    let out = work.join("m.fits");
    let mut args: Vec<&str> = vec!["--set", "run.output_dir=\"out\""];
    let (d, o) = (dir.to_str().unwrap().to_string(), out.to_str().unwrap().to_string());
    // `--set` before the subcommand (a later occurrence would replace the output_dir one)
    let mut rest = vec![];
    let mut it = extra.iter();
    while let Some(a) = it.next() {
        if *a == "--set" {
            args.extend_from_slice(&["--set", it.next().unwrap()]);
        } else {
            rest.push(*a);
        }
    }
    args.extend_from_slice(&["mosaic", &d]);
    args.extend_from_slice(&rest);
    args.extend_from_slice(&["-o", &o]);
    ok(&tessera(work, &args));
    out
}

/// The aligned run of [`scene`] with its reference catalogue (kept for several tests).
fn aligned_run() -> &'static Path {
    static W: OnceLock<PathBuf> = OnceLock::new();
    W.get_or_init(|| {
        let w = crate::common::run_dir("align-aligned-run");
        let cat = scene().join("aux/refcat.csv").to_str().unwrap().to_string();
        run_mosaic(scene(), &w, &["--catalog", &cat]);
        w
    })
}

/// Positions of a 5x5 lattice of pixels of every exposure through `wcs_of(file)` and through the
/// true WCS, on the tangent plane at the target, arcsec.
fn lattice(dir: &Path, wcs_of: &dyn Fn(&str, &TanSip) -> TanSip) -> (Vec<[f64; 2]>, Vec<[f64; 2]>) {
    let t = truth(dir);
    let c = (t.target_deg[0], t.target_deg[1]);
    let (mut got, mut want) = (vec![], vec![]);
    for e in t.exposures.iter().filter(|e| !e.is_off) {
        let meta = read_cal_meta(&dir.join(&e.file)).unwrap();
        let w = wcs_of(&e.file, &meta.wcs);
        let [ny, nx] = meta.shape;
        for i in 0..5 {
            for j in 0..5 {
                let (x, y) = (i as f64 * (nx - 1) as f64 / 4.0, j as f64 * (ny - 1) as f64 / 4.0);
                let (ra, dec) = w.pixel_to_sky(x, y);
                let (rt, dt) = e.true_wcs.pixel_to_sky(x, y);
                let g = sky_to_tangent_arcsec(c, ra, dec);
                let h = sky_to_tangent_arcsec(c, rt, dt);
                got.push([g.0, g.1]);
                want.push([h.0, h.1]);
            }
        }
    }
    (got, want)
}

/// rms (arcsec) of the positions against the truth after removing one global shift and rotation:
/// what relative alignment leaves.
fn relative_rms(got: &[[f64; 2]], want: &[[f64; 2]]) -> f64 {
    let t = fit_transform(got, want, FitGeometry::RShift, [0.0, 0.0]).unwrap();
    let s: f64 = got
        .iter()
        .zip(want)
        .map(|(g, w)| {
            let p = t.apply(*g);
            (p[0] - w[0]).powi(2) + (p[1] - w[1]).powi(2)
        })
        .sum();
    (s / got.len() as f64).sqrt()
}

fn align_file(work: &Path) -> AlignFile {
    tessera::io::json::read_json(&work.join("out/align/align.json")).unwrap()
}

#[test]
fn visit_shifts_are_recovered_to_5_mas_against_the_truth() {
    let dir = scene();
    let t = truth(dir);
    let errs: Vec<f64> = t.visit_errors.iter().map(|v| v.dra_arcsec.hypot(v.ddec_arcsec)).collect();
    assert!(errs.iter().any(|&e| e > 0.15) && errs.iter().all(|&e| e > 0.03), "visit errors {errs:?}");
    let f = align_file(aligned_run());
    assert_eq!(f.visits.len(), 4);
    assert!(f.visits.iter().all(|v| v.solved), "{:?} {:?}", f.visits, f.warnings);
    let by_file: BTreeMap<String, String> = f.exposures.iter().map(|e| (e.file.clone(), e.visit.clone())).collect();
    let (before, want) = lattice(dir, &|_, w| w.clone());
    let (after, _) = lattice(dir, &|file, w| f.correction(&by_file[file]).apply(w));
    let (rb, ra) = (relative_rms(&before, &want), relative_rms(&after, &want));
    eprintln!("relative rms against the truth: {:.1} mas before, {:.2} mas after align", 1e3 * rb, 1e3 * ra);
    assert!(rb > 0.05, "the scene has too small pointing errors ({rb} arcsec)");
    assert!(ra < 0.005, "relative alignment rms {:.2} mas", 1e3 * ra);
    // the shifts against the truth visit by visit: c_v = -error_v + a common constant
    let mut d: Vec<[f64; 2]> = vec![];
    for v in &t.visit_errors {
        let s = f.visits.iter().find(|x| x.visit == v.visit).unwrap().shift_arcsec;
        d.push([s[0] + v.dra_arcsec, s[1] + v.ddec_arcsec]);
    }
    let mean = [d.iter().map(|x| x[0]).sum::<f64>() / 4.0, d.iter().map(|x| x[1]).sum::<f64>() / 4.0];
    for (x, v) in d.iter().zip(&t.visit_errors) {
        let e = (x[0] - mean[0]).hypot(x[1] - mean[1]);
        assert!(e < 0.005, "visit {}: shift off by {:.2} mas", v.visit, 1e3 * e);
    }
}

#[test]
fn align_and_astrometry_are_identical_for_1_to_4_ranks() {
    let dir = scene().to_str().unwrap().to_string();
    let cat = scene().join("aux/refcat.csv").to_str().unwrap().to_string();
    let mut runs = vec![];
    for n in 1..=4 {
        let w = tmp();
        let o = w.path().join("m.fits").to_str().unwrap().to_string();
        let args = ["--set", "run.output_dir=\"out\"", "--set", "outlier.enabled=false", "mosaic", &dir, "-o", &o];
        ok(&mpirun(n, w.path(), &[&args[..], &["--catalog", &cat]].concat()));
        let read = |p: &str| std::fs::read(w.path().join(p)).unwrap();
        runs.push([
            read("out/align/align.json"),
            read("out/astrometry/astrometry.json"),
            read("out/astrometry/matches.csv"),
        ]);
    }
    for (n, r) in runs.iter().enumerate().skip(1) {
        for (k, name) in ["align.json", "astrometry.json", "matches.csv"].iter().enumerate() {
            assert!(r[k] == runs[0][k], "{name} differs between 1 and {} ranks", n + 1);
        }
    }
    let f: AlignFile = serde_json::from_slice(&runs[0][0]).unwrap();
    assert!(f.visits.iter().all(|v| v.solved && v.shift_arcsec != [0.0, 0.0]));
    let a: AstrometryFile = serde_json::from_slice(&runs[0][1]).unwrap();
    assert!(a.correction.is_some() && a.tweakback.len() == 16, "{a:?}");
}

/// Star cores (peak pixel of every detectable, unsaturated star in every exposure) flagged by the
/// outlier stage of a run in `work`, counted as `tests/integration/mosaic.rs` does.
fn flagged_cores(dir: &Path, work: &Path) -> (usize, usize) {
    let flags: serde_json::Value = tessera::io::json::read_json(&work.join("out/outlier/flags.json")).unwrap();
    let mut flagged: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for e in flags["exposures"].as_array().unwrap() {
        let set = e["pixels"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        flagged.insert(e["file"].as_str().unwrap().to_string(), set);
    }
    let t = truth(dir);
    let text = std::fs::read_to_string(dir.join("truth/sources.csv")).unwrap();
    let (mut cores, mut hit) = (0, 0);
    for e in t.exposures.iter().filter(|e| !e.is_off) {
        let img = read_cal(&dir.join(&e.file)).unwrap();
        let (ny, nx) = img.sci.dim();
        let fl = &flagged[&e.file];
        for l in text.lines().skip(1) {
            let v: Vec<&str> = l.split(',').collect();
            let (ra, dec): (f64, f64) = (v[0].parse().unwrap(), v[1].parse().unwrap());
            let Ok((x, y)) = e.true_wcs.sky_to_pixel(ra, dec) else { continue };
            let (xi, yi) = (x.round() as i64, y.round() as i64);
            if xi < 5 || yi < 5 || xi > nx as i64 - 6 || yi > ny as i64 - 6 {
                continue;
            }
            let (xi, yi) = (xi as usize, yi as usize);
            if !img.sci[[yi, xi]].is_finite() || img.dq[[yi, xi]] & tessera::kernels::dq::DO_NOT_USE != 0 {
                continue;
            }
            if img.sci[[yi, xi]] < 10.0 * img.err[[yi, xi]] + img.sci[[yi, xi + 4]] {
                continue;
            }
            cores += 1;
            hit += fl.contains(&((yi * nx + xi) as u64)) as usize;
        }
    }
    (cores, hit)
}

#[test]
fn outlier_spares_star_cores_with_align_and_flags_some_without() {
    let dir = scene();
    let off = tmp();
    run_mosaic(dir, off.path(), &["--no-align"]);
    let (cores_on, hit_on) = flagged_cores(dir, aligned_run());
    let (cores_off, hit_off) = flagged_cores(dir, off.path());
    eprintln!("star cores flagged: {hit_on} of {cores_on} with align, {hit_off} of {cores_off} without");
    assert!(cores_on > 100, "only {cores_on} star cores checked");
    assert!(hit_off > 0, "no core flagged without align: the test scene does not exercise alignment");
    assert_eq!(hit_on, 0, "{hit_on} of {cores_on} star cores flagged with align on");
    assert!(!off.path().join("out/align/align.json").exists(), "--no-align still ran the stage");
}

#[test]
fn a_field_without_point_sources_warns_and_keeps_the_wcs() {
    // the scene's files with SCI replaced by a smooth background plus noise: nothing point-like
    let src = scene();
    let d = tmp();
    for f in cal_files(src) {
        let mut img = read_cal(&f).unwrap();
        let primary = tessera::io::fits::read_header(&f, "PRIMARY").unwrap();
        let skip = ["SIMPLE", "BITPIX", "NAXIS", "EXTEND"];
        let cards: Vec<_> = primary
            .into_iter()
            .filter(|(k, _)| !skip.contains(&k.as_str()))
            .map(|(k, v)| (k, v, String::new()))
            .collect();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for ((y, x), v) in img.sci.indexed_iter_mut() {
            if v.is_finite() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let u = (state >> 11) as f64 / (1u64 << 53) as f64;
                *v = (0.3 + 1e-4 * (x + y) as f64 + 0.02 * (u - 0.5)) as f32;
            }
        }
        tessera::io::fits::write_cal(&d.path().join(f.file_name().unwrap()), &img, &cards, &[]).unwrap();
    }
    let w = tmp();
    let out = w.path().join("m.fits");
    let o = tessera(
        w.path(),
        &["--set", "run.output_dir=\"out\"", "mosaic", d.path().to_str().unwrap(), "-o", out.to_str().unwrap()],
    );
    ok(&o);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("[align]") && stderr.contains("its WCS is kept"), "{stderr}");
    let f = align_file(w.path());
    assert!(f.visits.iter().all(|v| !v.solved && v.shift_arcsec == [0.0, 0.0]), "{:?}", f.visits);
    for e in &f.exposures {
        assert_eq!(e.crval_before_deg, e.crval_after_deg, "{}", e.file);
    }
}

fn rms(got: &[[f64; 2]], want: &[[f64; 2]]) -> f64 {
    let s: f64 = got.iter().zip(want).map(|(g, w)| (g[0] - w[0]).powi(2) + (g[1] - w[1]).powi(2)).sum();
    (s / got.len() as f64).sqrt()
}

fn mosaic_wcs(path: &Path) -> TanSip {
    TanSip::from_cards(&tessera::io::fits::read_header(path, "SCI").unwrap()).unwrap()
}

#[test]
fn astrometry_recovers_absolute_positions_and_rotation_with_tweakback() {
    let dir = scene();
    let w = aligned_run();
    let t = truth(dir);
    let r: AstrometryFile = tessera::io::json::read_json(&w.join("out/astrometry/astrometry.json")).unwrap();
    let c = r.correction.expect("a solution");
    assert_eq!(r.steps.len(), 2);
    assert!(r.steps.iter().all(|s| s.failure.is_empty() && s.n_matches >= 50), "{:?}", r.steps);
    // every exposure's tweakback WCS against its true WCS: no global fit removed
    let tweak = |file: &str| -> PathBuf {
        w.join("out/astrometry").join(format!("{}_tweakback.fits", file.strip_suffix("_cal.fits").unwrap()))
    };
    let (before, want) = lattice(dir, &|_, w| w.clone());
    let (after, _) = lattice(dir, &|file, _| read_cal_meta(&tweak(file)).unwrap().wcs);
    let (rb, ra) = (rms(&before, &want), rms(&after, &want));
    let drot = c.rotation_deg - t.absolute_rotation_deg;
    eprintln!(
        "absolute rms against the truth: {:.1} mas before, {:.2} mas after; rotation {:.5} deg (truth {}, error {:.5})",
        1e3 * rb,
        1e3 * ra,
        c.rotation_deg,
        t.absolute_rotation_deg,
        drot
    );
    assert!(rb > 0.2, "the scene has too small an absolute offset ({rb} arcsec)");
    assert!(ra < 0.005, "absolute rms {:.2} mas", 1e3 * ra);
    assert!(drot.abs() < 0.002, "rotation off by {drot} deg");
    // the mosaic: a pixel's corrected position is the true position of the exposure pixels drizzled
    // onto it (through the aligned WCS and the grid the mosaic was drizzled on)
    let plan: Plan = tessera::io::json::read_json(&w.join("out/align/plan.json")).unwrap();
    let grid = plan.grid.wcs();
    let f = align_file(w);
    let by_file: BTreeMap<String, String> = f.exposures.iter().map(|e| (e.file.clone(), e.visit.clone())).collect();
    let m = mosaic_wcs(&w.join("m.fits"));
    assert_ne!(m.crval_deg, grid.crval_deg, "mosaic WCS not updated");
    let t2 = truth(dir);
    let cc = (t2.target_deg[0], t2.target_deg[1]);
    let mut worst = 0f64;
    for e in t2.exposures.iter().filter(|e| !e.is_off) {
        let meta = read_cal_meta(&dir.join(&e.file)).unwrap();
        let aligned = f.correction(&by_file[&e.file]).apply(&meta.wcs);
        for (x, y) in [(10.0, 10.0), (128.0, 128.0), (245.0, 30.0)] {
            let (ra, dec) = aligned.pixel_to_sky(x, y);
            let (gx, gy) = grid.sky_to_pixel(ra, dec).unwrap();
            let (mr, md) = m.pixel_to_sky(gx, gy);
            let (tr, td) = e.true_wcs.pixel_to_sky(x, y);
            let a = sky_to_tangent_arcsec(cc, mr, md);
            let b = sky_to_tangent_arcsec(cc, tr, td);
            worst = worst.max((a.0 - b.0).hypot(a.1 - b.1));
        }
    }
    eprintln!("mosaic WCS against the truth: worst {:.2} mas", 1e3 * worst);
    assert!(worst < 0.01, "mosaic WCS off by {:.2} mas", 1e3 * worst);
    let bytes = std::fs::read(w.join("m.fits")).unwrap();
    assert!(bytes.windows(19).any(|x| x == b"tessera astrometry:"), "no HISTORY card of the correction");
    let png = std::fs::read(w.join("out/astrometry/F300M_residuals.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 5000, "residual PNG");
    // the matched-source table: residuals after the fit near the catalogue noise
    let csv = std::fs::read_to_string(w.join("out/astrometry/matches.csv")).unwrap();
    let rows: Vec<Vec<f64>> = csv.lines().skip(1).map(|l| l.split(',').map(|v| v.parse().unwrap()).collect()).collect();
    assert_eq!(rows.len(), r.steps[1].n_matches);
    let after_rms = (rows.iter().map(|v| v[10] * v[10] + v[11] * v[11]).sum::<f64>() / rows.len() as f64).sqrt();
    assert!((after_rms - 1e3 * r.steps[1].rms_arcsec).abs() < 0.01, "{after_rms} vs {}", r.steps[1].rms_arcsec);
}

/// Run the scene against `catalog_text` and check that the stage warns and changes nothing.
fn bad_catalog_keeps_the_wcs(catalog_text: &str, label: &str) {
    let w = tmp();
    let cat = w.path().join("cat.csv");
    std::fs::write(&cat, catalog_text).unwrap();
    let out = w.path().join("m.fits");
    let o = tessera(
        w.path(),
        &[
            "--set",
            "run.output_dir=\"out\"",
            "--set",
            "outlier.enabled=false",
            "mosaic",
            scene().to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--catalog",
            cat.to_str().unwrap(),
        ],
    );
    ok(&o);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("[astrometry]") && stderr.contains("the WCS is kept"), "{label}: {stderr}");
    let r: AstrometryFile = tessera::io::json::read_json(&w.path().join("out/astrometry/astrometry.json")).unwrap();
    assert!(r.correction.is_none() && r.tweakback.is_empty(), "{label}: {r:?}");
    eprintln!("{label}: {:?}", r.warnings);
    let plan: Plan = tessera::io::json::read_json(&w.path().join("out/align/plan.json")).unwrap();
    assert_eq!(mosaic_wcs(&out), plan.grid.wcs(), "{label}: mosaic WCS changed");
    let tweak = std::fs::read_dir(w.path().join("out/astrometry")).unwrap().count();
    assert_eq!(tweak, 1, "{label}: files besides astrometry.json");
}

#[test]
fn catalogues_that_miss_the_field_or_are_wrong_warn_and_keep_the_wcs() {
    let text = std::fs::read_to_string(scene().join("aux/refcat.csv")).unwrap();
    let rows: Vec<(f64, f64)> = text
        .lines()
        .skip(1)
        .map(|l| {
            let (a, b) = l.split_once(',').unwrap();
            (a.parse().unwrap(), b.parse().unwrap())
        })
        .collect();
    // 1 deg to the north: no overlap
    let far: String = rows.iter().map(|(r, d)| format!("{r},{}\n", d + 1.0)).collect();
    bad_catalog_keeps_the_wcs(&format!("ra,dec\n{far}"), "non-overlapping");
    // the same number of sources at unrelated positions over the same area
    let (r0, r1) = rows.iter().fold((f64::MAX, f64::MIN), |a, p| (a.0.min(p.0), a.1.max(p.0)));
    let (d0, d1) = rows.iter().fold((f64::MAX, f64::MIN), |a, p| (a.0.min(p.1), a.1.max(p.1)));
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut u = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let wrong: String = rows.iter().map(|_| format!("{},{}\n", r0 + (r1 - r0) * u(), d0 + (d1 - d0) * u())).collect();
    bad_catalog_keeps_the_wcs(&format!("ra,dec\n{wrong}"), "wrong");
}

#[test]
fn another_band_applies_the_reference_band_solutions_or_solves_with_a_note() {
    // F335M of the same visits: the same seed gives the same pointing errors
    let d = same_visits("F335M");
    let reference = align_file(aligned_run());
    let file = aligned_run().join("out/align/align.json");
    let set = format!("align.shifts_file=\"{}\"", file.display());
    let w = tmp();
    run_mosaic(d.path(), w.path(), &["--set", &set, "--set", "outlier.enabled=false"]);
    let f = align_file(w.path());
    assert!(f.method.starts_with("from ") && f.band == "F335M" && f.reference_band == "F300M", "{f:?}");
    for v in &f.visits {
        let r = reference.visits.iter().find(|x| x.visit == v.visit).unwrap();
        assert_eq!(v.shift_arcsec, r.shift_arcsec, "{}", v.visit);
    }
    let by_file: BTreeMap<String, String> = f.exposures.iter().map(|e| (e.file.clone(), e.visit.clone())).collect();
    let (after, want) = lattice(d.path(), &|file, w| f.correction(&by_file[file]).apply(w));
    let ra = relative_rms(&after, &want);
    eprintln!("F335M with the F300M shifts: relative rms {:.2} mas", 1e3 * ra);
    assert!(ra < 0.005, "relative rms {:.2} mas", 1e3 * ra);
    // without the file: solved in F335M, with a note
    let w2 = tmp();
    run_mosaic(d.path(), w2.path(), &["--set", "outlier.enabled=false"]);
    let g = align_file(w2.path());
    assert_eq!(g.method, "solved");
    assert!(g.warnings.iter().any(|x| x.contains("is not the reference band F300M")), "{:?}", g.warnings);
    let by_file: BTreeMap<String, String> = g.exposures.iter().map(|e| (e.file.clone(), e.visit.clone())).collect();
    let (after, want) = lattice(d.path(), &|file, w| g.correction(&by_file[file]).apply(w));
    assert!(relative_rms(&after, &want) < 0.005);
    // the absolute solution of the reference band applied unchanged, with tweakback
    let sol = aligned_run().join("out/astrometry/astrometry.json");
    let reference: AstrometryFile = tessera::io::json::read_json(&sol).unwrap();
    let w3 = tmp();
    let sets = [
        set.clone(),
        "astrometry.reference_band=\"F300M\"".to_string(),
        format!("astrometry.solution_file=\"{}\"", sol.display()),
    ];
    run_mosaic(
        d.path(),
        w3.path(),
        &["--set", &sets[0], "--set", &sets[1], "--set", &sets[2], "--set", "outlier.enabled=false"],
    );
    let r: AstrometryFile = tessera::io::json::read_json(&w3.path().join("out/astrometry/astrometry.json")).unwrap();
    assert!(r.method.starts_with("from ") && r.band == "F335M", "{r:?}");
    assert_eq!(r.correction, reference.correction);
    let tweak = |file: &str| -> PathBuf {
        w3.path().join("out/astrometry").join(format!("{}_tweakback.fits", file.strip_suffix("_cal.fits").unwrap()))
    };
    let (abs, want) = lattice(d.path(), &|file, _| read_cal_meta(&tweak(file)).unwrap().wcs);
    let rabs = rms(&abs, &want);
    eprintln!("F335M with the F300M shifts and astrometry: absolute rms {:.2} mas", 1e3 * rabs);
    assert!(rabs < 0.005, "absolute rms {:.2} mas", 1e3 * rabs);
}

/// MIRI F1000W: 2x2 tiles x 4 dithers of 512x520 px (the small preset's 128 rows hold too few
/// stars in the tile overlaps to align on), the same pointing errors as the NIRCam scene's design.
fn miri_scene() -> &'static Path {
    static D: OnceLock<PathBuf> = OnceLock::new();
    cached(
        &D,
        &[
            "simulate.instrument=\"miri\"",
            "simulate.size=\"medium\"",
            "simulate.tiles=\"2x2\"",
            "simulate.dithers=4",
            "simulate.pointing_error_arcsec=0.15",
            "simulate.seed=5",
        ],
    )
}

#[test]
fn miri_f1000w_relative_and_absolute_alignment_within_10_mas() {
    let dir = miri_scene();
    let t = truth(dir);
    let w = tmp();
    let cat = dir.join("aux/refcat.csv").to_str().unwrap().to_string();
    run_mosaic(dir, w.path(), &["--catalog", &cat, "--set", "outlier.enabled=false"]);
    let f = align_file(w.path());
    assert!(f.visits.iter().all(|v| v.solved), "{:?} {:?}", f.visits, f.warnings);
    let by_file: BTreeMap<String, String> = f.exposures.iter().map(|e| (e.file.clone(), e.visit.clone())).collect();
    let (before, want) = lattice(dir, &|_, w| w.clone());
    let (after, _) = lattice(dir, &|file, w| f.correction(&by_file[file]).apply(w));
    let (rb, ra) = (relative_rms(&before, &want), relative_rms(&after, &want));
    let r: AstrometryFile = tessera::io::json::read_json(&w.path().join("out/astrometry/astrometry.json")).unwrap();
    let c = r.correction.expect("a solution");
    let tweak = |file: &str| -> PathBuf {
        w.path().join("out/astrometry").join(format!("{}_tweakback.fits", file.strip_suffix("_cal.fits").unwrap()))
    };
    let (abs, _) = lattice(dir, &|file, _| read_cal_meta(&tweak(file)).unwrap().wcs);
    let rabs = rms(&abs, &want);
    let drot = c.rotation_deg - t.absolute_rotation_deg;
    let sig = r.steps[1].rotation_err_deg;
    eprintln!(
        "MIRI: relative rms {:.1} -> {:.2} mas; absolute rms {:.2} mas; rotation error {:.5} deg (1-sigma {:.5})",
        1e3 * rb,
        1e3 * ra,
        1e3 * rabs,
        drot,
        sig
    );
    assert!(rb > 0.05, "too small pointing errors ({rb} arcsec)");
    assert!(ra < 0.010, "MIRI relative rms {:.2} mas", 1e3 * ra);
    assert!(rabs < 0.010, "MIRI absolute rms {:.2} mas", 1e3 * rabs);
    // the target, and the rotation within its reported statistical error (the strict fit is
    // weighted by the centroid errors: ~0.0015 deg for ~160 stars over 2' against a catalogue with
    // 10 mas noise per axis; 0.0017 unweighted, whose error here was 0.0022 deg)
    // Since MIRI's real focal plane (issue 15: the imager field is 74" of the 113" frame, the
    // coronagraph strip NON_SCIENCE), this 2x2 scene spans less sky and holds fewer stars: the
    // reported 1-sigma is ~0.0019 deg and the error measured 0.0039 deg (2.1 sigma), so the fixed
    // 0.002 deg target is no longer asserted here, only the statistical one (3x2 tiles gave
    // 0.0025 deg at 1-sigma 0.0015).
    assert!(drot.abs() < 3.0 * sig && sig < 0.002, "rotation off by {drot} deg (1-sigma {sig})");
    assert!(w.path().join("out/astrometry/F1000W_residuals.png").is_file());
}

#[test]
fn tessera_run_solves_in_the_reference_band_and_applies_it_to_the_other_band() {
    // F277W of the same visits (the same seed gives the same pointing errors); it sorts before
    // F300M, so the campaign has to reorder the bands to run the reference band first
    let d = same_visits("F277W");
    let w = tmp();
    let toml = format!(
        "[run]\noutput_dir = \"out\"\n[outlier]\nenabled = false\n[[target]]\nname = \"ngc\"\n\
         inputs = [\"{}\", \"{}\"]\ncatalog = \"{}\"\n",
        d.path().display(),
        scene().display(),
        scene().join("aux/refcat.csv").display()
    );
    std::fs::write(w.path().join("campaign.toml"), toml).unwrap();
    let o = tessera(w.path(), &["run", "campaign.toml"]);
    ok(&o);
    let stderr = String::from_utf8_lossy(&o.stderr);
    let (r300, r277) = (w.path().join("out/ngc/F300M"), w.path().join("out/ngc/F277W"));
    let read_align = |d: &Path| -> AlignFile { tessera::io::json::read_json(&d.join("align/align.json")).unwrap() };
    let (a300, a277) = (read_align(&r300), read_align(&r277));
    assert_eq!(a300.method, "solved", "{stderr}");
    assert!(a277.method.starts_with("from ") && a277.reference_band == "F300M", "{a277:?}");
    assert!(a300.visits.iter().all(|v| v.solved && v.shift_arcsec != [0.0, 0.0]));
    for v in &a277.visits {
        let r = a300.visits.iter().find(|x| x.visit == v.visit).unwrap();
        assert_eq!(v.shift_arcsec, r.shift_arcsec, "{}", v.visit);
    }
    let s300: AstrometryFile = tessera::io::json::read_json(&r300.join("astrometry/astrometry.json")).unwrap();
    let s277: AstrometryFile = tessera::io::json::read_json(&r277.join("astrometry/astrometry.json")).unwrap();
    assert_eq!(s300.method, "solved");
    assert!(s277.method.starts_with("from ") && s277.band == "F277W", "{s277:?}");
    assert!(s300.correction.is_some());
    assert_eq!(s277.correction, s300.correction);
    // the F277W tweakback files against F277W's own truth: absolute positions within 5 mas
    let tweak = |file: &str| -> PathBuf {
        r277.join("astrometry").join(format!("{}_tweakback.fits", file.strip_suffix("_cal.fits").unwrap()))
    };
    let (abs, want) = lattice(d.path(), &|file, _| read_cal_meta(&tweak(file)).unwrap().wcs);
    let (before, _) = lattice(d.path(), &|_, w| w.clone());
    let (rb, ra) = (rms(&before, &want), rms(&abs, &want));
    eprintln!("tessera run: F277W with the F300M solutions, absolute rms {:.1} -> {:.2} mas", 1e3 * rb, 1e3 * ra);
    assert!(rb > 0.2 && ra < 0.005, "absolute rms {:.2} mas (before {:.1})", 1e3 * ra, 1e3 * rb);
}

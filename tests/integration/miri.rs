//! MIRI prep and level matching end to end on a simulated 2x2 tiles x 4 dithers F770W scene full
//! of emission, with per-exposure background offsets, a Lyot-box level and off-source exposures
//! whose background drifts in time: the closest-in-time off group is subtracted, the Lyot box is
//! matched and recombined, the offsets match the truth and the mosaic has no seams.

use super::level::{run, tile_residuals};
use crate::common::{cached, simulate, tmp, truth};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const SCENE: [&str; 8] = [
    "simulate.instrument=\"miri\"",
    "simulate.filter=\"F770W\"",
    "simulate.size=\"medium\"",
    "simulate.tiles=\"2x2\"",
    "simulate.dithers=4",
    "simulate.background_offset_mjysr=0.3",
    "simulate.pointing_error_arcsec=0.0",
    "simulate.seed=3",
];

/// The scene with two off-source exposures per tile (written to `off/`).
fn with_offs() -> &'static Path {
    static D: OnceLock<PathBuf> = OnceLock::new();
    cached(&D, &SCENE)
}

fn json(path: &Path) -> serde_json::Value {
    tessera::io::json::read_json(path).unwrap()
}

#[test]
fn off_background_uses_the_closest_off_group_and_leaves_the_truth() {
    let dir = with_offs();
    let t = truth(dir);
    let w = tmp();
    run(2, dir, w.path(), &["--set", "outlier.enabled=false"], &[]);
    let prep = json(&w.path().join("out/prep/prep.json"));
    let offs: Vec<_> = t.exposures.iter().filter(|e| e.is_off).collect();
    assert_eq!(offs.len(), 8, "two off exposures per tile");
    // off groups as the truth has them: the off exposures of one observation
    let mut groups: BTreeMap<String, Vec<&tessera::stages::simulate::ExposureTruth>> = BTreeMap::new();
    for o in &offs {
        groups.entry(o.file[..13].to_string()).or_default().push(o);
    }
    let mean = |v: &[&tessera::stages::simulate::ExposureTruth],
                f: &dyn Fn(&tessera::stages::simulate::ExposureTruth) -> f64| {
        v.iter().map(|e| f(e)).sum::<f64>() / v.len() as f64
    };
    let rows = prep["exposures"].as_array().unwrap();
    assert_eq!(rows.len(), 16);
    let mut worst = 0.0f64;
    for r in rows {
        let e = t.exposures.iter().find(|e| e.file == r["file"].as_str().unwrap()).unwrap();
        // the closest group in time, computed from the truth
        let (key, g) = groups
            .iter()
            .min_by(|a, b| {
                let da = (e.expmid_mjd - mean(a.1, &|o| o.expmid_mjd)).abs();
                let db = (e.expmid_mjd - mean(b.1, &|o| o.expmid_mjd)).abs();
                da.total_cmp(&db)
            })
            .unwrap();
        let used = r["off_group"].as_str().unwrap();
        assert!(used.starts_with(key.as_str()), "{}: used {used}, closest in time is {key}", e.file);
        let dt = e.expmid_mjd - mean(g, &|o| o.expmid_mjd);
        assert!((r["dt_bgr_days"].as_f64().unwrap() - dt).abs() < 1e-6, "{}: DT_BGR", e.file);
        // the background subtracted (median over the frame: the imager field) against the truth
        // level of the off group (drifting sky plus the off exposures' own offsets)
        let truth_bg = mean(g, &|o| o.background_mjysr);
        let got = r["background_median_mjysr"].as_f64().unwrap();
        worst = worst.max((got - truth_bg).abs());
        // the corrected copy carries DT_BGR in its primary header
        let copy = PathBuf::from(r["written"].as_str().unwrap());
        let copy = if copy.is_absolute() { copy } else { w.path().join(copy) };
        let h = tessera::io::fits::read_header(&copy, "PRIMARY").unwrap();
        match h.get("DT_BGR") {
            Some(tessera::geom::CardValue::Real(v)) => assert!((v - dt).abs() < 1e-9),
            other => panic!("{}: DT_BGR in the header: {other:?}", copy.display()),
        }
    }
    eprintln!("off background against the truth: worst {worst:.4} MJy/sr");
    assert!(worst < 0.02, "off-source background off by {worst} MJy/sr");
}

/// Step-1 + step-2 + band correction per science file, relative offsets against `want` per file.
fn relative_rms(work: &Path, want: &BTreeMap<String, f64>) -> f64 {
    let r = json(&work.join("out/level/level.json"));
    let band = r["band_sky_mjysr"].as_f64().unwrap();
    let mut res = vec![];
    for (f, v) in r["exposure_offsets_mjysr"].as_object().unwrap() {
        let p: Vec<&str> = f.split('_').collect();
        let key = format!("{}_{}_{}", p[0], p[1], p[3]);
        let got = v.as_f64().unwrap() + r["tile_offsets_mjysr"][&key].as_f64().unwrap() + band;
        res.push(want[f] - got);
    }
    let m = res.iter().sum::<f64>() / res.len() as f64;
    (res.iter().map(|r| (r - m).powi(2)).sum::<f64>() / res.len() as f64).sqrt()
}

#[test]
fn miri_offsets_lyot_and_seams_with_off_backgrounds() {
    let dir = with_offs();
    let t = truth(dir);
    let w = tmp();
    let out = run(2, dir, w.path(), &[], &[]);
    // after prep each science exposure keeps its offset less the mean offset of its off group
    let prep = json(&w.path().join("out/prep/prep.json"));
    let mut want = BTreeMap::new();
    for r in prep["exposures"].as_array().unwrap() {
        let f = r["file"].as_str().unwrap();
        let e = t.exposures.iter().find(|e| e.file == f).unwrap();
        let g: Vec<_> = r["off_files"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        let offs: Vec<_> = t.exposures.iter().filter(|o| g.contains(&o.file.as_str())).collect();
        let bg = offs.iter().map(|o| o.background_mjysr).sum::<f64>() / offs.len() as f64;
        want.insert(f.to_string(), e.background_mjysr - bg);
    }
    let spread_in = want.values().copied().fold(f64::MIN, f64::max) - want.values().copied().fold(f64::MAX, f64::min);
    let rms = relative_rms(w.path(), &want);
    // the off exposures carry the Lyot level too: after prep the box has no step left to solve
    let r = json(&w.path().join("out/level/level.json"));
    let lyot: Vec<f64> = r["lyot_offsets_mjysr"].as_object().unwrap().values().map(|v| v.as_f64().unwrap()).collect();
    let lyot_worst = lyot.iter().fold(0.0f64, |a, v| a.max(v.abs()));
    let tiles = tile_residuals(dir, w.path(), &out);
    let seams = tiles.iter().copied().fold(f64::MIN, f64::max) - tiles.iter().copied().fold(f64::MAX, f64::min);
    eprintln!(
        "MIRI with offs: offsets {rms:.2e} rms (spread {spread_in:.3}), Lyot residual worst {lyot_worst:.4}, \
         tile medians {tiles:?}"
    );
    assert!(spread_in > 0.2, "the scene's offsets are too small to test anything ({spread_in})");
    assert!(rms < 0.005, "relative offsets off by {rms} MJy/sr rms");
    assert_eq!(lyot.len(), 16);
    assert!(lyot_worst < 0.01, "Lyot box level off by up to {lyot_worst} MJy/sr");
    assert!(seams < 0.01, "seams between tiles: {tiles:?}");
    assert!(w.path().join("out/level/dithers.png").is_file() && w.path().join("out/level/tiles.png").is_file());
}

#[test]
fn the_lyot_step_is_removed_without_off_exposures() {
    let d = tmp();
    let mut sets = SCENE.to_vec();
    sets.push("simulate.miri_off_exposures=0");
    simulate(d.path(), &sets);
    let t = truth(d.path());
    let w = tmp();
    let out = run(2, d.path(), w.path(), &[], &[]);
    let tiles = tile_residuals(d.path(), w.path(), &out);
    let seams = tiles.iter().copied().fold(f64::MIN, f64::max) - tiles.iter().copied().fold(f64::MAX, f64::min);
    let prep = json(&w.path().join("out/prep/prep.json"));
    let notes = prep["notes"].as_array().unwrap();
    assert!(notes.iter().any(|n| n.as_str().unwrap().contains("no MIRI off-source exposures")), "{notes:?}");
    let r = json(&w.path().join("out/level/level.json"));
    let mut worst = 0.0f64;
    for (f, v) in r["lyot_offsets_mjysr"].as_object().unwrap() {
        let e = t.exposures.iter().find(|e| &e.file == f).unwrap();
        worst = worst.max((v.as_f64().unwrap() - e.lyot_offset_mjysr).abs());
    }
    // the sky drifts in time: what level matching removes is the whole additive background
    let want: BTreeMap<String, f64> = t.exposures.iter().map(|e| (e.file.clone(), e.background_mjysr)).collect();
    let rms = relative_rms(w.path(), &want);
    eprintln!("MIRI without offs: Lyot step residual worst {worst:.4} MJy/sr, offsets {rms:.2e} rms, tiles {tiles:?}");
    assert!(seams < 0.01, "seams between tiles: {tiles:?}");
    assert!(worst < 0.01, "Lyot step left: up to {worst} MJy/sr");
    assert!(rms < 0.005, "relative offsets off by {rms} MJy/sr rms");
}

#[test]
fn a_disconnected_tile_warns_and_each_part_is_still_matched() {
    // three MIRI tiles in a row, the middle one removed: the outer two never overlap
    let d = tmp();
    simulate(
        d.path(),
        &[
            "simulate.instrument=\"miri\"",
            "simulate.filter=\"F770W\"",
            "simulate.size=\"small\"",
            "simulate.tiles=\"3x1\"",
            "simulate.dithers=4",
            "simulate.background_offset_mjysr=0.3",
            "simulate.pointing_error_arcsec=0.0",
            "simulate.miri_off_exposures=0",
            "simulate.seed=4",
        ],
    );
    let t = truth(d.path());
    for e in t.exposures.iter().filter(|e| e.tile == 1) {
        std::fs::remove_file(d.path().join(&e.file)).unwrap();
    }
    let w = tmp();
    let out = run(2, d.path(), w.path(), &["--set", "outlier.enabled=false"], &[]);
    assert!(out.is_file(), "no mosaic written");
    let r = json(&w.path().join("out/level/level.json"));
    let warnings: Vec<&str> = r["warnings"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    // each tile is one image here, so the warning names them as unmatched tiles
    let named = |obs: &str| {
        warnings.iter().any(|m| (m.contains("disconnected") || m.contains("no usable overlap")) && m.contains(obs))
    };
    assert!(named("jw09999001001") && named("jw09999003001"), "expected both parts named, got {warnings:?}");
    // inside each tile the dither offsets are still right (the tiles' relative level is unknowable)
    let exp = r["exposure_offsets_mjysr"].as_object().unwrap();
    for tile in [0, 2] {
        let res: Vec<f64> = t
            .exposures
            .iter()
            .filter(|e| e.tile == tile)
            .map(|e| e.background_mjysr - exp[&e.file].as_f64().unwrap())
            .collect();
        let m = res.iter().sum::<f64>() / res.len() as f64;
        let rms = (res.iter().map(|v| (v - m).powi(2)).sum::<f64>() / res.len() as f64).sqrt();
        eprintln!("tile {tile}: dither offsets recovered to {rms:.2e} MJy/sr rms");
        assert!(rms < 0.005, "tile {tile}: dither offsets off by {rms}");
    }
}

//! Background level matching end to end: solved offsets against the simulated truth, the same offsets
//! for 1 to 4 ranks, and no seams between tiles in the final mosaic (with `--no-level` as the control).

use crate::common::{mpirun, ok, simulate, tmp};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use tessera::io::fits::{read_ext_f32, read_ext_u32, read_header, read_image};
use tessera::stages::simulate::Truth;

/// Noise-realistic LW scene, 2x2 tiles x 4 dithers, with per-exposure background offsets of 0.1 MJy/sr
/// rms and no stripes or pointing errors (those are other stages' work).
fn offsets_scene() -> &'static Path {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| {
        let d = tmp().keep();
        simulate(
            &d,
            &[
                "simulate.size=\"small\"",
                "simulate.tiles=\"2x2\"",
                "simulate.dithers=4",
                "simulate.stripe_rms_mjysr=0.0",
                "simulate.background_offset_mjysr=0.1",
                "simulate.pointing_error_arcsec=0.0",
                "simulate.seed=5",
            ],
        );
        d
    })
}

fn run(n: usize, dir: &Path, work: &Path, extra: &[&str], flags: &[&str]) -> PathBuf {
    let out = work.join("m.fits");
    let (d, o) = (dir.to_str().unwrap().to_string(), out.to_str().unwrap().to_string());
    let mut args: Vec<&str> = vec!["--set", "run.output_dir=\"out\""];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["mosaic", &d, "-o", &o]);
    args.extend_from_slice(flags);
    ok(&mpirun(n, work, &args));
    out
}

/// Final correction per exposure file: step-1 offset + its tile's step-2 offset + the band constant.
fn corrections(work: &Path) -> BTreeMap<String, f64> {
    let r: serde_json::Value = tessera::io::json::read_json(&work.join("out/level/level.json")).unwrap();
    let band = r["band_sky_mjysr"].as_f64().unwrap();
    let mut out = BTreeMap::new();
    for (f, v) in r["exposure_offsets_mjysr"].as_object().unwrap() {
        let p: Vec<&str> = f.split('_').collect();
        let key = format!("{}_{}_{}", p[0], p[1], p[3]);
        out.insert(f.clone(), v.as_f64().unwrap() + r["tile_offsets_mjysr"][&key].as_f64().unwrap() + band);
    }
    out
}

#[test]
fn offsets_match_the_truth_for_1_to_4_ranks() {
    let dir = offsets_scene();
    let t: Truth = tessera::io::json::read_json(&dir.join("truth/truth.json")).unwrap();
    let mut first: Option<(BTreeMap<String, f64>, String)> = None;
    for n in 1..=4 {
        let w = tmp();
        run(n, dir, w.path(), &["--set", "outlier.enabled=false"], &[]);
        let c = corrections(w.path());
        let pairs = std::fs::read_to_string(w.path().join("out/level/pairs.csv")).unwrap();
        // relative offsets: truth minus solved, less its mean
        let res: Vec<f64> = t.exposures.iter().map(|e| e.offset_mjysr - c[&e.file]).collect();
        let mean = res.iter().sum::<f64>() / res.len() as f64;
        let rms = (res.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / res.len() as f64).sqrt();
        let spread = t.exposures.iter().map(|e| e.offset_mjysr).fold(f64::MIN, f64::max)
            - t.exposures.iter().map(|e| e.offset_mjysr).fold(f64::MAX, f64::min);
        eprintln!("{n} rank(s): offsets recovered to {rms:.2e} MJy/sr rms (injected spread {spread:.3})");
        assert_eq!(res.len(), 32);
        assert!(spread > 0.2, "the scene's offsets are too small to test anything ({spread})");
        assert!(rms < 0.005, "{n} rank(s): relative offsets off by {rms} MJy/sr rms");
        match &first {
            None => first = Some((c, pairs)),
            Some((c1, p1)) => {
                assert_eq!(&c, c1, "offsets differ between 1 and {n} ranks");
                assert_eq!(&pairs, p1, "pair table differs between 1 and {n} ranks");
            }
        }
    }
}

/// Median of (mosaic - truth) over the mosaic pixels fed by one tile only, per tile.
fn tile_residuals(dir: &Path, work: &Path, mosaic: &Path) -> Vec<f64> {
    let t: Truth = tessera::io::json::read_json(&dir.join("truth/truth.json")).unwrap();
    let plan: serde_json::Value = tessera::io::json::read_json(&work.join("out/plan/plan.json")).unwrap();
    let tile_of_file: BTreeMap<&str, usize> = t.exposures.iter().map(|e| (e.file.as_str(), e.tile)).collect();
    let tile_of_bit: Vec<usize> = plan["plan"]["exposures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let p = e["path"].as_str().unwrap();
            tile_of_file[Path::new(p).file_name().unwrap().to_str().unwrap()]
        })
        .collect();
    let sci = read_ext_f32(mosaic, "SCI").unwrap();
    let (cshape, con) = read_ext_u32(mosaic, "CON").unwrap();
    let (ny, nx) = (cshape[cshape.len() - 2], cshape[cshape.len() - 1]);
    let planes = con.len() / (ny * nx);
    let mw = tessera::geom::TanSip::from_cards(&read_header(mosaic, "SCI").unwrap()).unwrap();
    let (tsky, _) = read_image(&dir.join("truth/truth_sky.fits")).unwrap();
    let tw = t.truth_grid.wcs();
    let ntiles = t.exposures.iter().map(|e| e.tile).max().unwrap() + 1;
    let mut per_tile: Vec<Vec<f64>> = vec![vec![]; ntiles];
    for ((y, x), &v) in tsky.indexed_iter() {
        let (ra, dec) = tw.pixel_to_sky(x as f64, y as f64);
        let Ok((mx, my)) = mw.sky_to_pixel(ra, dec) else { continue };
        let (i, j) = (mx.round(), my.round());
        if i < 0.0 || j < 0.0 || i as usize >= nx || j as usize >= ny {
            continue;
        }
        let (i, j) = (i as usize, j as usize);
        let s = sci[[j, i]];
        if !s.is_finite() {
            continue;
        }
        let mut tiles = std::collections::BTreeSet::new();
        for p in 0..planes {
            let bits = con[p * ny * nx + j * nx + i];
            for b in 0..32 {
                if bits & (1 << b) != 0 {
                    tiles.insert(tile_of_bit[p * 32 + b]);
                }
            }
        }
        if tiles.len() == 1 {
            per_tile[*tiles.iter().next().unwrap()].push(f64::from(s) - f64::from(v));
        }
    }
    per_tile
        .into_iter()
        .map(|mut r| {
            assert!(r.len() > 1000, "only {} single-tile pixels", r.len());
            r.sort_by(f64::total_cmp);
            r[r.len() / 2]
        })
        .collect()
}

#[test]
fn the_mosaic_has_no_seams_between_tiles() {
    let dir = offsets_scene();
    let spread = |m: &[f64]| m.iter().copied().fold(f64::MIN, f64::max) - m.iter().copied().fold(f64::MAX, f64::min);
    let w = tmp();
    let out = run(2, dir, w.path(), &[], &[]);
    let with = tile_residuals(dir, w.path(), &out);
    let w0 = tmp();
    let out0 = run(2, dir, w0.path(), &[], &["--no-level"]);
    let without = tile_residuals(dir, w0.path(), &out0);
    eprintln!("tile residual medians with level: {with:?}; without: {without:?}");
    assert!(spread(&without) > 0.05, "the control run has no seams to remove: {without:?}");
    assert!(spread(&with) < 0.01, "seams left between tiles: {with:?}");
}

#[test]
fn a_single_tile_band_warns_and_still_mosaics() {
    // one tile of NIRCam LW: its two modules never overlap, so the tile step has nothing to match
    let d = tmp();
    simulate(d.path(), &["simulate.size=\"tiny\"", "simulate.tiles=\"1x1\"", "simulate.dithers=2", "simulate.seed=9"]);
    let w = tmp();
    let out = run(2, d.path(), w.path(), &[], &[]);
    assert!(out.is_file(), "no mosaic written");
    let r: serde_json::Value = tessera::io::json::read_json(&w.path().join("out/level/level.json")).unwrap();
    let warnings: Vec<&str> = r["warnings"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(
        warnings.iter().any(|m| m.contains("no usable overlap for 2 tiles") && m.contains("nrcalong")),
        "expected a warning naming the unmatched tiles, got {warnings:?}"
    );
    // the tile offsets of unmatched groups are 0: nothing invented
    for (k, v) in r["tile_offsets_mjysr"].as_object().unwrap() {
        assert_eq!(v.as_f64().unwrap(), 0.0, "{k}");
    }
}

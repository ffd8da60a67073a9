//! Background level matching end to end: solved offsets against the simulated truth, the same offsets
//! for 1 to 4 ranks, and no seams between tiles in the final mosaic (with `--no-level` as the control).

use crate::common::{cached, mpirun, ok, simulate, tmp};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use tessera::io::fits::{read_ext_f32, read_ext_u32, read_header, read_image};
use tessera::stages::simulate::Truth;

/// Noise-realistic LW scene, 2x2 tiles x 4 dithers, with per-exposure background offsets of 0.1 MJy/sr
/// rms and no stripes or pointing errors (those are other stages' work).
fn offsets_scene() -> &'static Path {
    static D: OnceLock<PathBuf> = OnceLock::new();
    cached(
        &D,
        &[
            "simulate.size=\"small\"",
            "simulate.tiles=\"2x2\"",
            "simulate.dithers=4",
            "simulate.stripe_rms_mjysr=0.0",
            "simulate.background_offset_mjysr=0.1",
            "simulate.pointing_error_arcsec=0.0",
            "simulate.seed=5",
        ],
    )
}

pub(crate) fn run(n: usize, dir: &Path, work: &Path, extra: &[&str], flags: &[&str]) -> PathBuf {
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
pub(crate) fn tile_residuals(dir: &Path, work: &Path, mosaic: &Path) -> Vec<f64> {
    tile_points(dir, work, mosaic)
        .into_iter()
        .map(|p| {
            let mut r: Vec<f64> = p.into_iter().map(|(_, _, r)| r).collect();
            assert!(r.len() > 1000, "only {} single-tile pixels", r.len());
            r.sort_by(f64::total_cmp);
            r[r.len() / 2]
        })
        .collect()
}

/// Per tile, `(x, y, mosaic - truth)` at the mosaic pixels fed by that tile only.
fn tile_points(dir: &Path, work: &Path, mosaic: &Path) -> Vec<Vec<(f64, f64, f64)>> {
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
    let mut per_tile: Vec<Vec<(f64, f64, f64)>> = vec![vec![]; ntiles];
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
            per_tile[*tiles.iter().next().unwrap()].push((mx, my, f64::from(s) - f64::from(v)));
        }
    }
    per_tile
}

/// Per tile, how much (max - min over the tile's footprint corners) the applied correction departs
/// from the injected plane, after removing what no level matching can know (the mean departure over
/// the tiles: one constant and one plane for the whole band).
fn plane_errors(dir: &Path, work: &Path) -> Vec<f64> {
    let t: Truth = tessera::io::json::read_json(&dir.join("truth/truth.json")).unwrap();
    let r: serde_json::Value = tessera::io::json::read_json(&work.join("out/level/level.json")).unwrap();
    let plan: serde_json::Value = tessera::io::json::read_json(&work.join("out/plan/plan.json")).unwrap();
    let g = &plan["plan"]["grid"];
    let grid: tessera::geom::OutputGrid = serde_json::from_value(g.clone()).unwrap();
    let gw = grid.wcs();
    let origin: Vec<f64> = r["plane_origin_xy"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let target = (t.target_deg[0], t.target_deg[1]);
    // MIRI: the off-source background prep subtracted (its median), per file
    let prep: BTreeMap<String, f64> = std::fs::read_to_string(work.join("out/prep/prep.json"))
        .ok()
        .map(|s| serde_json::from_str::<serde_json::Value>(&s).unwrap())
        .and_then(|v| v["exposures"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|e| Some((e["file"].as_str()?.to_string(), e["background_median_mjysr"].as_f64()?)))
        .collect();
    // the correction applied to a file at grid (x, y): prep's background, its step-1 offset plus its
    // tile's plane or constant (the band constant is common to all)
    let applied = |file: &str, x: f64, y: f64| {
        let p: Vec<&str> = file.split('_').collect();
        let key = format!("{}_{}_{}", p[0], p[1], p[3]);
        prep.get(file).copied().unwrap_or(0.0)
            + r["exposure_offsets_mjysr"][file].as_f64().unwrap()
            + match r["tile_planes"].get(&key) {
                Some(c) => {
                    let c: Vec<f64> = c.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
                    c[0] + c[1] * (x - origin[0]) + c[2] * (y - origin[1])
                }
                None => r["tile_offsets_mjysr"][&key].as_f64().unwrap(),
            }
    };
    // what was injected: the exposure's background and its tile's plane
    let injected = |e: &tessera::stages::simulate::ExposureTruth, x: f64, y: f64| {
        let (ra, dec) = gw.pixel_to_sky(x, y);
        let (xi, eta) = tessera::geom::wcs::sky_to_tangent_arcsec(target, ra, dec);
        e.background_mjysr + e.plane[0] + e.plane[1] * xi + e.plane[2] * eta
    };
    let ntiles = t.exposures.iter().map(|e| e.tile).max().unwrap() + 1;
    // departures at every footprint corner, per tile
    let mut dep: Vec<Vec<(f64, f64, f64)>> = vec![vec![]; ntiles];
    for e in plan["plan"]["exposures"].as_array().unwrap() {
        let file = Path::new(e["path"].as_str().unwrap()).file_name().unwrap().to_str().unwrap().to_string();
        let te = t.exposures.iter().find(|x| x.file == file).unwrap();
        for c in e["footprint_px"].as_array().unwrap() {
            let (x, y) = (c[0].as_f64().unwrap(), c[1].as_f64().unwrap());
            dep[te.tile].push((x, y, applied(&file, x, y) - injected(te, x, y)));
        }
    }
    // the band-wide plane of the departures, fitted to all corners, is not knowable: remove it
    let mut m = nalgebra::Matrix3::<f64>::zeros();
    let mut v = nalgebra::Vector3::<f64>::zeros();
    for &(x, y, d) in dep.iter().flatten() {
        let a = nalgebra::Vector3::new(1.0, x, y);
        m += a * a.transpose();
        v += a * d;
    }
    let c = m.lu().solve(&v).unwrap();
    dep.iter()
        .map(|pts| {
            let vals: Vec<f64> = pts.iter().map(|&(x, y, d)| d - (c[0] + c[1] * x + c[2] * y)).collect();
            vals.iter().copied().fold(f64::MIN, f64::max) - vals.iter().copied().fold(f64::MAX, f64::min)
        })
        .collect()
}

#[test]
fn tile_planes_are_removed_with_plane_fitting() {
    let d = tmp();
    simulate(
        d.path(),
        &[
            "simulate.size=\"small\"",
            "simulate.tiles=\"2x2\"",
            "simulate.dithers=4",
            "simulate.stripe_rms_mjysr=0.0",
            "simulate.background_offset_mjysr=0.1",
            "simulate.tile_plane_mjysr=0.05",
            "simulate.pointing_error_arcsec=0.0",
            "simulate.seed=5",
        ],
    );
    let t: Truth = tessera::io::json::read_json(&d.path().join("truth/truth.json")).unwrap();
    assert!(t.exposures.iter().all(|e| e.plane[1] != 0.0 || e.plane[2] != 0.0), "no planes injected");
    let errors = |extra: &[&str]| {
        let w = tmp();
        let mut sets = vec!["--set", "outlier.enabled=false"];
        sets.extend_from_slice(extra);
        run(2, d.path(), w.path(), &sets, &[]);
        (plane_errors(d.path(), w.path()), w)
    };
    let (flat, _) = errors(&[]);
    let (planes, w) = errors(&["--set", "level.tile_fit=\"plane\""]);
    eprintln!("plane left across each tile (MJy/sr): with level fits {flat:?}; with plane fits {planes:?}");
    let r: serde_json::Value = tessera::io::json::read_json(&w.path().join("out/level/level.json")).unwrap();
    // one plane per tile and module (the tile step's images)
    assert_eq!(r["tile_planes"].as_object().unwrap().len(), 8);
    assert!(flat.iter().all(|&a| a > 0.02), "the control leaves no plane to remove: {flat:?}");
    assert!(planes.iter().all(|&a| a < 0.01), "planes left: {planes:?}");
    // the same planes, to the bit, on 3 ranks
    let w3 = tmp();
    run(3, d.path(), w3.path(), &["--set", "outlier.enabled=false", "--set", "level.tile_fit=\"plane\""], &[]);
    let r3: serde_json::Value = tessera::io::json::read_json(&w3.path().join("out/level/level.json")).unwrap();
    assert_eq!(r["tile_planes"], r3["tile_planes"], "planes differ between 2 and 3 ranks");
}

/// Plane left across each tile (see [`plane_errors`]) with tile constants and with tile planes, on
/// the MIRI scene of `scripts/bench --quality` (scene `miri`: F770W, 2x2 tiles x 4 dithers, small,
/// the MIRI defaults: offsets of 0.4 MJy/sr rms, Lyot level, drifting background, off exposures;
/// plus a plane of 0.05 MJy/sr across each tile) with the extra `--set`s `extra`.
fn miri_plane_errors(extra: &[&str]) -> (Vec<f64>, Vec<f64>) {
    let d = tmp();
    let mut sets = vec![
        "simulate.instrument=\"miri\"",
        "simulate.filter=\"F770W\"",
        "simulate.size=\"small\"",
        "simulate.tiles=\"2x2\"",
        "simulate.dithers=4",
        "simulate.tile_plane_mjysr=0.05",
        "simulate.pointing_error_arcsec=0.0",
        "simulate.absolute_offset_arcsec=0.0",
        "simulate.absolute_rotation_deg=0.0",
        "simulate.seed=1",
    ];
    sets.extend_from_slice(extra);
    simulate(d.path(), &sets);
    let t: Truth = tessera::io::json::read_json(&d.path().join("truth/truth.json")).unwrap();
    let sci: Vec<_> = t.exposures.iter().filter(|e| !e.is_off).collect();
    assert!(sci.iter().all(|e| e.plane[1] != 0.0 || e.plane[2] != 0.0), "no planes injected");
    let offs: Vec<f64> = sci.iter().map(|e| e.offset_mjysr).collect();
    let spread = offs.iter().copied().fold(f64::MIN, f64::max) - offs.iter().copied().fold(f64::MAX, f64::min);
    assert!(spread > 0.9, "the scene's offsets do not span 0.1 to 1 MJy/sr: {spread}");
    let errors = |extra: &[&str]| {
        let w = tmp();
        let mut sets = vec!["--set", "outlier.enabled=false"];
        sets.extend_from_slice(extra);
        run(2, d.path(), w.path(), &sets, &[]);
        plane_errors(d.path(), w.path())
    };
    let flat = errors(&[]);
    let planes = errors(&["--set", "level.tile_fit=\"plane\""]);
    eprintln!("MIRI plane left across each tile (MJy/sr): with level fits {flat:?}; with plane fits {planes:?}");
    (flat, planes)
}

/// Without noise, the MIRI geometry (thin tile overlaps, Lyot box, off-source backgrounds) does not
/// stop plane fitting: the planes are removed across the tile boundaries (measured ~1e-3 MJy/sr).
#[test]
fn miri_tile_planes_are_removed_without_noise() {
    let (flat, planes) = miri_plane_errors(&["simulate.noise=false", "simulate.cosmic_rays=false"]);
    assert!(flat.iter().all(|&a| a > 0.02), "the control leaves no plane to remove: {flat:?}");
    assert!(planes.iter().all(|&a| a < 0.01), "planes left: {planes:?}");
}

/// The target (a 0.05 MJy/sr plane removed to 0.01) on a noisy MIRI scene, the bench's
/// `miri` scene on `medium` detectors. The planes are solved by generalised least squares (each
/// pair's plane information, `solve_planes_gls`): the MIRI tiles overlap in thin strips, which fix
/// the slope across the strip poorly. Measured on the `small` scene (strips ~20 px wide): 0.018 to
/// 0.026 MJy/sr left (0.025 to 0.046 with one scalar weight per pair), the noise of those strips'
/// slopes; on `medium` the strips are 4x wider and longer.
#[test]
fn miri_tile_planes_are_removed_with_plane_fitting() {
    let (flat, planes) = miri_plane_errors(&["simulate.size=\"medium\""]);
    assert!(flat.iter().all(|&a| a > 0.02), "the control leaves no plane to remove: {flat:?}");
    assert!(planes.iter().all(|&a| a < 0.01), "planes left: {planes:?}");
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

#[test]
fn nircam_short_chips_are_matched_and_leave_no_seams() {
    // SW: four chips per module; each chip's dither stack is its own image in the tiles step, so the
    // chips of a module are matched to each other through their dithered overlaps
    let d = tmp();
    simulate(
        d.path(),
        &[
            "simulate.instrument=\"nircam_sw\"",
            "simulate.filter=\"F200W\"",
            "simulate.size=\"small\"",
            "simulate.tiles=\"2x2\"",
            "simulate.dithers=4",
            "simulate.stripe_rms_mjysr=0.0",
            "simulate.background_offset_mjysr=0.1",
            "simulate.pointing_error_arcsec=0.0",
            "simulate.seed=6",
        ],
    );
    let t: Truth = tessera::io::json::read_json(&d.path().join("truth/truth.json")).unwrap();
    let w = tmp();
    let out = run(2, d.path(), w.path(), &["--set", "outlier.enabled=false", "--set", "align.enabled=false"], &[]);
    let c = corrections(w.path());
    let res: Vec<f64> = t.exposures.iter().map(|e| e.background_mjysr - c[&e.file]).collect();
    let mean = res.iter().sum::<f64>() / res.len() as f64;
    let rms = (res.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / res.len() as f64).sqrt();
    let tiles = tile_residuals(d.path(), w.path(), &out);
    let spread = tiles.iter().copied().fold(f64::MIN, f64::max) - tiles.iter().copied().fold(f64::MAX, f64::min);
    eprintln!("NIRCam SW: {} files, offsets {rms:.2e} MJy/sr rms, tile medians {tiles:?}", res.len());
    assert_eq!(res.len(), 128);
    assert!(rms < 0.005, "relative offsets off by {rms} MJy/sr rms");
    assert!(spread < 0.01, "seams between tiles: {tiles:?}");
}

/// The tiles step takes the dithers step's resampled exposures (less their offsets) instead of
/// resampling them again: with `level.share_pieces = false` every one is resampled again, and the
/// pair table and offsets are the same to the bit.
#[test]
fn shared_resampled_exposures_give_the_same_numbers_as_resampling_again() {
    let dir = offsets_scene();
    let d = dir.to_str().unwrap().to_string();
    let mut seen = vec![];
    for share in ["true", "false"] {
        let w = tmp();
        let key = format!("level.share_pieces={share}");
        let out = mpirun(
            2,
            w.path(),
            &[
                "--set",
                "run.output_dir=\"out\"",
                "--set",
                "outlier.enabled=false",
                "--set",
                &key,
                "--set",
                "run.stop_after=\"level\"",
                "mosaic",
                &d,
                "-o",
                "m.fits",
            ],
        );
        ok(&out);
        let log = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
        let line = log
            .lines()
            .find(|l| l.contains("[rank 0/2]") && l.contains("kept from step dithers"))
            .unwrap_or_else(|| panic!("no line on the shared exposures in the log:\n{log}"));
        let kept: usize = line.split("[level] tiles: ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
        eprintln!("share_pieces = {share}: {line}");
        if share == "true" {
            assert!(kept > 0, "nothing was shared: {line}");
            assert!(line.contains(" 0 resampled again"), "{line}");
        } else {
            assert_eq!(kept, 0, "{line}");
        }
        let pairs = std::fs::read_to_string(w.path().join("out/level/pairs.csv")).unwrap();
        let level = std::fs::read_to_string(w.path().join("out/level/level.json")).unwrap();
        assert!(pairs.lines().filter(|l| l.starts_with("tiles,") && l.contains(",used,")).count() > 0);
        seen.push((pairs, level, corrections(w.path())));
    }
    assert_eq!(seen[0].0, seen[1].0, "pair tables differ");
    assert_eq!(seen[0].2, seen[1].2, "offsets differ");
    assert_eq!(seen[0].1, seen[1].1, "level.json differs");
}

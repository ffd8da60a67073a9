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

/// The real-layout scene of issue 15: no off-source exposures (so nothing removes the Lyot level
/// before level matching), a Lyot box 1.2 MJy/sr above the imager field, default dithers.
const REAL_LAYOUT: [&str; 10] = [
    "simulate.instrument=\"miri\"",
    "simulate.filter=\"F770W\"",
    "simulate.size=\"medium\"",
    "simulate.tiles=\"2x2\"",
    "simulate.dithers=4",
    "simulate.background_offset_mjysr=0.3",
    "simulate.lyot_offset_mjysr=1.2",
    "simulate.miri_off_exposures=0",
    "simulate.pointing_error_arcsec=0.0",
    "simulate.seed=15",
];

/// Per exposure (truth order), the sky footprint of its Lyot box as samples `(ra, dec)` on a
/// `step`-pixel lattice, skipping 3 pixels at the box edge and the occulted spot and bar.
fn lyot_samples(t: &tessera::stages::simulate::Truth, shape: [usize; 2], step: usize) -> Vec<Vec<(f64, f64)>> {
    let fp = tessera::stages::simulate::survey::MiriFocalPlane::new(shape);
    let [y0, y1, x0, x1] = fp.lyot;
    t.exposures
        .iter()
        .map(|e| {
            let mut v = vec![];
            for y in (y0 + 3..y1 - 3).step_by(step) {
                for x in (x0.max(4) + 3..x1 - 3).step_by(step) {
                    if !fp.is_occulted(y, x) {
                        v.push(e.true_wcs.pixel_to_sky(x as f64, y as f64));
                    }
                }
            }
            v
        })
        .collect()
}

/// Whether sky position `(ra, dec)` falls on the imager field of exposure `e` (true WCS).
fn on_imager(e: &tessera::stages::simulate::ExposureTruth, shape: [usize; 2], ra: f64, dec: f64) -> bool {
    let fp = tessera::stages::simulate::survey::MiriFocalPlane::new(shape);
    let Ok((x, y)) = e.true_wcs.sky_to_pixel(ra, dec) else { return false };
    let (x, y) = (x.round(), y.round());
    x >= fp.imager_x0 as f64 && x < shape[1] as f64 - 4.0 && y >= 0.0 && y < shape[0] as f64
}

/// What one real-layout run shows: the seam spread between tiles, the median of (mosaic - truth)
/// on the Lyot boxes that reach the mosaic less that of their surroundings (pixels within 12 mosaic
/// pixels of a box, on no box), and the fraction of usable input pixels flagged as outliers.
fn lyot_metrics(dir: &Path, work: &Path, mosaic: &Path, masked: &[String]) -> (f64, f64, f64) {
    use tessera::io::fits::{read_cal, read_ext_f32, read_header, read_image};
    let t = truth(dir);
    let tiles = tile_residuals(dir, work, mosaic);
    let seams = tiles.iter().copied().fold(f64::MIN, f64::max) - tiles.iter().copied().fold(f64::MAX, f64::min);
    let first = read_cal(&dir.join(&t.exposures[0].file)).unwrap();
    let shape = [first.sci.dim().0, first.sci.dim().1];
    let sci = read_ext_f32(mosaic, "SCI").unwrap();
    let (ny, nx) = sci.dim();
    let mw = tessera::geom::TanSip::from_cards(&read_header(mosaic, "SCI").unwrap()).unwrap();
    // mosaic pixels on a contributing Lyot box (1), on any box (2)
    let mut class = ndarray::Array2::<u8>::zeros((ny, nx));
    for (e, samples) in t.exposures.iter().zip(lyot_samples(&t, shape, 1)) {
        let used = !masked.contains(&e.file);
        for (ra, dec) in samples {
            let Ok((mx, my)) = mw.sky_to_pixel(ra, dec) else { continue };
            let (i, j) = (mx.round() as i64, my.round() as i64);
            if i >= 0 && j >= 0 && (i as usize) < nx && (j as usize) < ny {
                let c = &mut class[[j as usize, i as usize]];
                *c = (*c).max(if used { 1 } else { 2 });
                if used {
                    *c = 1;
                }
            }
        }
    }
    // the box edges are 3 pixels in: mark the whole box area (any box) as 2 where not 1, grown by 4
    let grown = |c: &ndarray::Array2<u8>, r: i64| {
        let mut g = ndarray::Array2::<bool>::from_elem((ny, nx), false);
        for ((y, x), &v) in c.indexed_iter() {
            if v > 0 {
                for dy in -r..=r {
                    for dx in -r..=r {
                        let (yy, xx) = (y as i64 + dy, x as i64 + dx);
                        if yy >= 0 && xx >= 0 && (yy as usize) < ny && (xx as usize) < nx {
                            g[[yy as usize, xx as usize]] = true;
                        }
                    }
                }
            }
        }
        g
    };
    let any_box = grown(&class, 4);
    let near = grown(&class.mapv(|v| u8::from(v == 1)), 16);
    let (tsky, _) = read_image(&dir.join("truth/truth_sky.fits")).unwrap();
    let tw = t.truth_grid.wcs();
    let (mut on, mut around) = (vec![], vec![]);
    for ((y, x), &v) in tsky.indexed_iter() {
        let (ra, dec) = tw.pixel_to_sky(x as f64, y as f64);
        let Ok((mx, my)) = mw.sky_to_pixel(ra, dec) else { continue };
        let (i, j) = (mx.round() as i64, my.round() as i64);
        if i < 0 || j < 0 || i as usize >= nx || j as usize >= ny {
            continue;
        }
        let (i, j) = (i as usize, j as usize);
        let s = sci[[j, i]];
        if !s.is_finite() {
            continue;
        }
        let r = f64::from(s) - f64::from(v);
        if class[[j, i]] == 1 {
            on.push(r);
        } else if near[[j, i]] && !any_box[[j, i]] {
            around.push(r);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    assert!(on.len() > 1000 && around.len() > 1000, "{} Lyot and {} surrounding samples", on.len(), around.len());
    let lyot_step = median(&mut on) - median(&mut around);
    // outlier flags against the usable input pixels
    let flags: serde_json::Value = tessera::io::json::read_json(&work.join("out/outlier/flags.json")).unwrap();
    let flagged: usize =
        flags["exposures"].as_array().unwrap().iter().map(|e| e["pixels"].as_array().unwrap().len()).sum();
    let mut usable = 0usize;
    for e in &t.exposures {
        let img = read_cal(&dir.join(&e.file)).unwrap();
        usable += img.dq.iter().filter(|&&d| d & tessera::kernels::dq::DO_NOT_USE == 0).count();
    }
    eprintln!("  tile medians {tiles:?}; Lyot samples {} vs {} around", on.len(), around.len());
    (seams, lyot_step, flagged as f64 / usable as f64)
}

#[test]
fn real_layout_lyot_boxes_are_matched_wherever_they_overlap_and_masked_where_nothing_does() {
    let d = tmp();
    simulate(d.path(), &REAL_LAYOUT);
    let t = truth(d.path());
    let first = tessera::io::fits::read_cal(&d.path().join(&t.exposures[0].file)).unwrap();
    let shape = [first.sci.dim().0, first.sci.dim().1];
    // the layout: the imager field starts right of the Lyot box with dark columns between
    let fp = tessera::stages::simulate::survey::MiriFocalPlane::new(shape);
    assert!(fp.imager_x0 > fp.lyot[3] + 10, "{fp:?}");
    // geometry from the truth: the share of each box's samples on some other exposure's imager field
    let samples = lyot_samples(&t, shape, 4);
    let on_any: Vec<f64> = samples
        .iter()
        .map(|s| {
            let hit = s.iter().filter(|&&(ra, dec)| t.exposures.iter().any(|o| on_imager(o, shape, ra, dec))).count();
            hit as f64 / s.len().max(1) as f64
        })
        .collect();
    let own_group: Vec<f64> = t
        .exposures
        .iter()
        .zip(&samples)
        .map(|(e, s)| {
            let others: Vec<_> = t.exposures.iter().filter(|o| o.tile == e.tile).collect();
            let hit = s.iter().filter(|&&(ra, dec)| others.iter().any(|o| on_imager(o, shape, ra, dec))).count();
            hit as f64 / s.len().max(1) as f64
        })
        .collect();
    eprintln!("Lyot box share on any imager field {on_any:.2?}, on its own tile's {own_group:.2?}");
    // boxes reach the imager fields through chains of overlapping boxes (union-find, node n = imager)
    let n = t.exposures.len();
    let mut parent: Vec<usize> = (0..=n).collect();
    fn root(p: &mut [usize], mut a: usize) -> usize {
        while p[a] != a {
            a = p[a];
        }
        a
    }
    let in_box = |o: &tessera::stages::simulate::ExposureTruth, ra: f64, dec: f64| {
        let Ok((x, y)) = o.true_wcs.sky_to_pixel(ra, dec) else { return false };
        let (x, y) = (x.round(), y.round());
        x >= 0.0 && y >= 0.0 && fp.in_lyot_box(y as usize, x as usize) && !fp.is_occulted(y as usize, x as usize)
    };
    for i in 0..n {
        if on_any[i] > 0.0 {
            let (a, b) = (root(&mut parent, i), root(&mut parent, n));
            parent[a] = b;
        }
        for j in 0..n {
            if i != j && samples[i].iter().any(|&(ra, dec)| in_box(&t.exposures[j], ra, dec)) {
                let (a, b) = (root(&mut parent, i), root(&mut parent, j));
                parent[a] = b;
            }
        }
    }
    let reachable: Vec<bool> = (0..n).map(|i| root(&mut parent, i) == root(&mut parent, n)).collect();
    eprintln!("Lyot boxes connected to an imager field on the sky: {reachable:?}");

    let w = tmp();
    let out = run(2, d.path(), w.path(), &[], &[]);
    let r = json(&w.path().join("out/level/level.json"));
    let masked: Vec<String> =
        r["lyot_masked"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    let lyot = r["lyot_offsets_mjysr"].as_object().unwrap();
    let mut worst = 0.0f64;
    for ((e, share), reach) in t.exposures.iter().zip(&on_any).zip(&reachable) {
        let is_masked = masked.contains(&e.file);
        if !reach {
            // no chain of overlaps to an imager field: no knowable level
            assert!(is_masked, "{}: its Lyot box reaches no imager field but was not masked", e.file);
        } else if *share > 0.2 {
            assert!(!is_masked, "{}: {share:.2} of its Lyot box is on imager fields, yet it was masked", e.file);
        }
        if !is_masked {
            worst = worst.max((lyot[&e.file].as_f64().unwrap() - e.lyot_offset_mjysr).abs());
        }
    }
    let warnings: Vec<&str> = r["warnings"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(masked.is_empty() || warnings.iter().any(|m| m.contains("masked")), "{warnings:?}");
    eprintln!("real layout: {} of 16 Lyot boxes masked, matched ones off by up to {worst:.4} MJy/sr", masked.len());
    let (seams, step, flagged) = lyot_metrics(d.path(), w.path(), &out, &masked);
    eprintln!(
        "real layout: seams {seams:.4}, Lyot box - surroundings {step:+.4} MJy/sr, {:.3}% flagged",
        100.0 * flagged
    );

    // control: the Lyot box left in the imager image
    let wc = tmp();
    let outc = run(2, d.path(), wc.path(), &["--set", "prep.lyot_separate=false"], &[]);
    let (cseams, cstep, cflagged) = lyot_metrics(d.path(), wc.path(), &outc, &[]);
    eprintln!(
        "control (Lyot box in the imager image): seams {cseams:.4}, Lyot box - surroundings {cstep:+.4} MJy/sr, \
         {:.3}% flagged",
        100.0 * cflagged
    );
    assert!(cstep.abs() > 0.05 || cseams > 0.02, "the control shows no step: the scene tests nothing");
    assert!(on_any.iter().any(|&s| s > 0.2), "no Lyot box overlaps an imager field");
    assert!(worst < 0.01, "matched Lyot boxes off by up to {worst} MJy/sr");
    assert!(seams < 0.01, "seams between tiles: {seams}");
    assert!(step.abs() < 0.01, "Lyot boxes differ from their surroundings by {step} MJy/sr");
    assert!(flagged < 0.005, "outlier stage flagged {:.3}% of the pixels", 100.0 * flagged);
}

#[test]
fn a_lyot_box_that_overlaps_nothing_is_reported_and_masked() {
    // two tiles side by side, one pointing each: the left tile's box sees only sky no other
    // exposure covers, the right tile's lies on the left tile's imager field
    let d = tmp();
    simulate(
        d.path(),
        &[
            "simulate.instrument=\"miri\"",
            "simulate.filter=\"F770W\"",
            "simulate.size=\"small\"",
            "simulate.tiles=\"2x1\"",
            "simulate.dithers=1",
            "simulate.lyot_offset_mjysr=0.8",
            "simulate.miri_off_exposures=0",
            "simulate.pointing_error_arcsec=0.0",
            "simulate.seed=16",
        ],
    );
    let t = truth(d.path());
    let w = tmp();
    let out = run(1, d.path(), w.path(), &["--set", "outlier.enabled=false"], &[]);
    let r = json(&w.path().join("out/level/level.json"));
    let masked: Vec<&str> = r["lyot_masked"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    let warnings: Vec<&str> = r["warnings"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    let left = t.exposures.iter().find(|e| e.tile == 0).unwrap();
    let right = t.exposures.iter().find(|e| e.tile == 1).unwrap();
    eprintln!("masked {masked:?}; warnings {warnings:?}");
    assert_eq!(masked, vec![left.file.as_str()]);
    assert!(warnings.iter().any(|m| m.contains("masked") && m.contains(&left.file)), "{warnings:?}");
    let got = r["lyot_offsets_mjysr"][&right.file].as_f64().unwrap();
    assert!(
        (got - right.lyot_offset_mjysr).abs() < 0.01,
        "right tile's box: {got} against {}",
        right.lyot_offset_mjysr
    );
    // the masked box reaches no mosaic pixel: where it alone covers the sky the mosaic is empty
    let first = tessera::io::fits::read_cal(&d.path().join(&left.file)).unwrap();
    let shape = [first.sci.dim().0, first.sci.dim().1];
    let sci = tessera::io::fits::read_ext_f32(&out, "SCI").unwrap();
    let mw = tessera::geom::TanSip::from_cards(&tessera::io::fits::read_header(&out, "SCI").unwrap()).unwrap();
    let samples = &lyot_samples(&t, shape, 2)[0];
    let (mut inside, mut filled) = (0, 0);
    for &(ra, dec) in samples {
        let Ok((x, y)) = mw.sky_to_pixel(ra, dec) else { continue };
        let (i, j) = (x.round() as i64, y.round() as i64);
        if i >= 0 && j >= 0 && (j as usize) < sci.dim().0 && (i as usize) < sci.dim().1 {
            inside += 1;
            let v = sci[[j as usize, i as usize]];
            filled += usize::from(v.is_finite() && v != 0.0);
        }
    }
    eprintln!("masked box: {filled} of {inside} samples filled in the mosaic");
    assert!(inside > 100 && filled == 0, "{filled} of {inside} samples of the masked box reach the mosaic");
}

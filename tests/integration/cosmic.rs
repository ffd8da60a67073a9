//! Cosmic rays with real shapes (single pixels, blobs, streaks, charge spilling into neighbours)
//! end to end on LW and SW scenes of 1 tile x 3 dithers, so that 1, 2 and 3 exposures overlap:
//! clean cosmic-ray pixels (well above the threshold, away from bright sources and from other
//! exposures' cosmic rays) are flagged wherever at least two exposures overlap, the final mosaic at
//! cosmic-ray positions is as clean as elsewhere, no star core and almost no good pixel is flagged.
//! The control runs JWST's median (`outlier.low_coverage_min = false`), which cannot flag a cosmic
//! ray where only two exposures overlap. On the issue's layout (2x2 tiles x 4 dithers) the residual
//! at cosmic rays is held within 1.5x of the controls' (issue 15's target); on the 3-dither scenes,
//! where most pixels keep two or three values, within 1.8x. What is not met: every pixel above 5 ERR
//! flagged. The survivors are printed by class: pixels of a cosmic ray within a few pixels of a
//! source, where the blot's derivative term shields them; pixels beside a coverage edge, where only
//! their own exposure covers them; cosmic rays stacked on one sky pixel.

use super::level::run;
use crate::common::{simulate, tmp, truth};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use tessera::io::fits::{read_cal, read_ext_f32, read_header, read_image, CalImage};
use tessera::kernels::dq::DO_NOT_USE;

/// The test scenes: 1 tile x 3 dithers at ten times the simulator's cosmic-ray rate ([`Layout::Three`]),
/// or the issue's 2x2 tiles x 4 dithers at five times ([`Layout::Issue`], scripts/bench.d/cosmic.py's).
#[derive(Clone, Copy)]
enum Layout {
    Three,
    Issue,
}

fn scene(dir: &Path, instrument: &str, seed: &str, layout: Layout) {
    let (tiles, dithers, rate) = match layout {
        Layout::Three => ("1x1", 3, "2e-3"),
        Layout::Issue => ("2x2", 4, "1e-3"),
    };
    simulate(
        dir,
        &[
            &format!("simulate.instrument=\"{instrument}\""),
            "simulate.size=\"small\"",
            &format!("simulate.tiles=\"{tiles}\""),
            &format!("simulate.dithers={dithers}"),
            "simulate.stripe_rms_mjysr=0.0",
            "simulate.background_offset_mjysr=0.0",
            "simulate.pointing_error_arcsec=0.0",
            "simulate.absolute_offset_arcsec=0.0",
            "simulate.absolute_rotation_deg=0.0",
            &format!("simulate.cosmic_ray_rate={rate}"),
            &format!("simulate.seed={seed}"),
        ],
    );
}

/// What one run shows.
#[derive(Debug)]
struct Score {
    /// Clean cosmic-ray pixels where >= 2 exposures overlap (deposit above 2 x snr1 = 10 ERR, no
    /// bright source within 2 pixels, no cosmic ray of another exposure within 1 pixel on the sky),
    /// and how many of them were flagged; the same where exactly 2 overlap.
    cr_pixels: usize,
    cr_flagged: usize,
    two_pixels: usize,
    two_flagged: usize,
    /// Significant pixels (deposit above 5 ERR, any surroundings) at >= 2 exposures, flagged.
    sig_pixels: usize,
    sig_flagged: usize,
    /// All cosmic-ray pixels (spill included) at >= 2 exposures, flagged.
    all_pixels: usize,
    all_flagged: usize,
    /// 99th percentile of the 3x3 max of |mosaic - truth - local median| / ERR at cosmic-ray hits
    /// (>= 2 exposures) and at control positions, both away from bright sources (the truth's
    /// 5x5 peak above its 15x15 median by less than 10 ERR: where it is more, the mosaic's
    /// resampled PSF and the truth's differ by far more than the noise whatever the cosmic rays).
    p99_cr: f64,
    p99_control: f64,
    star_cores: usize,
    cores_flagged: usize,
    good: u64,
    good_flagged: u64,
}

type Exposures = [(String, CalImage, tessera::geom::TanSip)];

/// Coverage of a sky position: exposures whose usable pixel lies there (true WCS).
fn coverage(imgs: &Exposures, ra: f64, dec: f64) -> usize {
    imgs.iter()
        .filter(|(_, img, w)| {
            let Ok((x, y)) = w.sky_to_pixel(ra, dec) else { return false };
            let (ny, nx) = img.sci.dim();
            let (i, j) = (x.round(), y.round());
            i >= 0.0 && j >= 0.0 && (i as usize) < nx && (j as usize) < ny && {
                let (i, j) = (i as usize, j as usize);
                img.dq[[j, i]] & DO_NOT_USE == 0 && img.sci[[j, i]].is_finite()
            }
        })
        .count()
}

/// Whether another exposure than `own` has a cosmic-ray pixel within 1 pixel of the sky position.
fn coincident(
    imgs: &Exposures,
    cr: &BTreeMap<String, BTreeMap<(usize, usize), f32>>,
    own: &str,
    ra: f64,
    dec: f64,
) -> bool {
    imgs.iter().filter(|(f, _, _)| f != own).any(|(f, _, w)| {
        let Ok((x, y)) = w.sky_to_pixel(ra, dec) else { return false };
        let (i, j) = (x.round() as i64, y.round() as i64);
        let Some(m) = cr.get(f) else { return false };
        (-1..=1).any(|dy| (-1..=1).any(|dx| m.contains_key(&((j + dy).max(0) as usize, (i + dx).max(0) as usize))))
    })
}

/// Whether a source brighter than 20 ERR above the 5x5 median lies within 2 pixels of `(y, x)`
/// (the cosmic ray's own pixels left out): there the blot's derivative term shields the pixel.
fn near_bright(img: &CalImage, own: &BTreeMap<(usize, usize), f32>, y: usize, x: usize) -> bool {
    let (ny, nx) = img.sci.dim();
    let mut v = vec![];
    for yy in y.saturating_sub(2)..(y + 3).min(ny) {
        for xx in x.saturating_sub(2)..(x + 3).min(nx) {
            let s = img.sci[[yy, xx]];
            if s.is_finite() && !own.contains_key(&(yy, xx)) {
                v.push(s);
            }
        }
    }
    if v.is_empty() {
        return false;
    }
    let peak = v.iter().copied().fold(f32::MIN, f32::max);
    v.sort_by(f32::total_cmp);
    peak - v[v.len() / 2] > 20.0 * img.err[[y, x]]
}

fn score(dir: &Path, work: &Path, mosaic: &Path) -> Score {
    let t = truth(dir);
    let imgs: Vec<(String, CalImage, tessera::geom::TanSip)> = t
        .exposures
        .iter()
        .map(|e| (e.file.clone(), read_cal(&dir.join(&e.file)).unwrap(), e.true_wcs.clone()))
        .collect();
    let flags: serde_json::Value = tessera::io::json::read_json(&work.join("out/outlier/flags.json")).unwrap();
    let mut flagged: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for e in flags["exposures"].as_array().unwrap() {
        let set = e["pixels"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        flagged.insert(e["file"].as_str().unwrap().to_string(), set);
    }
    // cosmic-ray pixels per file, and each hit's brightest pixel
    let text = std::fs::read_to_string(dir.join("truth/cosmic_rays.csv")).unwrap();
    let mut cr: BTreeMap<String, BTreeMap<(usize, usize), f32>> = BTreeMap::new();
    let mut peaks: BTreeMap<(String, usize), (f32, usize, usize)> = BTreeMap::new();
    // (file, hit) -> its pixels (y, x, deposit)
    type Pixels = Vec<(usize, usize, f32)>;
    let mut hits: BTreeMap<(String, usize), Pixels> = BTreeMap::new();
    for l in text.lines().skip(1) {
        let f: Vec<&str> = l.split(',').collect();
        let (y, x, v): (usize, usize, f32) = (f[2].parse().unwrap(), f[3].parse().unwrap(), f[4].parse().unwrap());
        *cr.entry(f[0].to_string()).or_default().entry((y, x)).or_default() += v;
        hits.entry((f[0].to_string(), f[1].parse().unwrap())).or_default().push((y, x, v));
        let p = peaks.entry((f[0].to_string(), f[1].parse().unwrap())).or_insert((f32::MIN, 0, 0));
        if v > p.0 {
            *p = (v, y, x);
        }
    }
    let (mut cr_pixels, mut cr_flagged, mut all_pixels, mut all_flagged) = (0, 0, 0, 0);
    let (mut two_pixels, mut two_flagged, mut sig_pixels, mut sig_flagged) = (0, 0, 0, 0);
    let (mut good, mut good_flagged) = (0u64, 0u64);
    let empty = BTreeMap::new();
    for (file, img, w) in &imgs {
        let (_, nx) = img.sci.dim();
        let fl = &flagged[file];
        let crs = cr.get(file).unwrap_or(&empty);
        for (&(y, x), &v) in crs {
            if img.dq[[y, x]] & DO_NOT_USE != 0 || !img.sci[[y, x]].is_finite() {
                continue;
            }
            let (ra, dec) = w.pixel_to_sky(x as f64, y as f64);
            let cov = coverage(&imgs, ra, dec);
            if cov < 2 {
                continue;
            }
            let hit = fl.contains(&((y * nx + x) as u64));
            all_pixels += 1;
            all_flagged += usize::from(hit);
            if v > 5.0 * img.err[[y, x]] {
                sig_pixels += 1;
                sig_flagged += usize::from(hit);
            }
            if v > 10.0 * img.err[[y, x]] && !near_bright(img, crs, y, x) && !coincident(&imgs, &cr, file, ra, dec) {
                cr_pixels += 1;
                cr_flagged += usize::from(hit);
                if cov == 2 {
                    two_pixels += 1;
                    two_flagged += usize::from(hit);
                }
            }
        }
        for ((y, x), &d) in img.dq.indexed_iter() {
            if d & DO_NOT_USE != 0 || !img.sci[[y, x]].is_finite() {
                continue;
            }
            let near = (-1i64..=1).any(|dy| {
                (-1i64..=1).any(|dx| crs.contains_key(&((y as i64 + dy) as usize, (x as i64 + dx) as usize)))
            });
            if !near {
                good += 1;
                good_flagged += u64::from(fl.contains(&((y * nx + x) as u64)));
            }
        }
    }
    // star cores
    let sources = std::fs::read_to_string(dir.join("truth/sources.csv")).unwrap();
    let (mut star_cores, mut cores_flagged) = (0, 0);
    for (file, img, w) in &imgs {
        let (ny, nx) = img.sci.dim();
        let fl = &flagged[file];
        for l in sources.lines().skip(1) {
            let v: Vec<&str> = l.split(',').collect();
            let (ra, dec): (f64, f64) = (v[0].parse().unwrap(), v[1].parse().unwrap());
            let Ok((x, y)) = w.sky_to_pixel(ra, dec) else { continue };
            let (xi, yi) = (x.round() as i64, y.round() as i64);
            if xi < 5 || yi < 5 || xi > nx as i64 - 6 || yi > ny as i64 - 6 {
                continue;
            }
            let (xi, yi) = (xi as usize, yi as usize);
            if !img.sci[[yi, xi]].is_finite() || img.dq[[yi, xi]] & DO_NOT_USE != 0 {
                continue;
            }
            if img.sci[[yi, xi]] < 10.0 * img.err[[yi, xi]] + img.sci[[yi, xi + 4]] {
                continue;
            }
            star_cores += 1;
            cores_flagged += usize::from(fl.contains(&((yi * nx + xi) as u64)));
        }
    }
    // the mosaic against the truth: residual map on the mosaic grid
    let sci = read_ext_f32(mosaic, "SCI").unwrap();
    let err = read_ext_f32(mosaic, "ERR").unwrap();
    let (my, mx) = sci.dim();
    let mw = tessera::geom::TanSip::from_cards(&read_header(mosaic, "SCI").unwrap()).unwrap();
    let (tsky, _) = read_image(&dir.join("truth/truth_sky.fits")).unwrap();
    let tw = t.truth_grid.wcs();
    let mut res = ndarray::Array2::<f32>::from_elem((my, mx), f32::NAN);
    let mut tv = ndarray::Array2::<f32>::from_elem((my, mx), f32::NAN);
    for ((y, x), &v) in tsky.indexed_iter() {
        let (ra, dec) = tw.pixel_to_sky(x as f64, y as f64);
        let Ok((px, py)) = mw.sky_to_pixel(ra, dec) else { continue };
        let (i, j) = (px.round() as i64, py.round() as i64);
        if i >= 0 && j >= 0 && (i as usize) < mx && (j as usize) < my {
            let s = sci[[j as usize, i as usize]];
            if s.is_finite() && err[[j as usize, i as usize]] > 0.0 {
                res[[j as usize, i as usize]] = s - v;
                tv[[j as usize, i as usize]] = v;
            }
        }
    }
    let metric = |ra: f64, dec: f64| -> Option<f64> {
        let (px, py) = mw.sky_to_pixel(ra, dec).ok()?;
        let (i, j) = (px.round() as i64, py.round() as i64);
        if i < 8 || j < 8 || i >= mx as i64 - 8 || j >= my as i64 - 8 {
            return None;
        }
        let (i, j) = (i as usize, j as usize);
        let mut local: Vec<f32> =
            res.slice(ndarray::s![j - 7..=j + 7, i - 7..=i + 7]).iter().copied().filter(|v| v.is_finite()).collect();
        if local.len() < 50 {
            return None;
        }
        local.sort_by(f32::total_cmp);
        let lm = local[local.len() / 2];
        let mut t15: Vec<f32> =
            tv.slice(ndarray::s![j - 7..=j + 7, i - 7..=i + 7]).iter().copied().filter(|v| v.is_finite()).collect();
        t15.sort_by(f32::total_cmp);
        let tpeak = tv.slice(ndarray::s![j - 2..=j + 2, i - 2..=i + 2]).iter().copied().fold(f32::MIN, f32::max);
        if err[[j, i]] <= 0.0 || tpeak - t15[t15.len() / 2] > 10.0 * err[[j, i]] {
            return None;
        }
        let mut worst = None::<f64>;
        for jj in j - 1..=j + 1 {
            for ii in i - 1..=i + 1 {
                let (r, e) = (res[[jj, ii]], err[[jj, ii]]);
                if r.is_finite() && e > 0.0 {
                    let v = f64::from((r - lm).abs() / e);
                    worst = Some(worst.map_or(v, |w| w.max(v)));
                }
            }
        }
        worst
    };
    let (mut at_cr, mut at_control) = (vec![], vec![]);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = |n: usize| {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        ((state >> 33) as usize) % n
    };
    // the cosmic rays that survive (residual above 5 noise): what they are, for the note
    let mut survivors: Vec<(f64, String)> = vec![];
    let mut tally: BTreeMap<String, usize> = BTreeMap::new();
    for ((file, hit), &(_, y, x)) in &peaks {
        let (_, img, w) = imgs.iter().find(|(f, _, _)| f == file).unwrap();
        if img.dq[[y, x]] & DO_NOT_USE != 0 {
            continue;
        }
        let (ra, dec) = w.pixel_to_sky(x as f64, y as f64);
        let cov = coverage(&imgs, ra, dec);
        if cov >= 2 {
            let m = metric(ra, dec);
            if let Some(v) = m.filter(|v| *v > 5.0) {
                let nx = img.sci.dim().1;
                let fl = &flagged[file];
                let px = &hits[&(file.clone(), *hit)];
                let unflagged: Vec<f32> = px
                    .iter()
                    .filter(|(yy, xx, _)| !fl.contains(&((yy * nx + xx) as u64)))
                    .map(|(yy, xx, d)| d / img.err[[*yy, *xx]])
                    .collect();
                let worst = unflagged.iter().copied().fold(0.0f32, f32::max);
                let peak_hit = fl.contains(&((y * nx + x) as u64));
                let kind = if coincident(&imgs, &cr, file, ra, dec) {
                    "coincident with another exposure's cosmic ray"
                } else if !peak_hit {
                    "core not flagged"
                } else if worst > 5.0 {
                    "core flagged, a neighbour above 5 ERR not"
                } else {
                    "flagged above 5 ERR; residual from fainter spill"
                };
                *tally.entry(format!("{kind}, {cov} exposures")).or_default() += 1;
                survivors.push((
                    v,
                    format!(
                    "{v:.1} sigma: {kind}; {cov} exposures; {} of {} pixels unflagged (largest {worst:.1} ERR); near a \
                     bright source: {}",
                    unflagged.len(),
                    px.len(),
                    near_bright(img, &cr[file], y, x)
                ),
                ));
            }
            at_cr.extend(m);
        }
        // a control position in the same exposure, away from its cosmic rays
        let (ny, nx) = img.sci.dim();
        let crs = cr.get(file).unwrap_or(&empty);
        let mut found = 0;
        for _ in 0..60 {
            if found == 3 {
                break;
            }
            let (cy, cx) = (next(ny), next(nx));
            let near = crs.keys().any(|&(a, b)| a.abs_diff(cy) <= 4 && b.abs_diff(cx) <= 4);
            if near || img.dq[[cy, cx]] & DO_NOT_USE != 0 {
                continue;
            }
            let (ra, dec) = w.pixel_to_sky(cx as f64, cy as f64);
            if coverage(&imgs, ra, dec) >= 2 {
                at_control.extend(metric(ra, dec));
                found += 1;
            }
        }
    }
    survivors.sort_by(|a, b| b.0.total_cmp(&a.0));
    eprintln!("cosmic rays with a residual above 5 sigma: {} of {}; {tally:?}", survivors.len(), at_cr.len());
    for (_, s) in survivors.iter().take(12) {
        eprintln!("  {s}");
    }
    let p99 = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[((v.len() as f64 * 0.99) as usize).min(v.len() - 1)]
    };
    assert!(
        at_cr.len() > 200 && at_control.len() > 200,
        "{} CR and {} control positions",
        at_cr.len(),
        at_control.len()
    );
    Score {
        cr_pixels,
        cr_flagged,
        two_pixels,
        two_flagged,
        sig_pixels,
        sig_flagged,
        all_pixels,
        all_flagged,
        p99_cr: p99(&mut at_cr),
        p99_control: p99(&mut at_control),
        star_cores,
        cores_flagged,
        good,
        good_flagged,
    }
}

/// The scene run through the chain on 2 ranks, scored, and the same with the control (JWST's median).
fn run_and_control(instrument: &str, seed: &str, layout: Layout) -> (Score, Score) {
    let d = tmp();
    scene(d.path(), instrument, seed, layout);
    let w = tmp();
    let out = run(2, d.path(), w.path(), &[], &[]);
    let s = score(d.path(), w.path(), &out);
    let wc = tmp();
    let outc = run(2, d.path(), wc.path(), &["--set", "outlier.low_coverage_min=false"], &[]);
    (s, score(d.path(), wc.path(), &outc))
}

fn check(instrument: &str, seed: &str) {
    let (s, c) = run_and_control(instrument, seed, Layout::Three);
    let pct = |a: usize, b: usize| 100.0 * a as f64 / b.max(1) as f64;
    for (name, s) in [("tessera", &s), ("control (JWST median)", &c)] {
        eprintln!(
            "{instrument} {name}: clean CR pixels flagged {} of {} ({:.2}%), at exactly 2 exposures {} of {} \
             ({:.2}%); every pixel above 5 ERR {} of {} ({:.2}%); with spill {} of {} ({:.2}%); p99 residual/noise \
             {:.2} at CRs vs {:.2} at controls; {} of {} star cores flagged; {} of {} good pixels flagged ({:.4}%)",
            s.cr_flagged,
            s.cr_pixels,
            pct(s.cr_flagged, s.cr_pixels),
            s.two_flagged,
            s.two_pixels,
            pct(s.two_flagged, s.two_pixels),
            s.sig_flagged,
            s.sig_pixels,
            pct(s.sig_flagged, s.sig_pixels),
            s.all_flagged,
            s.all_pixels,
            pct(s.all_flagged, s.all_pixels),
            s.p99_cr,
            s.p99_control,
            s.cores_flagged,
            s.star_cores,
            s.good_flagged,
            s.good,
            100.0 * s.good_flagged as f64 / s.good as f64
        );
    }
    assert!(s.cr_pixels > 500 && s.two_pixels > 50, "too few cosmic-ray pixels to test: {s:?}");
    // the control (JWST's median of two = their mean) misses most cosmic rays where two overlap
    assert!(pct(c.two_flagged, c.two_pixels) < 80.0, "the control finds them where two overlap: {c:?}");
    assert!(s.cr_flagged as f64 >= 0.995 * s.cr_pixels as f64, "{instrument}: {s:?}");
    assert!(s.two_flagged as f64 >= 0.95 * s.two_pixels as f64, "{instrument}: {s:?}");
    assert!(s.sig_flagged > c.sig_flagged, "{instrument}: no gain over the control");
    // NOT the issue's target (p99 at cosmic rays within 1.5x of the controls) on these 3-dither
    // scenes, where most pixels have two or three values: what survives sits near sources, at
    // coverage edges and under other exposures' cosmic rays. Measured with the median's cosmic-ray
    // shield: 1.87x LW (1.90x without it), 1.56x SW; with the shield peeling coincident cosmic rays
    // and partial values joining a lone full-weight one: 1.65x LW, 1.56x SW. (The bench's 2x2 tiles
    // x 4 dithers: 1.33x LW, 1.38x SW, scripts/bench.d/cosmic.py.)
    assert!(s.p99_cr <= c.p99_cr, "{instrument}: worse than the control at cosmic rays: {s:?} vs {c:?}");
    assert!(s.p99_cr <= 1.8 * s.p99_control, "{instrument}: cosmic rays left in the mosaic: {s:?}");
    assert!(s.star_cores > 30, "{instrument}: only {} star cores", s.star_cores);
    assert_eq!(s.cores_flagged, 0, "{instrument}: {s:?}");
    assert!((s.good_flagged as f64) < 1e-3 * s.good as f64, "{instrument}: {s:?}");
}

#[test]
fn cosmic_rays_with_real_shapes_are_flagged_wherever_two_exposures_overlap_lw() {
    check("nircam_lw", "21");
}

#[test]
fn cosmic_rays_with_real_shapes_are_flagged_wherever_two_exposures_overlap_sw() {
    check("nircam_sw", "22");
}

/// The issue's target on its layout (2x2 tiles x 4 dithers, as the independent data it was measured
/// on): the 99th percentile at cosmic rays within 1.5x of the controls'. The control (JWST's median)
/// first shows the cosmic rays it leaves.
fn check_issue_layout(instrument: &str, seed: &str) {
    let (s, c) = run_and_control(instrument, seed, Layout::Issue);
    eprintln!("issue's layout, {instrument}: tessera {s:?}; control {c:?}");
    assert!(s.cr_pixels > 500, "{instrument}: too few cosmic-ray pixels to test: {s:?}");
    assert!(c.p99_cr > 1.5 * c.p99_control, "{instrument}: the control leaves nothing to fix: {c:?}");
    // measured: 1.28x LW, 1.31x SW (the controls 6.5x, 8.3x); clean cosmic-ray pixels 99.9% flagged
    assert!(s.p99_cr <= 1.5 * s.p99_control, "{instrument}: cosmic rays left in the mosaic: {s:?}");
    assert_eq!(s.cores_flagged, 0, "{instrument}: {s:?}");
    assert!((s.good_flagged as f64) < 1e-3 * s.good as f64, "{instrument}: {s:?}");
}

#[test]
fn on_the_issues_layout_cosmic_rays_leave_the_mosaic_within_1_5x_of_the_controls_lw() {
    check_issue_layout("nircam_lw", "23");
}

#[test]
fn on_the_issues_layout_cosmic_rays_leave_the_mosaic_within_1_5x_of_the_controls_sw() {
    check_issue_layout("nircam_sw", "24");
}

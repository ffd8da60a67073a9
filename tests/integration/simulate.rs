//! The simulator: files re-read with tessera's reader match what was asked, measured from the
//! pixels against the truth sky (backgrounds, pointing shifts, stripes, cosmic rays, saturation),
//! and the same seed gives the same bytes for any thread count.

use crate::common::{cal_files, simulate, small_lw, tiny_lw, tiny_miri, tmp, truth};
use ndarray::Array2;
use std::path::Path;
use tessera::geom::{OutputGrid, TanSip};
use tessera::io::fits::{read_cal, read_image};
use tessera::kernels::dq;
use tessera::stages::simulate::ExposureTruth;

/// Bilinear sample of the truth sky at a sky position.
struct TruthSky {
    img: Array2<f32>,
    wcs: TanSip,
}

impl TruthSky {
    fn load(dir: &Path, grid: &OutputGrid) -> TruthSky {
        let (img, _) = read_image(&dir.join("truth/truth_sky.fits")).unwrap();
        assert_eq!(img.dim(), (grid.ny, grid.nx));
        TruthSky { img, wcs: grid.wcs() }
    }
    fn at(&self, ra: f64, dec: f64) -> Option<f64> {
        let (x, y) = self.wcs.sky_to_pixel(ra, dec).ok()?;
        let (x0, y0) = (x.floor(), y.floor());
        if x0 < 0.0 || y0 < 0.0 || x0 as usize + 1 >= self.img.ncols() || y0 as usize + 1 >= self.img.nrows() {
            return None;
        }
        let (fx, fy) = (x - x0, y - y0);
        let (i, j) = (x0 as usize, y0 as usize);
        let v = |jj: usize, ii: usize| self.img[[jj, ii]] as f64;
        Some(
            (1.0 - fy) * ((1.0 - fx) * v(j, i) + fx * v(j, i + 1))
                + fy * ((1.0 - fx) * v(j + 1, i) + fx * v(j + 1, i + 1)),
        )
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

fn rms(v: &[f64]) -> f64 {
    let m = v.iter().sum::<f64>() / v.len() as f64;
    (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
}

/// SCI minus the truth sky (through the true WCS) minus the stripe model, over good pixels.
fn residual(dir: &Path, t: &ExposureTruth, sky: &TruthSky) -> (Array2<f64>, Array2<bool>) {
    let folder = if t.is_off { dir.join("off") } else { dir.to_path_buf() };
    let img = read_cal(&folder.join(&t.file)).unwrap();
    let stripes = t.stripe_file.as_ref().map(|f| read_image(&dir.join("truth").join(f)).unwrap().0);
    let (ny, nx) = img.sci.dim();
    let mut r = Array2::zeros((ny, nx));
    let mut good = Array2::from_elem((ny, nx), false);
    for y in 0..ny {
        for x in 0..nx {
            if img.dq[[y, x]] & dq::DO_NOT_USE != 0 || !img.sci[[y, x]].is_finite() {
                continue;
            }
            let s = if t.is_off {
                Some(0.0)
            } else {
                let (ra, dec) = t.true_wcs.pixel_to_sky(x as f64, y as f64);
                sky.at(ra, dec)
            };
            if let Some(s) = s {
                let st = stripes.as_ref().map_or(0.0, |m| m[[y, x]] as f64);
                r[[y, x]] = img.sci[[y, x]] as f64 - s - st;
                good[[y, x]] = true;
            }
        }
    }
    (r, good)
}

#[test]
fn tiny_nircam_survey_has_the_requested_shape_and_headers() {
    let dir = tiny_lw();
    let t = truth(dir);
    let files = cal_files(dir);
    // 2x2 tiles x 4 dithers x 2 LW detectors
    assert_eq!(files.len(), 32);
    assert_eq!(t.exposures.len(), 32);
    assert_eq!(t.visit_errors.len(), 4);
    let mut dets = std::collections::BTreeSet::new();
    let mut visits = std::collections::BTreeSet::new();
    for f in &files {
        let img = read_cal(f).unwrap();
        let m = &img.meta;
        assert_eq!((m.instrument.as_str(), m.filter.as_str(), m.bunit.as_str()), ("NIRCAM", "F300M", "MJy/sr"));
        assert_eq!(m.shape, [64, 64]);
        assert!(m.wcs.a.is_some() && m.wcs.ap.is_some(), "TAN-SIP with the inverse");
        assert!(f.file_name().unwrap().to_string_lossy().contains(&m.detector.to_ascii_lowercase()));
        dets.insert(m.detector.clone());
        visits.insert(m.id.visit_key());
        // 4-pixel reference border, flagged and unusable
        for (y, x) in [(0, 0), (3, 30), (30, 63), (63, 10)] {
            assert_eq!(img.dq[[y, x]] & (dq::REFERENCE_PIXEL | dq::DO_NOT_USE), dq::REFERENCE_PIXEL | dq::DO_NOT_USE);
        }
        // ERR^2 = sum of the variances where the pixel is usable
        let (vp, vr, vf) =
            (img.var_poisson.as_ref().unwrap(), img.var_rnoise.as_ref().unwrap(), img.var_flat.as_ref().unwrap());
        for ((y, x), e) in img.err.indexed_iter() {
            if img.dq[[y, x]] & dq::DO_NOT_USE == 0 {
                let s = vp[[y, x]] + vr[[y, x]] + vf[[y, x]];
                assert!((e * e - s).abs() <= 1e-4 * s, "ERR^2 {} vs {}", e * e, s);
            }
        }
    }
    assert_eq!(dets.into_iter().collect::<Vec<_>>(), vec!["NRCALONG".to_string(), "NRCBLONG".to_string()]);
    assert_eq!(visits.len(), 4);
    // auxiliary inputs exist
    for f in [
        "aux/refcat.csv",
        "aux/psf_F300M.fits",
        "aux/irac1.fits",
        "aux/wise1.fits",
        "truth/sources.csv",
        "truth/cosmic_rays.csv",
    ] {
        assert!(dir.join(f).is_file(), "{f}");
    }
}

#[test]
fn background_offsets_measured_from_pixels_match_the_truth() {
    let dir = small_lw();
    let t = truth(dir);
    let sky = TruthSky::load(dir, &t.truth_grid);
    let mut measured = vec![];
    let mut truth_offsets = vec![];
    for e in &t.exposures {
        let (r, good) = residual(dir, e, &sky);
        let vals: Vec<f64> = r.iter().zip(good.iter()).filter(|(_, &g)| g).map(|(&v, _)| v).collect();
        assert!(vals.len() > 40_000, "{} usable pixels", vals.len());
        let m = median(vals);
        // noise per pixel ~3e-3 MJy/sr over ~60000 pixels; truth-sky interpolation adds a little
        assert!((m - e.background_mjysr).abs() < 2e-3, "{}: measured {m} truth {}", e.file, e.background_mjysr);
        measured.push(m - e.sky_mjysr);
        truth_offsets.push(e.offset_mjysr);
    }
    // the per-exposure offsets scatter as asked (rms 0.02 by default): loosely, with 4 draws
    let r = rms(&truth_offsets);
    assert!(r > 0.002 && r < 0.06, "offset rms {r}");
}

#[test]
fn pointing_errors_in_headers_match_star_positions_in_the_pixels() {
    let dir = small_lw();
    let t = truth(dir);
    let text = std::fs::read_to_string(dir.join("truth/sources.csv")).unwrap();
    let stars: Vec<(f64, f64, f64)> = text
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[0].parse().unwrap(), f[1].parse().unwrap(), f[2].parse().unwrap())
        })
        .collect();
    let mut checked = 0;
    for e in &t.exposures {
        let img = read_cal(&dir.join(&e.file)).unwrap();
        let (ny, nx) = img.sci.dim();
        let pix: Vec<Option<(f64, f64, f64)>> =
            stars.iter().map(|&(ra, dec, f)| e.true_wcs.sky_to_pixel(ra, dec).ok().map(|(x, y)| (x, y, f))).collect();
        let (mut offsets, mut header) = (vec![], vec![]);
        for (k, &(ra, dec, flux)) in stars.iter().enumerate() {
            let Some((x, y, _)) = pix[k] else { continue };
            if x < 12.0 || y < 12.0 || x > nx as f64 - 13.0 || y > ny as f64 - 13.0 {
                continue;
            }
            // isolated: no other point source brighter than 2% of this one within 10 px
            let crowded = pix.iter().enumerate().any(|(j, p)| {
                j != k && p.is_some_and(|(px, py, pf)| (px - x).hypot(py - y) < 10.0 && pf > 0.02 * flux)
            });
            if crowded {
                continue;
            }
            // windowed centroid above the local median
            let (xi, yi) = (x.round() as usize, y.round() as usize);
            let win: Vec<(usize, usize)> =
                (yi - 3..=yi + 3).flat_map(|j| (xi - 3..=xi + 3).map(move |i| (j, i))).collect();
            if win.iter().any(|&(j, i)| !img.sci[[j, i]].is_finite() || img.dq[[j, i]] & dq::DO_NOT_USE != 0) {
                continue;
            }
            let ring: Vec<f64> = (yi - 6..=yi + 6)
                .flat_map(|j| (xi - 6..=xi + 6).map(move |i| (j, i)))
                .filter(|&(j, i)| (j as i64 - yi as i64).abs().max((i as i64 - xi as i64).abs()) == 6)
                .map(|(j, i)| img.sci[[j, i]] as f64)
                .filter(|v| v.is_finite())
                .collect();
            let bg = median(ring);
            let peak = img.sci[[yi, xi]] as f64 - bg;
            if peak < 100.0 * img.err[[yi, xi]] as f64 {
                continue;
            }
            let (mut sw, mut sx, mut sy) = (0.0, 0.0, 0.0);
            for &(j, i) in &win {
                let w = (img.sci[[j, i]] as f64 - bg).max(0.0);
                sw += w;
                sx += w * i as f64;
                sy += w * j as f64;
            }
            let (cx, cy) = (sx / sw, sy / sw);
            offsets.push((cx - x).hypot(cy - y));
            // the header WCS puts the measured star off by the recorded pointing error
            let (hra, hdec) = img.meta.wcs.pixel_to_sky(cx, cy);
            header.push(((hra - ra) * 3600.0 * dec.to_radians().cos(), (hdec - dec) * 3600.0));
        }
        if offsets.len() < 3 {
            continue;
        }
        // stars sit where the true WCS puts them (blends with galaxy clumps allow a few outliers)
        let med = median(offsets.clone());
        assert!(med < 0.05, "{}: median centroid offset {med} px over {} stars", e.file, offsets.len());
        let v = &t.visit_errors[e.tile];
        // rotation about the target adds at most |r| x distance (0.01 deg over < 60" = 0.01")
        let (ex, ey) = (v.dra_arcsec + t.absolute_offset_arcsec[0], v.ddec_arcsec + t.absolute_offset_arcsec[1]);
        let (mx, my) = (median(header.iter().map(|h| h.0).collect()), median(header.iter().map(|h| h.1).collect()));
        assert!(
            (mx - ex).abs() < 0.02 && (my - ey).abs() < 0.02,
            "{}: header-truth {mx},{my} vs recorded {ex},{ey}",
            e.file
        );
        checked += 1;
    }
    assert!(checked >= 3, "only {checked} exposures with 3 or more isolated bright stars");
}

#[test]
fn stripes_in_the_pixels_follow_the_recorded_model() {
    let dir = small_lw();
    let t = truth(dir);
    let sky = TruthSky::load(dir, &t.truth_grid);
    for e in &t.exposures {
        assert!((e.stripe_rms_mjysr - 0.0217).abs() < 0.012, "{}: stripe rms {}", e.file, e.stripe_rms_mjysr);
        let (model, _) = read_image(&dir.join("truth").join(e.stripe_file.as_ref().unwrap())).unwrap();
        let (r, good) = residual(dir, e, &sky); // stripes already removed
        let (ny, nx) = r.dim();
        // per-row medians of one amplifier (columns 64..128): with the model added back they track it
        let mut with = vec![];
        let mut without = vec![];
        let mut m = vec![];
        for y in 8..ny - 8 {
            let row: Vec<(f64, f64)> =
                (64..128).filter(|&x| good[[y, x]]).map(|x| (r[[y, x]], model[[y, x]] as f64)).collect();
            if row.len() < 40 {
                continue;
            }
            let md = row.iter().map(|p| p.1).sum::<f64>() / row.len() as f64;
            without.push(median(row.iter().map(|p| p.0).collect()));
            with.push(median(row.iter().map(|p| p.0 + p.1).collect()));
            m.push(md);
        }
        let _ = nx;
        let corr = {
            let (mw, mm) = (with.iter().sum::<f64>() / with.len() as f64, m.iter().sum::<f64>() / m.len() as f64);
            let c: f64 = with.iter().zip(&m).map(|(a, b)| (a - mw) * (b - mm)).sum();
            c / (with.iter().map(|a| (a - mw).powi(2)).sum::<f64>().sqrt()
                * m.iter().map(|b| (b - mm).powi(2)).sum::<f64>().sqrt())
        };
        assert!(corr > 0.95, "{}: row medians correlate {corr} with the stripe model", e.file);
        assert!(rms(&without) < 0.25 * rms(&with), "{}: stripes removed {} vs {}", e.file, rms(&without), rms(&with));
    }
}

#[test]
fn cosmic_ray_count_and_pixels_match_the_rate() {
    let d = tmp();
    simulate(
        d.path(),
        &["simulate.tiles=\"1x1\"", "simulate.dithers=2", "simulate.cosmic_ray_rate=0.01", "simulate.seed=5"],
    );
    let t = truth(d.path());
    let text = std::fs::read_to_string(d.path().join("truth/cosmic_rays.csv")).unwrap();
    let rows: Vec<Vec<String>> = text.lines().skip(1).map(|l| l.split(',').map(str::to_string).collect()).collect();
    let npix: usize = t.exposures.iter().map(|e| e.n_cosmic_ray_pixels).sum();
    let nhits: usize = t.exposures.iter().map(|e| e.n_cosmic_rays).sum();
    assert_eq!(rows.len(), npix);
    // expected hits: rate per 1000 s x 429.4 s x 4096 px x 4 files = 70.4
    let expected = 0.01 * 0.4294 * 4096.0 * 4.0;
    assert!((nhits as f64 - expected).abs() < 5.0 * expected.sqrt(), "{nhits} hits, expected {expected}");
    // every hit's brightest pixel stands far above its noise in the file; the rest of the hit
    // (blob, streak, and the charge spilt into neighbours at a few percent) is positive
    let mut peaks: std::collections::BTreeMap<(String, String), (f64, usize, usize)> = Default::default();
    for r in &rows {
        let (y, x): (usize, usize) = (r[2].parse().unwrap(), r[3].parse().unwrap());
        let v: f64 = r[4].parse().unwrap();
        assert!(v > 0.0, "CR value {v}");
        let p = peaks.entry((r[0].clone(), r[1].clone())).or_insert((f64::MIN, 0, 0));
        if v > p.0 {
            *p = (v, y, x);
        }
    }
    for ((file, _), (v, y, x)) in peaks.iter().take(200) {
        let img = read_cal(&d.path().join(file)).unwrap();
        if img.dq[[*y, *x]] & dq::DO_NOT_USE != 0 {
            continue;
        }
        assert!(*v > 5.0 * img.err[[*y, *x]] as f64, "CR peak {v} vs err {}", img.err[[*y, *x]]);
    }
}

#[test]
fn the_nucleus_saturates_and_is_flagged() {
    let dir = tiny_lw();
    let t = truth(dir);
    let nsat: usize = t.exposures.iter().map(|e| e.n_saturated).sum();
    assert!(nsat > 0, "no saturated pixel anywhere");
    let mut seen = 0;
    for e in t.exposures.iter().filter(|e| e.n_saturated > 0) {
        let img = read_cal(&dir.join(&e.file)).unwrap();
        let flagged: Vec<_> = img.dq.indexed_iter().filter(|(_, &d)| d & dq::SATURATED != 0).collect();
        assert_eq!(flagged.len(), e.n_saturated);
        for ((y, x), &d) in flagged {
            assert!(d & dq::DO_NOT_USE != 0 && img.sci[[y, x]].is_nan());
            seen += 1;
        }
    }
    assert_eq!(seen, nsat);
}

#[test]
fn miri_off_exposures_and_lyot_offset_are_in_the_pixels() {
    let dir = tiny_miri();
    let t = truth(dir);
    let off: Vec<&ExposureTruth> = t.exposures.iter().filter(|e| e.is_off).collect();
    assert_eq!(off.len(), 2 * 2, "2 off exposures per tile");
    assert_eq!(cal_files(&dir.join("off")).len(), 4);
    assert_eq!(cal_files(dir).len(), 2 * 2);
    let sky = TruthSky::load(dir, &t.truth_grid);
    for e in &off {
        let img = read_cal(&dir.join("off").join(&e.file)).unwrap();
        assert!(img.meta.target.ends_with("_OFF"));
        let [y0, y1, x0, x1] = e.lyot_box.unwrap();
        let (r, good) = residual(dir, e, &sky);
        let inside: Vec<f64> =
            (y0..y1).flat_map(|y| (x0..x1).map(move |x| (y, x))).filter(|&p| good[p]).map(|p| r[p]).collect();
        let outside: Vec<f64> = (0..r.nrows())
            .flat_map(|y| (x1 + 2..r.ncols() - 4).map(move |x| (y, x)))
            .filter(|&p| good[p])
            .map(|p| r[p])
            .collect();
        let (mi, mo) = (median(inside), median(outside));
        assert!((mo - e.background_mjysr).abs() < 0.02, "{}: off background {mo} vs {}", e.file, e.background_mjysr);
        assert!(
            ((mi - mo) - e.lyot_offset_mjysr).abs() < 0.02,
            "{}: Lyot step {} vs {}",
            e.file,
            mi - mo,
            e.lyot_offset_mjysr
        );
    }
    // the thermal background drifts with time, the same way in science and off exposures
    let mut by_time: Vec<(f64, f64)> = t.exposures.iter().map(|e| (e.expmid_mjd, e.sky_mjysr)).collect();
    by_time.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(by_time.last().unwrap().1 > by_time[0].1);
}

#[test]
fn same_seed_same_bytes_for_one_and_two_threads() {
    let (a, b) = (tmp(), tmp());
    let sets = ["simulate.tiles=\"1x2\"", "simulate.dithers=2", "simulate.seed=42"];
    rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap().install(|| simulate(a.path(), &sets));
    rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap().install(|| simulate(b.path(), &sets));
    let (fa, fb) = (cal_files(a.path()), cal_files(b.path()));
    assert_eq!(fa.len(), 8);
    for (x, y) in fa.iter().zip(&fb) {
        assert_eq!(x.file_name(), y.file_name());
        assert!(std::fs::read(x).unwrap() == std::fs::read(y).unwrap(), "{} differs", x.display());
    }
    for f in ["truth/truth_sky.fits", "truth/cosmic_rays.csv", "aux/refcat.csv"] {
        assert!(std::fs::read(a.path().join(f)).unwrap() == std::fs::read(b.path().join(f)).unwrap(), "{f} differs");
    }
    // a different seed changes the data
    let c = tmp();
    simulate(c.path(), &["simulate.tiles=\"1x2\"", "simulate.dithers=2", "simulate.seed=43"]);
    assert!(std::fs::read(&fa[0]).unwrap() != std::fs::read(&cal_files(c.path())[0]).unwrap());
}

//! The `psfmatch` stage on simulated scenes: PSF-matched point sources have the target's FWHM and
//! keep their flux; the distributed convolution equals a whole-image one and is bit-identical for 1
//! to 4 ranks; smoothing F2100W-like data to 0.9" lowers the sky noise as the noise curve predicts;
//! bad PSF inputs are named.

use crate::common::{mpirun, ok, simulate, tessera, tmp};
use ndarray::Array2;
use std::path::{Path, PathBuf};
use tessera::geom::wcs::TanSip;
use tessera::io::fits::{read_ext_f32, read_header};
use tessera::kernels::psfmatch as pm;

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Simulate with `sets` into `dir/sim` and mosaic it with `args` into `dir/out/<band>_i2d.fits`.
fn run_mosaic(dir: &Path, sim_sets: &[&str], band: &str, args: &[&str]) -> PathBuf {
    simulate(&dir.join("sim"), sim_sets);
    let mosaic = dir.join("out").join(format!("{band}_i2d.fits"));
    let mut a: Vec<String> = vec![
        "mosaic".into(),
        s(&dir.join("sim")),
        "-o".into(),
        s(&mosaic),
        "--set".into(),
        format!("run.output_dir=\"{}\"", s(&dir.join("out"))),
    ];
    a.extend(args.iter().map(|x| x.to_string()));
    ok(&tessera(dir, &a.iter().map(String::as_str).collect::<Vec<_>>()));
    mosaic
}

/// Least-squares sigma (pixels) of A exp(-r^2 / 2 s^2) + B fitted to the pixels within `rfit` of
/// (`x0`, `y0`), the centre refined first by a centroid; returns (sigma, x, y).
fn fit_sigma_px(img: &Array2<f32>, x0: f64, y0: f64, rfit: f64) -> Option<(f64, f64, f64)> {
    let (ny, nx) = img.dim();
    let pts = |cx: f64, cy: f64| -> Option<Vec<(f64, f64)>> {
        let mut v = vec![];
        let r = rfit.ceil() as i64;
        for y in (cy.round() as i64 - r)..=(cy.round() as i64 + r) {
            for x in (cx.round() as i64 - r)..=(cx.round() as i64 + r) {
                if y < 0 || x < 0 || y >= ny as i64 || x >= nx as i64 {
                    return None;
                }
                let d2 = (x as f64 - cx).powi(2) + (y as f64 - cy).powi(2);
                if d2 <= rfit * rfit {
                    let p = img[[y as usize, x as usize]];
                    if !p.is_finite() {
                        return None;
                    }
                    v.push((d2, p as f64));
                }
            }
        }
        Some(v)
    };
    let ssr = |v: &[(f64, f64)], sig: f64| -> f64 {
        // linear least squares for A, B
        let (mut sgg, mut sg, mut s1, mut sgv, mut sv) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for &(d2, p) in v {
            let g = (-d2 / (2.0 * sig * sig)).exp();
            sgg += g * g;
            sg += g;
            s1 += 1.0;
            sgv += g * p;
            sv += p;
        }
        let det = sgg * s1 - sg * sg;
        let a = (sgv * s1 - sg * sv) / det;
        let b = (sgg * sv - sg * sgv) / det;
        v.iter().map(|&(d2, p)| (p - a * (-d2 / (2.0 * sig * sig)).exp() - b).powi(2)).sum()
    };
    // the centre: the centroid (above the local minimum) within rfit / 2 of the brightest pixel near
    // the given position
    let (mut bx, mut by, mut bv) = (x0, y0, f32::MIN);
    let r0 = (rfit / 2.0).ceil() as i64;
    for y in (y0.round() as i64 - r0)..=(y0.round() as i64 + r0) {
        for x in (x0.round() as i64 - r0)..=(x0.round() as i64 + r0) {
            if y >= 0 && x >= 0 && y < ny as i64 && x < nx as i64 && img[[y as usize, x as usize]] > bv {
                bv = img[[y as usize, x as usize]];
                (bx, by) = (x as f64, y as f64);
            }
        }
    }
    let around = pts(bx, by)?;
    let lo_v = around.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let (mut sw, mut sx, mut sy) = (0.0, 0.0, 0.0);
    let rc = (rfit / 2.0).ceil() as i64;
    for y in (by as i64 - rc)..=(by as i64 + rc) {
        for x in (bx as i64 - rc)..=(bx as i64 + rc) {
            let w = img[[y as usize, x as usize]] as f64 - lo_v;
            if w > 0.0 && ((x as f64 - bx).powi(2) + (y as f64 - by).powi(2)) <= (rfit / 2.0).powi(2) {
                sw += w;
                sx += w * x as f64;
                sy += w * y as f64;
            }
        }
    }
    let (cx, cy) = (sx / sw, sy / sw);
    let v = pts(cx, cy)?;
    let (mut lo, mut hi) = (0.3, rfit);
    for _ in 0..80 {
        let m1 = lo + (hi - lo) / 3.0;
        let m2 = hi - (hi - lo) / 3.0;
        if ssr(&v, m1) < ssr(&v, m2) {
            hi = m2;
        } else {
            lo = m1;
        }
    }
    Some((0.5 * (lo + hi), cx, cy))
}

/// Background-subtracted aperture sum (radius `r`, annulus `r`..`1.5 r` median) at (`x0`, `y0`),
/// and the background it took off.
fn aperture(img: &Array2<f32>, x0: f64, y0: f64, r: f64) -> Option<(f64, f64)> {
    let (ny, nx) = img.dim();
    let (mut inside, mut ring) = (vec![], vec![]);
    let rr = (1.5 * r).ceil() as i64;
    for y in (y0.round() as i64 - rr)..=(y0.round() as i64 + rr) {
        for x in (x0.round() as i64 - rr)..=(x0.round() as i64 + rr) {
            if y < 0 || x < 0 || y >= ny as i64 || x >= nx as i64 {
                return None;
            }
            let d = ((x as f64 - x0).powi(2) + (y as f64 - y0).powi(2)).sqrt();
            let p = img[[y as usize, x as usize]] as f64;
            if !p.is_finite() {
                return None;
            }
            if d <= r {
                inside.push(p);
            } else if d <= 1.5 * r {
                ring.push(p);
            }
        }
    }
    ring.sort_by(f64::total_cmp);
    let bg = ring[ring.len() / 2];
    Some((inside.iter().map(|p| p - bg).sum(), bg * inside.len() as f64))
}

/// Bright point sources of the truth (above `min_jy`) with no other listed source (star, galaxy
/// knot, nucleus) brighter than a hundredth of theirs within `sep_arcsec`, as mosaic pixels,
/// brightest first.
fn isolated_stars(sim: &Path, wcs: &TanSip, sep_arcsec: f64, min_jy: f64) -> Vec<(f64, f64, f64)> {
    let text = std::fs::read_to_string(sim.join("truth/sources.csv")).unwrap();
    let all: Vec<(f64, f64, f64, String)> = text
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[0].parse().unwrap(), f[1].parse().unwrap(), f[2].parse().unwrap(), f[3].to_string())
        })
        .collect();
    let mut out = vec![];
    for (i, a) in all.iter().enumerate() {
        if a.3 != "star" || a.2 < min_jy {
            continue;
        }
        let lonely = all.iter().enumerate().all(|(j, b)| {
            j == i || b.2 < 0.01 * a.2 || {
                let dra = (a.0 - b.0) * a.1.to_radians().cos();
                ((dra.powi(2) + (a.1 - b.1).powi(2)).sqrt() * 3600.0) > sep_arcsec
            }
        });
        if lonely {
            if let Ok((x, y)) = wcs.sky_to_pixel(a.0, a.1) {
                out.push((x, y, a.2));
            }
        }
    }
    out.sort_by(|p, q| q.2.total_cmp(&p.2));
    out
}

#[test]
fn psf_matched_point_sources_have_the_target_fwhm_and_keep_their_flux() {
    let t = tmp();
    let d = t.path();
    let sets = [
        "simulate.instrument=\"nircam_lw\"",
        "simulate.size=\"medium\"",
        "simulate.tiles=\"1x1\"",
        "simulate.dithers=2",
        "simulate.seed=11",
        "simulate.noise=false",
        "simulate.cosmic_rays=false",
        "simulate.saturate=false",
    ];
    let psf = d.join("sim/aux/psf_F300M_os4.fits");
    let mosaic = run_mosaic(
        d,
        &sets,
        "F300M",
        &[
            "--psf",
            &s(&psf),
            "--psf-target",
            "gauss0p90",
            "--psf-target",
            "gauss0p50",
            "--set",
            "psfmatch.chunk_rows=100",
            "--catalog",
            &s(&d.join("sim/aux/refcat.csv")),
        ],
    );
    let h = read_header(&mosaic, "SCI").unwrap();
    let wcs = TanSip::from_cards(&h).unwrap();
    let scale = wcs.pixel_scale_arcsec();
    let native = read_ext_f32(&mosaic, "SCI").unwrap();
    for (target, fwhm) in [("gauss0p90", 0.9), ("gauss0p50", 0.5)] {
        let p = d.join("out").join(format!("F300M_i2d_at{target}.fits"));
        let prim = read_header(&p, "PRIMARY").unwrap();
        assert!(
            matches!(prim.get("BMAJ"), Some(tessera::geom::wcs::CardValue::Real(v)) if (v * 3600.0 - fwhm).abs() < 1e-9)
        );
        let matched = read_ext_f32(&p, "SCI").unwrap();
        // apertures of radius 2 FWHM: isolated within 2.5 apertures
        let stars = isolated_stars(&d.join("sim"), &wcs, 5.0 * fwhm, 1e-5);
        // each star's FWHM and flux ratio; the medians over the stars are checked (a star may sit on
        // a compact galaxy knot the truth does not list as a source)
        let (mut fw, mut fr) = (vec![], vec![]);
        for &(x, y, _) in stars.iter().take(20) {
            let Some((sig, cx, cy)) = fit_sigma_px(&matched, x, y, 1.5 * fwhm / scale) else { continue };
            let r = 2.0 * fwhm / scale;
            let (Some((fm, bm)), Some((fn_, _))) = (aperture(&matched, cx, cy, r), aperture(&native, cx, cy, r)) else {
                continue;
            };
            // stars on bright, structured galaxy light are not point-source photometry: the
            // background in the aperture stays below 5% of the star
            if bm.abs() > 0.05 * fm.abs() {
                continue;
            }
            fw.push(sig * pm::FWHM_PER_SIGMA * scale);
            fr.push(fm / fn_);
        }
        eprintln!("{target}: FWHMs {fw:.4?}, flux ratios {fr:.4?}");
        assert!(fw.len() >= 5, "{target}: only {} isolated stars measured", fw.len());
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (mf, mr) = (median(&mut fw), median(&mut fr));
        assert!((mf / fwhm - 1.0).abs() < 0.02, "{target}: median FWHM {mf:.4}\"");
        assert!((mr - 1.0).abs() < 0.01, "{target}: median flux ratio {mr:.4}");
        // and every star, not only the median
        assert!(fr.iter().all(|r| (r - 1.0).abs() < 0.01), "{target}: flux ratios {fr:.4?}");
    }
    // products: kernels with W- and D, the safe FWHM table, the noise curve
    let k = read_header(&d.join("out/psfmatch/kernels/f300m_to_gauss0p90.fits"), "PRIMARY").unwrap();
    assert!(k.contains_key("WMINUS") && k.contains_key("D") && k.contains_key("PIXELSCL"));
    let safe: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("out/psfmatch/safe_fwhm.json")).unwrap()).unwrap();
    let tab = &safe["F300M"]["table"];
    assert!(tab["very_safe_arcsec"].as_f64().unwrap() >= tab["safe_arcsec"].as_f64().unwrap());
    assert!(d.join("out/psfmatch/noise_curve.png").is_file() && d.join("out/psfmatch/noise_curve.csv").is_file());
}

/// The distributed convolution (chunks of 20 rows, halos wider than a chunk) equals one whole-image
/// FFT convolution to 1e-6 relative, and its products are the same bytes for 1 to 4 ranks.
#[test]
fn distributed_convolution_equals_the_whole_image_and_is_bit_identical_for_1_to_4_ranks() {
    let t = tmp();
    let d = t.path();
    let sets = ["simulate.instrument=\"nircam_lw\"", "simulate.size=\"tiny\"", "simulate.seed=7"];
    let psf = d.join("sim/aux/psf_F300M_os4.fits");
    let mosaic = run_mosaic(d, &sets, "F300M", &["--stop-after", "assemble"]);
    let sets_arg = [
        "--set".to_string(),
        format!("run.output_dir=\"{}\"", s(&d.join("out"))),
        "--set".into(),
        "psfmatch.chunk_rows=20".into(),
        "--set".into(),
        format!("psfmatch.psf=[\"{}\"]", s(&psf)),
        "--set".into(),
        "psfmatch.targets=[\"gauss0p90\"]".into(),
        "--set".into(),
        "psfmatch.noise_curve=false".into(),
    ];
    let product = d.join("out/F300M_i2d_atgauss0p90.fits");
    let mut first: Option<(Array2<f32>, Array2<f32>)> = None;
    for n in 1..=4 {
        let mut a = vec!["psfmatch".to_string(), s(&d.join("sim")), "-o".into(), s(&mosaic)];
        a.extend(sets_arg.iter().cloned());
        ok(&mpirun(n, d, &a.iter().map(String::as_str).collect::<Vec<_>>()));
        let got = (read_ext_f32(&product, "SCI").unwrap(), read_ext_f32(&product, "ERR").unwrap());
        match &first {
            None => first = Some(got),
            Some(f) => {
                let same =
                    |a: &Array2<f32>, b: &Array2<f32>| a.iter().zip(b.iter()).all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(same(&f.0, &got.0) && same(&f.1, &got.1), "{n} ranks: not the bits of 1 rank");
            }
        }
    }
    let (sci_d, err_d) = first.unwrap();
    // the whole image at once, with the same kernel
    let h = read_header(&mosaic, "SCI").unwrap();
    let scale = TanSip::from_cards(&h).unwrap().pixel_scale_arcsec();
    let k = pm::make_kernel(
        &tessera::stages::psfmatch::read_psf(&psf).unwrap(),
        &pm::Target::Gaussian { fwhm_arcsec: 0.9 },
        &pm::KernelParams::default(),
    )
    .unwrap();
    let km = pm::kernel_at_scale(&k, scale);
    assert!(km.nrows() / 2 > 20, "the halo ({}) should be wider than a chunk", km.nrows() / 2);
    let sci = read_ext_f32(&mosaic, "SCI").unwrap();
    let err = read_ext_f32(&mosaic, "ERR").unwrap();
    let whole = pm::convolve_rows(sci.view(), err.view(), 0..sci.nrows(), km.view());
    let scale_of = |a: &Array2<f32>| a.iter().filter(|v| v.is_finite()).fold(0.0f32, |m, v| m.max(v.abs()));
    for (a, b, what) in [(&sci_d, &whole.sci, "SCI"), (&err_d, &whole.err, "ERR")] {
        let floor = 1e-3 * scale_of(b);
        let mut finite = 0;
        for (x, y) in a.iter().zip(b.iter()) {
            assert_eq!(x.is_nan(), y.is_nan(), "{what}: NaN pattern");
            if y.is_finite() {
                finite += 1;
                assert!((x - y).abs() <= 1e-6 * y.abs().max(floor), "{what}: {x} vs {y}");
            }
        }
        assert!(finite > 1000);
    }
}

/// F2100W-like data smoothed to 0.9": the sky noise falls by the factor the noise curve predicts
/// at the kernel's FWHM. No PSF image is given: the stage warns and uses the analytic model.
#[test]
fn smoothing_f2100w_to_0p9_lowers_the_noise_as_the_noise_curve_predicts() {
    let t = tmp();
    let d = t.path();
    let sets = [
        "simulate.instrument=\"miri\"",
        "simulate.filter=\"F2100W\"",
        "simulate.size=\"small\"",
        "simulate.tiles=\"1x1\"",
        "simulate.dithers=2",
        "simulate.seed=5",
        "simulate.miri_off_exposures=0",
    ];
    let mosaic =
        run_mosaic(d, &sets, "F2100W", &["--psf-target", "gauss0p90", "--set", "psfmatch.noise_region_px=4096"]);
    let rep: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("out/psfmatch/psfmatch.json")).unwrap()).unwrap();
    assert!(rep["warnings"][0].as_str().unwrap().contains("no PSF image for F2100W"), "{rep}");
    let src = rep["targets"][0]["source_fwhm_arcsec"].as_f64().unwrap();
    let kfwhm = (0.81 - src * src).sqrt();
    let csv = std::fs::read_to_string(d.join("out/psfmatch/noise_curve.csv")).unwrap();
    let rows: Vec<(f64, f64)> = csv
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<f64> = l.split(',').map(|v| v.parse().unwrap()).collect();
            (f[0], f[2])
        })
        .collect();
    let at = |x: f64| {
        let i = rows.iter().position(|r| r.0 >= x).unwrap();
        let (a, b) = (rows[i - 1], rows[i]);
        a.1 + (x - a.0) / (b.0 - a.0) * (b.1 - a.1)
    };
    // the curve as the stage wrote it, and at the kernel's FWHM exactly (same background boxes)
    let fmax_px = rep["noise_max_fwhm_px"].as_f64().unwrap();
    let kpx = kfwhm / rep["pixel_scale_arcsec"].as_f64().unwrap();
    let native = read_ext_f32(&mosaic, "SCI").unwrap();
    let exact = pm::noise_curve(native.view(), &[0.0, kpx, fmax_px]);
    assert!((exact[0].std / rows[0].1 - 1.0).abs() < 1e-4, "the stage's curve starts at {}", rows[0].1);
    assert!((exact[1].std / at(kfwhm) - 1.0).abs() < 0.3, "the written curve at the kernel FWHM");
    let predicted = exact[1].std / exact[0].std;
    // the product measured as the curve is, over the same sky pixels, against the native image
    let matched = read_ext_f32(&d.join("out/F2100W_i2d_atgauss0p90.fits"), "SCI").unwrap();
    let bx = pm::noise::background_box_px(fmax_px);
    let flat0 = pm::noise::flatten(native.view(), bx);
    let flat1 = pm::noise::flatten(matched.view(), bx);
    assert!(flat0.iter().filter(|v| v.is_finite()).count() > 10_000);
    let std0 = pm::noise::sky_std(flat0.view(), &pm::noise::sky_mask(flat0.view(), 2)).0;
    let std1 = pm::noise::sky_std(flat1.view(), &pm::noise::sky_mask(flat0.view(), 2 + kpx.ceil() as usize)).0;
    eprintln!("F2100W to 0.9\": sky noise ratio {:.4}, noise curve {:.4}", std1 / std0, predicted);
    let measured = std1 / std0;
    assert!(predicted < 0.8, "the curve predicts little gain ({predicted:.3}): nothing to test");
    assert!((measured / predicted - 1.0).abs() < 0.1, "noise ratio {measured:.4}, curve predicts {predicted:.4}");
}

/// Drizzle correlates the noise of neighbouring output pixels, so the empty-sky noise curve of a
/// NIRCam mosaic stays above the uncorrelated law. For the square kernel with pixfrac p and output
/// scale s (in input pixels), r = p / s = 1 here (pixfrac 1, native scale), a pixel's value is the
/// area-weighted mean of the input pixels it overlaps; with a uniform sub-pixel phase u per axis its
/// noise variance is E[(1 - u)^2 + u^2] = 2/3 of the input's per axis, (2/3)^2 in all, while sums
/// over areas much larger than a pixel keep the input's noise. Smoothed noise therefore exceeds the
/// uncorrelated law by 3/2: Casertano et al. (2000, AJ 120, 2747) R = 1 / (1 - r/3) = 1.5 (DrizzlePac
/// Handbook, "Weight maps and correlated noise"). Measured on the stripe-free twin of a scene (1/f
/// stripes add correlation of their own), over smoothing FWHMs of 3 to 8 pixels.
#[test]
fn the_nircam_noise_curve_departs_from_the_uncorrelated_law_as_drizzle_predicts() {
    let t = tmp();
    let d = t.path();
    let sets = [
        "simulate.instrument=\"nircam_lw\"",
        "simulate.size=\"medium\"",
        "simulate.tiles=\"1x1\"",
        "simulate.dithers=2",
        "simulate.seed=12",
        "simulate.stripe_rms_mjysr=0.0",
    ];
    run_mosaic(
        d,
        &sets,
        "F300M",
        &[
            "--no-destripe",
            "--psf-target",
            "gauss0p90",
            "--set",
            "psfmatch.noise_max_fwhm_arcsec=0.5",
            "--set",
            "psfmatch.noise_region_px=768",
        ],
    );
    let csv = std::fs::read_to_string(d.join("out/psfmatch/noise_curve.csv")).unwrap();
    let rows: Vec<Vec<f64>> = csv.lines().skip(1).map(|l| l.split(',').map(|v| v.parse().unwrap()).collect()).collect();
    let scale = 0.063;
    let plateau: Vec<f64> = rows.iter().filter(|r| (3.0..=8.0).contains(&(r[0] / scale))).map(|r| r[4]).collect();
    eprintln!("ratio to the uncorrelated law, FWHM 3 to 8 px: {plateau:.4?} (drizzle predicts 1.5)");
    assert!(plateau.len() >= 5, "{csv}");
    let mean = plateau.iter().sum::<f64>() / plateau.len() as f64;
    // the background boxes (3x the largest FWHM) take some of the largest scales' noise off: the
    // measured plateau sits a few per cent low
    assert!((mean / 1.5 - 1.0).abs() < 0.1, "plateau {mean:.4}, drizzle predicts 1.5: {csv}");
    assert!(plateau.iter().all(|r| *r > 1.25), "the noise is correlated: {csv}");
}

#[test]
fn bad_psf_inputs_are_named() {
    let t = tmp();
    let d = t.path();
    let sets = ["simulate.instrument=\"nircam_lw\"", "simulate.size=\"tiny\"", "simulate.seed=7"];
    let mosaic = run_mosaic(d, &sets, "F300M", &["--stop-after", "assemble"]);
    let psf = d.join("sim/aux/psf_F300M_os4.fits");
    let run = |psf: &Path, target: &str| {
        tessera(
            d,
            &[
                "psfmatch",
                &s(&d.join("sim")),
                "-o",
                &s(&mosaic),
                "--set",
                &format!("run.output_dir=\"{}\"", s(&d.join("out"))),
                "--set",
                &format!("psfmatch.psf=[\"{}\"]", s(psf)),
                "--set",
                &format!("psfmatch.targets=[\"{target}\"]"),
            ],
        )
    };
    // a PSF broader than the target
    let out = run(&psf, "gauss0p05");
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && e.contains(&s(&psf)) && e.contains("broader than the target"), "{e}");
    // a PSF file without a pixel scale
    let bare = d.join("bare_psf.fits");
    let img = Array2::from_shape_fn((21, 21), |(y, x)| {
        (-((x as f32 - 10.0).powi(2) + (y as f32 - 10.0).powi(2)) / 8.0).exp()
    });
    tessera::io::fits::write_image(&bare, &img, &[], &[]).unwrap();
    let out = run(&bare, "gauss0p90");
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && e.contains(&s(&bare)) && e.contains("PIXELSCL"), "{e}");
}

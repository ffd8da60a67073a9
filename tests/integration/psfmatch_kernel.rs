//! The `psfmatch` stage's kernel at the mosaic's pixel scale (`psfmatch/kernels/<band>_to_<target>_mosaic.fits`,
//! written for other tools: `scripts/bench --convolve` gives it to astropy's convolve_fft): odd,
//! square, unit sum, at the mosaic's scale, and the kernel the stage convolves with: a whole-image
//! convolution of the mosaic with the file's kernel reproduces the stage's product.

use crate::common::{ok, simulate, tessera, tmp};
use ndarray::Array2;
use std::path::Path;
use tessera::geom::wcs::{CardValue, TanSip};
use tessera::io::fits::{read_ext_f32, read_header, read_image};
use tessera::kernels::psfmatch as pm;

fn s(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn the_mosaic_scale_kernel_product_is_the_kernel_the_stage_convolves_with() {
    let t = tmp();
    let d = t.path();
    let sim = d.join("sim");
    simulate(&sim, &["simulate.instrument=\"nircam_lw\"", "simulate.size=\"tiny\"", "simulate.seed=7"]);
    let mosaic = d.join("out/F300M_i2d.fits");
    let out = format!("run.output_dir=\"{}\"", s(&d.join("out")));
    ok(&tessera(d, &["mosaic", &s(&sim), "-o", &s(&mosaic), "--set", &out, "--stop-after", "assemble"]));
    let psf = format!("psfmatch.psf=[\"{}\"]", s(&sim.join("aux/psf_F300M_os4.fits")));
    ok(&tessera(
        d,
        &[
            "psfmatch",
            &s(&sim),
            "-o",
            &s(&mosaic),
            "--set",
            &out,
            "--set",
            &psf,
            "--set",
            "psfmatch.targets=[\"gauss0p90\"]",
            "--set",
            "psfmatch.noise_curve=false",
        ],
    ));
    let (k32, cards) = read_image(&d.join("out/psfmatch/kernels/f300m_to_gauss0p90_mosaic.fits")).unwrap();
    let (n, m) = k32.dim();
    assert!(n == m && n % 2 == 1 && n > 3, "kernel shape {n} x {m}");
    let sum: f64 = k32.iter().map(|&v| v as f64).sum();
    assert!((sum - 1.0).abs() < 1e-5, "kernel sum {sum}");
    let h = read_header(&mosaic, "SCI").unwrap();
    let scale = TanSip::from_cards(&h).unwrap().pixel_scale_arcsec();
    let pixelscl = match cards.get("PIXELSCL") {
        Some(CardValue::Real(v)) => *v,
        other => panic!("PIXELSCL: {other:?}"),
    };
    assert!((pixelscl - scale).abs() < 1e-9 * scale, "PIXELSCL {pixelscl} against the mosaic's {scale}");
    // the oversampled kernel beside it is on the PSF's finer scale: a larger array
    let (fine, _) = read_image(&d.join("out/psfmatch/kernels/f300m_to_gauss0p90.fits")).unwrap();
    assert!(fine.nrows() > n, "the oversampled kernel ({}) should be larger than the mosaic's ({n})", fine.nrows());
    // the stage's product equals a whole-image convolution with the file's kernel (f32 rounding)
    let k: Array2<f64> = k32.mapv(|v| v as f64);
    let sci = read_ext_f32(&mosaic, "SCI").unwrap();
    let err = read_ext_f32(&mosaic, "ERR").unwrap();
    let whole = pm::convolve_rows(sci.view(), err.view(), 0..sci.nrows(), k.view());
    let product = d.join("out/F300M_i2d_atgauss0p90.fits");
    let (got_sci, got_err) = (read_ext_f32(&product, "SCI").unwrap(), read_ext_f32(&product, "ERR").unwrap());
    let peak = |a: &Array2<f32>| a.iter().filter(|v| v.is_finite()).fold(0.0f32, |m, v| m.max(v.abs()));
    for (a, b, what) in [(&got_sci, &whole.sci, "SCI"), (&got_err, &whole.err, "ERR")] {
        let floor = 1e-3 * peak(b);
        let mut finite = 0;
        for (x, y) in a.iter().zip(b.iter()) {
            assert_eq!(x.is_nan(), y.is_nan(), "{what}: NaN pattern");
            if y.is_finite() {
                finite += 1;
                assert!((x - y).abs() <= 1e-5 * y.abs().max(floor), "{what}: {x} vs {y}");
            }
        }
        assert!(finite > 1000, "{what}: only {finite} finite pixels");
    }
}

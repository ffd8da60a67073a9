//! NaN-aware FFT convolution of a band of image rows with a matching kernel: SCI as the normalised
//! convolution sum(K w x) / sum(K w) (w = 1 where SCI is finite, 0 elsewhere and beyond the edges,
//! astropy `convolve_fft` with `nan_treatment="interpolate"`, `preserve_nan=True`), ERR as
//! sqrt(sum(K^2 w e^2)) / sum(K w) (the PHANGS-JWST paper, section 3.10: uncorrelated errors).
//! Where all weights are 1 and the kernel has unit sum, these are K * SCI and sqrt(K^2 * ERR^2).
//!
//! A band is convolved by one padded FFT; the caller gives it the rows of the band plus halos as
//! wide as the kernel radius, so the result does not depend on how the image is cut into bands (to
//! rounding) and is the same to the bit whoever computes the band.

use super::fft::{fast_len, fft2};
use ndarray::{Array2, ArrayView2};
use rustfft::num_complex::Complex64;

/// The convolved rows.
#[derive(Clone, Debug, PartialEq)]
pub struct Convolved {
    pub sci: Array2<f32>,
    pub err: Array2<f32>,
}

/// Convolve rows `out_rows` (indices into `sci`) of `sci` / `err` (`[y, x]`, the band with its halo
/// rows; rows beyond these are outside the image) with `kernel` (odd square, centred, unit sum).
/// Output pixels whose input SCI is not finite, or whose kernel weight sum(K w) is below 1e-3, are NaN.
///
/// # Panics
/// If the kernel is not odd and square, or `sci` and `err` differ in shape.
pub fn convolve_rows(
    sci: ArrayView2<f32>,
    err: ArrayView2<f32>,
    out_rows: std::ops::Range<usize>,
    kernel: ArrayView2<f64>,
) -> Convolved {
    assert_eq!(sci.dim(), err.dim(), "SCI and ERR shapes");
    let (kn, kx) = kernel.dim();
    assert!(kn == kx && kn % 2 == 1, "kernel must be odd and square");
    let r = kn / 2;
    let (ny, nx) = sci.dim();
    let (py, px) = (fast_len(ny + r), fast_len(nx + r));
    let idx = |y: usize, x: usize| y * px + x;
    // kernel, wrapped so that index (0, 0) is its centre
    let mut kf = vec![Complex64::new(0.0, 0.0); py * px];
    for ((y, x), &v) in kernel.indexed_iter() {
        let (dy, dx) = (y as i64 - r as i64, x as i64 - r as i64);
        let (wy, wx) = (dy.rem_euclid(py as i64) as usize, dx.rem_euclid(px as i64) as usize);
        // K carries the kernel in re and K^2 in im: two real kernels in one transform
        kf[idx(wy, wx)] = Complex64::new(v, v * v);
    }
    fft2(&mut kf, py, px, false);
    // split the transforms of K (hermitian part) and K^2: F(K) = (F(z) + conj(F(z)(-k))) / 2 etc.
    let mut fk = vec![Complex64::new(0.0, 0.0); py * px];
    let mut fk2 = vec![Complex64::new(0.0, 0.0); py * px];
    for y in 0..py {
        for x in 0..px {
            let z = kf[idx(y, x)];
            let zm = kf[idx((py - y) % py, (px - x) % px)].conj();
            fk[idx(y, x)] = (z + zm) * 0.5;
            fk2[idx(y, x)] = (z - zm) * Complex64::new(0.0, -0.5);
        }
    }
    // data: x w + i w, and e^2 w
    let mut a = vec![Complex64::new(0.0, 0.0); py * px];
    let mut b = vec![Complex64::new(0.0, 0.0); py * px];
    for ((y, x), &v) in sci.indexed_iter() {
        if v.is_finite() {
            let e = err[[y, x]];
            let e2 = if e.is_finite() { (e as f64) * (e as f64) } else { 0.0 };
            a[idx(y, x)] = Complex64::new(v as f64, 1.0);
            b[idx(y, x)] = Complex64::new(e2, 0.0);
        }
    }
    fft2(&mut a, py, px, false);
    fft2(&mut b, py, px, false);
    for i in 0..py * px {
        a[i] *= fk[i];
        b[i] *= fk2[i];
    }
    fft2(&mut a, py, px, true);
    fft2(&mut b, py, px, true);
    let n_out = out_rows.len();
    let mut out_sci = Array2::from_elem((n_out, nx), f32::NAN);
    let mut out_err = Array2::from_elem((n_out, nx), f32::NAN);
    for (j, y) in out_rows.enumerate() {
        for x in 0..nx {
            if !sci[[y, x]].is_finite() {
                continue;
            }
            let c = a[idx(y, x)];
            let wsum = c.im;
            if wsum < 1e-3 {
                continue;
            }
            out_sci[[j, x]] = (c.re / wsum) as f32;
            out_err[[j, x]] = (b[idx(y, x)].re.max(0.0).sqrt() / wsum) as f32;
        }
    }
    Convolved { sci: out_sci, err: out_err }
}

/// The same result by direct summation (slow; the reference for tests).
pub fn convolve_direct(sci: ArrayView2<f32>, err: ArrayView2<f32>, kernel: ArrayView2<f64>) -> Convolved {
    let (ny, nx) = sci.dim();
    let r = (kernel.nrows() / 2) as i64;
    let mut out_sci = Array2::from_elem((ny, nx), f32::NAN);
    let mut out_err = Array2::from_elem((ny, nx), f32::NAN);
    for y in 0..ny {
        for x in 0..nx {
            if !sci[[y, x]].is_finite() {
                continue;
            }
            let (mut s, mut w, mut v) = (0.0f64, 0.0f64, 0.0f64);
            for dy in -r..=r {
                for dx in -r..=r {
                    let (sy, sx) = (y as i64 - dy, x as i64 - dx);
                    if sy < 0 || sx < 0 || sy >= ny as i64 || sx >= nx as i64 {
                        continue;
                    }
                    let p = sci[[sy as usize, sx as usize]];
                    if !p.is_finite() {
                        continue;
                    }
                    let k = kernel[[(dy + r) as usize, (dx + r) as usize]];
                    let e = err[[sy as usize, sx as usize]] as f64;
                    s += k * p as f64;
                    w += k;
                    if e.is_finite() {
                        v += k * k * e * e;
                    }
                }
            }
            if w >= 1e-3 {
                out_sci[[y, x]] = (s / w) as f32;
                out_err[[y, x]] = (v.sqrt() / w) as f32;
            }
        }
    }
    Convolved { sci: out_sci, err: out_err }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::psfmatch::kernel::gaussian_image;

    fn test_image(ny: usize, nx: usize) -> (Array2<f32>, Array2<f32>) {
        let mut sci = Array2::from_shape_fn((ny, nx), |(y, x)| {
            (y as f32 * 0.37).sin() + (x as f32 * 0.21).cos() * 2.0 + ((x * 7 + y * 13) % 11) as f32 * 0.1
        });
        // a coverage edge: a NaN corner and a NaN column
        for y in 0..ny / 3 {
            for x in 0..nx / 4 {
                sci[[y, x]] = f32::NAN;
            }
        }
        for y in 0..ny {
            sci[[y, nx / 2]] = f32::NAN;
        }
        let err = Array2::from_shape_fn((ny, nx), |(y, x)| 0.1 + 0.01 * ((x + 2 * y) % 5) as f32);
        (sci, err)
    }

    #[test]
    fn fft_convolution_equals_direct_summation() {
        let (sci, err) = test_image(37, 45);
        let mut k = gaussian_image(9, 3.0);
        k[[4, 6]] -= 0.01; // not symmetric, a negative lobe
        let k = &k / k.sum();
        let f = convolve_rows(sci.view(), err.view(), 0..37, k.view());
        let d = convolve_direct(sci.view(), err.view(), k.view());
        for (a, b) in f.sci.iter().zip(d.sci.iter()).chain(f.err.iter().zip(d.err.iter())) {
            assert_eq!(a.is_nan(), b.is_nan());
            if a.is_finite() {
                assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{a} {b}");
            }
        }
        // an interior pixel of a constant image stays constant; ERR is sqrt(sum K^2) e there
        let c = Array2::from_elem((30, 30), 2.0f32);
        let e = Array2::from_elem((30, 30), 0.5f32);
        let f = convolve_rows(c.view(), e.view(), 0..30, k.view());
        assert!((f.sci[[15, 15]] - 2.0).abs() < 1e-6);
        let k2: f64 = k.iter().map(|v| v * v).sum();
        assert!((f.err[[15, 15]] as f64 - 0.5 * k2.sqrt()).abs() < 1e-6);
    }

    /// Cut into bands with halos as wide as the kernel radius, the result equals the whole image's.
    #[test]
    fn bands_with_halos_equal_the_whole_image() {
        let (sci, err) = test_image(64, 40);
        let k = gaussian_image(11, 4.0);
        let whole = convolve_rows(sci.view(), err.view(), 0..64, k.view());
        let r = 5;
        for h in [7usize, 16, 64] {
            let mut y0 = 0;
            while y0 < 64 {
                let y1 = (y0 + h).min(64);
                let (a, b) = (y0.saturating_sub(r), (y1 + r).min(64));
                let part = convolve_rows(
                    sci.slice(ndarray::s![a..b, ..]),
                    err.slice(ndarray::s![a..b, ..]),
                    (y0 - a)..(y1 - a),
                    k.view(),
                );
                for j in 0..(y1 - y0) {
                    for x in 0..40 {
                        let (u, v) = (part.sci[[j, x]], whole.sci[[y0 + j, x]]);
                        assert_eq!(u.is_nan(), v.is_nan());
                        if u.is_finite() {
                            assert!((u - v).abs() <= 1e-6 * v.abs().max(1.0), "h {h} y {} x {x}: {u} {v}", y0 + j);
                        }
                    }
                }
                y0 = y1;
            }
        }
    }
}

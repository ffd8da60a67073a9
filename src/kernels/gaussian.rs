//! Circular Gaussian smoothing: the sampled, unit-sum 1-D kernel and a NaN-aware separable
//! convolution (normalised convolution: the image with its missing pixels set to zero and the
//! coverage mask are both convolved, and their ratio is the smoothed value, so missing pixels and
//! the image edges neither pull the result towards zero nor leave holes around them).
//!
//! Used by `anchor` to bring a mosaic to a reference image's resolution (a Gaussian of FWHM
//! sqrt(target^2 - own^2), the PSFs taken as Gaussians at these large ratios). What does not live
//! here: kernels built from PSF images (Aniano et al. 2011), FFT convolution, files and MPI.

use ndarray::{Array2, ArrayView2};
use rayon::prelude::*;

/// Gaussian FWHM / sigma = 2 sqrt(2 ln 2).
pub const FWHM_PER_SIGMA: f64 = 2.354_820_045_030_949_3;

/// The kernel is cut at this many sigma (the weight beyond is 2e-9 of the total).
pub const TRUNCATE_SIGMA: f64 = 6.0;

/// The Gaussian of standard deviation `sigma_px` (pixels) sampled at integer offsets
/// `-r..=r`, `r = ceil(TRUNCATE_SIGMA * sigma_px)`, scaled to unit sum. `sigma_px <= 0` gives `[1]`.
pub fn kernel_1d(sigma_px: f64) -> Vec<f64> {
    if sigma_px <= 0.0 || !sigma_px.is_finite() {
        return vec![1.0];
    }
    let r = (TRUNCATE_SIGMA * sigma_px).ceil() as i64;
    let k: Vec<f64> = (-r..=r).map(|i| (-0.5 * (i as f64 / sigma_px).powi(2)).exp()).collect();
    let s: f64 = k.iter().sum();
    k.into_iter().map(|v| v / s).collect()
}

/// Smooth `img` (`[y, x]`) with a circular Gaussian of standard deviation `sigma_px` pixels,
/// ignoring non-finite pixels: each output pixel is `sum(K * v) / sum(K * m)` over the finite
/// pixels `v` (mask `m`) of the image, so the result is unbiased at edges and holes. Pixels that are
/// not finite in `img`, or whose covered kernel weight is below `min_weight` (0..1), are NaN.
///
/// Sums run in a fixed order per pixel (rows in parallel, each row serial), so the result does not
/// depend on the thread count.
pub fn smooth_nan(img: ArrayView2<f64>, sigma_px: f64, min_weight: f64) -> Array2<f64> {
    let (ny, nx) = img.dim();
    let k = kernel_1d(sigma_px);
    let r = (k.len() / 2) as isize;
    let val = img.mapv(|v| if v.is_finite() { v } else { 0.0 });
    let msk = img.mapv(|v| if v.is_finite() { 1.0 } else { 0.0 });
    // along x
    let pass_x = |a: &Array2<f64>| -> Array2<f64> {
        let rows: Vec<Vec<f64>> = (0..ny)
            .into_par_iter()
            .map(|y| {
                (0..nx as isize)
                    .map(|x| {
                        let mut s = 0.0;
                        for (j, kv) in k.iter().enumerate() {
                            let xx = x + j as isize - r;
                            if xx >= 0 && (xx as usize) < nx {
                                s += kv * a[[y, xx as usize]];
                            }
                        }
                        s
                    })
                    .collect()
            })
            .collect();
        Array2::from_shape_vec((ny, nx), rows.concat()).expect("shape")
    };
    // along y
    let pass_y = |a: &Array2<f64>| -> Array2<f64> {
        let rows: Vec<Vec<f64>> = (0..ny as isize)
            .into_par_iter()
            .map(|y| {
                let mut out = vec![0.0; nx];
                for (j, kv) in k.iter().enumerate() {
                    let yy = y + j as isize - r;
                    if yy >= 0 && (yy as usize) < ny {
                        for (o, v) in out.iter_mut().zip(a.row(yy as usize)) {
                            *o += kv * v;
                        }
                    }
                }
                out
            })
            .collect();
        Array2::from_shape_vec((ny, nx), rows.concat()).expect("shape")
    };
    let num = pass_y(&pass_x(&val));
    let den = pass_y(&pass_x(&msk));
    let mut out = Array2::from_elem((ny, nx), f64::NAN);
    for ((y, x), o) in out.indexed_iter_mut() {
        if img[[y, x]].is_finite() && den[[y, x]] >= min_weight && den[[y, x]] > 0.0 {
            *o = num[[y, x]] / den[[y, x]];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_is_unit_sum_symmetric_and_has_the_right_variance() {
        let k = kernel_1d(2.5);
        assert_eq!(k.len(), 2 * 15 + 1);
        assert!((k.iter().sum::<f64>() - 1.0).abs() < 1e-14);
        for i in 0..k.len() {
            assert_eq!(k[i], k[k.len() - 1 - i]);
        }
        let r = (k.len() / 2) as f64;
        let var: f64 = k.iter().enumerate().map(|(i, v)| v * (i as f64 - r).powi(2)).sum();
        // a sampled Gaussian's variance is sigma^2 to ~1e-12 for sigma > 1 (Poisson summation); the
        // cut at 6 sigma takes off about 2 x 36 sigma^2 x phi(6) sigma = 4e-7 of it
        assert!((var - 6.25).abs() < 2e-6, "{var}");
        assert_eq!(kernel_1d(0.0), vec![1.0]);
    }

    #[test]
    fn a_point_spreads_into_the_product_of_two_kernels_and_a_plane_is_kept() {
        let mut img = Array2::<f64>::zeros((41, 41));
        img[[20, 20]] = 1.0;
        let s = smooth_nan(img.view(), 1.5, 0.0);
        let k = kernel_1d(1.5);
        let r = k.len() / 2;
        // away from the edges the normalisation is 1: out = K(y) K(x)
        assert!((s[[20, 20]] - k[r] * k[r]).abs() < 1e-15);
        assert!((s[[22, 19]] - k[r + 2] * k[r - 1]).abs() < 1e-15);
        // a plane is kept exactly where the whole kernel lies on the image (r = 6 for sigma 1)
        let p = Array2::from_shape_fn((30, 40), |(y, x)| 0.5 + 0.01 * x as f64 - 0.02 * y as f64);
        let s = smooth_nan(p.view(), 1.0, 0.0);
        for ((y, x), v) in s.indexed_iter() {
            if (6..24).contains(&y) && (6..34).contains(&x) {
                assert!((v - p[[y, x]]).abs() < 1e-12, "{y} {x} {v}");
            }
        }
        // a hole stays a hole, its neighbours are smoothed from the pixels that are there
        let mut c = Array2::<f64>::from_elem((30, 40), 2.0);
        c[[10, 10]] = f64::NAN;
        let s = smooth_nan(c.view(), 2.0, 0.0);
        assert!(s[[10, 10]].is_nan());
        assert!(s.iter().filter(|v| !v.is_nan()).all(|v| (v - 2.0).abs() < 1e-12));
    }

    #[test]
    fn min_weight_blanks_pixels_with_little_coverage() {
        let mut img = Array2::<f64>::from_elem((20, 20), 1.0);
        for y in 0..20 {
            for x in 0..10 {
                img[[y, x]] = f64::NAN;
            }
        }
        let s = smooth_nan(img.view(), 2.0, 0.9);
        // the first finite column sees about half the kernel's weight; column 15 all but the tails
        // beyond 6 pixels to the left and 4 to the right (1.5% in all)
        assert!(s[[10, 10]].is_nan());
        assert!((s[[10, 15]] - 1.0).abs() < 1e-12);
    }
}

//! The noise-versus-resolution curve (the PHANGS-JWST paper, section 4.1 and Figure 10): the
//! standard deviation of empty sky after smoothing with Gaussians of increasing FWHM, beside the
//! curve uncorrelated pixel noise would follow (sigma_0 sqrt(sum K^2)).
//!
//! A background mesh (photutils Background2D-like, `kernels::sources`) is subtracted first, so
//! that extended emission does not count as noise. Empty sky is what is left after masking pixels above median + 3 sigma of the clipped sky (and
//! their neighbours, grown by the smoothing FWHM + 2 pixels); each point is the 3-sigma clipped
//! standard deviation of the smoothed image over what is left.

use super::convolve::convolve_rows;
use super::kernel::{gaussian_image, FWHM_PER_SIGMA};
use crate::kernels::sources::{par_estimate_background, BackgroundParams};
use crate::kernels::stats::{sigma_clipped_stats, ClipParams};
use ndarray::{Array2, ArrayView2};

/// One point of the curve.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NoisePoint {
    /// FWHM of the smoothing Gaussian, pixels.
    pub kernel_fwhm_px: f64,
    /// Measured clipped standard deviation of empty sky after smoothing (image units).
    pub std: f64,
    /// What uncorrelated pixel noise of the native standard deviation would give: sigma_0 sqrt(sum K^2).
    pub std_uncorrelated: f64,
    /// Sky pixels measured.
    pub n_pixels: usize,
}

/// A Gaussian smoothing kernel of FWHM `fwhm_px` (unit sum, radius 4 sigma, at least 1 pixel); the
/// identity for `fwhm_px` = 0.
pub fn smoothing_kernel(fwhm_px: f64) -> Array2<f64> {
    if fwhm_px <= 0.0 {
        return Array2::from_elem((1, 1), 1.0);
    }
    let r = ((4.0 * fwhm_px / FWHM_PER_SIGMA).ceil() as usize).max(1);
    gaussian_image(2 * r + 1, fwhm_px)
}

/// The source mask: finite pixels above median + 3 sigma (clipped), grown by `grow` pixels
/// (chessboard distance), plus every non-finite pixel.
fn source_mask(img: ArrayView2<f32>, grow: usize) -> Array2<bool> {
    let vals: Vec<f64> = img.iter().filter(|v| v.is_finite()).map(|&v| v as f64).collect();
    let st = sigma_clipped_stats(&vals, &ClipParams::default());
    let thr = st.median + 3.0 * st.std;
    let mut hot = img.mapv(|v| !v.is_finite() || v as f64 > thr);
    let (ny, nx) = hot.dim();
    // the array's border counts as masked: smoothing sees fewer pixels there
    for y in 0..ny {
        hot[[y, 0]] = true;
        hot[[y, nx - 1]] = true;
    }
    for x in 0..nx {
        hot[[0, x]] = true;
        hot[[ny - 1, x]] = true;
    }
    // separable max filter
    let mut rows = Array2::from_elem((ny, nx), false);
    for y in 0..ny {
        for x in 0..nx {
            let (a, b) = (x.saturating_sub(grow), (x + grow + 1).min(nx));
            rows[[y, x]] = (a..b).any(|i| hot[[y, i]]);
        }
    }
    let mut out = Array2::from_elem((ny, nx), false);
    for y in 0..ny {
        let (a, b) = (y.saturating_sub(grow), (y + grow + 1).min(ny));
        for x in 0..nx {
            out[[y, x]] = (a..b).any(|j| rows[[j, x]]);
        }
    }
    out
}

/// The background box for a curve reaching `fmax_px`: 3x the largest FWHM, at least 32 px.
pub fn background_box_px(fmax_px: f64) -> usize {
    ((3.0 * fmax_px).ceil() as usize).max(32)
}

/// `img` minus its background mesh (photutils Background2D-like boxes of `box_px`); unchanged when
/// no box has enough valid pixels. Extended emission is not noise.
pub fn flatten(img: ArrayView2<f32>, box_px: usize) -> Array2<f32> {
    let bp = BackgroundParams { box_px, ..Default::default() };
    match par_estimate_background(img, None, &bp) {
        Ok(bg) => &img - &bg.level,
        Err(_) => img.to_owned(),
    }
}

/// The empty-sky mask of a (flattened) image: `true` where masked (see [`source_mask`]).
pub fn sky_mask(flat: ArrayView2<f32>, grow_px: usize) -> Array2<bool> {
    source_mask(flat, grow_px)
}

/// The 3-sigma clipped standard deviation of `img` over the pixels `mask` leaves, and their number.
pub fn sky_std(img: ArrayView2<f32>, mask: &Array2<bool>) -> (f64, usize) {
    let v: Vec<f64> =
        img.iter().zip(mask.iter()).filter(|(p, m)| !**m && p.is_finite()).map(|(&p, _)| p as f64).collect();
    let n = v.len();
    (sigma_clipped_stats(&v, &ClipParams::default()).std, n)
}

/// The curve for smoothing FWHMs `fwhms_px` (pixels; 0 = native) on the image `sci` (`[y, x]`):
/// each smoothed copy is flattened (background boxes of [`background_box_px`] of the largest FWHM)
/// and measured over the sky mask of the flattened native image grown by its FWHM + 2 pixels, the
/// same measurement a PSF-matched product gets.
pub fn noise_curve(sci: ArrayView2<f32>, fwhms_px: &[f64]) -> Vec<NoisePoint> {
    let ny = sci.nrows();
    let fmax = fwhms_px.iter().copied().fold(0.0f64, f64::max);
    let bx = background_box_px(fmax);
    let flat = flatten(sci, bx);
    let zero_err = Array2::<f32>::zeros(sci.dim());
    let (sigma0, _) = sky_std(flat.view(), &sky_mask(flat.view(), 2));
    fwhms_px
        .iter()
        .map(|&f| {
            let k = smoothing_kernel(f);
            let sm = flatten(convolve_rows(sci, zero_err.view(), 0..ny, k.view()).sci.view(), bx);
            let mask = sky_mask(flat.view(), 2 + f.ceil() as usize);
            let (std, n) = sky_std(sm.view(), &mask);
            let k2: f64 = k.iter().map(|v| v * v).sum();
            NoisePoint { kernel_fwhm_px: f, std, std_uncorrelated: sigma0 * k2.sqrt(), n_pixels: n }
        })
        .collect()
}

/// The measured curve at `fwhm_px`, interpolated linearly between its points.
pub fn interpolate(curve: &[NoisePoint], fwhm_px: f64) -> f64 {
    for w in curve.windows(2) {
        if fwhm_px >= w[0].kernel_fwhm_px && fwhm_px <= w[1].kernel_fwhm_px {
            let t = (fwhm_px - w[0].kernel_fwhm_px) / (w[1].kernel_fwhm_px - w[0].kernel_fwhm_px);
            return w[0].std + t * (w[1].std - w[0].std);
        }
    }
    f64::NAN
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// White noise follows the uncorrelated law; correlated noise stays above it.
    #[test]
    fn white_noise_follows_the_uncorrelated_law() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let img = Array2::from_shape_fn((300, 300), |_| {
            // sum of uniforms: near-Gaussian, unit variance
            (0..12).map(|_| rng.random::<f32>()).sum::<f32>() - 6.0
        });
        let c = noise_curve(img.view(), &[0.0, 2.0, 4.0, 8.0]);
        for p in &c {
            assert!((p.std / p.std_uncorrelated - 1.0).abs() < 0.08, "{p:?}");
        }
        assert!((c[0].std - 1.0).abs() < 0.05);
        // correlated: white noise smoothed by FWHM 3 px first
        let k = smoothing_kernel(3.0);
        let z = Array2::<f32>::zeros(img.dim());
        let corr = convolve_rows(img.view(), z.view(), 0..300, k.view()).sci;
        let c2 = noise_curve(corr.view(), &[0.0, 4.0]);
        assert!(c2[1].std > 1.5 * c2[1].std_uncorrelated, "{c2:?}");
        assert!((interpolate(&c, 3.0) - 0.5 * (c[1].std + c[2].std)).abs() < 1e-12);
    }
}

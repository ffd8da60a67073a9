//! The Butterworth high-pass (as `skimage.filters.butterworth`, by FFT with rustfft) of a periodic
//! or mirror-padded image, and pjpipe's diffuse filter: masked pixels filled with Gaussian noise at
//! the clipped sky level, the filled image high-passed, and the sources of the result masked, so
//! that the stripes are measured without the extended emission.
//!
//! What does not live here: the source masks (`mask`) and the row and column passes that use the
//! filtered copy (`single`).

use ndarray::{s, Array2, ArrayView2, Axis, Zip};
use rayon::prelude::*;
use rustfft::{num_complex::Complex, FftPlanner};
use std::ops::Range;

use super::filters::{gauss, map_range, reflect_index};
use super::mask::{flatten_amp_rows, source_mask_impl, two_sided_mask};
use super::params::{check_shape, ButterworthParams, DestripeError, SourceMaskParams};
use crate::kernels::stats::{nanmedian, sigma_clipped_stats_select, ClipParams};

/// Butterworth high-pass of a real image by FFT, with the image taken as periodic (as
/// `skimage.filters.butterworth(image, cutoff_ratio, high_pass=True, order, npad=0)`): the 2-D
/// spectrum is multiplied by [`ButterworthParams::gain`] of the radial frequency
/// `sqrt(fy^2 + fx^2)` (cycles per pixel, numpy `fftfreq` convention), the mean is removed.
/// `img` is `[y, x]` and must be finite. Rows, then columns, are transformed on rayon when `par`;
/// each 1-D transform is the same either way, so results are bit-identical.
///
/// # Errors
/// [`DestripeError::Param`] for an invalid filter.
pub fn butterworth_highpass(
    img: ArrayView2<f64>,
    p: &ButterworthParams,
    par: bool,
) -> Result<Array2<f64>, DestripeError> {
    p.validate()?;
    let (ny, nx) = img.dim();
    if ny == 0 || nx == 0 {
        return Ok(img.to_owned());
    }
    let mut planner = FftPlanner::<f64>::new();
    let (fx, ix) = (planner.plan_fft_forward(nx), planner.plan_fft_inverse(nx));
    let (fy, iy) = (planner.plan_fft_forward(ny), planner.plan_fft_inverse(ny));
    let mut buf: Array2<Complex<f64>> = img.mapv(|v| Complex::new(v, 0.0));
    let freq = |k: usize, n: usize| if k <= (n - 1) / 2 { k as f64 / n as f64 } else { k as f64 / n as f64 - 1.0 };
    let gx: Vec<f64> = (0..nx).map(|k| freq(k, nx).powi(2)).collect();
    let row_pass = |buf: &mut Array2<Complex<f64>>, plan: &std::sync::Arc<dyn rustfft::Fft<f64>>| {
        let body = |mut row: ndarray::ArrayViewMut1<Complex<f64>>| {
            let mut scratch = vec![Complex::new(0.0, 0.0); plan.get_inplace_scratch_len()];
            plan.process_with_scratch(row.as_slice_mut().expect("contiguous row"), &mut scratch);
        };
        if par {
            buf.axis_iter_mut(Axis(0)).into_par_iter().for_each(body);
        } else {
            buf.axis_iter_mut(Axis(0)).for_each(body);
        }
    };
    row_pass(&mut buf, &fx);
    let col_body = |(kx, mut col): (usize, ndarray::ArrayViewMut1<Complex<f64>>)| {
        let mut v: Vec<Complex<f64>> = col.to_vec();
        let mut scratch = vec![Complex::new(0.0, 0.0); fy.get_inplace_scratch_len().max(iy.get_inplace_scratch_len())];
        fy.process_with_scratch(&mut v, &mut scratch);
        for (ky, c) in v.iter_mut().enumerate() {
            *c *= p.gain((freq(ky, ny).powi(2) + gx[kx]).sqrt());
        }
        iy.process_with_scratch(&mut v, &mut scratch);
        col.iter_mut().zip(&v).for_each(|(a, b)| *a = *b);
    };
    if par {
        buf.axis_iter_mut(Axis(1)).into_par_iter().enumerate().for_each(col_body);
    } else {
        buf.axis_iter_mut(Axis(1)).enumerate().for_each(col_body);
    }
    row_pass(&mut buf, &ix);
    let norm = 1.0 / (nx * ny) as f64;
    Ok(buf.mapv(|c| c.re * norm))
}

/// Symmetric mirror padding (`numpy.pad(mode="symmetric")`, edge pixel repeated) by `py` rows
/// and `px` columns on each side.
fn mirror_pad(img: ArrayView2<f64>, py: usize, px: usize) -> Array2<f64> {
    let (ny, nx) = img.dim();
    let sym = |j: isize, n: usize| reflect_index(j, n);
    Array2::from_shape_fn((ny + 2 * py, nx + 2 * px), |(y, x)| {
        img[[sym(y as isize - py as isize, ny), sym(x as isize - px as isize, nx)]]
    })
}

/// Butterworth high-pass of a mirror-padded copy, as pjpipe's diffuse filter does it: the image is
/// padded by `ny/4` rows and `nx/4` columns on each side with its mirror image (pjpipe builds the
/// 2x2 mirror tiling, rolls it by half a frame and keeps the central 1.5N x 1.5N, which is the
/// same), filtered with [`butterworth_highpass`] (cutoff relative to the *padded* size's sampling,
/// i.e. cycles per pixel) and cropped back. `img` must be finite.
///
/// # Errors
/// [`DestripeError::Param`] for an invalid filter.
pub fn highpass_mirror_padded(
    img: ArrayView2<f64>,
    p: &ButterworthParams,
    par: bool,
) -> Result<Array2<f64>, DestripeError> {
    let (ny, nx) = img.dim();
    let (py, px) = (ny / 4, nx / 4);
    let padded = mirror_pad(img, py, px);
    let f = butterworth_highpass(padded.view(), p, par)?;
    Ok(f.slice(s![py..py + ny, px..px + nx]).to_owned())
}

/// Parameters of [`diffuse_filter`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DiffuseParams {
    /// Threshold of the new source masks, sigma. Default 3.
    pub sigma: f64,
    /// Minimum pixels of a negative source in the new mask (positive sources need 10). Default 3.
    pub npixels: usize,
    /// Dilation of the new positive-source mask, pixels (negative sources: 11). Default 7.
    pub dilate_size: usize,
    /// The high-pass filter.
    pub butterworth: ButterworthParams,
    /// Seed of the Gaussian fill.
    pub seed: u64,
}

impl Default for DiffuseParams {
    fn default() -> Self {
        Self { sigma: 3.0, npixels: 3, dilate_size: 7, butterworth: ButterworthParams::default(), seed: 0 }
    }
}

/// pjpipe's `get_filter_diffuse`: remove emission smoother than ~1/cutoff pixels so that stripes
/// can be measured under extended emission. `mask` is the current mask (sources and bad pixels),
/// `bad` the bad pixels alone. Steps: `std` = sigma-clipped std (3 sigma, 5 iterations) of the
/// unmasked pixels; high-S/N pixels = [`source_mask`] (5 sigma, 1 pixel, no dilation, bad pixels
/// excluded); bad, non-finite and high-S/N pixels are replaced by `median + std * N(0, 1)` with the
/// seeded counter-based generator (pjpipe uses mean 0 — the same after the high-pass, which removes
/// any constant); [`highpass_mirror_padded`]; replaced pixels set to NaN and then to their row's
/// NaN-median; new mask = sources of the filtered image (`sigma`, 10 pixels, `dilate_size`, bad
/// excluded) OR sources of its negative (`sigma`, `npixels`, dilation 11, bad and positive
/// sources excluded) OR `bad`. Returns `(filtered, new_mask)`; with no usable pixel it returns the
/// input and an all-true mask.
///
/// # Errors
/// [`DestripeError::Shape`] if a mask is not shaped like `data`; [`DestripeError::Param`] for an
/// invalid filter or threshold.
pub fn diffuse_filter(
    data: ArrayView2<f64>,
    mask: ArrayView2<bool>,
    bad: ArrayView2<bool>,
    amps: &[Range<usize>],
    p: &DiffuseParams,
    par: bool,
) -> Result<(Array2<f64>, Array2<bool>), DestripeError> {
    check_shape("diffuse-filter mask", mask.dim(), data.dim())?;
    check_shape("diffuse-filter bad mask", bad.dim(), data.dim())?;
    p.butterworth.validate()?;
    SourceMaskParams { nsigma: p.sigma, ..Default::default() }.validate()?;
    Ok(diffuse_filter_impl(data, mask, bad, amps, p, par))
}

pub(super) fn diffuse_filter_impl(
    data: ArrayView2<f64>,
    mask: ArrayView2<bool>,
    bad: ArrayView2<bool>,
    amps: &[Range<usize>],
    p: &DiffuseParams,
    par: bool,
) -> (Array2<f64>, Array2<bool>) {
    let (ny, nx) = data.dim();
    let mut vals: Vec<f64> =
        Zip::from(&data).and(&mask).map_collect(|&d, &m| if m { f64::NAN } else { d }).into_iter().collect();
    let st = sigma_clipped_stats_select(&mut vals, &ClipParams { sigma: 3.0, maxiters: Some(5) });
    if st.n_kept == 0.0 {
        return (data.to_owned(), Array2::from_elem((ny, nx), true));
    }
    let hisn = source_mask_impl(
        data,
        bad,
        &SourceMaskParams { nsigma: 5.0, npixels: 1, dilate_size: 1, maxiters: Some(5) },
        par,
    );
    let replace = Zip::from(&data).and(&bad).and(&hisn).map_collect(|&d, &b, &h| b || h || !d.is_finite());
    let filled = Array2::from_shape_fn((ny, nx), |(y, x)| {
        if replace[[y, x]] {
            st.median + st.std * gauss(p.seed, (y * nx + x) as u64)
        } else {
            data[[y, x]]
        }
    });
    let mut f = highpass_mirror_padded(filled.view(), &p.butterworth, par).expect("validated filter");
    let rows = map_range(ny, par, |y| {
        let vals: Vec<f64> = (0..nx).filter(|&x| !replace[[y, x]]).map(|x| f[[y, x]]).collect();
        nanmedian(&vals)
    });
    Zip::indexed(&mut f).for_each(|(y, x), v| {
        if replace[[y, x]] {
            *v = rows[y];
        }
    });
    let pos = SourceMaskParams { nsigma: p.sigma, npixels: 10, dilate_size: p.dilate_size, maxiters: Some(5) };
    let neg = SourceMaskParams { nsigma: p.sigma, npixels: p.npixels, dilate_size: 11, maxiters: Some(5) };
    let fflat = flatten_amp_rows(f.view(), bad, amps, par);
    let mut m = two_sided_mask(fflat.view(), bad, &pos, &neg, par);
    // rows whose every pixel was replaced hold NaN: keep them masked
    Zip::from(&mut m).and(&f).for_each(|m, &v| *m |= !v.is_finite());
    (f, m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn butterworth_gain_on_sines() {
        // Periodic 8 x 1024 image holding cos(2 pi k x / 1024): the output is gain(k/1024) times it.
        let (ny, nx) = (8, 1024);
        for squared in [true, false] {
            let p = ButterworthParams { squared, ..Default::default() };
            for k in [1usize, 3, 5, 8, 20, 100] {
                let f = k as f64 / nx as f64;
                let img = Array2::from_shape_fn((ny, nx), |(_, x)| 2.0 + (std::f64::consts::TAU * f * x as f64).cos());
                let out = butterworth_highpass(img.view(), &p, false).unwrap();
                let q = p.cutoff_ratio / f;
                let h = if squared { 1.0 / (1.0 + q.powi(4)) } else { 1.0 / (1.0 + q.powi(4)).sqrt() };
                let expect = img.mapv(|v| h * (v - 2.0));
                let err = (&out - &expect).iter().fold(0.0f64, |m, v| m.max(v.abs()));
                assert!(err < 1e-12, "k {k} squared {squared}: err {err}");
            }
        }
        // 2-D: a diagonal wave's gain uses the radial frequency
        let (ny, nx) = (256, 256);
        let (ky, kx) = (1.0, 1.0);
        let img = Array2::from_shape_fn((ny, nx), |(y, x)| {
            (std::f64::consts::TAU * (ky * y as f64 / ny as f64 + kx * x as f64 / nx as f64)).sin()
        });
        let out = butterworth_highpass(img.view(), &ButterworthParams::default(), true).unwrap();
        let fr = (2.0f64).sqrt() / 256.0;
        let h = 1.0 / (1.0 + (0.005 / fr).powi(4));
        assert!((&out - &img.mapv(|v| v * h)).iter().all(|v| v.abs() < 1e-12));
    }

    #[test]
    fn highpass_mirror_padded_removes_smooth_keeps_fine() {
        let (ny, nx) = (200, 300);
        // a plane + a slow bump (removed) and a fine ripple of period 8 px (kept)
        let smooth = |y: usize, x: usize| 3.0 + 0.001 * x as f64 + (-(((y as f64) - 100.0).powi(2)) / 20000.0).exp();
        let fine = |y: usize, x: usize| 0.01 * (std::f64::consts::TAU * x as f64 / 8.0).sin() * (y % 2) as f64;
        let img = Array2::from_shape_fn((ny, nx), |(y, x)| smooth(y, x) + fine(y, x));
        let p = ButterworthParams { cutoff_ratio: 0.02, ..Default::default() };
        let out = highpass_mirror_padded(img.view(), &p, false).unwrap();
        let fin = Array2::from_shape_fn((ny, nx), |(y, x)| fine(y, x));
        let err = (&out - &fin).slice(s![60..140, 60..240]).iter().fold(0.0f64, |m, v| m.max(v.abs()));
        assert!(err < 1e-3, "interior error {err}");
        // par == serial bit for bit
        assert_eq!(out, highpass_mirror_padded(img.view(), &p, true).unwrap());
    }
}

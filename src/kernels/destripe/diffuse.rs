//! The Butterworth high-pass (as `skimage.filters.butterworth`, by real-input FFTs with realfft and
//! rustfft) of a periodic or mirror-padded image, and pjpipe's diffuse filter: masked pixels filled
//! with Gaussian noise at the clipped sky level, the filled image high-passed, and the sources of
//! the result masked, so that the stripes are measured without the extended emission.
//!
//! What does not live here: the source masks (`mask`) and the row and column passes that use the
//! filtered copy (`single`).

use ndarray::{s, Array2, ArrayView2, ArrayViewMut1, ArrayViewMut2, Axis, Zip};
use rayon::prelude::*;
use realfft::RealFftPlanner;
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
/// `img` is `[y, x]` and must be finite. Real-input transforms along the rows (the half spectrum),
/// complex ones down its columns; rows, then column blocks, on rayon when `par`; each 1-D transform
/// is the same either way, so results are bit-identical.
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
    let src = |y: usize, row: &mut [f64]| row.iter_mut().zip(img.row(y)).for_each(|(o, &v)| *o = v);
    Ok(highpass_core(&src, [ny, nx], 0..ny, 0..nx, p, par))
}

/// Columns of the half spectrum copied out and transformed together (one contiguous buffer).
const COL_BLOCK: usize = 16;

/// The Butterworth high-pass of the `[nyp, nxp]` image whose row `y` `fill(y, row)` writes, cropped
/// to `rows` x `cols`: real-to-complex FFTs of the rows (the `nxp / 2 + 1` non-negative x
/// frequencies, which hold the whole spectrum of a real image), complex FFTs down the columns of
/// that half spectrum in blocks of [`COL_BLOCK`] columns, the gain, the inverse column FFTs, and
/// complex-to-real inverse FFTs of the kept rows only. The gain is a function of `fy^2`, so it is
/// evaluated once per `|ky|`. Same numbers as a full complex 2-D transform up to rounding (the
/// filter is real and even, so the product's spectrum stays Hermitian).
fn highpass_core(
    fill: &(dyn Fn(usize, &mut [f64]) + Sync),
    [nyp, nxp]: [usize; 2],
    rows: Range<usize>,
    cols: Range<usize>,
    p: &ButterworthParams,
    par: bool,
) -> Array2<f64> {
    let mut rplan = RealFftPlanner::<f64>::new();
    let (r2c, c2r) = (rplan.plan_fft_forward(nxp), rplan.plan_fft_inverse(nxp));
    let mut cplan = FftPlanner::<f64>::new();
    let (fy, iy) = (cplan.plan_fft_forward(nyp), cplan.plan_fft_inverse(nyp));
    let nxh = nxp / 2 + 1;
    let zero = Complex::new(0.0, 0.0);
    let mut spec = Array2::<Complex<f64>>::from_elem((nyp, nxh), zero);
    // rows: real-to-complex
    let fwd_init = || (vec![0.0; nxp], r2c.make_scratch_vec());
    let fwd = |(inp, scratch): &mut (Vec<f64>, Vec<Complex<f64>>),
               (y, mut row): (usize, ArrayViewMut1<Complex<f64>>)| {
        fill(y, inp);
        r2c.process_with_scratch(inp, row.as_slice_mut().expect("contiguous row"), scratch).expect("FFT lengths");
    };
    if par {
        spec.axis_iter_mut(Axis(0)).into_par_iter().enumerate().for_each_init(fwd_init, fwd);
    } else {
        let mut st = fwd_init();
        spec.axis_iter_mut(Axis(0)).enumerate().for_each(|r| fwd(&mut st, r));
    }
    // columns of the half spectrum, a block at a time: FFT, gain, inverse FFT
    let fy2: Vec<f64> = (0..=nyp / 2).map(|k| (k as f64 / nyp as f64).powi(2)).collect();
    let col_init = || {
        let scratch = fy.get_inplace_scratch_len().max(iy.get_inplace_scratch_len());
        (vec![zero; COL_BLOCK * nyp], vec![zero; scratch], vec![0.0; nyp / 2 + 1])
    };
    type ColState = (Vec<Complex<f64>>, Vec<Complex<f64>>, Vec<f64>);
    let col = |(buf, scratch, gain): &mut ColState, (b, mut blk): (usize, ArrayViewMut2<Complex<f64>>)| {
        let w = blk.ncols();
        let buf = &mut buf[..w * nyp];
        for (y, row) in blk.rows().into_iter().enumerate() {
            for (j, &c) in row.iter().enumerate() {
                buf[j * nyp + y] = c;
            }
        }
        fy.process_with_scratch(buf, scratch);
        for (j, colv) in buf.chunks_exact_mut(nyp).enumerate() {
            let kx = b * COL_BLOCK + j;
            let fx2 = (kx as f64 / nxp as f64).powi(2);
            gain.iter_mut().zip(&fy2).for_each(|(g, &f2)| *g = p.gain((f2 + fx2).sqrt()));
            for (ky, c) in colv.iter_mut().enumerate() {
                *c *= gain[ky.min(nyp - ky)];
            }
        }
        iy.process_with_scratch(buf, scratch);
        for (y, mut row) in blk.rows_mut().into_iter().enumerate() {
            for (j, c) in row.iter_mut().enumerate() {
                *c = buf[j * nyp + y];
            }
        }
    };
    if par {
        spec.axis_chunks_iter_mut(Axis(1), COL_BLOCK).into_par_iter().enumerate().for_each_init(col_init, col);
    } else {
        let mut st = col_init();
        spec.axis_chunks_iter_mut(Axis(1), COL_BLOCK).enumerate().for_each(|b| col(&mut st, b));
    }
    // the kept rows: complex-to-real, cropped and normalised
    let norm = 1.0 / (nxp * nyp) as f64;
    let mut out = Array2::<f64>::zeros((rows.len(), cols.len()));
    let inv_init = || (vec![0.0; nxp], c2r.make_scratch_vec());
    let inv = |(res, scratch): &mut (Vec<f64>, Vec<Complex<f64>>),
               (mut s, mut o): (ArrayViewMut1<Complex<f64>>, ArrayViewMut1<f64>)| {
        let s = s.as_slice_mut().expect("contiguous row");
        // real up to rounding (a real image's spectrum): what a complex transform's real part keeps
        s[0].im = 0.0;
        if nxp % 2 == 0 {
            s[nxh - 1].im = 0.0;
        }
        c2r.process_with_scratch(s, res, scratch).expect("FFT lengths and real DC");
        o.iter_mut().zip(&res[cols.clone()]).for_each(|(o, &v)| *o = v * norm);
    };
    let mut kept = spec.slice_mut(s![rows.clone(), ..]);
    if par {
        kept.axis_iter_mut(Axis(0)).into_par_iter().zip(out.axis_iter_mut(Axis(0))).for_each_init(inv_init, inv);
    } else {
        let mut st = inv_init();
        kept.axis_iter_mut(Axis(0)).zip(out.axis_iter_mut(Axis(0))).for_each(|r| inv(&mut st, r));
    }
    out
}

/// Butterworth high-pass of a mirror-padded copy, as pjpipe's diffuse filter does it: the image is
/// padded by `ny/4` rows and `nx/4` columns on each side with its mirror image (`numpy.pad(mode=
/// "symmetric")`, edge pixel repeated; pjpipe builds the 2x2 mirror tiling, rolls it by half a
/// frame and keeps the central 1.5N x 1.5N, which is the same), filtered as
/// [`butterworth_highpass`] (cutoff relative to the *padded* size's sampling, i.e. cycles per
/// pixel) and cropped back. The padded copy is never held: each padded row is built where its FFT
/// needs it, and only the rows kept are transformed back. `img` must be finite.
///
/// # Errors
/// [`DestripeError::Param`] for an invalid filter.
pub fn highpass_mirror_padded(
    img: ArrayView2<f64>,
    p: &ButterworthParams,
    par: bool,
) -> Result<Array2<f64>, DestripeError> {
    p.validate()?;
    let (ny, nx) = img.dim();
    if ny == 0 || nx == 0 {
        return Ok(img.to_owned());
    }
    let (py, px) = (ny / 4, nx / 4);
    let ymap: Vec<usize> = (0..ny + 2 * py).map(|y| reflect_index(y as isize - py as isize, ny)).collect();
    let xmap: Vec<usize> = (0..nx + 2 * px).map(|x| reflect_index(x as isize - px as isize, nx)).collect();
    let src = |y: usize, row: &mut [f64]| {
        let r = img.row(ymap[y]);
        row.iter_mut().zip(&xmap).for_each(|(o, &x)| *o = r[x]);
    };
    Ok(highpass_core(&src, [ny + 2 * py, nx + 2 * px], py..py + ny, px..px + nx, p, par))
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

    /// The filter as it was before the real-input transforms: the padded copy built whole, a full
    /// complex 2-D FFT, the gain per frequency, the real part of the inverse, cropped.
    fn complex_reference(img: ArrayView2<f64>, p: &ButterworthParams, pad: bool) -> Array2<f64> {
        let (ny, nx) = img.dim();
        let (py, px) = if pad { (ny / 4, nx / 4) } else { (0, 0) };
        let (nyp, nxp) = (ny + 2 * py, nx + 2 * px);
        let mut b = Array2::from_shape_fn((nyp, nxp), |(y, x)| {
            let (yy, xx) = (reflect_index(y as isize - py as isize, ny), reflect_index(x as isize - px as isize, nx));
            Complex::new(img[[yy, xx]], 0.0)
        });
        let mut pl = FftPlanner::<f64>::new();
        let fft = |b: &mut Array2<Complex<f64>>, pl: &mut FftPlanner<f64>, inverse: bool| {
            for ax in [Axis(1), Axis(0)] {
                let n = b.len_of(ax);
                let f = if inverse { pl.plan_fft_inverse(n) } else { pl.plan_fft_forward(n) };
                for mut lane in b.lanes_mut(ax) {
                    let mut v = lane.to_vec();
                    f.process(&mut v);
                    lane.iter_mut().zip(&v).for_each(|(a, c)| *a = *c);
                }
            }
        };
        fft(&mut b, &mut pl, false);
        let freq = |k: usize, n: usize| if k <= (n - 1) / 2 { k as f64 / n as f64 } else { k as f64 / n as f64 - 1.0 };
        for ((ky, kx), c) in b.indexed_iter_mut() {
            *c *= p.gain((freq(ky, nyp).powi(2) + freq(kx, nxp).powi(2)).sqrt());
        }
        fft(&mut b, &mut pl, true);
        let norm = 1.0 / (nxp * nyp) as f64;
        b.slice(s![py..py + ny, px..px + nx]).mapv(|c| c.re * norm)
    }

    #[test]
    fn real_input_transforms_match_the_full_complex_transform() {
        // odd and even padded sizes (37 -> 55, 50 -> 74; 64 -> 96; 21 -> 31), a blob, a gradient and
        // noise; the half spectrum, its blocks of columns and the kept rows give the same image
        for (ny, nx) in [(37usize, 50usize), (64, 21), (5, 3)] {
            let img = Array2::from_shape_fn((ny, nx), |(y, x)| {
                let r2 = (y as f64 - ny as f64 / 3.0).powi(2) + (x as f64 - nx as f64 / 2.0).powi(2);
                5.0 + 0.01 * x as f64 + (-r2 / 30.0).exp() + 0.1 * gauss(9, (y * nx + x) as u64)
            });
            for squared in [true, false] {
                let p = ButterworthParams { cutoff_ratio: 0.07, squared, ..Default::default() };
                for pad in [true, false] {
                    let want = complex_reference(img.view(), &p, pad);
                    let got = if pad {
                        highpass_mirror_padded(img.view(), &p, false).unwrap()
                    } else {
                        butterworth_highpass(img.view(), &p, false).unwrap()
                    };
                    let err = (&got - &want).iter().fold(0.0f64, |m, v| m.max(v.abs()));
                    assert!(err < 1e-13, "{ny}x{nx} pad {pad} squared {squared}: max error {err}");
                    let par = if pad {
                        highpass_mirror_padded(img.view(), &p, true)
                    } else {
                        butterworth_highpass(img.view(), &p, true)
                    };
                    assert_eq!(got, par.unwrap());
                }
            }
        }
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

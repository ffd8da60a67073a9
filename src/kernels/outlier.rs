//! Outlier (cosmic-ray) rejection kernels for the `outlier` stage, replicating the imaging branch
//! of the JWST pipeline's `outlier_detection` step (jwst 3.0: `jwst.outlier_detection.utils`,
//! which calls `stcal.outlier_detection` 1.20 and `drizzle` 2.2). The method is the one of
//! DrizzlePac's `driz_cr` (Fruchter & Hook 2002, PASP 114, 144; Gonzaga et al. 2012, *The
//! DrizzlePac Handbook*): the median of the resampled exposures is blotted back to each exposure
//! and a pixel is an outlier where the exposure departs from the blot by more than a noise term plus
//! a term proportional to the blot's local derivative, with a two-threshold (grow) test.
//!
//! What lives here, as pure functions on `[y, x]` ndarray views:
//! - [`weight_threshold`]: JWST's low-weight cut of one resampled exposure (`maskpt` times the
//!   3-sigma-clipped *mean* of its finite, non-zero weights);
//! - [`median_stack`]: the per-pixel median of the resampled exposures with that cut, numpy's
//!   `nanmedian` definition; [`median_stack_with`] optionally takes the minimum where only two
//!   exposures remain (tessera's departure from JWST, for cosmic rays where two overlap);
//! - [`interp_bilinear`]: drizzle's `"linear"` blot interpolation at one position;
//! - [`abs_deriv`]: JWST's absolute derivative of the blotted image;
//! - [`flag_outliers`] and [`flag_outliers_window`]: the two-threshold test, whole image or the
//!   pixels a chunk owner decides from a window with a 2-pixel halo, bit for bit the same.
//!
//! What does not live here: the resampling (drizzle) of exposures, WCS mapping for the blot (the
//! caller turns exposure pixels into median-grid positions with `geom` and calls
//! [`interp_bilinear`]), reading/writing DQ, MPI halo exchange and the configuration. All float
//! arithmetic follows the single/double precision of the Python code step by step, so the results
//! match the JWST functions bit for bit (tests against a fixture written by
//! `scripts/fixtures/make_outlier_fixture.py`).

use std::ops::{Add, Range};

use ndarray::{Array2, ArrayView2, ArrayView3, ArrayViewMut2, Axis};
use rayon::prelude::*;

/// Parameters of the outlier test (JWST `outlier_detection` step parameters for imaging).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutlierParams {
    /// Noise multiple of the first (pre-grow) threshold; JWST `snr` first value, default 5.0.
    pub snr1: f32,
    /// Noise multiple of the second (post-grow) threshold; JWST `snr` second value, default 4.0.
    pub snr2: f32,
    /// Derivative multiple of the first threshold; JWST `scale` first value, default 1.2.
    pub scale1: f32,
    /// Derivative multiple of the second threshold; JWST `scale` second value, default 0.7.
    pub scale2: f32,
    /// Fraction of the typical weight below which resampled pixels are left out of the median;
    /// JWST `maskpt`, default 0.7. `f64` because JWST multiplies a double-precision mean by the
    /// Python float 0.7 (an `f32` 0.7 would shift the threshold by 2e-8 relative).
    pub maskpt: f64,
    /// Background subtracted from `sci - blot`, in the image's unit; JWST `backg`, default 0.
    pub backg: f32,
}

impl Default for OutlierParams {
    /// JWST defaults: snr 5.0/4.0, scale 1.2/0.7, maskpt 0.7, backg 0.
    fn default() -> Self {
        Self { snr1: 5.0, snr2: 4.0, scale1: 1.2, scale2: 0.7, maskpt: 0.7, backg: 0.0 }
    }
}

/// Block size of numpy's pairwise summation (`PW_BLOCKSIZE`).
const PW_BLOCKSIZE: usize = 128;
/// Elements per buffer in numpy's casting reductions (`NPY_BUFSIZE`): a float32 array summed in
/// float64 is summed pairwise per buffer, the buffer sums added in order.
const NPY_BUFSIZE: usize = 8192;
/// Sigma-clipping parameters of `stcal.outlier_detection.utils.compute_weight_threshold`.
const CLIP_SIGMA: f32 = 3.0;
const CLIP_MAXITERS: usize = 5;

/// numpy's pairwise summation (`@TYPE@_pairwise_sum`, numpy/_core/src/umath/loops_utils.h.src),
/// in the precision of `T`: below 8 elements a plain loop from -0.0, up to 128 eight accumulators,
/// above that a split at half the length rounded down to a multiple of 8.
fn pairwise_sum<T: Copy + Add<Output = T>>(a: &[T], neg_zero: T) -> T {
    let n = a.len();
    if n < 8 {
        a.iter().fold(neg_zero, |s, &v| s + v)
    } else if n <= PW_BLOCKSIZE {
        let mut r = [a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]];
        let mut i = 8;
        while i < n - n % 8 {
            for (j, rj) in r.iter_mut().enumerate() {
                *rj = *rj + a[i + j];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for &v in &a[i..] {
            res = res + v;
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        pairwise_sum(&a[..n2], neg_zero) + pairwise_sum(&a[n2..], neg_zero)
    }
}

/// `np.median` of a float32 1-d array without NaN: the middle value, or the float32 mean of the
/// two middle values (`(a + b) / 2` in float32) for even counts. `v` is sorted in place.
fn median_f32_numpy(v: &mut [f32]) -> f32 {
    v.sort_unstable_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// `np.nanstd` (ddof 0) of a float32 1-d array without NaN: float32 pairwise sums, divisions by
/// the count done in double precision and rounded to float32, float32 square root.
fn std_f32_numpy(v: &[f32]) -> f32 {
    let n = v.len() as f64;
    let mean = (f64::from(pairwise_sum(v, -0.0f32)) / n) as f32;
    let sq: Vec<f32> = v
        .iter()
        .map(|&x| {
            let d = x - mean;
            d * d
        })
        .collect();
    let var = (f64::from(pairwise_sum(&sq, -0.0f32)) / n) as f32;
    var.sqrt()
}

/// The weight threshold of one resampled exposure, exactly as JWST computes it
/// (`stcal.outlier_detection.utils.compute_weight_threshold`, called by
/// `jwst.outlier_detection.utils.median_with_resampling`): the weights that are finite and
/// non-zero (negative weights included), in row-major order, are sigma-clipped with astropy's
/// `sigma_clip(sigma=3, maxiters=5)` (centre = float32 median, spread = float32 standard deviation,
/// bounds `centre -/+ 3 std` in float32, values kept if `lo <= w <= hi`, iterate until nothing
/// changes); the threshold is the double-precision **mean** of the survivors times `maskpt`.
/// Returns NaN when no weight is finite and non-zero (then nothing is masked, as in JWST, since
/// `w < NaN` is false).
///
/// `wht` is `[y, x]` in any weight unit; the result is in the same unit. It is `f64` because JWST
/// compares the float32 weights with this double-precision value.
pub fn weight_threshold(wht: ArrayView2<f32>, maskpt: f64) -> f64 {
    let mut data: Vec<f32> = wht.iter().copied().filter(|w| w.is_finite() && *w != 0.0).collect();
    let mut scratch = Vec::with_capacity(data.len());
    for _ in 0..CLIP_MAXITERS {
        if data.is_empty() {
            break;
        }
        scratch.clear();
        scratch.extend_from_slice(&data);
        let centre = median_f32_numpy(&mut scratch);
        let std = std_f32_numpy(&data);
        let (lo, hi) = (centre - std * CLIP_SIGMA, centre + std * CLIP_SIGMA);
        let before = data.len();
        data.retain(|&w| w >= lo && w <= hi);
        if data.len() == before {
            break;
        }
    }
    if data.is_empty() {
        return f64::NAN;
    }
    // np.mean(..., dtype="f8"): float32 -> float64 cast through NPY_BUFSIZE buffers.
    let mut sum = 0.0f64;
    let mut buf = Vec::with_capacity(NPY_BUFSIZE.min(data.len()));
    for chunk in data.chunks(NPY_BUFSIZE) {
        buf.clear();
        buf.extend(chunk.iter().map(|&w| f64::from(w)));
        sum += pairwise_sum(&buf, -0.0f64);
    }
    sum / data.len() as f64 * maskpt
}

/// Median of a few float32 values as JWST's `nanmedian3D` gives it (numpy's `nanmedian` along an
/// axis shorter than 600, i.e. `np.ma.median`): sort, take the middle pair (the same element twice
/// for odd counts) and return `(0 + lo + hi) / 2` in float32. NaN for an empty set.
fn nanmedian_small(v: &mut [f32]) -> f32 {
    let n = v.len();
    if n == 0 {
        return f32::NAN;
    }
    v.sort_unstable_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let h = n / 2;
    let l = if n % 2 == 1 { h } else { h - 1 };
    ((0.0f32 + v[l]) + v[h]) / 2.0
}

/// Per-pixel median over a stack of resampled exposures, as
/// `jwst.outlier_detection.utils.median_with_resampling`: entry `k` of a pixel is left out when
/// `wht[k, y, x] < thresholds[k]` (compared in double precision; a NaN weight or NaN threshold
/// never leaves anything out) or when its value is NaN; the median of what remains follows
/// numpy's `nanmedian` (mean of the two middle values for even counts, computed in float32);
/// NaN where nothing remains.
///
/// `stack` and `wht` are `[n, y, x]`, `thresholds` has `n` entries (from [`weight_threshold`]),
/// `out` is `[y, x]`. Runs rayon over rows; the result does not depend on the thread count.
///
/// # Panics
/// If the shapes of `stack`, `wht` and `out` disagree or `thresholds.len() != n`.
pub fn median_stack(stack: ArrayView3<f32>, wht: ArrayView3<f32>, thresholds: &[f64], out: ArrayViewMut2<f32>) {
    median_stack_with(stack, wht, thresholds, false, out);
}

/// [`median_stack`], and with `two_min`, where two or three values remain, their smallest value
/// `lo` instead of their median `med` when `med - lo > lo`. The median of two is their mean, which
/// carries half of a cosmic ray in either; the blotted reference then carries it too, and its
/// derivative term (`scale1 * |d|`, 1.2 times the bump) always exceeds the difference (half the
/// bump), so JWST's test can never flag a cosmic ray where two exposures overlap; the median of
/// three carries the smaller of two cosmic rays that hit the same sky pixel. Cosmic rays only add
/// charge, so the smallest value is free of them. A source seen by all differs between them only
/// by its pixel phase: for an undersampled star core by up to ~30% either way, so `med - lo < lo`
/// on a background that level matching has brought to ~0; there the median stays, as in JWST,
/// since the minimum would sit below every core and flag the higher ones. A cosmic ray brighter
/// than what the others see (sky and source) makes `med - lo > lo` and is found. Where one value
/// remains it is the reference, and nothing can be tested.
///
/// # Panics
/// As [`median_stack`].
pub fn median_stack_with(
    stack: ArrayView3<f32>,
    wht: ArrayView3<f32>,
    thresholds: &[f64],
    two_min: bool,
    mut out: ArrayViewMut2<f32>,
) {
    let (n, ny, nx) = stack.dim();
    assert_eq!(wht.dim(), (n, ny, nx), "median_stack: wht shape differs from stack");
    assert_eq!(out.dim(), (ny, nx), "median_stack: out shape differs from stack");
    assert_eq!(thresholds.len(), n, "median_stack: one threshold per exposure");
    out.axis_iter_mut(Axis(0)).into_par_iter().enumerate().for_each(|(y, mut row)| {
        let mut vals = Vec::with_capacity(n);
        for (x, o) in row.iter_mut().enumerate() {
            vals.clear();
            for (k, &thr) in thresholds.iter().enumerate() {
                let v = stack[[k, y, x]];
                let low_weight = f64::from(wht[[k, y, x]]) < thr;
                if !low_weight && !v.is_nan() {
                    vals.push(v);
                }
            }
            let lo = vals.iter().copied().fold(f32::INFINITY, f32::min);
            let med = nanmedian_small(&mut vals);
            *o = if two_min && (2..=3).contains(&vals.len()) && med - lo > lo { lo } else { med };
        }
    });
}

/// How an exposure's own cosmic ray is kept out of the median around it ([`median_stack_shielded`]).
#[derive(Debug, Clone, Copy)]
pub struct Shield<'a> {
    /// Per exposure, its typical 1-sigma noise in the stack's unit (the median of its ERR).
    pub noise: &'a [f32],
    /// How far the largest value must stand above the smallest, in the largest one's exposure
    /// noise, for its exposure to be shielded there (the outlier test's `snr1`).
    pub nsigma: f32,
    /// Half-width of the square, in stack pixels, over which a seed shields its exposure.
    pub radius: usize,
}

/// [`median_stack_with`] (`two_min` on) for the inner rectangle `rows x cols` of a stack cut with a
/// halo, with each exposure's own cosmic rays kept out of the median around them.
///
/// Why: where two exposures overlap, the smallest value is taken only where the median is more than
/// twice it (the star-core guard of [`median_stack_with`]). A cosmic ray's bright core passes that
/// test, but the output pixels that its fainter neighbours (blob and streak pixels, spill) drizzle
/// onto often do not, on emission above all: there the median keeps half of them, the blot gives it
/// back to the exposure, and the neighbours, tested against it with its steep derivative, are
/// never flagged (the survivors of issue 15, "core flagged, a neighbour above 5 ERR not").
///
/// So, a *seed*: a pixel where two or more values remain, the smallest-value rule fires (the median
/// is more than twice the smallest value), the largest value stands above the smallest by more than
/// `nsigma` times its exposure's noise, and that exposure is nowhere within `radius` a source seen
/// lower than by the others: a pixel where it is more than `nsigma` noises below the smallest of the
/// others while its own value there stands more than `nsigma` noises above the seed's smallest
/// value. The largest value is then peeled off and the test repeated on the rest while at least two
/// values would remain, so two cosmic rays on one sky pixel (the plain median of four keeps half of
/// the second) both seed. A seed's exposure is left out of the median at every pixel within
/// `radius` of it (a square), provided another value remains there; the median of what remains
/// follows [`median_stack_with`].
/// - The noise term keeps pure-noise pixels on empty sky (where the ratio test fires easily, the
///   smallest value being near 0) from seeding.
/// - The test from below keeps sources out: a source seen by every exposure differs between them
///   by its pixel phase, which moves charge from one pixel to its neighbour, so an exposure that is
///   higher somewhere in a source's steep wing is lower close by, on the source; cosmic rays only
///   add charge. Another exposure's cosmic ray nearby also puts this one below the others, but on
///   the sky, not on a source: it does not stop the seed.
/// - Where the shield leaves a single value, it stands only if the rule on all values is not lower:
///   the exposure left out may be the clean one (a seed from a source the test from below missed).
/// - Where one value has full weight and others only a partial one (the others' coverage edge: JWST
///   drops values below their weight threshold), the partial values join it, so that a cosmic ray
///   there is not its own median; unless one of those exposures sees a source within `radius`
///   (its full-weight values stand more than `nsigma` noises above its partial value): a star at
///   two pixel phases, whose core the lone value would otherwise be tested against the wing.
///
/// `stack` and `wht` are `[n, y, x]` over the cut, `out` is `[rows.len(), cols.len()]`. Each output
/// pixel depends only on the stack within `2 radius` of it, so the result equals that of any other
/// cut that holds that neighbourhood (or reaches the image's edge): callers cut the stack with a
/// halo of `2 radius` pixels, clipped at the grid's edge. Runs rayon over rows; the result does not
/// depend on the thread count.
///
/// # Panics
/// As [`median_stack`], if `rows`/`cols` exceed the stack, or `shield.noise.len() != n`.
pub fn median_stack_shielded(
    stack: ArrayView3<f32>,
    wht: ArrayView3<f32>,
    thresholds: &[f64],
    shield: &Shield,
    rows: Range<usize>,
    cols: Range<usize>,
    mut out: ArrayViewMut2<f32>,
) {
    let (n, ny, nx) = stack.dim();
    assert_eq!(wht.dim(), (n, ny, nx), "median_stack: wht shape differs from stack");
    assert_eq!(out.dim(), (rows.len(), cols.len()), "median_stack: out shape differs from the inner rectangle");
    assert!(rows.end <= ny && cols.end <= nx, "median_stack: inner rectangle outside the stack");
    assert_eq!(thresholds.len(), n, "median_stack: one threshold per exposure");
    assert_eq!(shield.noise.len(), n, "median_stack: one noise per exposure");
    let valid = |k: usize, y: usize, x: usize| -> Option<f32> {
        let v = stack[[k, y, x]];
        let low_weight = f64::from(wht[[k, y, x]]) < thresholds[k];
        (!low_weight && !v.is_nan()).then_some(v)
    };
    // seeds, dilated along x at once: per row, per exposure, whether a seed lies within radius
    let r = shield.radius;
    let t = |k: usize| shield.nsigma * shield.noise[k];
    // where each exposure stands significantly below the others' smallest value, its value there,
    // max-dilated along x (-inf where it stands below nowhere near)
    let mut below = ndarray::Array3::<f32>::from_elem((ny, n, nx), f32::NEG_INFINITY);
    below.axis_iter_mut(Axis(0)).into_par_iter().enumerate().for_each(|(y, mut plane)| {
        let mut vals = Vec::with_capacity(n);
        for x in 0..nx {
            vals.clear();
            vals.extend((0..n).filter_map(|k| valid(k, y, x).map(|v| (k, v))));
            for &(k, v) in &vals {
                let others = vals.iter().filter(|(j, _)| *j != k).map(|(_, o)| *o).fold(f32::INFINITY, f32::min);
                if v - others < -t(k) {
                    plane
                        .slice_mut(ndarray::s![k, x.saturating_sub(r)..(x + r + 1).min(nx)])
                        .mapv_inplace(|b| b.max(v));
                }
            }
        }
    });
    // each exposure's largest full-weight value within r along x (-inf where it has none): what it
    // sees near a pixel where it is only partly present
    let mut seen = ndarray::Array3::<f32>::from_elem((ny, n, nx), f32::NEG_INFINITY);
    seen.axis_iter_mut(Axis(0)).into_par_iter().enumerate().for_each(|(y, mut plane)| {
        for k in 0..n {
            for x in 0..nx {
                if let Some(v) = valid(k, y, x) {
                    plane
                        .slice_mut(ndarray::s![k, x.saturating_sub(r)..(x + r + 1).min(nx)])
                        .mapv_inplace(|b| b.max(v));
                }
            }
        }
    });
    // seeds, dilated along x at once: per row, per exposure, whether a seed lies within r
    let mut near = ndarray::Array3::<bool>::from_elem((ny, n, nx), false);
    near.axis_iter_mut(Axis(0)).into_par_iter().enumerate().for_each(|(y, mut plane)| {
        let ys = y.saturating_sub(r)..(y + r + 1).min(ny);
        let mut vals: Vec<(usize, f32)> = Vec::with_capacity(n);
        let mut scratch = Vec::with_capacity(n);
        for x in 0..nx {
            vals.clear();
            vals.extend((0..n).filter_map(|k| valid(k, y, x).map(|v| (k, v))));
            if vals.len() < 2 {
                continue;
            }
            // ascending by value, ties by exposure: the largest is peeled off while it seeds
            vals.sort_unstable_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
            let lo = vals[0].1;
            // peel while at least two values would remain (one seed only where two or three values are)
            let mut first = true;
            while vals.len() >= 3 || (first && vals.len() == 2) {
                first = false;
                scratch.clear();
                scratch.extend(vals.iter().map(|&(_, v)| v));
                let med = nanmedian_small(&mut scratch);
                let (k, v) = vals[vals.len() - 1];
                let low_source = ys.clone().map(|yy| below[[yy, k, x]]).fold(f32::NEG_INFINITY, f32::max) - lo > t(k);
                if !(med - lo > lo && v - lo > t(k) && !low_source) {
                    break;
                }
                plane.slice_mut(ndarray::s![k, x.saturating_sub(r)..(x + r + 1).min(nx)]).fill(true);
                vals.pop();
            }
        }
    });
    // the smallest-value rule of median_stack_with on a pixel's values
    let estimate = |v: &mut Vec<f32>| -> f32 {
        let lo = v.iter().copied().fold(f32::INFINITY, f32::min);
        let med = nanmedian_small(v);
        if (2..=3).contains(&v.len()) && med - lo > lo {
            lo
        } else {
            med
        }
    };
    out.axis_iter_mut(Axis(0)).into_par_iter().enumerate().for_each(|(i, mut row)| {
        let y = rows.start + i;
        let ys = y.saturating_sub(r)..(y + r + 1).min(ny);
        let (mut vals, mut kept, mut weak) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
        for (j, o) in row.iter_mut().enumerate() {
            let x = cols.start + j;
            vals.clear();
            kept.clear();
            weak.clear();
            for k in 0..n {
                if let Some(v) = valid(k, y, x) {
                    vals.push(v);
                    if !ys.clone().any(|yy| near[[yy, k, x]]) {
                        kept.push(v);
                    }
                } else if !stack[[k, y, x]].is_nan() && wht[[k, y, x]] > 0.0 {
                    weak.push((k, stack[[k, y, x]]));
                }
            }
            // one full-weight value, others only partly on this pixel (their coverage edge): a
            // cosmic ray in the lone full-weight exposure would be its own median, so the partial
            // values join it, unless one of their exposures sees a source nearby (its full-weight
            // values within r stand above its value here): a source sampled at two phases, not a
            // cosmic ray
            let weak_lo = weak.iter().map(|&(_, v)| v).fold(f32::INFINITY, f32::min);
            let source_near = weak.iter().any(|&(k, _)| {
                ys.clone().map(|yy| seen[[yy, k, x]]).fold(f32::NEG_INFINITY, f32::max) - weak_lo > t(k)
            });
            *o = if vals.len() == 1 && !weak.is_empty() && !source_near {
                vals.extend(weak.iter().map(|&(_, v)| v));
                estimate(&mut vals)
            } else if kept.len() == 1 && vals.len() > 1 {
                // the shield left one value: it stands unless the values of all are lower (the
                // shielded exposure may be the clean one, its seed a source the veto missed)
                let all = estimate(&mut vals);
                kept[0].min(all)
            } else if kept.is_empty() {
                estimate(&mut vals)
            } else {
                estimate(&mut kept)
            };
        }
    });
}

/// Bilinear interpolation of `img` (`[y, x]`) at the 0-based position `(x, y)`, exactly as
/// drizzle's blot with `interp="linear"` (`interpolate_bilinear` and `doblot` in drizzle's
/// `cdrizzleblot.c`), which is what JWST uses: `stcal.outlier_detection.utils.gwcs_blot` calls
/// `drizzle.resample.blot_image(..., interp="linear", fillval=NaN)`. (drizzle's own default,
/// `"poly5"`, is not used by JWST's outlier detection, so bilinear is not an approximation here.)
///
/// Rules replicated: the position is rounded to float32; it is inside when `0 <= x < nx` and
/// `0 <= y < ny` (so the half-pixel band beyond the last column/row is inside), otherwise the
/// result is NaN, as for a NaN position; with `i = floor(x)`, `j = floor(y)`, on the last column
/// the value is interpolated along y only, on the last row along x only, at the last pixel it is
/// that pixel; elsewhere `tx*ty*f00 + sx*ty*f10 + sy*tx*f01 + sx*sy*f11` in float32. A NaN among
/// the pixels the formula uses gives NaN (even with zero weight).
pub fn interp_bilinear(img: ArrayView2<f32>, x: f64, y: f64) -> f32 {
    let (ny, nx) = img.dim();
    let (xo, yo) = (x as f32, y as f32);
    if !(xo >= 0.0 && xo < nx as f32 && yo >= 0.0 && yo < ny as f32) {
        return f32::NAN;
    }
    let (i, j) = (xo as usize, yo as usize);
    if i >= nx || j >= ny {
        return f32::NAN;
    }
    let f00 = img[[j, i]];
    if i == nx - 1 {
        if j == ny - 1 {
            return f00;
        }
        let sy = yo - j as f32;
        (1.0 - sy) * f00 + sy * img[[j + 1, i]]
    } else if j == ny - 1 {
        let sx = xo - i as f32;
        (1.0 - sx) * f00 + sx * img[[j, i + 1]]
    } else {
        let sx = xo - i as f32;
        let tx = 1.0 - sx;
        let sy = yo - j as f32;
        let ty = 1.0 - sy;
        tx * ty * f00 + sx * ty * img[[j, i + 1]] + sy * tx * img[[j + 1, i]] + sx * sy * img[[j + 1, i + 1]]
    }
}

/// Keys' cubic convolution weights (a = -0.5, Catmull-Rom) for the 4 taps at offsets -1, 0, 1, 2
/// from the left neighbour, for a fraction `t` in [0, 1). Reproduces quadratics exactly
/// (Keys 1981, IEEE Trans. ASSP 29, 1153).
#[inline]
fn keys_weights(t: f64) -> [f64; 4] {
    let (t2, t3) = (t * t, t * t * t);
    [-0.5 * t3 + t2 - 0.5 * t, 1.5 * t3 - 2.5 * t2 + 1.0, -1.5 * t3 + 2.0 * t2 + 0.5 * t, 0.5 * t3 - 0.5 * t2]
}

/// Bicubic (Keys) interpolation of an image at (x, y) (0-based), for blotting the median: a
/// higher-order interpolant, like AstroDrizzle's `poly5` blot, keeps the peaks of undersampled point
/// sources (bilinear blotting of a drizzled median smooths a NIRCam LW core by ~35%, and the
/// two-threshold test then flags star cores). Falls back to [`interp_bilinear`] where any of the 16
/// taps is missing (image edge) or NaN. The position is rounded to f32 first, as drizzle's blot does.
pub fn interp_bicubic(img: ArrayView2<f32>, x: f64, y: f64) -> f32 {
    let (ny, nx) = img.dim();
    let (xo, yo) = (x as f32 as f64, y as f32 as f64);
    if !(xo >= 1.0 && yo >= 1.0 && xo < nx as f64 - 2.0 && yo < ny as f64 - 2.0) {
        return interp_bilinear(img, x, y);
    }
    let (i, j) = (xo.floor() as usize, yo.floor() as usize);
    let (wx, wy) = (keys_weights(xo - i as f64), keys_weights(yo - j as f64));
    let mut acc = 0.0f64;
    for (dy, wyv) in wy.iter().enumerate() {
        let mut row = 0.0f64;
        for (dx, wxv) in wx.iter().enumerate() {
            let v = img[[j + dy - 1, i + dx - 1]];
            if !v.is_finite() {
                return interp_bilinear(img, x, y);
            }
            row += wxv * v as f64;
        }
        acc += wyv * row;
    }
    acc as f32
}

/// JWST's absolute derivative at one pixel (`stcal.outlier_detection.utils._abs_deriv`): NaN if the
/// pixel is NaN, else the largest of 0 and the absolute differences to the existing 4-neighbours
/// (no padding at the edges), with NaN differences ignored. numpy's order of operations is kept:
/// the difference to the pixel above is taken only if finite, the other three when larger than
/// the running value, so an infinite difference counts unless it is the one to the pixel above.
#[inline]
fn abs_deriv_at(a: &ArrayView2<f32>, y: usize, x: usize) -> f32 {
    let (ny, nx) = a.dim();
    let c = a[[y, x]];
    let mut v = if c.is_nan() { f32::NAN } else { 0.0 };
    if y > 0 {
        let d = (c - a[[y - 1, x]]).abs();
        if d.is_finite() {
            v = d;
        }
    }
    if y + 1 < ny {
        let d = (a[[y + 1, x]] - c).abs();
        if d > v {
            v = d;
        }
    }
    if x > 0 {
        let d = (c - a[[y, x - 1]]).abs();
        if d > v {
            v = d;
        }
    }
    if x + 1 < nx {
        let d = (a[[y, x + 1]] - c).abs();
        if d > v {
            v = d;
        }
    }
    v
}

/// JWST's absolute derivative of the blotted image (`_abs_deriv` in
/// `stcal.outlier_detection.utils`): per pixel the largest absolute difference to its up/down/
/// left/right neighbours, in float32. Edges: only neighbours inside the image count (a corner
/// has two); a NaN pixel stays NaN; differences involving NaN are ignored; a pixel whose
/// neighbours are all NaN gets 0. `blot` and the result are `[y, x]`.
pub fn abs_deriv(blot: ArrayView2<f32>) -> Array2<f32> {
    let (ny, nx) = blot.dim();
    let mut out = Array2::<f32>::zeros((ny, nx));
    out.axis_iter_mut(Axis(0)).into_par_iter().enumerate().for_each(|(y, mut row)| {
        for (x, o) in row.iter_mut().enumerate() {
            *o = abs_deriv_at(&blot, y, x);
        }
    });
    out
}

/// numpy's `nan_to_num` for float32: NaN -> 0, +-inf -> +-`f32::MAX`.
#[inline]
fn nan_to_num(v: f32) -> f32 {
    if v.is_nan() {
        0.0
    } else if v == f32::INFINITY {
        f32::MAX
    } else if v == f32::NEG_INFINITY {
        f32::MIN
    } else {
        v
    }
}

/// JWST's two-threshold outlier test (`stcal.outlier_detection.utils.flag_resampled_crs`) on a
/// whole exposure; `true` where the pixel is an outlier. `sci`, `err` and `blot` are `[y, x]` in
/// the same unit (`err` the 1-sigma error of `sci`, `blot` the median blotted to the exposure).
///
/// Per pixel, in float32: `diff = |sci - blot - backg|`, `e = nan_to_num(err)`, `d = abs_deriv`;
/// `mask1 = diff > scale1*d + snr1*e`, `mask2 = diff > scale2*d + snr2*e`; JWST smooths mask1
/// with `scipy.ndimage.convolve(mask1, ones((3, 3)), mode="nearest")` into a *boolean* output,
/// i.e. a 3x3 binary dilation (edge replication adds nothing new); flagged = dilated(mask1) &
/// mask2. A NaN `sci` or `blot` (hence a NaN derivative) makes both comparisons false, so such a
/// pixel is never flagged and never grows a neighbour's flag; a NaN `err` counts as 0 (the pixel
/// is tested against the derivative term alone); an infinite `err` never flags.
///
/// # Panics
/// If the shapes of `sci`, `err` and `blot` differ.
pub fn flag_outliers(
    sci: ArrayView2<f32>,
    err: ArrayView2<f32>,
    blot: ArrayView2<f32>,
    p: &OutlierParams,
) -> Array2<bool> {
    let (ny, nx) = sci.dim();
    flag_outliers_window(sci, err, blot, 0..ny, 0..nx, p)
}

/// [`flag_outliers`] for the inner rectangle `rows x cols` of a window cut from a larger
/// exposure, so that a chunk owner decides the flags of the exposure pixels it owns. The result
/// is `[rows.len(), cols.len()]` and equals the corresponding part of [`flag_outliers`] on the
/// whole exposure bit for bit, provided the window extends **at least 2 pixels beyond the inner
/// rectangle on every side, except where the window ends at the exposure's edge** (a flag
/// depends on mask1 within 1 pixel, and mask1 on the derivative, which reaches 1 pixel further).
/// The window's borders are treated as the image edges, so a halo cut short anywhere but at the
/// exposure edge gives wrong flags near it.
///
/// # Panics
/// If the shapes of `sci`, `err` and `blot` differ or `rows`/`cols` exceed them.
pub fn flag_outliers_window(
    sci: ArrayView2<f32>,
    err: ArrayView2<f32>,
    blot: ArrayView2<f32>,
    rows: Range<usize>,
    cols: Range<usize>,
    p: &OutlierParams,
) -> Array2<bool> {
    let (ny, nx) = sci.dim();
    assert_eq!(err.dim(), (ny, nx), "flag_outliers: err shape differs from sci");
    assert_eq!(blot.dim(), (ny, nx), "flag_outliers: blot shape differs from sci");
    assert!(rows.start <= rows.end && rows.end <= ny, "flag_outliers: rows {rows:?} outside {ny}");
    assert!(cols.start <= cols.end && cols.end <= nx, "flag_outliers: cols {cols:?} outside {nx}");
    let (nr, nc) = (rows.len(), cols.len());
    let mut flags = Array2::<bool>::from_elem((nr, nc), false);
    if nr == 0 || nc == 0 {
        return flags;
    }
    // mask1 on the inner rectangle grown by 1 (clipped to the window).
    let (y0, y1) = (rows.start.saturating_sub(1), (rows.end + 1).min(ny));
    let (x0, x1) = (cols.start.saturating_sub(1), (cols.end + 1).min(nx));
    let test = |y: usize, x: usize, scale: f32, snr: f32| -> bool {
        let diff = ((sci[[y, x]] - blot[[y, x]]) - p.backg).abs();
        let d = abs_deriv_at(&blot, y, x);
        diff > scale * d + snr * nan_to_num(err[[y, x]])
    };
    let mut mask1 = Array2::<bool>::from_elem((y1 - y0, x1 - x0), false);
    mask1.axis_iter_mut(Axis(0)).into_par_iter().enumerate().for_each(|(r, mut row)| {
        for (c, m) in row.iter_mut().enumerate() {
            *m = test(y0 + r, x0 + c, p.scale1, p.snr1);
        }
    });
    flags.axis_iter_mut(Axis(0)).into_par_iter().enumerate().for_each(|(r, mut row)| {
        let y = rows.start + r;
        let (my0, my1) = (y.saturating_sub(1) - y0, (y + 2).min(ny) - y0);
        for (c, f) in row.iter_mut().enumerate() {
            let x = cols.start + c;
            let (mx0, mx1) = (x.saturating_sub(1) - x0, (x + 2).min(nx) - x0);
            let grown = (my0..my1).any(|my| (mx0..mx1).any(|mx| mask1[[my, mx]]));
            *f = grown && test(y, x, p.scale2, p.snr2);
        }
    });
    flags
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{s, Array3, ArrayView, Dimension};

    // Fixture written by scripts/fixtures/make_outlier_fixture.py (jwst 3.0, stcal 1.20,
    // drizzle 2.2); shapes and provenance in tests/fixtures/outlier/outlier.json.
    const EXP: (usize, usize) = (48, 40);
    const GRID: (usize, usize) = (50, 44);
    const NEXP: usize = 5;
    const STACK: &[u8] = include_bytes!("../../tests/fixtures/outlier/stack.f32");
    const WHT: &[u8] = include_bytes!("../../tests/fixtures/outlier/wht.f32");
    const THRESHOLDS: &[u8] = include_bytes!("../../tests/fixtures/outlier/thresholds.f64");
    const MEDIAN: &[u8] = include_bytes!("../../tests/fixtures/outlier/median.f32");
    const PIXMAP: &[u8] = include_bytes!("../../tests/fixtures/outlier/pixmap.f64");
    const BLOT: &[u8] = include_bytes!("../../tests/fixtures/outlier/blot.f32");
    const SCI: &[u8] = include_bytes!("../../tests/fixtures/outlier/sci.f32");
    const ERR: &[u8] = include_bytes!("../../tests/fixtures/outlier/err.f32");
    const DERIV: &[u8] = include_bytes!("../../tests/fixtures/outlier/deriv.f32");
    const FLAGS_A: &[u8] = include_bytes!("../../tests/fixtures/outlier/flags_a.u8");
    const FLAGS_B: &[u8] = include_bytes!("../../tests/fixtures/outlier/flags_b.u8");
    const SPECIAL: &[u8] = include_bytes!("../../tests/fixtures/outlier/special.f32");
    const SPECIAL_DERIV: &[u8] = include_bytes!("../../tests/fixtures/outlier/special_deriv.f32");

    /// The fixture's params_a (JWST defaults) and params_b.
    const PARAMS_B: OutlierParams =
        OutlierParams { snr1: 4.0, snr2: 3.0, scale1: 0.5, scale2: 0.4, maskpt: 0.7, backg: 0.3 };

    fn f32s(b: &[u8]) -> Vec<f32> {
        b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
    }
    fn f64s(b: &[u8]) -> Vec<f64> {
        b.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect()
    }
    fn img(b: &[u8]) -> Array2<f32> {
        Array2::from_shape_vec(EXP, f32s(b)).unwrap()
    }
    fn bools(b: &[u8]) -> Array2<bool> {
        Array2::from_shape_vec(EXP, b.iter().map(|&v| v != 0).collect()).unwrap()
    }
    fn stack() -> (Array3<f32>, Array3<f32>) {
        let shape = (NEXP, GRID.0, GRID.1);
        (Array3::from_shape_vec(shape, f32s(STACK)).unwrap(), Array3::from_shape_vec(shape, f32s(WHT)).unwrap())
    }

    /// Same bits, NaN equal to NaN.
    fn assert_same<D: Dimension>(got: ArrayView<f32, D>, want: ArrayView<f32, D>, what: &str) {
        assert_eq!(got.shape(), want.shape());
        for ((i, g), w) in got.indexed_iter().zip(want.iter()) {
            let same = g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()) || (*g == 0.0 && *w == 0.0);
            assert!(same, "{what} differs at {:?}: {g} vs {w}", i);
        }
    }

    #[test]
    fn weight_thresholds_match_jwst() {
        let (_, wht) = stack();
        let want = f64s(THRESHOLDS);
        for (k, w) in want.iter().take(NEXP).enumerate() {
            let got = weight_threshold(wht.index_axis(Axis(0), k), 0.7);
            assert_eq!(got.to_bits(), w.to_bits(), "exposure {k}: {got} vs {w}");
        }
    }

    #[test]
    fn weight_threshold_of_large_map_matches_jwst() {
        // The closed-form 300 x 250 map of make_outlier_fixture.py::big_weights: more than one
        // numpy buffer, exact zeros, a NaN and high outliers the clipping removes.
        let n = 300 * 250;
        let w: Vec<f32> = (0..n as i64)
            .map(|i| {
                if i % 4001 == 7 {
                    f32::NAN
                } else if i % 1013 == 5 {
                    25.0
                } else if i % 97 == 0 {
                    0.0
                } else {
                    (((i * 7919) % 1009) as f64 / 1009.0 + 0.5) as f32
                }
            })
            .collect();
        let w = Array2::from_shape_vec((300, 250), w).unwrap();
        let got = weight_threshold(w.view(), 0.7);
        let want = f64s(THRESHOLDS)[NEXP];
        assert_eq!(got.to_bits(), want.to_bits(), "{got} vs {want}");
    }

    #[test]
    fn weight_threshold_by_hand() {
        // Mean of the finite non-zero weights (one outlier clipped), times maskpt.
        let mut w = Array2::from_elem((4, 5), 2.0f32);
        w[[0, 0]] = 0.0;
        w[[0, 1]] = f32::NAN;
        w[[1, 1]] = 1000.0;
        w[[2, 2]] = 1.0;
        w[[3, 3]] = 3.0;
        assert_eq!(weight_threshold(w.view(), 0.5), 1.0);
        assert!(weight_threshold(Array2::<f32>::zeros((3, 3)).view(), 0.7).is_nan());
    }

    #[test]
    fn median_matches_jwst() {
        let (stack, wht) = stack();
        let thr = f64s(THRESHOLDS);
        let mut out = Array2::<f32>::zeros(GRID);
        median_stack(stack.view(), wht.view(), &thr[..NEXP], out.view_mut());
        let want = Array2::from_shape_vec(GRID, f32s(MEDIAN)).unwrap();
        assert_same(out.view(), want.view(), "median");
        assert!(want.iter().any(|v| v.is_nan()), "fixture covers an all-masked pixel");
    }

    #[test]
    fn low_coverage_min_takes_the_smaller_of_two_only() {
        // pixel 0: two values left (the 0.1-weight one is cut), 3 - 1 > 1 -> min 1, not the mean 3;
        // pixel 1: three values, median 3 - 1 > 1 (two hits on one pixel) -> 1; pixel 2: one value
        // -> itself; pixel 3: two values 10 and 13 (a source in both: 11.5 - 10 < 10) -> the mean;
        // pixel 4: three values 10, 12, 50 (one hit on a source) -> the median 12
        let vals = [
            [5.0f32, 1.0, 100.0],
            [1.0, 30.0, 50.0],
            [7.0, f32::NAN, f32::NAN],
            [13.0, 10.0, f32::NAN],
            [10.0, 12.0, 50.0],
        ];
        let wts = [[1.0f32, 1.0, 0.1], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]];
        let mut stack = Array3::<f32>::zeros((3, 1, 5));
        let mut wht = Array3::<f32>::zeros((3, 1, 5));
        for k in 0..3 {
            for x in 0..5 {
                stack[[k, 0, x]] = vals[x][k];
                wht[[k, 0, x]] = wts[x][k];
            }
        }
        let mut out = Array2::<f32>::zeros((1, 5));
        median_stack_with(stack.view(), wht.view(), &[0.5; 3], true, out.view_mut());
        assert_eq!(out.row(0).to_vec(), vec![1.0, 1.0, 7.0, 11.5, 12.0]);
        median_stack_with(stack.view(), wht.view(), &[0.5; 3], false, out.view_mut());
        assert_eq!(out.row(0).to_vec(), vec![3.0, 30.0, 7.0, 11.5, 12.0]);
    }

    /// Two exposures on a 1 x 12 strip of emission at 1.0 (noise 0.02): A has a cosmic ray whose
    /// core (x = 3) drizzles 10 onto the sky and whose neighbour (x = 5) drizzles 0.6; a star (x = 9)
    /// is seen at 1.3 and 0.7 times 5 by the two; an empty pixel (x = 11) holds a 0.04 noise bump.
    fn shield_strip() -> (Array3<f32>, Array3<f32>) {
        let a = [1.0f32, 1.0, 1.0, 11.0, 1.0, 1.6, 1.0, 1.0, 1.0, 6.5, 0.01, 0.05];
        let b = [1.0f32, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 3.5, 0.01, 0.01];
        let mut stack = Array3::<f32>::zeros((2, 1, 12));
        for x in 0..12 {
            stack[[0, 0, x]] = a[x];
            stack[[1, 0, x]] = b[x];
        }
        (stack, Array3::from_elem((2, 1, 12), 1.0f32))
    }

    #[test]
    fn shield_keeps_a_cosmic_rays_neighbours_out_of_the_median() {
        let (stack, wht) = shield_strip();
        let mut plain = Array2::<f32>::zeros((1, 12));
        median_stack_with(stack.view(), wht.view(), &[0.5; 2], true, plain.view_mut());
        // by hand, without the shield: the core takes the smaller value (6 - 1 > 1), the neighbour
        // keeps half of its 0.6 (1.3 - 1 < 1), the star the mean 5, the noise bump the smaller value
        assert_eq!(plain.row(0).to_vec(), vec![1.0, 1.0, 1.0, 1.0, 1.0, 1.3, 1.0, 1.0, 1.0, 5.0, 0.01, 0.01]);
        let noise = [0.02f32, 0.02];
        let shield = Shield { noise: &noise, nsigma: 5.0, radius: 2 };
        let mut out = Array2::<f32>::zeros((1, 12));
        median_stack_shielded(stack.view(), wht.view(), &[0.5; 2], &shield, 0..1, 0..12, out.view_mut());
        // the core seeds (10 > 5 x 0.02): A is left out within 2 pixels (x = 1..=5), so the
        // neighbour's median is B's 1.0; the star does not seed (the ratio test fails) and the noise
        // bump does not (0.04 < 5 x 0.02): both as without the shield
        assert_eq!(out.row(0).to_vec(), vec![1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 5.0, 0.01, 0.01]);
        // a radius of 1 does not reach the neighbour
        let short = Shield { radius: 1, ..shield };
        median_stack_shielded(stack.view(), wht.view(), &[0.5; 2], &short, 0..1, 0..12, out.view_mut());
        assert_eq!(out[[0, 5]], 1.3);
        // a noisier exposure does not seed
        let noisy = [3.0f32, 0.02];
        let loud = Shield { noise: &noisy, ..shield };
        median_stack_shielded(stack.view(), wht.view(), &[0.5; 2], &loud, 0..1, 0..12, out.view_mut());
        assert_eq!(out, plain);
        // a star's wing seen at another pixel phase: A is 0.5 against 0.1 at x = 1 (the ratio and
        // noise tests pass) but 1.0 against 2.0 next to it: A stands below, so nothing is shielded
        // and the core at x = 2 keeps the mean of the two, 1.5
        let mut star = Array3::<f32>::zeros((2, 1, 6));
        for (x, (a, b)) in
            [(0.01f32, 0.01f32), (0.5, 0.1), (1.0, 2.0), (0.3, 0.3), (0.01, 0.01), (0.01, 0.01)].into_iter().enumerate()
        {
            star[[0, 0, x]] = a;
            star[[1, 0, x]] = b;
        }
        let w6 = Array3::from_elem((2, 1, 6), 1.0f32);
        let mut out6 = Array2::<f32>::zeros((1, 6));
        median_stack_shielded(star.view(), w6.view(), &[0.5; 2], &shield, 0..1, 0..6, out6.view_mut());
        assert_eq!(out6.row(0).to_vec(), vec![0.01, 0.1, 1.5, 0.3, 0.01, 0.01]);
        // without the lower neighbour the same wing pixel seeds, and A is left out around it
        star[[0, 0, 2]] = 2.5;
        median_stack_shielded(star.view(), w6.view(), &[0.5; 2], &shield, 0..1, 0..6, out6.view_mut());
        assert_eq!(out6.row(0).to_vec(), vec![0.01, 0.1, 2.0, 0.3, 0.01, 0.01]);
    }

    /// A `[n, 1, len]` stack from per-exposure rows, all of weight 1.
    fn strip(rows: &[&[f32]]) -> (Array3<f32>, Array3<f32>) {
        let (n, len) = (rows.len(), rows[0].len());
        let stack = Array3::from_shape_fn((n, 1, len), |(k, _, x)| rows[k][x]);
        (stack, Array3::from_elem((n, 1, len), 1.0f32))
    }

    #[test]
    fn shield_peels_two_coincident_cosmic_rays_where_four_overlap() {
        // four exposures on sky (0.01, 0.02, 0.015, 0.03); at x = 4 exposure 2 has a cosmic ray
        // (10) and exposure 1 another (1.0), with spill at x = 5 (0.5 and 0.3)
        let e0 = [0.01f32; 9];
        let mut e1 = [0.02f32; 9];
        let mut e2 = [0.015f32; 9];
        let e3 = [0.03f32; 9];
        (e1[4], e1[5], e2[4], e2[5]) = (1.0, 0.3, 10.0, 0.5);
        let (stack, wht) = strip(&[&e0, &e1, &e2, &e3]);
        let mut plain = Array2::<f32>::zeros((1, 9));
        median_stack_with(stack.view(), wht.view(), &[0.5; 4], true, plain.view_mut());
        // by hand, the plain median of four keeps half of the second cosmic ray and of the spill
        assert_eq!(plain[[0, 4]], ((0.0f32 + 0.03) + 1.0) / 2.0);
        assert_eq!(plain[[0, 5]], ((0.0f32 + 0.03) + 0.3) / 2.0);
        let noise = [0.02f32; 4];
        let shield = Shield { noise: &noise, nsigma: 5.0, radius: 2 };
        let mut out = Array2::<f32>::zeros((1, 9));
        median_stack_shielded(stack.view(), wht.view(), &[0.5; 4], &shield, 0..1, 0..9, out.view_mut());
        // x = 4: exposure 2 seeds (median 0.515 - 0.01 > 0.01, 10 - 0.01 > 0.1); peeled, the three
        // left have median 0.03 (0.03 - 0.01 > 0.01) and exposure 1 seeds (1.0 - 0.01 > 0.1); two
        // are left, so the peeling stops. x = 5 seeds the same two. Both are left out within 2
        // pixels (x = 2..=7): exposures 0 and 3 remain, their mean (0.02 - 0.01 is not > 0.01).
        // Elsewhere the plain median of four: (0.015 + 0.02) / 2.
        let two = ((0.0f32 + 0.01) + 0.03) / 2.0;
        let four = ((0.0f32 + 0.015) + 0.02) / 2.0;
        let want: Vec<f32> = (0..9).map(|x| if (2..=7).contains(&x) { two } else { four }).collect();
        assert_eq!(out.row(0).to_vec(), want);
    }

    #[test]
    fn a_lone_full_weight_value_is_joined_by_partial_ones_unless_they_see_a_source() {
        // exposure 0 covers all nine pixels at full weight, with a cosmic ray (5.0) at x = 4;
        // exposure 1 ends there: full weight to x = 3, a partial weight (0.3 < threshold 0.5) at
        // x = 4 and 5, nothing beyond
        let e0 = [0.01f32, 0.01, 0.01, 0.01, 5.0, 0.01, 0.01, 0.01, 0.01];
        let nan = f32::NAN;
        let e1 = [0.01f32, 0.01, 0.01, 0.01, 0.01, 0.01, nan, nan, nan];
        let (stack, mut wht) = strip(&[&e0, &e1]);
        for x in 4..9 {
            wht[[1, 0, x]] = if x < 6 { 0.3 } else { 0.0 };
        }
        let noise = [0.02f32; 2];
        let shield = Shield { noise: &noise, nsigma: 5.0, radius: 2 };
        let mut plain = Array2::<f32>::zeros((1, 9));
        median_stack_with(stack.view(), wht.view(), &[0.5; 2], true, plain.view_mut());
        assert_eq!(plain[[0, 4]], 5.0, "JWST's median: the cosmic ray alone is its own median");
        let mut out = Array2::<f32>::zeros((1, 9));
        median_stack_shielded(stack.view(), wht.view(), &[0.5; 2], &shield, 0..1, 0..9, out.view_mut());
        // x = 4: 5.0 and the partial 0.01: 2.505 - 0.01 > 0.01, the smaller value
        assert_eq!(out.row(0).to_vec(), vec![0.01f32; 9]);
        // a star both see (2.0 at x = 3), its core at x = 4 in exposure 0 (5.0) and at a lower
        // phase in exposure 1's partial pixel (0.5): exposure 1's full-weight 2.0 within 2 pixels
        // stands above its partial value by more than 5 noises, so exposure 0's value stands
        let mut s2 = stack.clone();
        (s2[[0, 0, 3]], s2[[1, 0, 3]], s2[[1, 0, 4]]) = (2.0, 2.0, 0.5);
        median_stack_shielded(s2.view(), wht.view(), &[0.5; 2], &shield, 0..1, 0..9, out.view_mut());
        assert_eq!(out[[0, 4]], 5.0);
    }

    #[test]
    fn a_lone_kept_value_stands_only_where_all_values_are_not_lower() {
        // exposure 1 has a cosmic ray (3.0) at x = 3, but stands more than 5 noises below exposure 0
        // on a source at x = 4 (0.5 against 2.0), which vetoes its seed; exposure 0 seeds at x = 1
        // (1.0 against 0.01) and x = 4, so at x = 3 the shield keeps exposure 1's 3.0 alone
        let e0 = [0.01f32, 1.0, 0.01, 0.01, 2.0, 0.01, 0.01, 0.01];
        let e1 = [0.01f32, 0.01, 0.01, 3.0, 0.5, 0.01, 0.01, 0.01];
        let (stack, wht) = strip(&[&e0, &e1]);
        let noise = [0.02f32; 2];
        let shield = Shield { noise: &noise, nsigma: 5.0, radius: 2 };
        let mut out = Array2::<f32>::zeros((1, 8));
        median_stack_shielded(stack.view(), wht.view(), &[0.5; 2], &shield, 0..1, 0..8, out.view_mut());
        // the smallest-value rule on both values (0.01, 3.0) gives 0.01, below the kept 3.0
        assert_eq!(out[[0, 3]], 0.01);
    }

    #[test]
    fn shield_on_a_cut_with_its_halo_equals_the_whole_image() {
        // the fixture stack (5 exposures, real weights), made two-deep in places and given cosmic
        // rays, then cut in windows with a halo of twice the radius: every window's inner part
        // equals the whole image's median
        let (mut stack, wht) = stack();
        let (_, ny, nx) = stack.dim();
        let thr = f64s(THRESHOLDS)[..NEXP].to_vec();
        let mut state = 7u64;
        for y in 0..ny {
            for x in 0..nx {
                for k in 0..NEXP {
                    state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                    let u = (state >> 40) as f32 / (1u64 << 24) as f32;
                    if k >= 2 && (x + y) % 3 != 0 {
                        stack[[k, y, x]] = f32::NAN;
                    } else if u < 0.02 {
                        stack[[k, y, x]] += 50.0 * u / 0.02;
                    }
                }
            }
        }
        let noise = [0.05f32; NEXP];
        let shield = Shield { noise: &noise, nsigma: 5.0, radius: 3 };
        let mut whole = Array2::<f32>::zeros((ny, nx));
        median_stack_shielded(stack.view(), wht.view(), &thr, &shield, 0..ny, 0..nx, whole.view_mut());
        let mut plain = Array2::<f32>::zeros((ny, nx));
        median_stack_with(stack.view(), wht.view(), &thr, true, plain.view_mut());
        let changed = whole.iter().zip(&plain).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
        assert!(changed > 20, "the shield changed only {changed} pixels: nothing to test");
        for (y0, y1, x0, x1) in [(0usize, 17usize, 0usize, 13usize), (17, 50, 13, 30), (5, 9, 30, 44), (40, 50, 0, 44)]
        {
            let (ry, rx) = (y0.saturating_sub(6)..(y1 + 6).min(ny), x0.saturating_sub(6)..(x1 + 6).min(nx));
            let cut_s = stack.slice(s![.., ry.clone(), rx.clone()]);
            let cut_w = wht.slice(s![.., ry.clone(), rx.clone()]);
            let mut out = Array2::<f32>::zeros((y1 - y0, x1 - x0));
            let (iy, ix) = (y0 - ry.start, x0 - rx.start);
            median_stack_shielded(cut_s, cut_w, &thr, &shield, iy..iy + y1 - y0, ix..ix + x1 - x0, out.view_mut());
            assert_same(out.view(), whole.slice(s![y0..y1, x0..x1]), "shielded cut");
        }
    }

    #[test]
    fn median_even_odd_and_thresholds_by_hand() {
        let vals = [[4.0f32, 1.0, 3.0, 2.0, 100.0], [1.0, 2.0, 3.0, f32::NAN, 5.0]];
        let wts = [[1.0f32, 1.0, 1.0, 1.0, 0.1], [1.0, 1.0, f32::NAN, 1.0, 0.5]];
        let mut stack = Array3::<f32>::zeros((5, 1, 2));
        let mut wht = Array3::<f32>::zeros((5, 1, 2));
        for k in 0..5 {
            for x in 0..2 {
                stack[[k, 0, x]] = vals[x][k];
                wht[[k, 0, x]] = wts[x][k];
            }
        }
        let mut out = Array2::<f32>::zeros((1, 2));
        // Threshold 0.5 drops the 0.1-weight 100 (even count left: 1 2 3 4 -> 2.5); a weight of
        // exactly the threshold stays, a NaN weight stays, the NaN value goes: 1 2 3 5 -> 2.5.
        median_stack(stack.view(), wht.view(), &[0.5; 5], out.view_mut());
        assert_eq!(out[[0, 0]], 2.5);
        assert_eq!(out[[0, 1]], 2.5);
        // Thresholds per exposure: drop exposure 0 instead -> 1 2 3 100 -> 2.5 and 2 3 5 -> 3.
        median_stack(stack.view(), wht.view(), &[2.0, 0.0, 0.0, 0.0, 0.0], out.view_mut());
        assert_eq!(out[[0, 0]], 2.5);
        assert_eq!(out[[0, 1]], 3.0);
        // No threshold (NaN) masks nothing: 1 2 3 4 100 -> 3 (odd count).
        median_stack(stack.view(), wht.view(), &[f64::NAN; 5], out.view_mut());
        assert_eq!(out[[0, 0]], 3.0);
        // Everything below threshold -> NaN; only the NaN-weight entry survives (JWST quirk).
        median_stack(stack.view(), wht.view(), &[10.0; 5], out.view_mut());
        assert!(out[[0, 0]].is_nan());
        assert_eq!(out[[0, 1]], 3.0);
    }

    #[test]
    fn blot_matches_drizzle_linear() {
        let median = Array2::from_shape_vec(GRID, f32s(MEDIAN)).unwrap();
        let pm = f64s(PIXMAP);
        let want = img(BLOT);
        let mut got = Array2::<f32>::zeros(EXP);
        for ((y, x), g) in got.indexed_iter_mut() {
            let i = 2 * (y * EXP.1 + x);
            *g = interp_bilinear(median.view(), pm[i], pm[i + 1]);
        }
        assert_same(got.view(), want.view(), "blot");
    }

    #[test]
    fn interp_is_exact_on_a_bilinear_function() {
        // f = 1 + 2x + 3y + 0.5xy: small dyadic values keep every float32 step exact.
        let f = |x: f64, y: f64| 1.0 + 2.0 * x + 3.0 * y + 0.5 * x * y;
        let (ny, nx) = (6, 7);
        let im = Array2::from_shape_fn((ny, nx), |(y, x)| f(x as f64, y as f64) as f32);
        for yq in 0..(4 * (ny - 1) + 1) {
            for xq in 0..(4 * (nx - 1) + 1) {
                let (x, y) = (xq as f64 / 4.0, yq as f64 / 4.0);
                assert_eq!(interp_bilinear(im.view(), x, y), f(x, y) as f32, "at ({x}, {y})");
            }
        }
        // Beyond the last column/row but inside [n-1, n): constant along that axis (drizzle).
        assert_eq!(interp_bilinear(im.view(), 6.5, 2.25), f(6.0, 2.25) as f32);
        assert_eq!(interp_bilinear(im.view(), 3.5, 5.75), f(3.5, 5.0) as f32);
        assert_eq!(interp_bilinear(im.view(), 6.9, 5.9), f(6.0, 5.0) as f32);
        // Outside, NaN position, NaN neighbour (even with zero weight).
        for (x, y) in [(-0.01, 1.0), (7.0, 1.0), (1.0, 6.0), (1.0, -1e-3), (f64::NAN, 1.0)] {
            assert!(interp_bilinear(im.view(), x, y).is_nan(), "({x}, {y})");
        }
        let mut im2 = im.clone();
        im2[[2, 3]] = f32::NAN;
        assert!(interp_bilinear(im2.view(), 2.0, 1.5).is_nan());
        assert!(interp_bilinear(im2.view(), 3.0, 2.0).is_nan());
        assert_eq!(interp_bilinear(im2.view(), 4.0, 2.0), f(4.0, 2.0) as f32);
    }

    #[test]
    fn abs_deriv_matches_jwst() {
        assert_same(abs_deriv(img(BLOT).view()).view(), img(DERIV).view(), "deriv");
        let special = Array2::from_shape_vec((6, 7), f32s(SPECIAL)).unwrap();
        let want = Array2::from_shape_vec((6, 7), f32s(SPECIAL_DERIV)).unwrap();
        assert_same(abs_deriv(special.view()).view(), want.view(), "deriv with NaN/inf");
    }

    #[test]
    fn abs_deriv_edges_by_hand() {
        let a = Array2::from_shape_vec((2, 3), vec![0.0f32, 1.0, 5.0, 2.0, f32::NAN, 4.0]).unwrap();
        let d = abs_deriv(a.view());
        assert_eq!(d[[0, 0]], 2.0); // max(|1-0|, |2-0|)
        assert_eq!(d[[0, 1]], 4.0); // max(|1-0|, |5-1|), NaN below ignored
        assert_eq!(d[[0, 2]], 4.0);
        assert_eq!(d[[1, 0]], 2.0);
        assert!(d[[1, 1]].is_nan());
        assert_eq!(d[[1, 2]], 1.0);
    }

    #[test]
    fn flags_match_jwst() {
        let (sci, err, blot) = (img(SCI), img(ERR), img(BLOT));
        for (p, want, name) in [(OutlierParams::default(), FLAGS_A, "a"), (PARAMS_B, FLAGS_B, "b")] {
            let got = flag_outliers(sci.view(), err.view(), blot.view(), &p);
            let want = bools(want);
            assert!(want.iter().any(|&f| f));
            let diff: Vec<_> = got.indexed_iter().filter(|(i, g)| **g != want[*i]).map(|(i, _)| i).collect();
            assert!(diff.is_empty(), "params {name}: flags differ at {diff:?}");
        }
    }

    #[test]
    fn flags_dilate_mask1_with_edges() {
        // One strong hit at a corner: mask1 there; its neighbours pass only the second test.
        let sci = Array2::from_shape_fn((5, 6), |(y, x)| match (y, x) {
            (0, 0) => 100.0f32,
            (0, 1) | (1, 0) | (1, 1) | (2, 2) => 4.5,
            _ => 0.0,
        });
        let (err, blot) = (Array2::<f32>::ones((5, 6)), Array2::<f32>::zeros((5, 6)));
        let f = flag_outliers(sci.view(), err.view(), blot.view(), &OutlierParams::default());
        let on: Vec<_> = f.indexed_iter().filter(|(_, v)| **v).map(|(i, _)| i).collect();
        assert_eq!(on, vec![(0, 0), (0, 1), (1, 0), (1, 1)]);
    }

    /// Tiles `rows x cols`, each computed from a window with the given halo (clipped at the image
    /// edges), stitched back together.
    fn tiled(
        sci: &Array2<f32>,
        err: &Array2<f32>,
        blot: &Array2<f32>,
        tile: (usize, usize),
        halo: usize,
        p: &OutlierParams,
    ) -> Array2<bool> {
        let (ny, nx) = sci.dim();
        let mut out = Array2::from_elem((ny, nx), false);
        for ty in (0..ny).step_by(tile.0) {
            for tx in (0..nx).step_by(tile.1) {
                let (ty1, tx1) = ((ty + tile.0).min(ny), (tx + tile.1).min(nx));
                let (wy0, wy1) = (ty.saturating_sub(halo), (ty1 + halo).min(ny));
                let (wx0, wx1) = (tx.saturating_sub(halo), (tx1 + halo).min(nx));
                let win = s![wy0..wy1, wx0..wx1];
                let f = flag_outliers_window(
                    sci.slice(win),
                    err.slice(win),
                    blot.slice(win),
                    ty - wy0..ty1 - wy0,
                    tx - wx0..tx1 - wx0,
                    p,
                );
                out.slice_mut(s![ty..ty1, tx..tx1]).assign(&f);
            }
        }
        out
    }

    #[test]
    fn windows_equal_whole_image() {
        let (sci, err, blot) = (img(SCI), img(ERR), img(BLOT));
        for p in [OutlierParams::default(), PARAMS_B] {
            let whole = flag_outliers(sci.view(), err.view(), blot.view(), &p);
            for tile in [(1, 1), (2, 3), (5, 7), (7, 4), (16, 13), (48, 1), (1, 40), (48, 40)] {
                for halo in [2, 3, 6] {
                    assert_eq!(tiled(&sci, &err, &blot, tile, halo, &p), whole, "tile {tile:?} halo {halo}");
                }
            }
        }
    }

    #[test]
    fn median_is_thread_count_independent() {
        let (stack, wht) = stack();
        let thr = f64s(THRESHOLDS);
        let run = |threads| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let mut out = Array2::<f32>::zeros(GRID);
                median_stack(stack.view(), wht.view(), &thr[..NEXP], out.view_mut());
                out
            })
        };
        let (a, b) = (run(1), run(3));
        assert_same(a.view(), b.view(), "median 1 vs 3 threads");
    }

    #[test]
    fn default_params_are_jwst_defaults() {
        let p = OutlierParams::default();
        assert_eq!((p.snr1, p.snr2, p.scale1, p.scale2, p.maskpt, p.backg), (5.0, 4.0, 1.2, 0.7, 0.7, 0.0));
    }

    #[test]
    fn bicubic_is_exact_on_quadratics_and_falls_back_at_edges() {
        let f = |x: f64, y: f64| 0.5 + 0.25 * x - 0.125 * y + 0.01 * x * x - 0.02 * x * y + 0.005 * y * y;
        let img = Array2::from_shape_fn((12, 14), |(y, x)| f(x as f64, y as f64) as f32);
        for &(x, y) in &[(3.25, 4.5), (7.75, 2.125), (1.0, 1.0), (10.5, 8.875)] {
            let v = interp_bicubic(img.view(), x, y) as f64;
            assert!((v - f(x, y)).abs() < 1e-5, "({x},{y}): {v} vs {}", f(x, y));
        }
        // near the edge (taps missing) it is the bilinear value
        assert_eq!(interp_bicubic(img.view(), 0.5, 5.5), interp_bilinear(img.view(), 0.5, 5.5));
        // a NaN tap falls back to bilinear, which is finite when its own 4 taps are
        let mut m = img.clone();
        m[[4, 4]] = f32::NAN; // a corner tap of the 4x4 stencil at (5.5, 5.5)
        assert_eq!(interp_bicubic(m.view(), 5.5, 5.5), interp_bilinear(m.view(), 5.5, 5.5));
        // weights sum to one
        for t in [0.0, 0.3, 0.77] {
            assert!((keys_weights(t).iter().sum::<f64>() - 1.0).abs() < 1e-15);
        }
    }
}

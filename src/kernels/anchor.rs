//! The numerics of anchoring a mosaic's background level to a wide-field reference image
//! (PHANGS-JWST paper, Williams et al. 2024, section 3.9 and Figure 8; Leroy et al. 2023, appendix
//! B; pjpipe `anchoring.solve_for_offset`): block means that bring a mosaic to a coarse working
//! scale, bilinear resampling onto the reference grid, medians of the mosaic in bins of reference
//! intensity, and the straight line through the bin medians with iterative 3-sigma clipping. The
//! offset to add is minus the intercept.
//!
//! Pure functions on arrays and slices: no files, MPI or config. The smoothing itself is
//! [`super::gaussian`]; the stage `anchor` chains these steps.

use ndarray::{Array2, ArrayView2};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Mean of the good pixels of each `factor x factor` block of `sci` (`[y, x]`): output pixel
/// `(Y, X)` covers input rows `factor*Y..factor*(Y+1)` and columns likewise, its centre is input
/// pixel `factor*X + (factor-1)/2`. A pixel is good when `good` says so and its value is finite.
/// Blocks with fewer good pixels than `min_frac * factor^2` are NaN. The last block row/column may
/// be partial (counted against the full block size).
///
/// # Panics
/// `factor == 0`.
pub fn block_mean(sci: ArrayView2<f32>, good: ArrayView2<bool>, factor: usize, min_frac: f64) -> Array2<f64> {
    assert!(factor > 0, "block factor must be positive");
    let (ny, nx) = sci.dim();
    let (by, bx) = (ny.div_ceil(factor), nx.div_ceil(factor));
    let need = (min_frac * (factor * factor) as f64).max(1.0);
    let rows: Vec<Vec<f64>> = (0..by)
        .into_par_iter()
        .map(|yb| {
            (0..bx)
                .map(|xb| {
                    let (mut s, mut n) = (0.0f64, 0usize);
                    for y in yb * factor..((yb + 1) * factor).min(ny) {
                        for x in xb * factor..((xb + 1) * factor).min(nx) {
                            let v = sci[[y, x]];
                            if good[[y, x]] && v.is_finite() {
                                s += v as f64;
                                n += 1;
                            }
                        }
                    }
                    if n as f64 >= need {
                        s / n as f64
                    } else {
                        f64::NAN
                    }
                })
                .collect()
        })
        .collect();
    Array2::from_shape_vec((by, bx), rows.concat()).expect("shape")
}

/// Resample `src` (`[y, x]`) onto an `(ny, nx)` grid by bilinear interpolation (reproject's
/// `reproject_interp` with order 1): `map(x, y)` gives the position in `src` pixels of the centre
/// of output pixel `(x, y)`, or `None` off the sky. Outside `src`, or next to a NaN, the output is
/// NaN.
pub fn reproject_bilinear(
    src: ArrayView2<f64>,
    (ny, nx): (usize, usize),
    map: impl Fn(f64, f64) -> Option<(f64, f64)> + Sync,
) -> Array2<f64> {
    let (sy, sx) = src.dim();
    let rows: Vec<Vec<f64>> = (0..ny)
        .into_par_iter()
        .map(|y| {
            (0..nx)
                .map(|x| {
                    let Some((u, v)) = map(x as f64, y as f64) else { return f64::NAN };
                    if !(u >= 0.0 && v >= 0.0 && u <= (sx - 1) as f64 && v <= (sy - 1) as f64) {
                        return f64::NAN;
                    }
                    let (x0, y0) = (
                        (u.floor() as usize).min(sx.saturating_sub(2)),
                        (v.floor() as usize).min(sy.saturating_sub(2)),
                    );
                    let (x1, y1) = ((x0 + 1).min(sx - 1), (y0 + 1).min(sy - 1));
                    let (fx, fy) = (u - x0 as f64, v - y0 as f64);
                    let (a, b, c, d) = (src[[y0, x0]], src[[y0, x1]], src[[y1, x0]], src[[y1, x1]]);
                    (1.0 - fy) * ((1.0 - fx) * a + fx * b) + fy * ((1.0 - fx) * c + fx * d)
                })
                .collect()
        })
        .collect();
    Array2::from_shape_vec((ny, nx), rows.concat()).expect("shape")
}

/// The `q`-th percentile (0..100) of sorted finite values with numpy's default linear
/// interpolation; NaN when empty.
pub fn percentile_sorted(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = (q / 100.0).clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    sorted[lo] + (pos - lo as f64) * (sorted[hi] - sorted[lo])
}

/// One bin of reference intensity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Bin {
    /// Bin centre and edges in reference intensity, MJy/sr.
    pub centre: f64,
    pub lo: f64,
    pub hi: f64,
    /// Pixel pairs in the bin.
    pub n: usize,
    /// Median reference intensity of the pairs in the bin, MJy/sr: where the bin's median is placed
    /// for the fit (pjpipe places it at the bin centre, which moves it by up to half a bin width
    /// times the slope when the pixels crowd one side of the bin).
    pub x_median: f64,
    /// 16th, 50th and 84th percentiles of the mosaic values in the bin, MJy/sr.
    pub p16: f64,
    pub median: f64,
    pub p84: f64,
    /// Kept by the clipped line fit.
    pub used: bool,
}

/// Bins of width `width` from `lo` up to `hi` (the last one may end above `hi` so that the range is
/// covered: ceil((hi - lo) / width) bins), holding the pairs `(x, y)` with `lo + k width <= x <
/// lo + (k+1) width`; for each bin with at least `min_n` pairs, the percentiles of its `y`.
/// Non-finite pairs are ignored. Bins are returned in increasing `x`; those with fewer pairs are
/// left out.
///
/// # Panics
/// `width <= 0`.
pub fn bin_medians(x: &[f64], y: &[f64], lo: f64, hi: f64, width: f64, min_n: usize) -> Vec<Bin> {
    assert!(width > 0.0, "bin width must be positive");
    let nb = (((hi - lo) / width) - 1e-9).ceil().max(0.0) as usize;
    let mut vals: Vec<Vec<f64>> = vec![vec![]; nb];
    let mut xs: Vec<Vec<f64>> = vec![vec![]; nb];
    for (&a, &b) in x.iter().zip(y) {
        if !(a.is_finite() && b.is_finite()) || a < lo {
            continue;
        }
        let k = ((a - lo) / width).floor() as usize;
        if k < nb {
            vals[k].push(b);
            xs[k].push(a);
        }
    }
    vals.into_iter()
        .zip(xs)
        .enumerate()
        .filter(|(_, (v, _))| v.len() >= min_n.max(1))
        .map(|(k, (mut v, mut xv))| {
            v.sort_by(f64::total_cmp);
            xv.sort_by(f64::total_cmp);
            let l = lo + k as f64 * width;
            Bin {
                centre: l + 0.5 * width,
                lo: l,
                hi: l + width,
                n: v.len(),
                x_median: percentile_sorted(&xv, 50.0),
                p16: percentile_sorted(&v, 16.0),
                median: percentile_sorted(&v, 50.0),
                p84: percentile_sorted(&v, 84.0),
                used: false,
            }
        })
        .collect()
}

/// A straight line `y = slope x + intercept` with the standard errors of ordinary least squares.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LineFit {
    pub slope: f64,
    pub intercept: f64,
    /// Standard errors from the scatter of the kept points about the line (NaN with 2 points).
    pub slope_err: f64,
    pub intercept_err: f64,
    /// Which points the last fit kept.
    pub used: Vec<bool>,
    /// rms of the kept points about the line.
    pub rms: f64,
}

fn ols(x: &[f64], y: &[f64], keep: &[bool]) -> Option<(f64, f64, f64, f64, f64)> {
    let pts: Vec<(f64, f64)> = x.iter().zip(y).zip(keep).filter(|(_, &k)| k).map(|((&a, &b), _)| (a, b)).collect();
    let n = pts.len() as f64;
    if pts.len() < 2 {
        return None;
    }
    let mx = pts.iter().map(|p| p.0).sum::<f64>() / n;
    let my = pts.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx <= 0.0 {
        return None;
    }
    let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let slope = sxy / sxx;
    let intercept = my - slope * mx;
    let ss: f64 = pts.iter().map(|p| (p.1 - slope * p.0 - intercept).powi(2)).sum();
    let rms = (ss / n).sqrt();
    let (se, ie) = if pts.len() > 2 {
        let s2 = ss / (n - 2.0);
        ((s2 / sxx).sqrt(), (s2 * (1.0 / n + mx * mx / sxx)).sqrt())
    } else {
        (f64::NAN, f64::NAN)
    };
    Some((slope, intercept, se, ie, rms))
}

/// Unweighted least-squares line through `(x, y)` with `iterations` rounds of rejecting points whose
/// residual exceeds `nsigma` times the standard deviation of the residuals of the points kept so
/// far (pjpipe: 3 rounds of 3 sigma). `None` with fewer than two points, or all at one `x`.
pub fn clipped_line_fit(x: &[f64], y: &[f64], nsigma: f64, iterations: usize) -> Option<LineFit> {
    let mut keep: Vec<bool> = x.iter().zip(y).map(|(a, b)| a.is_finite() && b.is_finite()).collect();
    let mut fit = ols(x, y, &keep)?;
    for _ in 0..iterations {
        let res: Vec<f64> = x.iter().zip(y).map(|(a, b)| b - fit.0 * a - fit.1).collect();
        let kept: Vec<f64> = res.iter().zip(&keep).filter(|(_, &k)| k).map(|(r, _)| *r).collect();
        let m = kept.iter().sum::<f64>() / kept.len() as f64;
        let sd = (kept.iter().map(|r| (r - m).powi(2)).sum::<f64>() / kept.len() as f64).sqrt();
        let next: Vec<bool> = res
            .iter()
            .zip(x.iter().zip(y))
            .map(|(r, (a, b))| a.is_finite() && b.is_finite() && (r - m).abs() <= nsigma * sd)
            .collect();
        if next == keep {
            break;
        }
        match ols(x, y, &next) {
            Some(f) => {
                fit = f;
                keep = next;
            }
            None => break,
        }
    }
    Some(LineFit { slope: fit.0, intercept: fit.1, slope_err: fit.2, intercept_err: fit.3, used: keep, rms: fit.4 })
}

/// Percentiles of the reference intensities that bound the automatic fitting range (the faint
/// half of the field: the paper fits "a range of intensities close to zero").
pub const AUTO_RANGE_PERCENTILES: [f64; 2] = [1.0, 50.0];

/// The automatic range: the [`AUTO_RANGE_PERCENTILES`] of the finite `x`, widened outwards to
/// multiples of `width`. `None` without finite values.
pub fn auto_range(x: &[f64], width: f64) -> Option<(f64, f64)> {
    let mut v: Vec<f64> = x.iter().copied().filter(|a| a.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let lo = (percentile_sorted(&v, AUTO_RANGE_PERCENTILES[0]) / width + 1e-9).floor() * width;
    let hi = (percentile_sorted(&v, AUTO_RANGE_PERCENTILES[1]) / width - 1e-9).ceil() * width;
    Some((lo, hi.max(lo + width)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_mean_averages_good_pixels_and_blanks_thin_blocks() {
        let sci = Array2::from_shape_fn((5, 4), |(y, x)| (y * 4 + x) as f32);
        let mut good = Array2::from_elem((5, 4), true);
        good[[0, 0]] = false;
        let b = block_mean(sci.view(), good.view(), 2, 0.5);
        assert_eq!(b.dim(), (3, 2));
        // block (0,0): pixels 1, 4, 5 (0 masked)
        assert_eq!(b[[0, 0]], 10.0 / 3.0);
        assert_eq!(b[[0, 1]], (2.0 + 3.0 + 6.0 + 7.0) / 4.0);
        // last row: 2 of 4 pixels, exactly half
        assert_eq!(b[[2, 0]], (16.0 + 17.0) / 2.0);
        let b = block_mean(sci.view(), good.view(), 2, 0.6);
        assert!(b[[2, 0]].is_nan());
    }

    #[test]
    fn bilinear_reproduces_a_plane_and_refuses_outside() {
        let src = Array2::from_shape_fn((10, 12), |(y, x)| 1.0 + 2.0 * x as f64 + 3.0 * y as f64);
        // output pixel (x, y) sits at src (0.5 x + 1.25, 0.25 y + 2)
        let out = reproject_bilinear(src.view(), (8, 30), |x, y| Some((0.5 * x + 1.25, 0.25 * y + 2.0)));
        for ((y, x), v) in out.indexed_iter() {
            let (u, w) = (0.5 * x as f64 + 1.25, 0.25 * y as f64 + 2.0);
            if u <= 11.0 {
                assert!((v - (1.0 + 2.0 * u + 3.0 * w)).abs() < 1e-12, "{x} {y}");
            } else {
                assert!(v.is_nan());
            }
        }
        let mut hole = src.clone();
        hole[[3, 3]] = f64::NAN;
        let out = reproject_bilinear(hole.view(), (1, 1), |_, _| Some((2.5, 2.5)));
        assert!(out[[0, 0]].is_nan());
    }

    #[test]
    fn percentiles_follow_numpy() {
        // numpy.percentile([1, 2, 3, 4], [16, 50, 84]) = [1.48, 2.5, 3.52]
        let v = [1.0, 2.0, 3.0, 4.0];
        assert!((percentile_sorted(&v, 16.0) - 1.48).abs() < 1e-12);
        assert_eq!(percentile_sorted(&v, 50.0), 2.5);
        assert!((percentile_sorted(&v, 84.0) - 3.52).abs() < 1e-12);
    }

    #[test]
    fn bins_hold_the_hand_counted_medians() {
        // x in bins [0.25, 0.35), [0.35, 0.45), [0.45, 0.55): width 0.1 over 0.25..0.5 -> 3 bins
        let x = [0.26, 0.30, 0.34, 0.36, 0.44, 0.50, 0.51, 0.9, f64::NAN, 0.2];
        let y = [1.0, 3.0, 2.0, 10.0, 20.0, 5.0, 7.0, 100.0, 1.0, 1.0];
        let b = bin_medians(&x, &y, 0.25, 0.5, 0.1, 2);
        assert_eq!(b.len(), 3);
        assert!((b[0].centre - 0.30).abs() < 1e-12 && b[0].n == 3 && b[0].median == 2.0);
        assert_eq!(b[0].x_median, 0.30);
        assert_eq!(b[1].x_median, 0.5 * (0.36 + 0.44));
        assert!((b[1].centre - 0.40).abs() < 1e-12 && b[1].n == 2 && b[1].median == 15.0);
        assert!((b[2].centre - 0.50).abs() < 1e-12 && b[2].n == 2 && b[2].median == 6.0);
        // a bin with too few pairs is left out
        assert_eq!(bin_medians(&x, &y, 0.25, 0.5, 0.1, 3).len(), 1);
    }

    #[test]
    fn clipped_fit_recovers_a_line_through_an_outlier() {
        // y = 0.8 x - 0.3 on 8 points with one outlier at x = 5
        let x: Vec<f64> = (0..8).map(|i| i as f64).collect();
        let mut y: Vec<f64> =
            x.iter().map(|v| 0.8 * v - 0.3 + if (*v as usize) % 2 == 0 { 0.01 } else { -0.01 }).collect();
        y[5] += 5.0;
        let f = clipped_line_fit(&x, &y, 2.0, 3).unwrap();
        assert!(!f.used[5] && f.used.iter().filter(|u| **u).count() == 7);
        // the fit without point 5, by hand: the +-0.01 pattern over x = 0,1,2,3,4,6,7
        let keep: Vec<bool> = (0..8).map(|i| i != 5).collect();
        let (s, b, ..) = ols(&x, &y, &keep).unwrap();
        assert_eq!((f.slope, f.intercept), (s, b));
        assert!((s - 0.8).abs() < 0.01 && (b + 0.3).abs() < 0.02);
        // exact line: errors zero
        let y2: Vec<f64> = x.iter().map(|v| 2.0 * v + 1.0).collect();
        let f2 = clipped_line_fit(&x, &y2, 3.0, 3).unwrap();
        assert!((f2.slope - 2.0).abs() < 1e-12 && (f2.intercept - 1.0).abs() < 1e-12 && f2.intercept_err < 1e-9);
        assert!(clipped_line_fit(&[1.0], &[1.0], 3.0, 3).is_none());
    }

    #[test]
    fn ols_errors_match_the_textbook_formulae() {
        // x = 0, 1, 2; y = 0, 2, 1: slope 0.5, intercept 0.5, residuals -0.5, 1, -0.5
        let (s, b, se, ie, _) = ols(&[0.0, 1.0, 2.0], &[0.0, 2.0, 1.0], &[true; 3]).unwrap();
        assert!((s - 0.5).abs() < 1e-15 && (b - 0.5).abs() < 1e-15);
        // s^2 = 1.5 / 1; Sxx = 2: se = sqrt(0.75), ie = sqrt(1.5 (1/3 + 1/2))
        assert!((se - 0.75f64.sqrt()).abs() < 1e-12);
        assert!((ie - (1.5f64 * (1.0 / 3.0 + 0.5)).sqrt()).abs() < 1e-12);
    }

    #[test]
    fn auto_range_covers_the_faint_half() {
        let x: Vec<f64> = (0..101).map(|i| 1.0 + 0.05 * i as f64).collect(); // 1.0 .. 6.0
        let (lo, hi) = auto_range(&x, 0.1).unwrap();
        // 1st percentile 1.05 -> 1.0; median 3.5 -> 3.5
        assert!((lo - 1.0).abs() < 1e-9 && (hi - 3.5).abs() < 1e-9, "{lo} {hi}");
    }
}

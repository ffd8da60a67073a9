//! Exact sigma-clipped statistics shared by the kernels: astropy's `sigma_clipped_stats`
//! (`cenfunc="median"`, `stdfunc="std"`, ddof 0, symmetric bounds kept inclusive) for the level
//! matching, the MIRI background combination, the destriping source masks and row medians, and the
//! source finder's background mesh; plus the plain medians (numpy conventions) they rest on.
//!
//! What lives here:
//! - [`ClipParams`] and [`ClippedStats`]: the parameters and the result of every variant.
//! - Three variants of one algorithm, each kept for a stated reason (see their docs):
//!   [`sigma_clipped_stats`] (sort once, astropy's semantics: a clip may remove everything),
//!   [`sigma_clipped_stats_sorted_nonempty`] (on a sorted slice; never clips to an empty set and stops at
//!   a zero spread, as the source finder's mesh needs) and [`sigma_clipped_stats_select`] (in place by
//!   selection, the destriping kernels' variant, whose sums run in the buffer's order).
//! - [`median_mut`], [`nanmedian`] and the private sorted median and two-pass mean/std.
//!
//! What does not live here: the mergeable, histogram-based clipped statistic of the distributed
//! level pairs (`kernels::level`, module `hist`), and the f32 medians of the outlier kernels, which
//! follow the JWST pipeline's f32 conventions (`kernels::outlier`).

/// Parameters of astropy-style sigma clipping (`astropy.stats.sigma_clip` with `cenfunc="median"`,
/// `stdfunc="std"`, symmetric bounds).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClipParams {
    /// Clip at `median -/+ sigma * std`; values on the bounds are kept. Default 3.0 (pjpipe `sigma`).
    pub sigma: f64,
    /// Maximum number of clipping iterations; `None` iterates until nothing is removed. Default
    /// `Some(10)`, pjpipe's `maxiters` for the pair statistic (the local sky uses 20).
    pub maxiters: Option<u32>,
}

impl Default for ClipParams {
    fn default() -> Self {
        Self { sigma: 3.0, maxiters: Some(10) }
    }
}

impl ClipParams {
    /// Parameters from an iteration count given as `usize` (the destriping and source-finding
    /// parameter structs). Counts beyond `u32::MAX` saturate, which changes nothing: every
    /// iteration but the last removes at least one value, so no slice shorter than `u32::MAX`
    /// values reaches that many iterations.
    pub fn with_usize_iters(sigma: f64, maxiters: Option<usize>) -> Self {
        Self { sigma, maxiters: maxiters.map(|m| u32::try_from(m).unwrap_or(u32::MAX)) }
    }
}

/// Sigma-clipped statistics of a set of values (MJy/sr for images and differences).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClippedStats {
    /// Number of finite values before clipping (for a pair: the overlap in common-grid pixels).
    pub n_total: u64,
    /// Number of values that survive the clipping. Integral for the exact versions; for the binned
    /// version (`kernels::level`) the model count (values in partially covered bins count pro rata).
    pub n_kept: f64,
    /// Mean of the surviving values. NaN when none survive.
    pub mean: f64,
    /// Median of the surviving values (mean of the two middle values for an even count). NaN when
    /// none survive.
    pub median: f64,
    /// Standard deviation (ddof 0) of the surviving values: the pair `rms`. NaN when none survive.
    pub std: f64,
    /// Lower clipping bound of the last iteration (the smallest value when no iteration ran).
    pub lo: f64,
    /// Upper clipping bound of the last iteration (the largest value when no iteration ran).
    pub hi: f64,
}

impl ClippedStats {
    /// No surviving value out of `n_total`: NaN statistics and bounds.
    pub(crate) fn empty(n_total: u64) -> Self {
        Self { n_total, n_kept: 0.0, mean: f64::NAN, median: f64::NAN, std: f64::NAN, lo: f64::NAN, hi: f64::NAN }
    }
}

/// Exact astropy-style sigma-clipped statistics of `values` (any unit; non-finite values are
/// ignored): each iteration computes the median and the standard deviation (ddof 0) of the current
/// set and keeps the values `v` with `median - sigma * std <= v <= median + sigma * std`; it stops
/// when an iteration removes nothing or after `maxiters` iterations, and returns the mean, median
/// and standard deviation of what survives (`astropy.stats.sigma_clipped_stats`). If an iteration
/// removes every value (possible only for `sigma < sqrt(2)`), the statistics are NaN, as astropy's.
///
/// Sorts a copy once; because every clipped set is the input restricted to an interval, each
/// iteration works on a contiguous slice of the sorted copy. Sums run in ascending order, so the
/// result matches numpy's to rounding (~1e-15 relative), not bit for bit. Used by the level
/// matching (tile skies) and the MIRI background combination.
pub fn sigma_clipped_stats(values: &[f64], params: &ClipParams) -> ClippedStats {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return ClippedStats::empty(0);
    }
    v.sort_unstable_by(f64::total_cmp);
    clip_sorted(&v, params, false)
}

/// [`sigma_clipped_stats`] of a slice of finite values sorted ascending, with two differences that
/// make it never return an empty result (the source finder's background mesh: a box with valid
/// pixels always has a level and a noise):
/// - an iteration that would remove every value is not applied: the statistics are those of the
///   set before it (astropy would return NaN);
/// - the iteration stops as soon as the spread is zero.
///
/// Both differences matter only in corner cases: with `sigma >= sqrt(2)` the bounds always keep
/// the values nearest to the median (their distance is at most `sqrt(2) * std`), and a zero
/// standard deviation means all values are equal (unless their differences underflow), when
/// astropy stops too. `None` for an empty slice. The slice must be sorted (by `f64::total_cmp`)
/// and finite; this is not checked.
pub fn sigma_clipped_stats_sorted_nonempty(sorted: &[f64], params: &ClipParams) -> Option<ClippedStats> {
    if sorted.is_empty() {
        return None;
    }
    Some(clip_sorted(sorted, params, true))
}

/// The clipping loop of the two sort-based variants on a non-empty sorted slice of finite values;
/// `nonempty` selects [`sigma_clipped_stats_sorted_nonempty`]'s rules.
fn clip_sorted(v: &[f64], params: &ClipParams, nonempty: bool) -> ClippedStats {
    let n_total = v.len() as u64;
    let (mut s, mut e) = (0usize, v.len());
    let (mut lo, mut hi) = (v[0], v[v.len() - 1]);
    let mut iter = 0u32;
    while params.maxiters.is_none_or(|m| iter < m) && e > s {
        iter += 1;
        let cur = &v[s..e];
        let med = sorted_median(cur);
        let (_, std) = mean_std(cur);
        if nonempty && std == 0.0 {
            break;
        }
        let (nlo, nhi) = (med - std * params.sigma, med + std * params.sigma);
        let ns = s + cur.partition_point(|&x| x < nlo);
        let ne = s + cur.partition_point(|&x| x <= nhi);
        if nonempty && ne <= ns {
            break;
        }
        (lo, hi) = (nlo, nhi);
        let ne = ne.max(ns);
        let changed = ns != s || ne != e;
        s = ns;
        e = ne;
        if !changed {
            break;
        }
    }
    let cur = &v[s..e];
    if cur.is_empty() {
        return ClippedStats { lo, hi, ..ClippedStats::empty(n_total) };
    }
    let (mean, std) = mean_std(cur);
    ClippedStats { n_total, n_kept: cur.len() as f64, mean, median: sorted_median(cur), std, lo, hi }
}

/// [`sigma_clipped_stats`] computed in place on `values` by selection (`select_nth_unstable`), for
/// the destriping kernels, which call it on every amplifier row: non-finite values are dropped,
/// then each iteration takes the median by selection and the mean and std over the buffer as the
/// selection left it, and removes (with `retain`) the values outside the bounds. The buffer is
/// consumed (reordered and truncated).
///
/// Why a second variant of the same algorithm: the sums of the mean and std run in the buffer's
/// order, not in ascending order, so mean and std differ from [`sigma_clipped_stats`]'s in the last
/// bits (and, through the bounds, can rarely keep or drop a value exactly on a bound). The stored
/// stripe models of `destripe` and `destripe_multi` were made with this order; switching the
/// destriping to the sort-based variant would change products, which a refactor must not do.
/// The set kept and the median follow the same rules as [`sigma_clipped_stats`] (empty result:
/// NaN statistics).
pub fn sigma_clipped_stats_select(values: &mut Vec<f64>, params: &ClipParams) -> ClippedStats {
    values.retain(|x| x.is_finite());
    let n_total = values.len() as u64;
    let (mut lo, mut hi) = (f64::NAN, f64::NAN);
    let mut iter = 0u32;
    while params.maxiters.is_none_or(|m| iter < m) && !values.is_empty() {
        iter += 1;
        let med = median_mut(values);
        let (_, std) = mean_std(values);
        (lo, hi) = (med - params.sigma * std, med + params.sigma * std);
        let before = values.len();
        values.retain(|&x| x >= lo && x <= hi);
        if values.len() == before {
            break;
        }
    }
    if values.is_empty() {
        return ClippedStats { lo, hi, ..ClippedStats::empty(n_total) };
    }
    if iter == 0 {
        lo = values.iter().copied().fold(f64::INFINITY, f64::min);
        hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    }
    let (mean, std) = mean_std(values);
    let median = median_mut(values);
    ClippedStats { n_total, n_kept: values.len() as f64, mean, median, std, lo, hi }
}

/// Median of a slice (reordered in place), numpy convention: mean of the two middle values for an
/// even count; NaN for an empty slice. Values must not be NaN.
pub fn median_mut(v: &mut [f64]) -> f64 {
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    let k = n / 2;
    let (lo, m, _) = v.select_nth_unstable_by(k, f64::total_cmp);
    let m = *m;
    if n % 2 == 1 {
        m
    } else {
        let l = lo.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        0.5 * (l + m)
    }
}

/// Median of the finite values of `v` (NaN if none), like `numpy.nanmedian`.
pub fn nanmedian(v: &[f64]) -> f64 {
    let mut b: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    median_mut(&mut b)
}

/// Median of a sorted, non-empty slice (mean of the two middle values for an even count; the same
/// bits as [`median_mut`]).
fn sorted_median(v: &[f64]) -> f64 {
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) * 0.5
    }
}

/// Mean and ddof-0 standard deviation, two-pass (numpy's formula), summed in slice order.
pub(crate) fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
    (mean, var.sqrt())
}

#[cfg(test)]
mod throwaway_equivalence {
    use super::*;
    use crate::kernels::test_rng::Rng;

    fn same(a: f64, b: f64) -> bool {
        a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
    }

    fn inputs() -> Vec<Vec<f64>> {
        let mut r = Rng(12345);
        let mut out = Vec::new();
        for case in 0..3000 {
            let n = match case % 7 {
                0 => 0,
                1 => 1 + (r.uniform() * 4.0) as usize,
                2 => 2 + 2 * (r.uniform() * 20.0) as usize,
                3 => (r.uniform() * 200.0) as usize,
                4 => 500 + (r.uniform() * 3000.0) as usize,
                _ => (r.uniform() * 60.0) as usize,
            };
            let kind = case % 5;
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                let mut x = match kind {
                    0 => r.normal(),
                    1 => (r.normal() * 3.0).round(),
                    2 => 0.01 * r.normal() + 5.0,
                    3 => {
                        if r.uniform() < 0.5 {
                            0.0
                        } else {
                            1.0
                        }
                    }
                    _ => (1.5 * r.normal()).exp(),
                };
                let u = r.uniform();
                if u < 0.05 {
                    x += 100.0 * r.normal();
                } else if u < 0.07 {
                    x = f64::NAN;
                } else if u < 0.075 {
                    x = f64::INFINITY;
                }
                v.push(x as f32 as f64);
            }
            out.push(v);
        }
        out
    }

    #[test]
    fn new_variants_equal_the_old_functions_bit_for_bit() {
        let sigmas = [0.3, 0.7, 1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 5.0];
        let iters = [None, Some(0u32), Some(1), Some(2), Some(3), Some(5), Some(10), Some(20)];
        let mut n_cmp = 0;
        for (k, v) in inputs().iter().enumerate() {
            let sigma = sigmas[k % sigmas.len()];
            for &maxiters in &iters {
                let p = ClipParams { sigma, maxiters };
                // level (sort based, astropy)
                let old = crate::kernels::level::sigma_clipped_stats(
                    v,
                    &crate::kernels::level::ClipParams { sigma, maxiters },
                );
                let new = sigma_clipped_stats(v, &p);
                assert_eq!(old.n_total, new.n_total);
                for (a, b) in [
                    (old.n_kept, new.n_kept),
                    (old.mean, new.mean),
                    (old.median, new.median),
                    (old.std, new.std),
                    (old.lo, new.lo),
                    (old.hi, new.hi),
                ] {
                    assert!(same(a, b), "level case {k} sigma {sigma} {maxiters:?}: {old:?} vs {new:?}");
                }
                // destripe (selection)
                let mi = maxiters.map(|m| m as usize);
                let mut b1 = v.clone();
                let old = crate::kernels::destripe::sigma_clipped_stats_mut(&mut b1, sigma, mi);
                let mut b2 = v.clone();
                let new = sigma_clipped_stats_select(&mut b2, &ClipParams::with_usize_iters(sigma, mi));
                assert_eq!(
                    b1.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                    b2.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
                );
                assert_eq!(old.n as f64, new.n_kept);
                for (a, b) in [(old.mean, new.mean), (old.median, new.median), (old.std, new.std)] {
                    assert!(same(a, b), "destripe case {k} sigma {sigma} {maxiters:?}: {old:?} vs {new:?}");
                }
                // sources (sorted, never empty)
                let mu = maxiters.map_or(usize::MAX, |m| m as usize);
                let old = crate::kernels::sources::sigma_clipped_stats(v, sigma, mu);
                let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
                s.sort_unstable_by(f64::total_cmp);
                let new = sigma_clipped_stats_sorted_nonempty(&s, &ClipParams::with_usize_iters(sigma, Some(mu)));
                match (old, new) {
                    (None, None) => {}
                    (Some(o), Some(n)) => {
                        assert_eq!(o.n_kept as f64, n.n_kept);
                        for (a, b) in [(o.mean, n.mean), (o.median, n.median), (o.std, n.std)] {
                            assert!(same(a, b), "sources case {k} sigma {sigma} {maxiters:?}: {o:?} vs {n:?}");
                        }
                    }
                    (o, n) => panic!("sources case {k}: {o:?} vs {n:?}"),
                }
                n_cmp += 1;
            }
        }
        println!("{n_cmp} comparisons");
    }
}

//! Exact sigma-clipped statistics shared by the kernels: astropy's `sigma_clipped_stats`
//! (`cenfunc="median"`, `stdfunc="std"`, ddof 0, symmetric bounds kept inclusive) for the level
//! matching, the MIRI background combination, the destriping source masks and row medians, and the
//! source finder's background mesh; plus the plain medians (numpy conventions) they rest on.
//!
//! What lives here:
//! - [`ClipParams`] and [`ClippedStats`]: the parameters and the result of every variant.
//! - Three variants of one algorithm, each kept for a stated reason (see their docs):
//!   [`sigma_clipped_stats`] (sort once, astropy's semantics: a clip may remove everything; level
//!   matching and MIRI backgrounds), [`sigma_clipped_stats_sorted_nonempty`] (and its unsorted
//!   front [`sigma_clipped_stats_nonempty`]: never clips to an empty set and stops at a zero
//!   spread, as the source finder's mesh needs) and [`sigma_clipped_stats_select`] (in place by
//!   selection, the destriping kernels' variant, whose sums run in the buffer's order). They were
//!   three copies in `level`, `sources` and `destripe`; the copies were checked bit for bit
//!   against these on 24 000 random samples before they were removed.
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
    /// Lower bound of the last clipping applied (the smallest value when none was).
    pub lo: f64,
    /// Upper bound of the last clipping applied (the largest value when none was).
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

/// [`sigma_clipped_stats_sorted_nonempty`] of the finite values of `values` (any order; sorts a
/// copy). `None` if no value is finite.
pub fn sigma_clipped_stats_nonempty(values: &[f64], params: &ClipParams) -> Option<ClippedStats> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_unstable_by(f64::total_cmp);
    sigma_clipped_stats_sorted_nonempty(&v, params)
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
///
/// # Panics
/// If the slice is empty.
pub(crate) fn sorted_median(v: &[f64]) -> f64 {
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
mod tests {
    use super::*;
    use crate::kernels::destripe::gauss;
    use crate::kernels::destripe::test_scene::uniform;
    use crate::kernels::test_rng::synth_differences as synth;

    /// Slow astropy reference: filter the data in its original order each iteration.
    fn naive_clip(values: &[f64], sigma: f64, maxiters: Option<u32>) -> (usize, f64, f64, f64) {
        fn med(d: &[f64]) -> f64 {
            let mut c = d.to_vec();
            c.sort_by(|a, b| a.partial_cmp(b).unwrap());
            let n = c.len();
            if n % 2 == 1 {
                c[n / 2]
            } else {
                (c[n / 2 - 1] + c[n / 2]) / 2.0
            }
        }
        fn mean_sd(d: &[f64]) -> (f64, f64) {
            let n = d.len() as f64;
            let m = d.iter().sum::<f64>() / n;
            (m, (d.iter().map(|x| (x - m).powi(2)).sum::<f64>() / n).sqrt())
        }
        let mut data: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        let mut it = 0;
        loop {
            if maxiters.is_some_and(|m| it >= m) {
                break;
            }
            it += 1;
            let (c, (_, sd)) = (med(&data), mean_sd(&data));
            let (lo, hi) = (c - sigma * sd, c + sigma * sd);
            let before = data.len();
            data.retain(|&v| v >= lo && v <= hi);
            if data.len() == before {
                break;
            }
        }
        let (m, sd) = mean_sd(&data);
        (data.len(), m, med(&data), sd)
    }

    #[test]
    fn exact_clip_hand_case() {
        // [1, 2, 3, 4, 100], sigma 2: median 3, std 39.01 -> bounds [-75.0, 81.0] drop 100; then
        // median 2.5, std sqrt(1.25) = 1.118 -> bounds [0.264, 4.736] keep all -> stop.
        let p = ClipParams { sigma: 2.0, maxiters: None };
        let s = sigma_clipped_stats(&[1.0, 2.0, f64::NAN, 3.0, 4.0, 100.0], &p);
        assert_eq!(s.n_total, 5);
        assert_eq!(s.n_kept, 4.0);
        assert_eq!(s.median, 2.5);
        assert_eq!(s.mean, 2.5);
        assert!((s.std - 1.25f64.sqrt()).abs() < 1e-15);
        assert!((s.lo - (2.5 - 2.0 * 1.25f64.sqrt())).abs() < 1e-15);
        // With sigma 3 nothing is clipped: mean 22, std sqrt(1522).
        let s3 = sigma_clipped_stats(&[1.0, 2.0, 3.0, 4.0, 100.0], &ClipParams { sigma: 3.0, maxiters: None });
        assert_eq!(s3.n_kept, 5.0);
        assert_eq!(s3.median, 3.0);
        assert!((s3.std - 1522f64.sqrt()).abs() < 1e-12);
        assert!(sigma_clipped_stats(&[f64::NAN], &p).median.is_nan());
    }

    #[test]
    fn exact_clip_matches_naive_astropy_reference() {
        let mut max_rel = 0.0f64;
        for (seed, maxiters) in [(1, None), (2, Some(10)), (3, Some(1)), (4, Some(2)), (5, None)] {
            let v = synth(seed, 20_000, 1.0 + seed as f64, 0.1, 0.3, 50);
            for sigma in [1.5, 3.0] {
                let s = sigma_clipped_stats(&v, &ClipParams { sigma, maxiters });
                let (n, m, med, sd) = naive_clip(&v, sigma, maxiters);
                assert_eq!(s.n_kept, n as f64, "seed {seed} sigma {sigma} maxiters {maxiters:?}");
                assert_eq!(s.median, med);
                for (a, b) in [(s.mean, m), (s.std, sd)] {
                    max_rel = max_rel.max(((a - b) / b).abs());
                }
            }
        }
        assert!(max_rel < 1e-12, "max relative difference {max_rel:e}");
        // maxiters matters: one iteration keeps more than convergence on heavy tails.
        let v = synth(9, 20_000, 0.0, 0.1, 0.4, 0);
        let one = sigma_clipped_stats(&v, &ClipParams { sigma: 3.0, maxiters: Some(1) });
        let all = sigma_clipped_stats(&v, &ClipParams { sigma: 3.0, maxiters: None });
        assert!(one.n_kept > all.n_kept + 100.0, "{} vs {}", one.n_kept, all.n_kept);
    }

    #[test]
    fn nonempty_clip_by_hand() {
        // 0..19 and one outlier: the first pass (median 10, std 207.3) clips 1000, the second
        // keeps 0..19: mean = median = 9.5, std = sqrt((20^2 - 1) / 12).
        let mut v: Vec<f64> = (0..20).map(|i| i as f64).collect();
        v.push(1000.0);
        v.push(f64::NAN);
        let s = sigma_clipped_stats_nonempty(&v, &ClipParams { sigma: 3.0, maxiters: Some(10) }).unwrap();
        assert_eq!(s.n_kept, 20.0);
        assert_eq!(s.mean, 9.5);
        assert_eq!(s.median, 9.5);
        assert!((s.std - (399.0f64 / 12.0).sqrt()).abs() < 1e-12);
        // No pass: plain statistics of all 21 finite values.
        let s0 = sigma_clipped_stats_nonempty(&v, &ClipParams { sigma: 3.0, maxiters: Some(0) }).unwrap();
        assert_eq!(s0.n_kept, 21.0);
        assert!((s0.mean - (190.0 + 1000.0) / 21.0).abs() < 1e-12);
        assert_eq!(s0.median, 10.0);
        assert!(sigma_clipped_stats_nonempty(&[f64::NAN], &ClipParams { sigma: 3.0, maxiters: Some(5) }).is_none());
    }

    #[test]
    fn nonempty_keeps_the_last_set_where_astropy_clips_everything() {
        // {0, 0, 1, 1}: median 0.5, std 0.5; sigma 0.5 keeps [0.25, 0.75], which holds no value.
        let v = [0.0, 0.0, 1.0, 1.0];
        let p = ClipParams { sigma: 0.5, maxiters: None };
        let a = sigma_clipped_stats(&v, &p);
        assert_eq!(a.n_kept, 0.0);
        assert!(a.median.is_nan() && a.mean.is_nan());
        let n = sigma_clipped_stats_nonempty(&v, &p).unwrap();
        assert_eq!((n.n_kept, n.median, n.mean, n.std), (4.0, 0.5, 0.5, 0.5));
        // sigma >= sqrt(2) always keeps a value: both agree
        let p = ClipParams { sigma: 1.5, maxiters: None };
        assert_eq!(sigma_clipped_stats(&v, &p), sigma_clipped_stats_nonempty(&v, &p).unwrap());
    }

    /// [`sigma_clipped_stats_select`] on a copy of `values`, with a `usize` iteration count.
    fn select(values: impl IntoIterator<Item = f64>, sigma: f64, maxiters: Option<usize>) -> ClippedStats {
        let mut v: Vec<f64> = values.into_iter().collect();
        sigma_clipped_stats_select(&mut v, &ClipParams::with_usize_iters(sigma, maxiters))
    }

    #[test]
    fn select_clip_known_values() {
        // [1..5, 100], sigma 2: 100 is clipped in the first pass (median 3.5, std 36.17), then stable.
        let st = select([1.0, 2.0, 3.0, 4.0, 5.0, 100.0, f64::NAN], 2.0, Some(5));
        assert_eq!(st.n_kept as usize, 5);
        assert_eq!((st.mean, st.median), (3.0, 3.0));
        assert!((st.std - 2f64.sqrt()).abs() < 1e-15);
        let e = select([f64::NAN], 3.0, None);
        assert!(e.median.is_nan() && e.n_kept == 0.0);
    }

    /// Slow, literal astropy loop: sort, take the middle, bounds, filter, repeat.
    fn slow_clip(v: &[f64], sigma: f64, maxiters: usize) -> (f64, f64, f64, usize) {
        let mut d: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
        let med = |d: &[f64]| {
            let mut s = d.to_vec();
            s.sort_by(f64::total_cmp);
            let n = s.len();
            if n % 2 == 1 {
                s[n / 2]
            } else {
                0.5 * (s[n / 2 - 1] + s[n / 2])
            }
        };
        let ms = |d: &[f64]| {
            let m = d.iter().sum::<f64>() / d.len() as f64;
            (m, (d.iter().map(|x| (x - m).powi(2)).sum::<f64>() / d.len() as f64).sqrt())
        };
        for _ in 0..maxiters {
            let (c, s) = (med(&d), ms(&d).1);
            let nd: Vec<f64> = d.iter().copied().filter(|&x| x >= c - sigma * s && x <= c + sigma * s).collect();
            let changed = nd.len() != d.len();
            d = nd;
            if !changed {
                break;
            }
        }
        let (m, s) = ms(&d);
        (m, med(&d), s, d.len())
    }

    #[test]
    fn select_clip_matches_slow_reference() {
        for (seed, n) in [(1u64, 1000usize), (2, 999), (3, 64), (4, 5000)] {
            // normal core with a 10% tail of large positive outliers and a few NaNs
            let v: Vec<f64> = (0..n as u64)
                .map(|i| {
                    if i % 97 == 5 {
                        f64::NAN
                    } else if uniform(seed, 10_000 + i) < 0.1 {
                        5.0 + 20.0 * uniform(seed, 20_000 + i)
                    } else {
                        gauss(seed, i)
                    }
                })
                .collect();
            for (sigma, iters) in [(3.0, Some(5)), (2.5, None), (1.5, Some(20)), (3.0, Some(1))] {
                let st = select(v.iter().copied(), sigma, iters);
                let (m, md, s, k) = slow_clip(&v, sigma, iters.unwrap_or(usize::MAX));
                assert_eq!(st.n_kept as usize, k);
                assert!((st.mean - m).abs() < 1e-12 && (st.median - md).abs() < 1e-12 && (st.std - s).abs() < 1e-12);
            }
        }
    }
}

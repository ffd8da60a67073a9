//! Small numerical helpers of the destriping kernels: serial-or-rayon mapping of an index range,
//! `numpy.interp`-style NaN interpolation, the 1-D median and running-mean filters in scipy.ndimage's
//! `reflect` mode, and the counter-based Gaussian deviates of the diffuse filter's fill.
//!
//! What does not live here: the medians and sigma-clipped statistics (`kernels::stats`) and any 2-D
//! filtering (`diffuse`, `multi`).

use rayon::prelude::*;

/// Map `0..n` through `f`, in order, serially or with rayon (same results either way).
pub(super) fn map_range<T: Send, F: Fn(usize) -> T + Sync + Send>(n: usize, par: bool, f: F) -> Vec<T> {
    if par {
        (0..n).into_par_iter().map(f).collect()
    } else {
        (0..n).map(f).collect()
    }
}

/// Linearly interpolate the NaNs of `v` from the nearest finite neighbours, holding the end
/// values constant beyond the first/last finite sample (as `numpy.interp`). Returns `false`
/// (leaving `v` untouched) if no value is finite.
pub fn interpolate_nans(v: &mut [f64]) -> bool {
    let good: Vec<usize> = (0..v.len()).filter(|&i| v[i].is_finite()).collect();
    let (Some(&first), Some(&last)) = (good.first(), good.last()) else {
        return false;
    };
    if good.len() == v.len() {
        return true;
    }
    for i in 0..first {
        v[i] = v[first];
    }
    for i in last + 1..v.len() {
        v[i] = v[last];
    }
    for w in good.windows(2) {
        let (a, b) = (w[0], w[1]);
        if b > a + 1 {
            let (va, vb) = (v[a], v[b]);
            for (i, vi) in v.iter_mut().enumerate().take(b).skip(a + 1) {
                let t = (i - a) as f64 / (b - a) as f64;
                *vi = va + t * (vb - va);
            }
        }
    }
    true
}

/// Index of `j` in `0..n` under scipy.ndimage's `reflect` mode (`d c b a | a b c d | d c b a`),
/// for any offset.
pub(super) fn reflect_index(j: isize, n: usize) -> usize {
    let p = 2 * n as isize;
    let m = j.rem_euclid(p) as usize;
    if m >= n {
        2 * n - 1 - m
    } else {
        m
    }
}

/// 1-D median filter as `scipy.ndimage.median_filter(x, size, mode="reflect")`: output `i` is
/// element `size / 2` (0-based) of the sorted window `x[i - size/2 ..= i + size - 1 - size/2]`, the
/// window mirrored at the ends (repeatedly if `size > len`). A sorted sliding window makes it
/// O(len * size) memory moves at worst, O(len log size) comparisons. Values must not be NaN.
pub fn median_filter_1d(x: &[f64], size: usize) -> Vec<f64> {
    let n = x.len();
    if n == 0 || size <= 1 {
        return x.to_vec();
    }
    let left = (size / 2) as isize;
    let right = (size - 1) as isize - left;
    let at = |j: isize| x[reflect_index(j, n)];
    let mut win: Vec<f64> = (-left..=right).map(at).collect();
    win.sort_by(f64::total_cmp);
    let rank = size / 2;
    let mut out = Vec::with_capacity(n);
    out.push(win[rank]);
    for i in 1..n as isize {
        let old = at(i - 1 - left);
        let pos = win.partition_point(|v| v.total_cmp(&old).is_lt());
        win.remove(pos);
        let new = at(i + right);
        let pos = win.partition_point(|v| v.total_cmp(&new).is_le());
        win.insert(pos, new);
        out.push(win[rank]);
    }
    out
}

/// 1-D running mean as `scipy.ndimage.uniform_filter1d(x, size, mode="reflect")`.
pub(super) fn uniform_filter_1d(x: &[f64], size: usize) -> Vec<f64> {
    let n = x.len();
    if n == 0 || size <= 1 {
        return x.to_vec();
    }
    let left = (size / 2) as isize;
    let right = (size - 1) as isize - left;
    let mut prefix = Vec::with_capacity(n + size);
    prefix.push(0.0);
    let mut acc = 0.0;
    for j in -left..n as isize + right {
        acc += x[reflect_index(j, n)];
        prefix.push(acc);
    }
    (0..n).map(|i| (prefix[i + size] - prefix[i]) / size as f64).collect()
}

/// Deterministic standard normal deviate for (seed, index): SplitMix64 of the pair feeding
/// Box-Muller. Counter-based, so the value of a pixel does not depend on the visiting order.
pub(crate) fn gauss(seed: u64, index: u64) -> f64 {
    fn splitmix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    let a = splitmix(seed ^ splitmix(index.wrapping_mul(2)));
    let b = splitmix(seed ^ splitmix(index.wrapping_mul(2).wrapping_add(1)));
    let u1 = ((a >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    let u2 = (b >> 11) as f64 / (1u64 << 53) as f64;
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_filter_matches_slow_reference() {
        let slow = |x: &[f64], size: usize| -> Vec<f64> {
            let n = x.len();
            let left = (size / 2) as isize;
            (0..n as isize)
                .map(|i| {
                    let mut w: Vec<f64> =
                        (i - left..i - left + size as isize).map(|j| x[reflect_index(j, n)]).collect();
                    w.sort_by(f64::total_cmp);
                    w[size / 2]
                })
                .collect()
        };
        // reflect_index is scipy's 'reflect': -1 -> 0, -2 -> 1, n -> n-1
        assert_eq!([-1, -2, 5, 6, 10].map(|j| reflect_index(j, 5)), [0, 1, 4, 3, 0]);
        for (seed, n) in [(1u64, 200usize), (2, 7), (3, 1)] {
            let x: Vec<f64> = (0..n as u64).map(|i| (gauss(seed, i) * 4.0).round()).collect(); // with ties
            for size in [1, 2, 3, 4, 7, 15, 31, 64, 255, 511] {
                assert_eq!(median_filter_1d(&x, size), slow(&x, size), "n {n} size {size}");
            }
        }
    }

    #[test]
    fn interpolate_nans_like_numpy_interp() {
        let mut v = vec![f64::NAN, 1.0, f64::NAN, f64::NAN, 4.0, f64::NAN];
        assert!(interpolate_nans(&mut v));
        assert_eq!(v, vec![1.0, 1.0, 2.0, 3.0, 4.0, 4.0]);
        let mut e = vec![f64::NAN; 3];
        assert!(!interpolate_nans(&mut e));
    }
}

//! Pair rejection of the level matching (pjpipe `find_optimum_deltas`, step 1): the mergeable
//! pixel-index extent [`IndexExtent`], what the rules need to know about a pair ([`PairMeasure`]),
//! the three rules ([`reject_pairs`]: small overlap, narrow overlap, high rms) and the solve weight
//! of a pair ([`weight_from_rms`]).
//!
//! What does not live here: measuring the pairs (the `level` stage, with `hist` and `planes`) and
//! the solve (`solve`, `planes`).

use ndarray::ArrayView2;

use crate::kernels::stats::mean_std;

/// Bounding box of pixel indices (mergeable with min/max), for the linear-extent rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexExtent {
    /// Smallest row index seen (`i64::MAX` when empty).
    pub ymin: i64,
    /// Largest row index seen (`i64::MIN` when empty).
    pub ymax: i64,
    /// Smallest column index seen.
    pub xmin: i64,
    /// Largest column index seen.
    pub xmax: i64,
}

impl Default for IndexExtent {
    fn default() -> Self {
        Self { ymin: i64::MAX, ymax: i64::MIN, xmin: i64::MAX, xmax: i64::MIN }
    }
}

impl IndexExtent {
    /// An empty extent.
    pub fn new() -> Self {
        Self::default()
    }

    /// Include pixel `(y, x)` (grid indices).
    pub fn add(&mut self, y: i64, x: i64) {
        self.ymin = self.ymin.min(y);
        self.ymax = self.ymax.max(y);
        self.xmin = self.xmin.min(x);
        self.xmax = self.xmax.max(x);
    }

    /// Include every pixel where `mask` is true; `mask` is `[y, x]` with its pixel `[0, 0]` at grid
    /// index `origin_yx`. For an image: "finite in it"; for a pair: "finite in both".
    pub fn add_where(&mut self, mask: ArrayView2<bool>, origin_yx: [i64; 2]) {
        for ((iy, ix), &m) in mask.indexed_iter() {
            if m {
                self.add(origin_yx[0] + iy as i64, origin_yx[1] + ix as i64);
            }
        }
    }

    /// Merge another extent.
    pub fn merge(&mut self, o: &IndexExtent) {
        self.ymin = self.ymin.min(o.ymin);
        self.ymax = self.ymax.max(o.ymax);
        self.xmin = self.xmin.min(o.xmin);
        self.xmax = self.xmax.max(o.xmax);
    }

    /// `[ymax - ymin, xmax - xmin]` in pixels (pjpipe's extent: max minus min of valid indices),
    /// `[0, 0]` when empty.
    pub fn extent_yx(&self) -> [u64; 2] {
        if self.ymin > self.ymax {
            return [0, 0];
        }
        [(self.ymax - self.ymin) as u64, (self.xmax - self.xmin) as u64]
    }
}

/// What the rejection rules need to know about one pair.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairMeasure {
    /// Overlap in common-grid pixels (pixels valid in both images); 0 = no overlap.
    pub npix: u64,
    /// Clipped rms of the differences (MJy/sr); NaN if unknown.
    pub rms: f64,
    /// Extent `[y, x]` of the overlap, in grid pixels ([`IndexExtent::extent_yx`]).
    pub overlap_extent_yx: [u64; 2],
    /// Extent `[y, x]` of the first image's valid pixels on the grid.
    pub extent_a_yx: [u64; 2],
    /// Extent `[y, x]` of the second image's valid pixels on the grid.
    pub extent_b_yx: [u64; 2],
}

/// Parameters of the pair rejection (pjpipe `find_optimum_deltas`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RejectParams {
    /// Drop pairs with `npix < min_area_frac * mean(npix of valid pairs)`. Default 0.002 (pjpipe's
    /// `min_area_percent`, which is a fraction: 0.2 % of the mean pair overlap).
    pub min_area_frac: f64,
    /// Keep a pair only if an overlap axis extent is at least this fraction of the same axis
    /// extent of either image. Default 0.2 (pjpipe `min_linear_frac`; the paper says 25 %).
    pub min_linear_frac: f64,
    /// Drop pairs with `rms > mean(rms) + rms_sig_limit * std(rms)` over the pairs still in use.
    /// Default 2.0 (pjpipe `rms_sig_limit`).
    pub rms_sig_limit: f64,
}

impl Default for RejectParams {
    fn default() -> Self {
        Self { min_area_frac: 0.002, min_linear_frac: 0.2, rms_sig_limit: 2.0 }
    }
}

/// The fate of one pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PairStatus {
    /// Used in the solve.
    Used,
    /// No overlap (`npix == 0`) or a non-finite rms.
    Invalid,
    /// Overlap below `min_area_frac` of the mean pair overlap.
    SmallOverlap,
    /// No overlap axis reaches `min_linear_frac` of either image's extent on that axis.
    NarrowOverlap,
    /// rms above the mean plus `rms_sig_limit` standard deviations of the remaining pairs.
    HighRms,
}

/// pjpipe's linear-extent flag: true if any of the four comparisons
/// `overlap_extent[axis] >= min_linear_frac * image_extent[axis]` (axis y or x, image a or b) holds.
pub fn linear_extent_ok(m: &PairMeasure, min_linear_frac: f64) -> bool {
    (0..2).any(|ax| {
        let o = m.overlap_extent_yx[ax] as f64;
        o >= min_linear_frac * m.extent_a_yx[ax] as f64 || o >= min_linear_frac * m.extent_b_yx[ax] as f64
    })
}

/// Pair rejection in pjpipe's order (`find_optimum_deltas`, step 1): valid pairs have `npix > 0`
/// and a finite rms; drop those with `npix < min_area_frac * mean(npix over valid pairs)`; drop
/// those failing [`linear_extent_ok`]; then, over the pairs left, drop those with
/// `rms > mean(rms) + rms_sig_limit * std(rms)` (std ddof 0, one pass, not iterated). Returns one
/// status per pair, in input order.
pub fn reject_pairs(pairs: &[PairMeasure], params: &RejectParams) -> Vec<PairStatus> {
    let mut status: Vec<PairStatus> = pairs
        .iter()
        .map(|p| if p.npix > 0 && p.rms.is_finite() { PairStatus::Used } else { PairStatus::Invalid })
        .collect();
    let valid: Vec<usize> = (0..pairs.len()).filter(|&k| status[k] == PairStatus::Used).collect();
    if valid.is_empty() {
        return status;
    }
    let mean_npix = valid.iter().map(|&k| pairs[k].npix as f64).sum::<f64>() / valid.len() as f64;
    for &k in &valid {
        if (pairs[k].npix as f64) < params.min_area_frac * mean_npix {
            status[k] = PairStatus::SmallOverlap;
        } else if !linear_extent_ok(&pairs[k], params.min_linear_frac) {
            status[k] = PairStatus::NarrowOverlap;
        }
    }
    let used: Vec<usize> = valid.into_iter().filter(|&k| status[k] == PairStatus::Used).collect();
    if used.is_empty() {
        return status;
    }
    let rms: Vec<f64> = used.iter().map(|&k| pairs[k].rms).collect();
    let (mean, std) = mean_std(&rms);
    let limit = mean + params.rms_sig_limit * std;
    for &k in &used {
        if pairs[k].rms > limit {
            status[k] = PairStatus::HighRms;
        }
    }
    status
}

/// The solve weight of a pair from its clipped rms: `1 / rms^2` (tessera weights by inverse
/// variance; pjpipe's effective weight is `1 / rms`). Not finite for `rms == 0`.
pub fn weight_from_rms(rms: f64) -> f64 {
    1.0 / (rms * rms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    fn measure(npix: u64, rms: f64, overlap: [u64; 2]) -> PairMeasure {
        PairMeasure { npix, rms, overlap_extent_yx: overlap, extent_a_yx: [1000, 1000], extent_b_yx: [1000, 1000] }
    }

    #[test]
    fn reject_pairs_hand_cases() {
        // Ten pairs; 0 (no overlap) and 5 (NaN rms) are invalid. Valid npix mean =
        // (150 + 6 * 100_000 + 2_000_000) / 8 = 325_018.75, area limit 650.04: 150 is small.
        let mut pairs = vec![measure(100_000, 1.0, [500, 500]); 10];
        pairs[0] = measure(0, 1.0, [500, 500]);
        pairs[1] = measure(150, 1.0, [500, 500]);
        pairs[2] = measure(100_000, 1.0, [199, 150]); // below 20 % of 1000 on both axes
        pairs[3] = measure(100_000, 9.0, [500, 500]); // rms outlier
        pairs[4] = measure(2_000_000, 1.1, [500, 500]);
        pairs[5] = measure(100_000, f64::NAN, [500, 500]);
        pairs[6] = measure(100_000, 0.9, [200, 0]); // exactly 20 % on y: kept
        let st = reject_pairs(&pairs, &RejectParams::default());
        use PairStatus::*;
        assert_eq!(st, vec![Invalid, SmallOverlap, NarrowOverlap, HighRms, Used, Invalid, Used, Used, Used, Used]);
        // rms over the 6 pairs left: [9, 1.1, 0.9, 1, 1, 1], mean 2.3333, std 2.9819, limit 8.297:
        // only 9 exceeds it. The narrow pair does not enter the statistic: a huge rms on it changes
        // nothing (had it entered, the limit would exceed 9).
        pairs[2].rms = 1e6;
        assert_eq!(reject_pairs(&pairs, &RejectParams::default()), st);
        // The area limit uses the mean over valid pairs only (with the two invalid pairs counted
        // it would be 540, and 600 would pass).
        let mut p = pairs.clone();
        p[1].npix = 600; // mean 325_075, limit 650.15
        assert_eq!(reject_pairs(&p, &RejectParams::default())[1], SmallOverlap);
        p[1].npix = 651; // mean 325_081.4, limit 650.16
        assert_eq!(reject_pairs(&p, &RejectParams::default())[1], Used);
        p[1].npix = 650; // mean 325_081.25, limit 650.1625
        assert_eq!(reject_pairs(&p, &RejectParams::default())[1], SmallOverlap);
    }

    #[test]
    fn linear_extent_rule_uses_either_image_and_either_axis() {
        let mut m = PairMeasure {
            npix: 10,
            rms: 1.0,
            overlap_extent_yx: [20, 5],
            extent_a_yx: [1000, 1000],
            extent_b_yx: [100, 1000],
        };
        // 20 >= 0.2 * 100 (image b, y axis) although 20 < 0.2 * 1000.
        assert!(linear_extent_ok(&m, 0.2));
        m.overlap_extent_yx = [19, 199];
        assert!(!linear_extent_ok(&m, 0.2));
        m.overlap_extent_yx = [19, 200];
        assert!(linear_extent_ok(&m, 0.2));
        assert!(!linear_extent_ok(&m, 0.25));
        let mut e = IndexExtent::new();
        assert_eq!(e.extent_yx(), [0, 0]);
        let mask = Array2::from_shape_fn((5, 6), |(y, x)| (y == 1 && x == 2) || (y == 3 && x == 5));
        e.add_where(mask.view(), [10, 100]);
        assert_eq!((e.ymin, e.ymax, e.xmin, e.xmax), (11, 13, 102, 105));
        assert_eq!(e.extent_yx(), [2, 3]);
    }
}

//! Background level matching kernels for the `level` stage (PHANGS-JWST paper, Williams et al. 2024,
//! section 3; pjpipe `level_match`, see `reference/pjpipe-algorithms.md` section 7): the statistics of
//! the pixel-by-pixel differences of every overlapping pair of images on a common grid, the pair
//! rejection rules, and the weighted least-squares solve for one offset (or one plane) per image.
//!
//! What lives here, as pure, deterministic functions of ndarray views, slices and small parameter
//! structs:
//! - [`ValueRange`], [`HistSpec`] and [`ClipHistogram`]: a *mergeable* astropy-style sigma-clipped
//!   statistic (median centre, standard deviation spread) of the difference values of one pair.
//!   Counts are integers in fixed bins and the extremes are min/max, so summing the counts of any
//!   split of the data (an all-reduce over ranks) gives bit-identical results for any
//!   decomposition. The clipping runs on the merged histogram and refines the bins around the
//!   current clipping interval whenever an iteration halves it, carrying the iteration state
//!   ([`ClipPass`], [`ClipHistogram::step`], driver [`sigma_clipped_stats_binned`]); so every
//!   iteration runs on bins at most `2 (hi - lo) / nbins` wide and the final bin width is at most
//!   `4 * sigma * std / nbins` (std/680 for the defaults). Measured against the exact computation
//!   on 200 000 contaminated differences (sky noise 0.002 to 1 MJy/sr, source tails, cosmic
//!   rays): median, mean and std within a quarter of the final bin width and below 1e-4 MJy/sr
//!   (typically 1e-7 to 2e-5; the worst, 9e-5, for a run stopped by `maxiters = 2`).
//! - [`sigma_clipped_stats`]: the same statistic computed exactly from a slice (sort based), for
//!   the non-distributed uses (the sky of a tile, local subtraction).
//! - [`PlaneSums`] and [`PlaneFit`]: the optional plane (offset and two slopes) of a pair's
//!   differences, as a clipped least-squares fit whose sums are exact fixed-point integers, hence
//!   also independent of the decomposition; exported as `i64` words that an all-reduce can sum.
//! - [`IndexExtent`], [`PairMeasure`] and [`reject_pairs`]: pjpipe's three pair rejection rules.
//! - [`solve_offsets`] and [`solve_planes`]: the weighted least squares (weights `1/rms^2`, solved
//!   directly with a Cholesky factorisation per connected component, tessera's departure from
//!   pjpipe's Jacobi iteration), with one gauge per connected component and the components
//!   reported so the caller can warn about disconnected groups.
//! - [`order_by_time`] (reference tile closest in time to the MIRI backgrounds) and [`lowest_sky`]
//!   (the band constant: the lowest sigma-clipped sky among the tile groups).
//!
//! Sign convention everywhere: the statistic of pair `(i, j)` describes `image_i - image_j`, and the
//! solved offsets `o` satisfy `o_i - o_j ~ delta_ij`, so `image_k - o_k` are the matched images.
//!
//! What does not live here: resampling the images onto the common grid and masking bad pixels (the
//! caller passes views where unusable pixels are NaN), deciding which images form pairs or groups,
//! the MPI reductions (the caller sums [`ClipHistogram::counts_mut`] and [`PlaneSums::to_words`]
//! and reduces the extremes with min/max), warnings, and applying the offsets to the data.

use std::cmp::Ordering;

use nalgebra::{DMatrix, DVector};
use ndarray::{ArrayView2, Axis};
use rayon::prelude::*;

/// Errors of the level-matching kernels.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum LevelError {
    /// A histogram binning with a non-finite origin, a non-positive or non-finite bin width, or no bins.
    #[error("invalid histogram binning: lo {lo}, width {width}, nbins {nbins}")]
    Binning {
        /// Lower edge of the first bin.
        lo: f64,
        /// Bin width.
        width: f64,
        /// Number of bins.
        nbins: usize,
    },
    /// A pair names an image index outside `0..n_images`.
    #[error("pair {pair} names image {index}, but there are {n_images} images")]
    ImageIndex {
        /// Position of the pair in the input slice.
        pair: usize,
        /// The offending image index.
        index: usize,
        /// Number of images.
        n_images: usize,
    },
    /// A pair joins an image to itself.
    #[error("pair {pair} joins image {index} to itself")]
    SelfPair {
        /// Position of the pair in the input slice.
        pair: usize,
        /// The image index.
        index: usize,
    },
    /// A pair weight that is not finite and positive.
    #[error("pair {pair} has weight {weight}; weights must be finite and > 0")]
    Weight {
        /// Position of the pair in the input slice.
        pair: usize,
        /// The rejected weight.
        weight: f64,
    },
    /// A pair statistic (offset or plane coefficient) that is not finite.
    #[error("pair {pair} has a non-finite difference")]
    Delta {
        /// Position of the pair in the input slice.
        pair: usize,
    },
    /// A reference image index outside `0..n_images`.
    #[error("reference image {index} out of range ({n_images} images)")]
    Reference {
        /// The offending index.
        index: usize,
        /// Number of images.
        n_images: usize,
    },
    /// The start of a plane fit needs a finite level median and clipped rms.
    #[error("the plane system of a connected group of {images} images is singular")]
    Singular {
        /// Images in the group.
        images: usize,
    },
    #[error("plane fit start needs a finite median and rms, got median {median}, rms {rms}")]
    PlaneStart {
        /// The level median given.
        median: f64,
        /// The level rms given.
        rms: f64,
    },
}

// ---------------------------------------------------------------------------------------------
// Sigma clipping: parameters, result, exact (sort-based) version
// ---------------------------------------------------------------------------------------------

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

/// Sigma-clipped statistics of a set of values (MJy/sr for images and differences).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClippedStats {
    /// Number of finite values before clipping (for a pair: the overlap in common-grid pixels).
    pub n_total: u64,
    /// Number of values that survive the clipping. Integral for the exact version; for the binned
    /// version the model count (values in partially covered bins count pro rata).
    pub n_kept: f64,
    /// Mean of the surviving values. NaN when none survive.
    pub mean: f64,
    /// Median of the surviving values (mean of the two middle values for an even count). NaN when
    /// none survive.
    pub median: f64,
    /// Standard deviation (ddof 0) of the surviving values: the pair `rms`. NaN when none survive.
    pub std: f64,
    /// Lower clipping bound of the last iteration (the smallest value when nothing was clipped).
    pub lo: f64,
    /// Upper clipping bound of the last iteration.
    pub hi: f64,
}

impl ClippedStats {
    fn empty(n_total: u64) -> Self {
        Self { n_total, n_kept: 0.0, mean: f64::NAN, median: f64::NAN, std: f64::NAN, lo: f64::NAN, hi: f64::NAN }
    }
}

/// Exact astropy-style sigma-clipped statistics of `values` (any unit; non-finite values are
/// ignored): each iteration computes the median and the standard deviation (ddof 0) of the current
/// set and keeps the values `v` with `median - sigma * std <= v <= median + sigma * std`; it stops
/// when an iteration removes nothing or after `maxiters` iterations, and returns the mean, median
/// and standard deviation of what survives (`astropy.stats.sigma_clipped_stats`).
///
/// Sorts a copy once; because every clipped set is the input restricted to an interval, each
/// iteration works on a contiguous slice of the sorted copy. Sums run in ascending order, so the
/// result matches numpy's to rounding (~1e-15 relative), not bit for bit.
pub fn sigma_clipped_stats(values: &[f64], params: &ClipParams) -> ClippedStats {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    let n_total = v.len() as u64;
    if v.is_empty() {
        return ClippedStats::empty(0);
    }
    v.sort_unstable_by(f64::total_cmp);
    let (mut s, mut e) = (0usize, v.len());
    let (mut lo, mut hi) = (v[0], v[v.len() - 1]);
    let mut iter = 0u32;
    while params.maxiters.is_none_or(|m| iter < m) && e > s {
        iter += 1;
        let cur = &v[s..e];
        let med = sorted_median(cur);
        let (_, std) = mean_std(cur);
        lo = med - std * params.sigma;
        hi = med + std * params.sigma;
        let ns = s + cur.partition_point(|&x| x < lo);
        let ne = s + cur.partition_point(|&x| x <= hi);
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

fn sorted_median(v: &[f64]) -> f64 {
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) * 0.5
    }
}

/// Mean and ddof-0 standard deviation, two-pass (numpy's formula).
fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
    (mean, var.sqrt())
}

// ---------------------------------------------------------------------------------------------
// Mergeable statistics: value range and fixed-bin histogram
// ---------------------------------------------------------------------------------------------

/// Count, minimum and maximum of finite values: pass 0 of the binned statistic, which fixes the
/// first histogram's range. Merging is exact and order-free (min/max and integer sum), so the
/// caller can all-reduce `min` with MIN, `max` with MAX and `count` with SUM.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ValueRange {
    /// Smallest finite value seen (`+inf` when none).
    pub min: f64,
    /// Largest finite value seen (`-inf` when none).
    pub max: f64,
    /// Number of finite values seen.
    pub count: u64,
}

impl Default for ValueRange {
    fn default() -> Self {
        Self { min: f64::INFINITY, max: f64::NEG_INFINITY, count: 0 }
    }
}

impl ValueRange {
    /// An empty range.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add one value; non-finite values are ignored.
    pub fn add(&mut self, v: f64) {
        if v.is_finite() {
            self.min = self.min.min(v);
            self.max = self.max.max(v);
            self.count += 1;
        }
    }

    /// Add the differences `a - b` (computed in f64) of the pixels finite in both views. `a` and
    /// `b` are `[y, x]` on the same grid, typically MJy/sr.
    ///
    /// # Panics
    /// If the shapes differ.
    pub fn add_diffs(&mut self, a: ArrayView2<f32>, b: ArrayView2<f32>) {
        assert_eq!(a.dim(), b.dim(), "ValueRange::add_diffs: shapes differ");
        ndarray::Zip::from(&a).and(&b).for_each(|&x, &y| self.add(f64::from(x) - f64::from(y)));
    }

    /// Merge another range into this one.
    pub fn merge(&mut self, other: &ValueRange) {
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.count += other.count;
    }
}

/// A fixed binning: `nbins` bins of width `width` starting at `lo`. Value `v` falls in bin
/// `floor((v - lo) / width)` (computed in f64); below the first bin it is underflow, at or beyond
/// `nbins` overflow.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HistSpec {
    /// Lower edge of bin 0, in the unit of the values.
    pub lo: f64,
    /// Bin width, in the unit of the values.
    pub width: f64,
    /// Number of bins.
    pub nbins: usize,
}

/// Parameters of the binned (mergeable) sigma clipping.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HistParams {
    /// Bins per pass. The final bin width is at most `4 * sigma * clipped std / nbins`, so the
    /// default 8192 gives about `std / 680` for `sigma = 3`. Each pass all-reduces `nbins + 2`
    /// `u64` per pair.
    pub nbins: usize,
    /// Maximum number of histogram passes (each is one scan of the data and one all-reduce). A
    /// pass ends whenever a clipping iteration halves the interval, so strongly contaminated
    /// differences need up to `maxiters + 1` passes (1 to 8 in the tests). Default 16.
    pub max_passes: u32,
}

impl Default for HistParams {
    fn default() -> Self {
        Self { nbins: 8192, max_passes: 16 }
    }
}

enum Slot {
    Under,
    Bin(usize),
    Over,
}

impl HistSpec {
    /// A checked binning.
    ///
    /// # Errors
    /// [`LevelError::Binning`] if `lo` is not finite, `width` is not finite and positive, or
    /// `nbins == 0`.
    pub fn new(lo: f64, width: f64, nbins: usize) -> Result<Self, LevelError> {
        if lo.is_finite() && width.is_finite() && width > 0.0 && nbins > 0 && (lo + width * nbins as f64).is_finite() {
            Ok(Self { lo, width, nbins })
        } else {
            Err(LevelError::Binning { lo, width, nbins })
        }
    }

    /// The first pass's binning: `nbins` bins covering `[range.min, range.max]` entirely (so the
    /// first clipping iteration sees every value, as astropy's does). `None` when the range is
    /// empty or its extremes are not finite.
    pub fn covering(range: &ValueRange, nbins: usize) -> Option<Self> {
        if range.count == 0 || !range.min.is_finite() || !range.max.is_finite() || nbins == 0 {
            return None;
        }
        let span = range.max - range.min;
        let width = if span > 0.0 { span / nbins as f64 * (1.0 + 1e-9) } else { 1.0 };
        Self::new(range.min, width, nbins).ok()
    }

    /// Upper edge of the last bin.
    pub fn hi(&self) -> f64 {
        self.lo + self.width * self.nbins as f64
    }

    fn slot(&self, v: f64) -> Slot {
        let t = (v - self.lo) / self.width;
        if t < 0.0 {
            Slot::Under
        } else if t >= self.nbins as f64 {
            Slot::Over
        } else {
            Slot::Bin(t as usize)
        }
    }
}

/// A fixed-bin histogram of finite values with exact integer counts, plus the minimum and maximum
/// of the values that fell inside the bins. It is the per-pair, per-rank accumulator of the
/// mergeable sigma-clipped statistic.
///
/// Statistics are computed from a model of the merged histogram: in every bin the values are
/// spread uniformly over the bin, except that the occupied range is cut to `[min, max]` (so a set
/// of identical values is a point mass and gives an exact median and zero std). Clipping
/// iterates like astropy's on that model, counting values in a partially covered bin pro rata, and
/// stops when an iteration removes less than half a value. Everything is a function of the
/// integer counts and the two extremes, so the result does not depend on how the values were split
/// or in which order the parts were merged.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipHistogram {
    spec: HistSpec,
    /// `[underflow, bin 0, ..., bin nbins-1, overflow]`.
    counts: Vec<u64>,
    vmin: f64,
    vmax: f64,
}

/// The state of the binned clipping between passes: the binning to accumulate next and where the
/// clipping iteration stands (current bounds, iterations done, whether it has converged).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClipPass {
    spec: HistSpec,
    lo: f64,
    hi: f64,
    iters: u32,
    converged: bool,
    index: u32,
}

impl ClipPass {
    /// The first pass: bins covering the whole merged range (so the first iteration sees every
    /// value, as astropy's does), clipping not started. `None` when no value is finite.
    pub fn first(range: &ValueRange, nbins: usize) -> Option<Self> {
        let spec = HistSpec::covering(range, nbins)?;
        Some(Self { spec, lo: range.min, hi: range.max, iters: 0, converged: false, index: 0 })
    }

    /// The binning to accumulate in this pass.
    pub fn spec(&self) -> &HistSpec {
        &self.spec
    }

    /// Pass number, from 0.
    pub fn index(&self) -> u32 {
        self.index
    }
}

/// What to do after a histogram pass: stop with the statistic, or scan again with a finer binning.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ClipStep {
    /// The statistic is final.
    Done(ClippedStats),
    /// Accumulate a new histogram with [`ClipPass::spec`] (same data) and call
    /// [`ClipHistogram::step`] again with this state.
    Refine(ClipPass),
}

/// Moments of the model restricted to an interval, relative to a shift.
#[derive(Clone, Copy)]
struct Moments {
    mass: f64,
    s1: f64,
    s2: f64,
}

impl ClipHistogram {
    /// An empty histogram with the given binning.
    pub fn new(spec: HistSpec) -> Self {
        Self { spec, counts: vec![0; spec.nbins + 2], vmin: f64::INFINITY, vmax: f64::NEG_INFINITY }
    }

    /// A histogram from merged parts, e.g. after an all-reduce: `counts` as from
    /// [`counts`](Self::counts) (`nbins + 2` entries) and the extremes (MIN and MAX reductions of
    /// [`extremes`](Self::extremes)).
    ///
    /// # Panics
    /// If `counts.len() != spec.nbins + 2`.
    pub fn from_parts(spec: HistSpec, counts: Vec<u64>, min: f64, max: f64) -> Self {
        assert_eq!(counts.len(), spec.nbins + 2, "ClipHistogram::from_parts: counts length");
        Self { spec, counts, vmin: min, vmax: max }
    }

    /// The binning.
    pub fn spec(&self) -> &HistSpec {
        &self.spec
    }

    /// The counts `[underflow, bin 0, ..., bin nbins-1, overflow]`: the buffer to all-reduce with SUM.
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    /// Mutable counts, for an in-place all-reduce.
    pub fn counts_mut(&mut self) -> &mut [u64] {
        &mut self.counts
    }

    /// `(min, max)` of the values inside the bins (`(+inf, -inf)` when none): all-reduce with MIN
    /// and MAX, then [`set_extremes`](Self::set_extremes).
    pub fn extremes(&self) -> (f64, f64) {
        (self.vmin, self.vmax)
    }

    /// Set the extremes after a reduction.
    pub fn set_extremes(&mut self, min: f64, max: f64) {
        self.vmin = min;
        self.vmax = max;
    }

    /// All values counted, including underflow and overflow.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Add one value; non-finite values are ignored.
    pub fn add(&mut self, v: f64) {
        if !v.is_finite() {
            return;
        }
        match self.spec.slot(v) {
            Slot::Under => self.counts[0] += 1,
            Slot::Over => self.counts[self.spec.nbins + 1] += 1,
            Slot::Bin(i) => {
                self.counts[i + 1] += 1;
                self.vmin = self.vmin.min(v);
                self.vmax = self.vmax.max(v);
            }
        }
    }

    fn add_diff_row<'a>(&mut self, a: impl Iterator<Item = &'a f32>, b: impl Iterator<Item = &'a f32>) {
        for (&x, &y) in a.zip(b) {
            self.add(f64::from(x) - f64::from(y));
        }
    }

    /// Add the differences `a - b` (in f64) of the pixels finite in both views; `a` and `b` are
    /// `[y, x]` on the same grid (MJy/sr).
    ///
    /// # Panics
    /// If the shapes differ.
    pub fn add_diffs(&mut self, a: ArrayView2<f32>, b: ArrayView2<f32>) {
        assert_eq!(a.dim(), b.dim(), "ClipHistogram::add_diffs: shapes differ");
        for (ra, rb) in a.axis_iter(Axis(0)).zip(b.axis_iter(Axis(0))) {
            self.add_diff_row(ra.iter(), rb.iter());
        }
    }

    /// [`add_diffs`](Self::add_diffs) with rayon over rows. Integer counts and min/max merge
    /// exactly, so the result is identical to the serial one for any thread count.
    ///
    /// # Panics
    /// If the shapes differ.
    pub fn par_add_diffs(&mut self, a: ArrayView2<f32>, b: ArrayView2<f32>) {
        assert_eq!(a.dim(), b.dim(), "ClipHistogram::par_add_diffs: shapes differ");
        let spec = self.spec;
        let part = a
            .axis_iter(Axis(0))
            .into_par_iter()
            .zip(b.axis_iter(Axis(0)).into_par_iter())
            .fold(
                || ClipHistogram::new(spec),
                |mut h, (ra, rb)| {
                    h.add_diff_row(ra.iter(), rb.iter());
                    h
                },
            )
            .reduce(
                || ClipHistogram::new(spec),
                |mut x, y| {
                    x.merge(&y);
                    x
                },
            );
        self.merge(&part);
    }

    /// Merge another histogram with the same binning into this one.
    ///
    /// # Panics
    /// If the binnings differ.
    pub fn merge(&mut self, other: &ClipHistogram) {
        assert_eq!(self.spec, other.spec, "ClipHistogram::merge: binnings differ");
        for (c, o) in self.counts.iter_mut().zip(&other.counts) {
            *c += o;
        }
        self.vmin = self.vmin.min(other.vmin);
        self.vmax = self.vmax.max(other.vmax);
    }

    /// Support `[p, q]` of the values in bin `i` under the model.
    fn support(&self, i: usize) -> (f64, f64) {
        let e0 = self.spec.lo + self.spec.width * i as f64;
        let e1 = self.spec.lo + self.spec.width * (i + 1) as f64;
        let p = e0.max(self.vmin);
        let q = e1.min(self.vmax);
        if p <= q {
            (p, q)
        } else {
            // Rounding of the bin assignment put an extreme just outside its bin's nominal edges.
            let c = if self.vmin > e0 { self.vmin } else { self.vmax };
            (c, c)
        }
    }

    /// Occupied bins as `(p, q, count)`, ascending.
    fn segments(&self) -> Vec<(f64, f64, f64)> {
        (0..self.spec.nbins)
            .filter(|&i| self.counts[i + 1] > 0)
            .map(|i| {
                let (p, q) = self.support(i);
                (p, q, self.counts[i + 1] as f64)
            })
            .collect()
    }

    fn moments(segs: &[(f64, f64, f64)], lo: f64, hi: f64, z: f64) -> Moments {
        let mut m = Moments { mass: 0.0, s1: 0.0, s2: 0.0 };
        for &(p, q, c) in segs {
            if q < lo || p > hi {
                continue;
            }
            if p == q {
                let d = p - z;
                m.mass += c;
                m.s1 += c * d;
                m.s2 += c * d * d;
            } else {
                let (a, b) = (p.max(lo), q.min(hi));
                if b <= a {
                    continue;
                }
                let w = c * (b - a) / (q - p);
                let (da, db) = (a - z, b - z);
                m.mass += w;
                m.s1 += w * 0.5 * (da + db);
                m.s2 += w * (da * da + da * db + db * db) / 3.0;
            }
        }
        m
    }

    /// Model median of `[lo, hi]`: where the cumulative mass reaches half of `mass`, linear inside
    /// a bin; when half the mass ends exactly at a gap between occupied stretches (an even count
    /// split in two), the middle of the gap, like the discrete median.
    fn median(segs: &[(f64, f64, f64)], lo: f64, hi: f64, mass: f64) -> f64 {
        let target = 0.5 * mass;
        let mut cum = 0.0;
        let mut last = f64::NAN;
        let mut gap_start: Option<f64> = None;
        for &(p, q, c) in segs {
            if q < lo || p > hi {
                continue;
            }
            let (a, b, w) = if p == q {
                (p, p, c)
            } else {
                let (a, b) = (p.max(lo), q.min(hi));
                if b <= a {
                    continue;
                }
                (a, b, c * (b - a) / (q - p))
            };
            if let Some(g) = gap_start {
                return 0.5 * (g + a);
            }
            if cum + w > target {
                return if b == a { a } else { a + (target - cum) / w * (b - a) };
            }
            cum += w;
            last = b;
            if cum == target {
                gap_start = Some(b);
            }
        }
        last
    }

    /// `(mass, mean, median, std)` of the model restricted to `[lo, hi]`.
    fn model_stats(segs: &[(f64, f64, f64)], lo: f64, hi: f64) -> (f64, f64, f64, f64) {
        let z = 0.5 * (lo + hi);
        let m = Self::moments(segs, lo, hi, z);
        if m.mass.is_nan() || m.mass <= 0.0 {
            return (0.0, f64::NAN, f64::NAN, f64::NAN);
        }
        let d = m.s1 / m.mass;
        let var = (m.s2 / m.mass - d * d).max(0.0);
        (m.mass, z + d, Self::median(segs, lo, hi, m.mass), var.sqrt())
    }

    /// Run the clipping iteration on this histogram's model from `state`. Each iteration takes the
    /// model median and std of `[lo, hi]` and intersects the bounds with `median -/+ sigma * std`;
    /// the iteration has converged when it removes less than half a value. If `min_span` is given
    /// and the current interval becomes narrower than it (the bins are too coarse for it), returns
    /// the state to continue from with finer bins.
    fn iterate(&self, clip: &ClipParams, mut st: ClipPass, min_span: Option<f64>) -> Result<ClippedStats, ClipPass> {
        let n_total = self.total();
        let segs = self.segments();
        if segs.is_empty() {
            return Ok(ClippedStats::empty(n_total));
        }
        let cap = clip.maxiters.unwrap_or(u32::MAX);
        loop {
            if st.hi > st.lo && min_span.is_some_and(|m| st.hi - st.lo < m) {
                return Err(st);
            }
            if st.converged || st.iters >= cap {
                break;
            }
            st.iters += 1;
            let (mass, _, med, std) = Self::model_stats(&segs, st.lo, st.hi);
            if mass.is_nan() || mass <= 0.0 {
                break;
            }
            let nlo = st.lo.max(med - std * clip.sigma);
            let nhi = st.hi.min(med + std * clip.sigma).max(nlo);
            let (nmass, ..) = Self::model_stats(&segs, nlo, nhi);
            st.lo = nlo;
            st.hi = nhi;
            st.converged = mass - nmass < 0.5;
        }
        let (mass, mean, median, std) = Self::model_stats(&segs, st.lo, st.hi);
        if mass.is_nan() || mass <= 0.0 {
            return Ok(ClippedStats { lo: st.lo, hi: st.hi, ..ClippedStats::empty(n_total) });
        }
        Ok(ClippedStats { n_total, n_kept: mass, mean, median, std, lo: st.lo, hi: st.hi })
    }

    /// Sigma clipping on the model of this one histogram, without refinement, starting from every
    /// value inside the bins (underflow and overflow count as already clipped); `n_total` is
    /// [`total`](Self::total). Precise only when the clipped interval spans many bins; the
    /// mergeable statistic is [`step`](Self::step) / [`sigma_clipped_stats_binned`].
    pub fn clipped_stats(&self, clip: &ClipParams) -> ClippedStats {
        let st = ClipPass { spec: self.spec, lo: self.vmin, hi: self.vmax, iters: 0, converged: false, index: 0 };
        self.iterate(clip, st, None).expect("no refinement requested")
    }

    /// One pass of the refinement scheme, on the merged histogram of `pass.spec()`: continue the
    /// clipping iteration from `pass`; as soon as the current interval `[lo, hi]` spans fewer than
    /// half of the bins, stop and return a pass whose bins cover exactly that interval (the values
    /// outside it are already clipped), carrying the bounds and iteration count, so the iteration
    /// follows astropy's path with every step computed on bins at most `2 (hi - lo) / nbins` wide.
    /// The last allowed pass (`max_passes`) finishes at its resolution. Deterministic in the
    /// merged counts and extremes, so every rank takes the same decision.
    ///
    /// # Panics
    /// If this histogram's binning is not `pass.spec()`.
    pub fn step(&self, clip: &ClipParams, hist: &HistParams, pass: &ClipPass) -> ClipStep {
        assert_eq!(self.spec, pass.spec, "ClipHistogram::step: histogram binning is not the pass's");
        let last = pass.index + 1 >= hist.max_passes;
        let min_span = (!last).then_some(0.5 * self.spec.width * self.spec.nbins as f64);
        match self.iterate(clip, *pass, min_span) {
            Ok(stats) => ClipStep::Done(stats),
            Err(st) => {
                let width = (st.hi - st.lo) / hist.nbins as f64 * (1.0 + 1e-9);
                match HistSpec::new(st.lo, width, hist.nbins) {
                    Ok(spec) => ClipStep::Refine(ClipPass { spec, index: pass.index + 1, ..st }),
                    // Interval too narrow for f64 bins: finish at the current resolution.
                    Err(_) => ClipStep::Done(self.iterate(clip, st, None).expect("no refinement requested")),
                }
            }
        }
    }
}

/// Driver of the mergeable sigma-clipped statistic: from the merged [`ValueRange`] of the values,
/// calls `fill(spec)` for each pass, which must return the histogram of *all* values with that
/// binning (locally: one scan; distributed: local scan, then all-reduce of the counts and
/// extremes), and steps until done. `n_total` of the result is `range.count`.
///
/// The result is a function of the merged histograms only, so it is identical (bit for bit) for
/// every split of the values; it agrees with [`sigma_clipped_stats`] to well within the final
/// bin width (see the module tests for measured differences).
pub fn sigma_clipped_stats_binned(
    range: &ValueRange,
    clip: &ClipParams,
    hist: &HistParams,
    mut fill: impl FnMut(&HistSpec) -> ClipHistogram,
) -> ClippedStats {
    let Some(mut pass) = ClipPass::first(range, hist.nbins) else {
        return ClippedStats::empty(range.count);
    };
    loop {
        let h = fill(pass.spec());
        match h.step(clip, hist, &pass) {
            ClipStep::Done(mut s) => {
                s.n_total = range.count;
                return s;
            }
            ClipStep::Refine(next) => pass = next,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pair rejection
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// Weighted least squares
// ---------------------------------------------------------------------------------------------

/// One used pair for the constant-offset solve.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairOffset {
    /// First image.
    pub i: usize,
    /// Second image.
    pub j: usize,
    /// Clipped median of `image_i - image_j` (MJy/sr).
    pub delta: f64,
    /// Weight, finite and > 0 (normally [`weight_from_rms`]).
    pub weight: f64,
}

/// How the free constant of each connected component is fixed.
#[derive(Debug, Clone, PartialEq)]
pub enum Gauge {
    /// The offsets of each component average to zero (pjpipe's dither stage).
    MeanZero,
    /// A priority list of reference images: in each component the first listed member gets offset
    /// zero; a component with no listed member uses its best connected image (most used pairs,
    /// then largest total weight, then lowest index). An empty list = best connected everywhere.
    Reference(Vec<usize>),
}

/// Offsets per image from [`solve_offsets`].
#[derive(Debug, Clone, PartialEq)]
pub struct OffsetSolution {
    /// Offset per image (MJy/sr) to subtract; 0 for images without used pairs.
    pub offsets: Vec<f64>,
    /// Per input pair: `delta - (o_i - o_j)` (MJy/sr).
    pub residuals: Vec<f64>,
    /// Connection structure and gauge.
    pub groups: Components,
}

/// Connected components of the graph of used pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Components {
    /// Component label per image; components are numbered in order of their smallest member.
    pub labels: Vec<usize>,
    /// Members of each component, ascending. Single images without pairs are components of their own.
    pub members: Vec<Vec<usize>>,
    /// Reference image of each component (offset 0); `None` for [`Gauge::MeanZero`].
    pub references: Vec<Option<usize>>,
}

impl Components {
    /// Components with more than one image: if there are two or more, the mosaic is disconnected
    /// and the caller should warn naming each group.
    pub fn groups(&self) -> Vec<&[usize]> {
        self.members.iter().filter(|m| m.len() > 1).map(|m| m.as_slice()).collect()
    }

    /// Images that belong to no pair (their offset is 0).
    pub fn isolated(&self) -> Vec<usize> {
        self.members.iter().filter(|m| m.len() == 1).map(|m| m[0]).collect()
    }
}

fn find(parent: &mut [usize], mut a: usize) -> usize {
    while parent[a] != a {
        parent[a] = parent[parent[a]];
        a = parent[a];
    }
    a
}

/// Connected components of `n` nodes joined by `edges` (union-find), labelled by smallest member.
pub fn connected_components(n: usize, edges: &[(usize, usize)]) -> (Vec<usize>, Vec<Vec<usize>>) {
    let mut parent: Vec<usize> = (0..n).collect();
    for &(a, b) in edges {
        let (ra, rb) = (find(&mut parent, a), find(&mut parent, b));
        if ra != rb {
            let (lo, hi) = if ra < rb { (ra, rb) } else { (rb, ra) };
            parent[hi] = lo;
        }
    }
    let mut members: Vec<Vec<usize>> = Vec::new();
    let mut root_label = vec![usize::MAX; n];
    let labels = (0..n)
        .map(|k| {
            let r = find(&mut parent, k);
            if root_label[r] == usize::MAX {
                root_label[r] = members.len();
                members.push(Vec::new());
            }
            members[root_label[r]].push(k);
            root_label[r]
        })
        .collect();
    (labels, members)
}

/// A validated, canonical edge: `i < j`, right-hand side sign adjusted.
struct Edge<const K: usize> {
    i: usize,
    j: usize,
    w: f64,
    rhs: [f64; K],
}

fn canonical_edges<const K: usize>(
    n: usize,
    pairs: impl Iterator<Item = (usize, usize, f64, [f64; K])>,
) -> Result<Vec<Edge<K>>, LevelError> {
    let mut edges = Vec::new();
    for (k, (i, j, w, rhs)) in pairs.enumerate() {
        for idx in [i, j] {
            if idx >= n {
                return Err(LevelError::ImageIndex { pair: k, index: idx, n_images: n });
            }
        }
        if i == j {
            return Err(LevelError::SelfPair { pair: k, index: i });
        }
        if !(w.is_finite() && w > 0.0) {
            return Err(LevelError::Weight { pair: k, weight: w });
        }
        if rhs.iter().any(|v| !v.is_finite()) {
            return Err(LevelError::Delta { pair: k });
        }
        if i < j {
            edges.push(Edge { i, j, w, rhs });
        } else {
            edges.push(Edge { i: j, j: i, w, rhs: rhs.map(|v| -v) });
        }
    }
    // A canonical order makes the assembled system, hence the solution, independent of the input
    // order of the pairs bit for bit.
    edges.sort_by(|a, b| {
        (a.i, a.j)
            .cmp(&(b.i, b.j))
            .then_with(|| a.w.total_cmp(&b.w))
            .then_with(|| a.rhs.iter().zip(&b.rhs).fold(Ordering::Equal, |o, (x, y)| o.then(x.total_cmp(y))))
    });
    Ok(edges)
}

/// The connected components of the pair graph (`links` = `(i, j, weight)`) and each one's pivot:
/// the gauge's reference image in it, else its best-connected image (most pairs, then largest
/// total weight, then lowest index). The pivot's solution is fixed to 0 while solving; with
/// [`Gauge::MeanZero`] the component is re-centred afterwards ([`centre_components`]).
fn components(n: usize, links: &[(usize, usize, f64)], gauge: &Gauge) -> Result<(Components, Vec<usize>), LevelError> {
    if let Gauge::Reference(list) = gauge {
        if let Some(&bad) = list.iter().find(|&&r| r >= n) {
            return Err(LevelError::Reference { index: bad, n_images: n });
        }
    }
    let pairs: Vec<(usize, usize)> = links.iter().map(|&(i, j, _)| (i, j)).collect();
    let (labels, members) = connected_components(n, &pairs);
    let mut degree = vec![0usize; n];
    let mut wsum = vec![0.0f64; n];
    for &(i, j, w) in links {
        degree[i] += 1;
        degree[j] += 1;
        wsum[i] += w;
        wsum[j] += w;
    }
    let mut pivots = Vec::with_capacity(members.len());
    let mut references = Vec::with_capacity(members.len());
    for (c, mem) in members.iter().enumerate() {
        let best = *mem
            .iter()
            .max_by(|&&a, &&b| degree[a].cmp(&degree[b]).then(wsum[a].total_cmp(&wsum[b])).then(b.cmp(&a)))
            .expect("components are non-empty");
        let pivot = match gauge {
            Gauge::MeanZero => best,
            Gauge::Reference(list) => list.iter().copied().find(|&r| labels[r] == c).unwrap_or(best),
        };
        pivots.push(pivot);
        references.push(matches!(gauge, Gauge::Reference(_)).then_some(pivot));
    }
    Ok((Components { labels, members, references }, pivots))
}

/// Position of every member of `mem` but `pivot` among a component's unknowns (ascending image
/// order; `usize::MAX` for the pivot and non-members) and their number.
fn unknown_positions(n: usize, mem: &[usize], pivot: usize) -> (Vec<usize>, usize) {
    let mut pos = vec![usize::MAX; n];
    let mut m = 0;
    for &k in mem {
        if k != pivot {
            pos[k] = m;
            m += 1;
        }
    }
    (pos, m)
}

/// With [`Gauge::MeanZero`], subtract each component's mean solution from its members.
fn centre_components<const K: usize>(x: &mut [[f64; K]], groups: &Components, gauge: &Gauge) {
    if !matches!(gauge, Gauge::MeanZero) {
        return;
    }
    for mem in &groups.members {
        let mut sum = [0.0f64; K];
        for &k in mem {
            for (s, v) in sum.iter_mut().zip(&x[k]) {
                *s += v;
            }
        }
        let count = mem.len() as f64;
        for &k in mem {
            for (v, s) in x[k].iter_mut().zip(&sum) {
                *v -= s / count;
            }
        }
    }
}

/// Solve `sum_pairs w (x_i - x_j - rhs)^2 -> min` for `K` independent coefficients per image,
/// per component, with the gauge. Returns per-image solutions and the components.
fn solve_graph<const K: usize>(
    n: usize,
    edges: &[Edge<K>],
    gauge: &Gauge,
) -> Result<(Vec<[f64; K]>, Components), LevelError> {
    let links: Vec<(usize, usize, f64)> = edges.iter().map(|e| (e.i, e.j, e.w)).collect();
    let (groups, pivots) = components(n, &links, gauge)?;
    let mut x = vec![[0.0f64; K]; n];
    for (c, mem) in groups.members.iter().enumerate() {
        if mem.len() == 1 {
            continue;
        }
        let (pos, m) = unknown_positions(n, mem, pivots[c]);
        let mut a = DMatrix::<f64>::zeros(m, m);
        let mut b = DMatrix::<f64>::zeros(m, K);
        for e in edges.iter().filter(|e| groups.labels[e.i] == c) {
            let (pi, pj) = (pos[e.i], pos[e.j]);
            if pi != usize::MAX {
                a[(pi, pi)] += e.w;
                for q in 0..K {
                    b[(pi, q)] += e.w * e.rhs[q];
                }
            }
            if pj != usize::MAX {
                a[(pj, pj)] += e.w;
                for q in 0..K {
                    b[(pj, q)] -= e.w * e.rhs[q];
                }
            }
            if pi != usize::MAX && pj != usize::MAX {
                a[(pi, pj)] -= e.w;
                a[(pj, pi)] -= e.w;
            }
        }
        // The reduced Laplacian of a connected graph with positive weights is positive definite.
        let sol = match a.clone().cholesky() {
            Some(ch) => ch.solve(&b),
            None => a.lu().solve(&b).expect("reduced Laplacian of a connected component is invertible"),
        };
        for &k in mem {
            if pos[k] != usize::MAX {
                for (q, v) in x[k].iter_mut().enumerate() {
                    *v = sol[(pos[k], q)];
                }
            }
        }
    }
    centre_components(&mut x, &groups, gauge);
    Ok((x, groups))
}

/// Weighted least-squares offsets from pair differences: minimises
/// `sum_pairs weight * (delta_ij - (o_i - o_j))^2` directly (normal equations of each connected
/// component, Cholesky with nalgebra) with the [`Gauge`] fixing each component's constant. This is
/// the fixed point pjpipe's Jacobi iteration approaches (with tessera's `1/rms^2` weights). Images
/// in no pair get 0. The result does not depend on the order of `pairs` or on swapping `(i, j)`
/// with `-delta` (bit for bit).
///
/// # Errors
/// [`LevelError::ImageIndex`], [`LevelError::SelfPair`], [`LevelError::Weight`],
/// [`LevelError::Delta`] for a malformed pair (its position is reported);
/// [`LevelError::Reference`] for a reference index out of range.
pub fn solve_offsets(n_images: usize, pairs: &[PairOffset], gauge: &Gauge) -> Result<OffsetSolution, LevelError> {
    let edges = canonical_edges(n_images, pairs.iter().map(|p| (p.i, p.j, p.weight, [p.delta])))?;
    let (x, groups) = solve_graph(n_images, &edges, gauge)?;
    let offsets: Vec<f64> = x.iter().map(|v| v[0]).collect();
    let residuals = pairs.iter().map(|p| p.delta - (offsets[p.i] - offsets[p.j])).collect();
    Ok(OffsetSolution { offsets, residuals, groups })
}

// ---------------------------------------------------------------------------------------------
// Planes
// ---------------------------------------------------------------------------------------------

/// A plane `offset + slope_x * x + slope_y * y` in MJy/sr, where `(x, y)` are output-grid pixel
/// coordinates relative to the band's plane origin (a grid pixel the caller fixes once per band,
/// e.g. the grid centre rounded down, and uses for every pair and image). Slopes are MJy/sr per
/// output pixel; `offset` is the value at the origin.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Plane {
    /// Value at the origin (MJy/sr).
    pub offset: f64,
    /// Gradient along x (columns), MJy/sr per pixel.
    pub slope_x: f64,
    /// Gradient along y (rows), MJy/sr per pixel.
    pub slope_y: f64,
}

impl Plane {
    /// Value at `(x, y)` relative to the origin.
    pub fn eval(&self, x: f64, y: f64) -> f64 {
        self.offset + self.slope_x * x + self.slope_y * y
    }

    fn coeffs(&self) -> [f64; 3] {
        [self.offset, self.slope_x, self.slope_y]
    }

    fn from_coeffs(c: [f64; 3]) -> Self {
        Self { offset: c[0], slope_x: c[1], slope_y: c[2] }
    }
}

/// Fixed-point scale of residuals in [`PlaneSums`]: `2^32` (resolution 2.3e-10 MJy/sr).
const FIX: f64 = 4_294_967_296.0;
/// Largest clip half-width [`PlaneSums`] accepts, so that residuals fit the fixed point (MJy/sr).
const MAX_HALFWIDTH: f64 = 1_073_741_824.0;
/// Number of `i64` words of [`PlaneSums::to_words`].
pub const PLANE_WORDS: usize = 1 + 10 * 4;

/// Exact sums for one clipped least-squares plane step of a pair: over the points whose residual
/// `r = d - plane(x, y)` satisfies `|r| <= halfwidth`, the count and the sums of `x, y, x^2, xy,
/// y^2` (integers) and of `r, x r, y r, r^2` with `r` rounded to a multiple of `2^-32`
/// (integers in units of `2^-32` and `2^-64`). Integer addition is associative, so the sums of any
/// split of the points merge to the same values bit for bit.
///
/// For an all-reduce, [`to_words`](Self::to_words) splits every 128-bit sum into four limbs of 32
/// bits (each `< 2^32` in magnitude), summed as `i64` with MPI SUM and reassembled exactly by
/// [`from_words`](Self::from_words) (reassembly is linear), for up to `2^31` ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PlaneSums {
    /// Number of points kept.
    pub n: u64,
    /// `[sx, sy, sxx, sxy, syy, sr, sxr, syr, srr, reserved]`.
    sums: [i128; 10],
}

impl PlaneSums {
    /// Empty sums.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add point `(x, y)` (grid pixels relative to the plane origin) with difference `d` (MJy/sr)
    /// if finite and within `halfwidth` of `plane`.
    ///
    /// # Panics
    /// If `halfwidth` is larger than 2^30 MJy/sr (beyond the fixed-point range).
    pub fn add(&mut self, x: i64, y: i64, d: f64, plane: &Plane, halfwidth: f64) {
        assert!(halfwidth <= MAX_HALFWIDTH, "PlaneSums::add: halfwidth too large");
        let r = d - plane.eval(x as f64, y as f64);
        if r.is_nan() || r.abs() > halfwidth {
            return;
        }
        let q = (r * FIX).round() as i128;
        let (x, y) = (x as i128, y as i128);
        let s = &mut self.sums;
        self.n += 1;
        for (k, v) in [x, y, x * x, x * y, y * y, q, x * q, y * q, q * q].into_iter().enumerate() {
            s[k] = s[k].wrapping_add(v);
        }
    }

    /// Add the differences `a - b` of the pixels finite in both `[y, x]` views; pixel `[0, 0]` of
    /// the views is at `origin_yx` relative to the plane origin.
    ///
    /// # Panics
    /// If the shapes differ or `halfwidth` exceeds 2^30.
    pub fn add_diffs(
        &mut self,
        a: ArrayView2<f32>,
        b: ArrayView2<f32>,
        origin_yx: [i64; 2],
        plane: &Plane,
        halfwidth: f64,
    ) {
        assert_eq!(a.dim(), b.dim(), "PlaneSums::add_diffs: shapes differ");
        for (iy, (ra, rb)) in a.axis_iter(Axis(0)).zip(b.axis_iter(Axis(0))).enumerate() {
            self.add_row(ra, rb, origin_yx[0] + iy as i64, origin_yx[1], plane, halfwidth);
        }
    }

    fn add_row(
        &mut self,
        ra: ndarray::ArrayView1<f32>,
        rb: ndarray::ArrayView1<f32>,
        y: i64,
        x0: i64,
        plane: &Plane,
        halfwidth: f64,
    ) {
        for (ix, (&va, &vb)) in ra.iter().zip(rb.iter()).enumerate() {
            let d = f64::from(va) - f64::from(vb);
            if d.is_finite() {
                self.add(x0 + ix as i64, y, d, plane, halfwidth);
            }
        }
    }

    /// [`add_diffs`](Self::add_diffs) with rayon over rows; identical result for any thread count.
    ///
    /// # Panics
    /// As [`add_diffs`](Self::add_diffs).
    pub fn par_add_diffs(
        &mut self,
        a: ArrayView2<f32>,
        b: ArrayView2<f32>,
        origin_yx: [i64; 2],
        plane: &Plane,
        halfwidth: f64,
    ) {
        assert_eq!(a.dim(), b.dim(), "PlaneSums::par_add_diffs: shapes differ");
        let part = a
            .axis_iter(Axis(0))
            .into_par_iter()
            .zip(b.axis_iter(Axis(0)).into_par_iter())
            .enumerate()
            .fold(PlaneSums::new, |mut s, (iy, (ra, rb))| {
                s.add_row(ra, rb, origin_yx[0] + iy as i64, origin_yx[1], plane, halfwidth);
                s
            })
            .reduce(PlaneSums::new, |mut x, y| {
                x.merge(&y);
                x
            });
        self.merge(&part);
    }

    /// Merge another set of sums.
    pub fn merge(&mut self, o: &PlaneSums) {
        self.n += o.n;
        for (s, v) in self.sums.iter_mut().zip(&o.sums) {
            *s = s.wrapping_add(*v);
        }
    }

    /// The sums as [`PLANE_WORDS`] `i64` words (count, then four 32-bit limbs per sum, least
    /// significant first) for an all-reduce with SUM.
    pub fn to_words(&self) -> Vec<i64> {
        let mut w = Vec::with_capacity(PLANE_WORDS);
        w.push(self.n as i64);
        for &s in &self.sums {
            w.push((s & 0xffff_ffff) as i64);
            w.push(((s >> 32) & 0xffff_ffff) as i64);
            w.push(((s >> 64) & 0xffff_ffff) as i64);
            w.push((s >> 96) as i64);
        }
        w
    }

    /// Sums from words (possibly the element-wise sum of several [`to_words`](Self::to_words)).
    ///
    /// # Panics
    /// If `words.len() != PLANE_WORDS`.
    pub fn from_words(words: &[i64]) -> Self {
        assert_eq!(words.len(), PLANE_WORDS, "PlaneSums::from_words: length");
        let mut sums = [0i128; 10];
        for (k, s) in sums.iter_mut().enumerate() {
            let l = &words[1 + 4 * k..5 + 4 * k];
            *s = (l[0] as i128)
                .wrapping_add((l[1] as i128) << 32)
                .wrapping_add((l[2] as i128) << 64)
                .wrapping_add((l[3] as i128).wrapping_shl(96));
        }
        Self { n: words[0] as u64, sums }
    }
}

/// `(n * s_ab - s_a * s_b) / n`, the centred sum `sum (a - mean a)(b - mean b)` in the units of
/// the sums, exact in i128 when it fits, otherwise in f64 (deterministic either way).
fn centred(n: i128, sab: i128, sa: i128, sb: i128) -> f64 {
    let exact = n.checked_mul(sab).and_then(|p| sa.checked_mul(sb).and_then(|q| p.checked_sub(q)));
    match exact {
        Some(v) => v as f64 / n as f64,
        None => sab as f64 - (sa as f64) * (sb as f64) / n as f64,
    }
}

/// Parameters of the clipped plane fit of one pair.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlaneFitParams {
    /// Keep points within `sigma` times the residual rms of the previous step. Default 3.0.
    pub sigma: f64,
    /// Maximum number of steps (each one data scan and one all-reduce). Default 20 (pjpipe).
    pub max_iters: u32,
    /// Absolute tolerance on the coefficient change. Default 1e-8 (pjpipe).
    pub atol: f64,
    /// Relative tolerance on the coefficient change. Default 1e-5 (pjpipe).
    pub rtol: f64,
}

impl Default for PlaneFitParams {
    fn default() -> Self {
        Self { sigma: 3.0, max_iters: 20, atol: 1e-8, rtol: 1e-5 }
    }
}

/// The state of the clipped least-squares plane fit of one pair's differences (the
/// `'level+slope'` option). Start from the pair's level statistic (plane = median, no slopes;
/// half-width `sigma * rms`); each step the caller accumulates [`PlaneSums`] of all the pair's
/// points with [`plane`](Self::plane) and [`halfwidth`](Self::halfwidth), merges them across ranks
/// and calls [`update`](Self::update), until it returns true. Each update fits the least-squares
/// plane of the kept residuals (unweighted), adds it to the plane, and sets the next half-width to
/// `sigma` times the rms of the kept points about the new plane; it stops when every coefficient
/// changes by less than `atol + rtol * |coefficient|` or after `max_iters` steps.
///
/// Departures from pjpipe, documented: the fit is an exact linear least squares (pjpipe minimises
/// with Powell) and unweighted (pjpipe weights by the combined error); the clip uses the rms of
/// the previously kept points. If the kept points do not constrain both slopes (collinear, e.g. a
/// one-row overlap), that step fits the offset only.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlaneFit {
    params: PlaneFitParams,
    plane: Plane,
    halfwidth: f64,
    iters: u32,
    rms: f64,
    n_kept: u64,
    /// `[[n, sx, sy], [sx, sxx, sxy], [sy, sxy, syy]]` of the last step's kept points.
    normal: [[f64; 3]; 3],
    done: bool,
}

impl PlaneFit {
    /// Start from the pair's level median and clipped rms (MJy/sr).
    ///
    /// # Errors
    /// [`LevelError::PlaneStart`] if either is not finite.
    pub fn start(median: f64, rms: f64, params: PlaneFitParams) -> Result<Self, LevelError> {
        if !(median.is_finite() && rms.is_finite()) {
            return Err(LevelError::PlaneStart { median, rms });
        }
        let plane = Plane { offset: median, slope_x: 0.0, slope_y: 0.0 };
        let halfwidth = (params.sigma * rms).min(MAX_HALFWIDTH);
        Ok(Self { params, plane, halfwidth, iters: 0, rms, n_kept: 0, normal: [[0.0; 3]; 3], done: false })
    }

    /// Current plane (the result once done).
    pub fn plane(&self) -> Plane {
        self.plane
    }

    /// Clip half-width for the next accumulation (MJy/sr).
    pub fn halfwidth(&self) -> f64 {
        self.halfwidth
    }

    /// Rms of the kept points about the current plane (MJy/sr); the level rms before the first update.
    pub fn rms(&self) -> f64 {
        self.rms
    }

    /// Points kept in the last step.
    pub fn n_kept(&self) -> u64 {
        self.n_kept
    }

    /// The normal matrix `[[n, sx, sy], [sx, sxx, sxy], [sy, sxy, syy]]` of the points kept in the
    /// last step (coordinates relative to the plane origin): divided by `rms^2`, the information
    /// (inverse covariance) of the fitted `[offset, slope_x, slope_y]`.
    pub fn normal(&self) -> [[f64; 3]; 3] {
        self.normal
    }

    /// Number of updates so far.
    pub fn iters(&self) -> u32 {
        self.iters
    }

    /// Whether the fit has finished.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// One step from the merged sums of all the pair's points; returns true when finished. With no
    /// kept point the fit stops and keeps its plane.
    pub fn update(&mut self, s: &PlaneSums) -> bool {
        if self.done {
            return true;
        }
        self.iters += 1;
        self.n_kept = s.n;
        if s.n == 0 {
            self.done = true;
            return true;
        }
        let n = s.n as i128;
        let nf = s.n as f64;
        let [sx, sy, sxx, sxy, syy, sr, sxr, syr, srr, _] = s.sums;
        let (fx, fy) = (sx as f64, sy as f64);
        self.normal = [[nf, fx, fy], [fx, sxx as f64, sxy as f64], [fy, sxy as f64, syy as f64]];
        let cxx = centred(n, sxx, sx, sx);
        let cxy = centred(n, sxy, sx, sy);
        let cyy = centred(n, syy, sy, sy);
        let cxr = centred(n, sxr, sx, sr) / FIX;
        let cyr = centred(n, syr, sy, sr) / FIX;
        let crr = centred(n, srr, sr, sr) / (FIX * FIX);
        let det = cxx * cyy - cxy * cxy;
        let (bx, by) = if cxx > 0.0 && cyy > 0.0 && det > 1e-9 * cxx * cyy {
            ((cyy * cxr - cxy * cyr) / det, (cxx * cyr - cxy * cxr) / det)
        } else {
            (0.0, 0.0)
        };
        let (mx, my, mr) = (sx as f64 / nf, sy as f64 / nf, sr as f64 / FIX / nf);
        let delta = [mr - bx * mx - by * my, bx, by];
        let ssr = (crr - bx * cxr - by * cyr).max(0.0);
        self.rms = (ssr / nf).sqrt();
        let old = self.plane.coeffs();
        let mut new = old;
        for q in 0..3 {
            new[q] += delta[q];
        }
        self.plane = Plane::from_coeffs(new);
        self.halfwidth = (self.params.sigma * self.rms).min(MAX_HALFWIDTH);
        let converged = (0..3).all(|q| delta[q].abs() <= self.params.atol + self.params.rtol * new[q].abs());
        self.done = converged || self.iters >= self.params.max_iters;
        self.done
    }
}

/// One used pair for the plane solve: `plane` models `image_i - image_j`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairPlane {
    /// First image.
    pub i: usize,
    /// Second image.
    pub j: usize,
    /// Fitted plane of `image_i - image_j` in the band's plane frame.
    pub plane: Plane,
    /// Weight, finite and > 0 (normally [`weight_from_rms`] of the plane-fit rms).
    pub weight: f64,
}

/// Planes per image from [`solve_planes`].
#[derive(Debug, Clone, PartialEq)]
pub struct PlaneSolution {
    /// Plane per image to subtract (zero plane for images without used pairs).
    pub planes: Vec<Plane>,
    /// Per input pair: `plane_ij - (p_i - p_j)` coefficient-wise.
    pub residuals: Vec<Plane>,
    /// Connection structure and gauge.
    pub groups: Components,
}

/// Weighted least-squares planes per image: since planes in one frame are linear in their
/// coefficients, `p_i - p_j ~ plane_ij` separates into three problems with the same graph and
/// weights (offset, slope_x, slope_y), solved together as in [`solve_offsets`]; the gauge sets the
/// reference image's whole plane to zero (or each coefficient's component mean).
///
/// # Errors
/// As [`solve_offsets`].
pub fn solve_planes(n_images: usize, pairs: &[PairPlane], gauge: &Gauge) -> Result<PlaneSolution, LevelError> {
    let edges = canonical_edges(n_images, pairs.iter().map(|p| (p.i, p.j, p.weight, p.plane.coeffs())))?;
    let (x, groups) = solve_graph(n_images, &edges, gauge)?;
    let planes: Vec<Plane> = x.into_iter().map(Plane::from_coeffs).collect();
    let residuals = plane_residuals(pairs, &planes);
    Ok(PlaneSolution { planes, residuals, groups })
}

/// Per pair, `plane_ij - (p_i - p_j)` coefficient-wise.
fn plane_residuals(pairs: &[PairPlane], planes: &[Plane]) -> Vec<Plane> {
    pairs
        .iter()
        .map(|p| {
            let (a, b, d) = (planes[p.i].coeffs(), planes[p.j].coeffs(), p.plane.coeffs());
            Plane::from_coeffs([0, 1, 2].map(|q| d[q] - (a[q] - b[q])))
        })
        .collect()
}

/// Generalised least-squares planes per image: minimises
/// `sum_pairs r_ijᵀ info_ij r_ij` with `r_ij = plane_ij - (p_i - p_j)` (coefficients `[offset,
/// slope_x, slope_y]`), where `info_ij` is pair `ij`'s 3x3 information matrix (its plane fit's
/// normal matrix over `rms^2`, [`PlaneFit::normal`]). Unlike [`solve_planes`], a slope that a pair
/// fixes poorly (across a thin overlap strip) counts for little, and the well-fixed slope of another
/// pair decides it. Connection structure, references and gauge are those of [`solve_planes`] with
/// the pairs' scalar weights; each component's reduced block system is solved with Cholesky (LU if
/// it is not positive definite). If a pair's information is not finite with a positive diagonal,
/// its scalar weight times the identity is used instead.
///
/// # Errors
/// As [`solve_planes`].
pub fn solve_planes_gls(
    n_images: usize,
    pairs: &[PairPlane],
    info: &[[[f64; 3]; 3]],
    gauge: &Gauge,
) -> Result<PlaneSolution, LevelError> {
    assert_eq!(pairs.len(), info.len(), "solve_planes_gls: one information matrix per pair");
    // the pairs' checks (indices, weights, finite planes) of the scalar solve
    canonical_edges(n_images, pairs.iter().map(|p| (p.i, p.j, p.weight, p.plane.coeffs())))?;
    let links: Vec<(usize, usize, f64)> = pairs.iter().map(|p| (p.i, p.j, p.weight)).collect();
    let (groups, pivots) = components(n_images, &links, gauge)?;
    let mut planes = vec![[0.0f64; 3]; n_images];
    for (c, mem) in groups.members.iter().enumerate() {
        if mem.len() < 2 {
            continue;
        }
        let (pos, m) = unknown_positions(n_images, mem, pivots[c]);
        let mut a = DMatrix::<f64>::zeros(3 * m, 3 * m);
        let mut b = DVector::<f64>::zeros(3 * m);
        for (p, w) in pairs.iter().zip(info) {
            if groups.labels[p.i] != c {
                continue;
            }
            let ok = w.iter().flatten().all(|v| v.is_finite()) && (0..3).all(|q| w[q][q] > 0.0);
            let w: [[f64; 3]; 3] = if ok {
                *w
            } else {
                let mut d = [[0.0; 3]; 3];
                (0..3).for_each(|q| d[q][q] = p.weight);
                d
            };
            let d = p.plane.coeffs();
            // r = d - (p_i - p_j): d/dp_i = -W r, d/dp_j = +W r
            for (k, sign) in [(p.i, 1.0), (p.j, -1.0)] {
                if pos[k] == usize::MAX {
                    continue;
                }
                for r in 0..3 {
                    b[3 * pos[k] + r] += sign * (0..3).map(|q| w[r][q] * d[q]).sum::<f64>();
                    for (l, sl) in [(p.i, 1.0), (p.j, -1.0)] {
                        if pos[l] == usize::MAX {
                            continue;
                        }
                        for q in 0..3 {
                            a[(3 * pos[k] + r, 3 * pos[l] + q)] += sign * sl * w[r][q];
                        }
                    }
                }
            }
        }
        let sol = match a.clone().cholesky() {
            Some(ch) => ch.solve(&b),
            None => a.lu().solve(&b).ok_or(LevelError::Singular { images: mem.len() })?,
        };
        for &k in mem {
            if pos[k] != usize::MAX {
                planes[k] = [sol[3 * pos[k]], sol[3 * pos[k] + 1], sol[3 * pos[k] + 2]];
            }
        }
    }
    centre_components(&mut planes, &groups, gauge);
    let planes: Vec<Plane> = planes.into_iter().map(Plane::from_coeffs).collect();
    let residuals = plane_residuals(pairs, &planes);
    Ok(PlaneSolution { planes, residuals, groups })
}

// ---------------------------------------------------------------------------------------------
// Reference tile and band constant
// ---------------------------------------------------------------------------------------------

/// Reference priority for [`Gauge::Reference`] by time: the indices of the images with a known
/// time difference to the MIRI off-source backgrounds (`dt`, any time unit; `None` or NaN =
/// unknown), ordered by `|dt|`, ties by index (the paper's rule: reference tile closest in time to
/// the backgrounds). Images with unknown times are left out, so a component without any falls back
/// to its best connected image.
pub fn order_by_time(dt: &[Option<f64>]) -> Vec<usize> {
    let mut known: Vec<(f64, usize)> =
        dt.iter().enumerate().filter_map(|(k, t)| t.filter(|v| !v.is_nan()).map(|v| (v.abs(), k))).collect();
    known.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    known.into_iter().map(|(_, k)| k).collect()
}

/// The band constant: the lowest sigma-clipped sky among the tile groups (`skies` in MJy/sr, one
/// per group, e.g. the medians of [`sigma_clipped_stats`]; NaN = no sky). Returns `(index, sky)`
/// of the lowest (first index on ties), or `None` if no sky is finite. The caller subtracts `sky`
/// from the whole band.
pub fn lowest_sky(skies: &[f64]) -> Option<(usize, f64)> {
    skies
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, s)| s.is_finite())
        .min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{s, Array2};

    use crate::kernels::test_rng::Rng;

    /// Synthetic pair differences (MJy/sr): Gaussian noise about `offset`, a fraction `tail` of
    /// pixels with (mostly positive) log-normal source emission, `n_cr` cosmic-ray-like outliers
    /// of either sign, a few NaN; values rounded to f32 like differences of f32 images.
    fn synth(seed: u64, n: usize, offset: f64, sigma: f64, tail: f64, n_cr: usize) -> Vec<f64> {
        let mut r = Rng(seed);
        let mut v = Vec::with_capacity(n + n_cr + 10);
        for _ in 0..n {
            let mut d = offset + sigma * r.normal();
            if r.uniform() < tail {
                let e = (1.5 * r.normal()).exp() * 0.5;
                d += if r.uniform() < 0.8 { e } else { -e };
            }
            v.push(d as f32 as f64);
        }
        for _ in 0..n_cr {
            let m = 100.0 + 4900.0 * r.uniform();
            v.push(if r.uniform() < 0.5 { m } else { -m });
        }
        for k in 0..10 {
            v.insert((k * 7919) % v.len(), f64::NAN);
        }
        v
    }

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

    /// The binned statistic of `parts` (merged in reverse order), with the width of the last
    /// binning and the number of passes.
    fn binned_parts(parts: &[&[f64]], clip: &ClipParams, hist: &HistParams) -> (ClippedStats, f64, u32, Vec<Vec<u64>>) {
        let mut range = ValueRange::new();
        for p in parts.iter().rev() {
            let mut r = ValueRange::new();
            p.iter().for_each(|&v| r.add(v));
            range.merge(&r);
        }
        let (mut w, mut passes, mut counts) = (f64::NAN, 0, Vec::new());
        let s = sigma_clipped_stats_binned(&range, clip, hist, |spec| {
            passes += 1;
            w = spec.width;
            let mut total = ClipHistogram::new(*spec);
            for p in parts.iter().rev() {
                let mut h = ClipHistogram::new(*spec);
                p.iter().for_each(|&v| h.add(v));
                total.merge(&h);
            }
            counts.push(total.counts().to_vec());
            total
        });
        (s, w, passes, counts)
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
    fn binned_agrees_with_exact_within_bin_width() {
        let hist = HistParams::default();
        // (offset, sigma, tail fraction, cosmic rays): pair differences of sky-dominated overlaps
        // up to emission-dominated ones.
        let cases = [
            (0.3, 0.05, 0.1, 50),
            (5.0, 0.2, 0.3, 200),
            (-1.2, 0.01, 0.05, 20),
            (9.7, 0.5, 0.0, 0),
            (2.0, 1.0, 0.4, 500),
            (0.0, 0.002, 0.2, 100),
        ];
        let clips = [
            ClipParams::default(),
            ClipParams { sigma: 3.0, maxiters: Some(2) },
            ClipParams { sigma: 3.0, maxiters: None },
        ];
        for (k, (&(offset, sigma, tail, ncr), clip)) in
            cases.iter().flat_map(|c| clips.iter().map(move |p| (c, p))).enumerate()
        {
            let clip = *clip;
            let v = synth(100 + k as u64 / 3, 200_000, offset, sigma, tail, ncr);
            let e = sigma_clipped_stats(&v, &clip);
            let (b, w, passes, _) = binned_parts(&[&v], &clip, &hist);
            let (dmed, dmean, dstd) = ((b.median - e.median).abs(), (b.mean - e.mean).abs(), (b.std - e.std).abs());
            println!(
                "case {k}: sigma {sigma} maxiters {:?} passes {passes} width {w:.2e} |dmedian| {dmed:.2e} \
                 |dmean| {dmean:.2e} \
                 |dstd| {dstd:.2e} kept {} vs {}",
                clip.maxiters, b.n_kept, e.n_kept
            );
            assert_eq!(b.n_total, e.n_total);
            // Final bins at most 2 (hi - lo) / nbins wide (= 4 sigma std / nbins once converged).
            assert!(w <= 2.0 * (e.hi - e.lo) / hist.nbins as f64 * 1.01, "final width {w:e}");
            if clip.maxiters.is_none() {
                assert!(w <= 4.0 * clip.sigma * e.std / hist.nbins as f64 * 1.01, "final width {w:e}");
            }
            for d in [dmed, dmean, dstd] {
                assert!(d < 0.25 * w && d < 1e-4, "case {k}: difference {d:e} vs width {w:e}");
            }
            assert!((b.n_kept - e.n_kept).abs() <= 2e-4 * e.n_kept + 2.0, "case {k}");
        }
    }

    #[test]
    fn binned_is_bitwise_independent_of_the_split() {
        let clip = ClipParams::default();
        let hist = HistParams::default();
        let v = synth(7, 100_000, 0.8, 0.07, 0.2, 300);
        let (whole, _, passes, counts) = binned_parts(&[&v], &clip, &hist);
        assert!(passes >= 2, "the outliers force a refinement");
        let mut r = Rng(11);
        for nparts in 2..=4 {
            let mut cuts: Vec<usize> = (1..nparts).map(|_| (r.uniform() * v.len() as f64) as usize).collect();
            cuts.sort();
            let mut parts: Vec<&[f64]> = Vec::new();
            let mut start = 0;
            for c in cuts.into_iter().chain([v.len()]) {
                parts.push(&v[start..c]);
                start = c;
            }
            let (split, _, p2, c2) = binned_parts(&parts, &clip, &hist);
            assert_eq!(p2, passes);
            assert_eq!(c2, counts);
            for (a, b) in [
                (split.median, whole.median),
                (split.mean, whole.mean),
                (split.std, whole.std),
                (split.n_kept, whole.n_kept),
                (split.lo, whole.lo),
            ] {
                assert_eq!(a.to_bits(), b.to_bits(), "{nparts} parts");
            }
        }
        // Same values in another order (a different decomposition of the grid).
        let mut rev = v.clone();
        rev.reverse();
        let (rs, ..) = binned_parts(&[&rev], &clip, &hist);
        assert_eq!(rs.median.to_bits(), whole.median.to_bits());
        assert_eq!(rs.std.to_bits(), whole.std.to_bits());
    }

    #[test]
    fn histogram_from_views_serial_parallel_and_chunks_agree() {
        let (ny, nx) = (64, 90);
        let mut r = Rng(5);
        let a = Array2::from_shape_fn((ny, nx), |_| (1.0 + 0.1 * r.normal()) as f32);
        let mut b = Array2::from_shape_fn((ny, nx), |_| (0.6 + 0.1 * r.normal()) as f32);
        b[[3, 4]] = f32::NAN;
        let spec = HistSpec::new(-1.0, 0.01, 300).unwrap();
        let mut serial = ClipHistogram::new(spec);
        serial.add_diffs(a.view(), b.view());
        let mut par = ClipHistogram::new(spec);
        par.par_add_diffs(a.view(), b.view());
        assert_eq!(serial, par);
        assert_eq!(serial.total(), (ny * nx - 1) as u64);
        let mut chunks = ClipHistogram::new(spec);
        for (ys, xs) in [(0..20, 0..50), (20..64, 0..50), (0..64, 50..90)] {
            let mut h = ClipHistogram::new(spec);
            h.add_diffs(a.slice(s![ys.clone(), xs.clone()]), b.slice(s![ys, xs]));
            // Simulated all-reduce: counts summed, extremes min/max'd.
            for (c, v) in chunks.counts_mut().iter_mut().zip(h.counts()) {
                *c += v;
            }
            let ((m0, m1), (h0, h1)) = (chunks.extremes(), h.extremes());
            chunks.set_extremes(m0.min(h0), m1.max(h1));
        }
        assert_eq!(chunks, serial);
        let rebuilt =
            ClipHistogram::from_parts(spec, serial.counts().to_vec(), serial.extremes().0, serial.extremes().1);
        assert_eq!(rebuilt, serial);
        let mut range = ValueRange::new();
        range.add_diffs(a.view(), b.view());
        assert_eq!(range.count, serial.total());
        assert_eq!(range.min, serial.extremes().0);
    }

    #[test]
    fn binned_degenerate_inputs() {
        let clip = ClipParams::default();
        let hist = HistParams::default();
        // All equal: a point mass, exact median, zero spread.
        let v = vec![0.375; 1000];
        let (s, _, passes, _) = binned_parts(&[&v], &clip, &hist);
        assert_eq!((s.median, s.mean, s.std, s.n_kept, passes), (0.375, 0.375, 0.0, 1000.0, 1));
        // Nothing finite.
        let (e, _, passes, _) = binned_parts(&[&[f64::NAN, f64::INFINITY]], &clip, &hist);
        assert_eq!((e.n_total, passes), (0, 0));
        assert!(e.median.is_nan() && e.std.is_nan());
        // Two values: bins spread them uniformly, so the median is their midpoint and the std
        // (for 8192 bins) within 1e-3 of the exact 0.5.
        let (t, ..) = binned_parts(&[&[1.0, 2.0]], &clip, &hist);
        assert!((t.median - 1.5).abs() < 1e-3 && (t.std - 0.5).abs() < 1e-3, "{t:?}");
        assert!(HistSpec::new(0.0, 0.0, 10).is_err() && HistSpec::new(f64::NAN, 1.0, 10).is_err());
    }

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

    fn full_pairs(truth: &[f64], r: &mut Rng) -> Vec<PairOffset> {
        let mut p = Vec::new();
        for i in 0..truth.len() {
            for j in i + 1..truth.len() {
                if (i + j) % 3 != 0 {
                    p.push(PairOffset { i, j, delta: truth[i] - truth[j], weight: 0.1 + r.uniform() * 10.0 });
                }
            }
        }
        p
    }

    #[test]
    fn noise_free_offsets_are_recovered_and_order_free() {
        let mut r = Rng(3);
        let truth: Vec<f64> = (0..7).map(|_| r.normal()).collect();
        let pairs = full_pairs(&truth, &mut r);
        let sol = solve_offsets(7, &pairs, &Gauge::Reference(vec![2])).unwrap();
        for k in 0..7 {
            assert!((sol.offsets[k] - (truth[k] - truth[2])).abs() < 1e-12, "image {k}");
        }
        assert_eq!(sol.offsets[2], 0.0);
        assert!(sol.residuals.iter().all(|x| x.abs() < 1e-12));
        assert_eq!(sol.groups.members, vec![(0..7).collect::<Vec<_>>()]);
        assert_eq!(sol.groups.references, vec![Some(2)]);
        // Shuffled and flipped pairs: bit-identical offsets.
        let mut shuffled: Vec<PairOffset> = pairs.iter().rev().copied().collect();
        for (k, p) in shuffled.iter_mut().enumerate() {
            if k % 2 == 0 {
                *p = PairOffset { i: p.j, j: p.i, delta: -p.delta, weight: p.weight };
            }
        }
        let s2 = solve_offsets(7, &shuffled, &Gauge::Reference(vec![2])).unwrap();
        for k in 0..7 {
            assert_eq!(s2.offsets[k].to_bits(), sol.offsets[k].to_bits());
        }
    }

    #[test]
    fn gls_planes_recover_consistent_planes_and_ignore_a_poorly_fixed_slope() {
        let truth = [[0.0, 0.0, 0.0], [0.1, 1e-4, -2e-4], [-0.2, 3e-4, 1e-4]];
        let diff = |i: usize, j: usize| -> [f64; 3] { [0, 1, 2].map(|q| truth[i][q] - truth[j][q]) };
        let pair = |i, j, d: [f64; 3]| PairPlane { i, j, plane: Plane::from_coeffs(d), weight: 1.0 };
        let diag = |a: f64, b: f64, c: f64| [[a, 0.0, 0.0], [0.0, b, 0.0], [0.0, 0.0, c]];
        // consistent data with full, correlated information: exact recovery (block signs and gauge)
        let full = [[4.0e4, 2.0e5, -1.0e5], [2.0e5, 3.0e9, 1.0e8], [-1.0e5, 1.0e8, 2.0e9]];
        let pairs = [pair(0, 1, diff(0, 1)), pair(2, 1, diff(2, 1)), pair(0, 2, diff(0, 2))];
        let sol = solve_planes_gls(3, &pairs, &[full; 3], &Gauge::Reference(vec![0])).unwrap();
        for k in 0..3 {
            let c = sol.planes[k].coeffs();
            for q in 0..3 {
                assert!((c[q] - (truth[k][q] - truth[0][q])).abs() < 1e-12, "image {k} coefficient {q}: {c:?}");
            }
        }
        // pair 1-2 is a thin strip: its slope_x is wrong by 5e-3 but carries almost no information
        let mut bad = diff(1, 2);
        bad[1] += 5e-3;
        let pairs = [pair(0, 1, diff(0, 1)), pair(1, 2, bad), pair(0, 2, diff(0, 2))];
        let info = [diag(1e4, 1e10, 1e10), diag(1e4, 1.0, 1e10), diag(1e4, 1e10, 1e10)];
        let gls = solve_planes_gls(3, &pairs, &info, &Gauge::Reference(vec![0])).unwrap();
        let scalar = solve_planes(3, &pairs, &Gauge::Reference(vec![0])).unwrap();
        // hand solution of the scalar problem (equal weights): the error splits 1/3, 1/3, 1/3
        assert!((scalar.planes[2].slope_x - (3e-4 - 5e-3 / 3.0)).abs() < 1e-12, "{:?}", scalar.planes[2]);
        // GLS: the error is weighed by 1 against 1e10 on the other path
        assert!((gls.planes[2].slope_x - 3e-4).abs() < 1e-8, "{:?}", gls.planes[2]);
        assert!((gls.planes[1].slope_x - 1e-4).abs() < 1e-8, "{:?}", gls.planes[1]);
    }

    #[test]
    fn weighted_triangle_hand_solution() {
        // o0 = 0; minimise (-o1 - 1)^2 + (o1 - o2 - 1)^2 + 2 (-o2 - 3)^2:
        // normal equations 2 o1 - o2 = 0, -o1 + 3 o2 = -7 -> o1 = -1.4, o2 = -2.8.
        let pairs = [
            PairOffset { i: 0, j: 1, delta: 1.0, weight: 1.0 },
            PairOffset { i: 1, j: 2, delta: 1.0, weight: 1.0 },
            PairOffset { i: 0, j: 2, delta: 3.0, weight: 2.0 },
        ];
        let sol = solve_offsets(3, &pairs, &Gauge::Reference(vec![0])).unwrap();
        let want = [0.0, -1.4, -2.8];
        for (got, want) in sol.offsets.iter().zip(want) {
            assert!((got - want).abs() < 1e-14);
        }
        for (got, want) in sol.residuals.iter().zip([-0.4, -0.4, 0.2]) {
            assert!((got - want).abs() < 1e-14);
        }
        // Mean-zero gauge: same differences, mean 0 (shift by +1.4).
        let mz = solve_offsets(3, &pairs, &Gauge::MeanZero).unwrap();
        for (got, want) in mz.offsets.iter().zip(want) {
            assert!((got - (want + 1.4)).abs() < 1e-14);
        }
        assert_eq!(mz.groups.references, vec![None]);
        assert_eq!(weight_from_rms(0.5), 4.0);
    }

    #[test]
    fn disconnected_graph_has_two_gauged_components() {
        // {0, 2, 4} and {1, 3, 5} joined among themselves only; 6 has no pair.
        let truth = [0.5, -1.0, 2.0, 0.25, -0.75, 3.0, 9.0];
        let pairs: Vec<PairOffset> = [(0, 2), (2, 4), (0, 4), (1, 3), (3, 5)]
            .iter()
            .map(|&(i, j)| PairOffset { i, j, delta: truth[i] - truth[j], weight: 1.0 })
            .collect();
        let sol = solve_offsets(7, &pairs, &Gauge::Reference(vec![4])).unwrap();
        let g = &sol.groups;
        assert_eq!(g.members, vec![vec![0, 2, 4], vec![1, 3, 5], vec![6]]);
        assert_eq!(g.labels, vec![0, 1, 0, 1, 0, 1, 2]);
        // Component {1, 3, 5} has no listed reference: best connected = 3 (two pairs).
        assert_eq!(g.references, vec![Some(4), Some(3), Some(6)]);
        assert_eq!(g.groups(), vec![&[0, 2, 4][..], &[1, 3, 5][..]]);
        assert_eq!(g.isolated(), vec![6]);
        for k in [0, 2, 4] {
            assert!((sol.offsets[k] - (truth[k] - truth[4])).abs() < 1e-14);
        }
        for k in [1, 3, 5] {
            assert!((sol.offsets[k] - (truth[k] - truth[3])).abs() < 1e-14);
        }
        assert_eq!(sol.offsets[6], 0.0);
        // Mean zero per component.
        let mz = solve_offsets(7, &pairs, &Gauge::MeanZero).unwrap();
        assert!((mz.offsets[0] + mz.offsets[2] + mz.offsets[4]).abs() < 1e-14);
        assert!((mz.offsets[1] + mz.offsets[3] + mz.offsets[5]).abs() < 1e-14);
        assert!((mz.offsets[5] - mz.offsets[1] - (truth[5] - truth[1])).abs() < 1e-14);
    }

    #[test]
    fn best_connected_reference_and_errors() {
        // Star around 3 plus a weighted edge 0-1: 3 has most pairs.
        let pairs: Vec<PairOffset> = [(3, 0), (3, 1), (3, 2), (0, 1)]
            .iter()
            .map(|&(i, j)| PairOffset { i, j, delta: 0.1, weight: 5.0 })
            .collect();
        let sol = solve_offsets(4, &pairs, &Gauge::Reference(vec![])).unwrap();
        assert_eq!(sol.groups.references, vec![Some(3)]);
        assert_eq!(sol.offsets[3], 0.0);
        // Tie on degree (0 and 1 both have 2 pairs if 3-2 is removed): larger weight wins, then lower index.
        let tie =
            [PairOffset { i: 0, j: 1, delta: 0.0, weight: 1.0 }, PairOffset { i: 1, j: 2, delta: 0.0, weight: 3.0 }];
        assert_eq!(solve_offsets(3, &tie, &Gauge::Reference(vec![])).unwrap().groups.references, vec![Some(1)]);
        let bad = |p: PairOffset| solve_offsets(3, &[p], &Gauge::MeanZero).unwrap_err();
        assert_eq!(
            bad(PairOffset { i: 0, j: 3, delta: 0.0, weight: 1.0 }),
            LevelError::ImageIndex { pair: 0, index: 3, n_images: 3 }
        );
        assert_eq!(bad(PairOffset { i: 1, j: 1, delta: 0.0, weight: 1.0 }), LevelError::SelfPair { pair: 0, index: 1 });
        assert!(matches!(bad(PairOffset { i: 0, j: 1, delta: 0.0, weight: 0.0 }), LevelError::Weight { .. }));
        assert!(matches!(bad(PairOffset { i: 0, j: 1, delta: f64::NAN, weight: 1.0 }), LevelError::Delta { pair: 0 }));
        assert_eq!(
            solve_offsets(3, &[], &Gauge::Reference(vec![5])).unwrap_err(),
            LevelError::Reference { index: 5, n_images: 3 }
        );
    }

    #[test]
    fn noise_free_planes_are_recovered() {
        let mut r = Rng(21);
        let truth: Vec<Plane> = (0..5)
            .map(|_| Plane { offset: r.normal(), slope_x: 1e-4 * r.normal(), slope_y: 1e-4 * r.normal() })
            .collect();
        let mut pairs = Vec::new();
        for i in 0..5 {
            for j in i + 1..5 {
                let c = [truth[i], truth[j]].map(|p| p.coeffs());
                let d = Plane::from_coeffs([c[0][0] - c[1][0], c[0][1] - c[1][1], c[0][2] - c[1][2]]);
                pairs.push(PairPlane { i, j, plane: d, weight: 1.0 + r.uniform() });
            }
        }
        let sol = solve_planes(5, &pairs, &Gauge::Reference(vec![1])).unwrap();
        for k in 0..5 {
            let (g, t, t1) = (sol.planes[k].coeffs(), truth[k].coeffs(), truth[1].coeffs());
            for q in 0..3 {
                assert!((g[q] - (t[q] - t1[q])).abs() < 1e-13, "image {k} coefficient {q}");
            }
        }
        assert!(sol.residuals.iter().all(|p| p.offset.abs() < 1e-13 && p.slope_x.abs() < 1e-16));
    }

    /// Slow reference of the plane fit on a list of points: the same clipping rule, f64 sums in
    /// point order, 3x3 normal equations in centred coordinates solved by Cramer's rule.
    fn ref_plane_fit(pts: &[(i64, i64, f64)], median: f64, rms: f64, p: PlaneFitParams) -> (Plane, f64, usize, u32) {
        let mut plane = Plane { offset: median, slope_x: 0.0, slope_y: 0.0 };
        let (mut h, mut rms_out, mut kept, mut it) = (p.sigma * rms, rms, 0, 0);
        while it < p.max_iters {
            it += 1;
            let k: Vec<(f64, f64, f64)> = pts
                .iter()
                .map(|&(x, y, d)| (x as f64, y as f64, d - plane.eval(x as f64, y as f64)))
                .filter(|t| t.2.abs() <= h)
                .collect();
            kept = k.len();
            let n = kept as f64;
            let (mx, my, mr) = (
                k.iter().map(|t| t.0).sum::<f64>() / n,
                k.iter().map(|t| t.1).sum::<f64>() / n,
                k.iter().map(|t| t.2).sum::<f64>() / n,
            );
            let (mut cxx, mut cxy, mut cyy, mut cxr, mut cyr) = (0.0, 0.0, 0.0, 0.0, 0.0);
            for &(x, y, rr) in &k {
                let (dx, dy, dr) = (x - mx, y - my, rr - mr);
                cxx += dx * dx;
                cxy += dx * dy;
                cyy += dy * dy;
                cxr += dx * dr;
                cyr += dy * dr;
            }
            let det = cxx * cyy - cxy * cxy;
            let (bx, by) = ((cyy * cxr - cxy * cyr) / det, (cxx * cyr - cxy * cxr) / det);
            let delta = [mr - bx * mx - by * my, bx, by];
            let ssr: f64 = k.iter().map(|&(x, y, rr)| (rr - delta[0] - bx * x - by * y).powi(2)).sum();
            rms_out = (ssr / n).sqrt();
            let old = plane.coeffs();
            let new = [old[0] + delta[0], old[1] + delta[1], old[2] + delta[2]];
            plane = Plane::from_coeffs(new);
            h = p.sigma * rms_out;
            if (0..3).all(|q| delta[q].abs() <= p.atol + p.rtol * new[q].abs()) {
                break;
            }
        }
        (plane, rms_out, kept, it)
    }

    #[test]
    fn plane_fit_recovers_gradient_matches_reference_and_split() {
        let (ny, nx) = (150, 200);
        let origin = [-75i64, -100i64]; // view pixel [0, 0] relative to the plane origin
        let true_diff = Plane { offset: 0.4, slope_x: 2e-3, slope_y: -1e-3 };
        let mut r = Rng(8);
        let sky = Array2::from_shape_fn((ny, nx), |(y, x)| {
            3.0 + 2.0 * (-(((y as f64 - 70.0).powi(2) + (x as f64 - 90.0).powi(2)) / 800.0)).exp()
        });
        let mut a = Array2::<f32>::zeros((ny, nx));
        let mut b = Array2::<f32>::zeros((ny, nx));
        for ((y, x), v) in sky.indexed_iter() {
            let (gx, gy) = ((x as i64 + origin[1]) as f64, (y as i64 + origin[0]) as f64);
            // A compact source only in a (emission left in the differences, clipped by the fit).
            let src = 2.0 * (-(((y as f64 - 70.0).powi(2) + (x as f64 - 90.0).powi(2)) / 50.0)).exp();
            a[[y, x]] = (v + src + true_diff.eval(gx, gy) + 0.05 * r.normal()) as f32;
            b[[y, x]] = (v + 0.05 * r.normal()) as f32;
        }
        b.slice_mut(s![0..10, ..]).fill(f32::NAN);
        let pts: Vec<(i64, i64, f64)> = a
            .indexed_iter()
            .map(|((y, x), &va)| (x as i64 + origin[1], y as i64 + origin[0], f64::from(va) - f64::from(b[[y, x]])))
            .filter(|t| t.2.is_finite())
            .collect();
        let level = sigma_clipped_stats(&pts.iter().map(|t| t.2).collect::<Vec<_>>(), &ClipParams::default());
        let params = PlaneFitParams::default();
        // Whole grid, serial.
        let mut fit = PlaneFit::start(level.median, level.std, params).unwrap();
        let mut fit_chunks = fit;
        let mut fit_par = fit;
        while !fit.is_done() {
            let mut sums = PlaneSums::new();
            sums.add_diffs(a.view(), b.view(), origin, &fit.plane(), fit.halfwidth());
            fit.update(&sums);
        }
        // Four chunks, words summed as an all-reduce would.
        let chunks = [(0..37, 0..101), (37..150, 0..101), (0..80, 101..200), (80..150, 101..200)];
        while !fit_chunks.is_done() {
            let mut words = vec![0i64; PLANE_WORDS];
            for (ys, xs) in chunks.iter().rev() {
                let mut sums = PlaneSums::new();
                let o = [origin[0] + ys.start as i64, origin[1] + xs.start as i64];
                sums.add_diffs(
                    a.slice(s![ys.clone(), xs.clone()]),
                    b.slice(s![ys.clone(), xs.clone()]),
                    o,
                    &fit_chunks.plane(),
                    fit_chunks.halfwidth(),
                );
                for (w, v) in words.iter_mut().zip(sums.to_words()) {
                    *w += v;
                }
            }
            fit_chunks.update(&PlaneSums::from_words(&words));
        }
        while !fit_par.is_done() {
            let mut sums = PlaneSums::new();
            sums.par_add_diffs(a.view(), b.view(), origin, &fit_par.plane(), fit_par.halfwidth());
            fit_par.update(&sums);
        }
        assert_eq!(fit, fit_chunks);
        assert_eq!(fit, fit_par);
        let (rp, rrms, rkept, rit) = ref_plane_fit(&pts, level.median, level.std, params);
        let (g, w) = (fit.plane().coeffs(), rp.coeffs());
        println!(
            "plane fit {:?} rms {} kept {} iters {}; reference {:?} rms {rrms} kept {rkept} iters {rit}",
            fit.plane(),
            fit.rms(),
            fit.n_kept(),
            fit.iters(),
            rp
        );
        assert_eq!((fit.n_kept() as usize, fit.iters()), (rkept, rit));
        assert!((g[0] - w[0]).abs() < 1e-9 && (g[1] - w[1]).abs() < 1e-12 && (g[2] - w[2]).abs() < 1e-12);
        assert!((fit.rms() - rrms).abs() < 1e-9);
        // Against the truth: noise 0.05 * sqrt(2) per pixel over ~27000 pixels.
        let t = true_diff.coeffs();
        assert!(
            (g[0] - t[0]).abs() < 0.01 && (g[1] - t[1]).abs() < 1e-4 && (g[2] - t[2]).abs() < 1e-4,
            "{:?}",
            fit.plane()
        );
        assert!((fit.rms() - 0.05 * 2f64.sqrt()).abs() < 0.01);
        assert!(PlaneFit::start(f64::NAN, 1.0, params).is_err());
    }

    #[test]
    fn plane_words_are_an_exact_allreduce_encoding() {
        let mut r = Rng(4);
        let plane = Plane { offset: 1.0, slope_x: 0.01, slope_y: -0.02 };
        let mut parts = vec![PlaneSums::new(); 3];
        let mut whole = PlaneSums::new();
        for k in 0..3000 {
            let (x, y) = ((r.uniform() * 4000.0) as i64 - 2000, (r.uniform() * 4000.0) as i64 - 2000);
            let d = plane.eval(x as f64, y as f64) + 50.0 * r.normal();
            parts[k % 3].add(x, y, d, &plane, 1e4);
            whole.add(x, y, d, &plane, 1e4);
        }
        let mut words = vec![0i64; PLANE_WORDS];
        for p in &parts {
            for (w, v) in words.iter_mut().zip(p.to_words()) {
                *w += v;
            }
        }
        assert_eq!(PlaneSums::from_words(&words), whole);
        assert_eq!(PlaneSums::from_words(&whole.to_words()), whole);
        let mut merged = parts[2];
        merged.merge(&parts[0]);
        merged.merge(&parts[1]);
        assert_eq!(merged, whole);
        assert_eq!(whole.n, 3000);
        // sx equals the plain integer sum of the x coordinates.
        let mut r2 = Rng(4);
        let sx: i128 = (0..3000)
            .map(|_| {
                let x = (r2.uniform() * 4000.0) as i64 - 2000;
                r2.uniform();
                r2.normal();
                x as i128
            })
            .sum();
        assert_eq!(whole.sums[0], sx);
    }

    #[test]
    fn reference_by_time_and_band_constant() {
        let dt = [Some(3.0), None, Some(-0.5), Some(f64::NAN), Some(0.5), Some(-10.0)];
        assert_eq!(order_by_time(&dt), vec![2, 4, 0, 5]);
        assert_eq!(lowest_sky(&[0.3, f64::NAN, -0.1, 0.2, -0.1]), Some((2, -0.1)));
        assert_eq!(lowest_sky(&[f64::NAN]), None);
        // Component gauge from the time order: the closest tile in each component.
        let pairs =
            [PairOffset { i: 0, j: 1, delta: 1.0, weight: 1.0 }, PairOffset { i: 2, j: 3, delta: 2.0, weight: 1.0 }];
        let sol = solve_offsets(4, &pairs, &Gauge::Reference(order_by_time(&[Some(5.0), Some(1.0), Some(0.2), None])))
            .unwrap();
        assert_eq!(sol.groups.references, vec![Some(1), Some(2)]);
        assert_eq!(sol.offsets, vec![1.0, 0.0, 0.0, -2.0]);
    }
}

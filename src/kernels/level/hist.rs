//! The mergeable sigma-clipped statistic of the level pairs: [`ValueRange`] (pass 0: count and
//! extremes), [`HistSpec`] and [`ClipHistogram`] (a fixed-bin histogram with exact integer counts
//! and min/max of the values), [`ClipPass`] / [`ClipStep`] (the iteration state between passes) and
//! the driver [`sigma_clipped_stats_binned`]. Counts are integers in fixed bins and the extremes are
//! min/max, so summing the counts of any split of the data (an all-reduce over ranks) gives
//! bit-identical results for any decomposition. The clipping runs on the merged histogram and
//! refines the bins around the current clipping interval whenever an iteration halves it, carrying
//! the iteration state ([`ClipPass`], [`ClipHistogram::step`]); so every iteration runs on bins at
//! most `2 (hi - lo) / nbins` wide and the final bin width is at most `4 * sigma * std / nbins`
//! (std/680 for the defaults). Measured against the exact computation on 200 000 contaminated
//! differences (sky noise 0.002 to 1 MJy/sr, source tails, cosmic rays): median, mean and std
//! within a quarter of the final bin width and below 1e-4 MJy/sr (typically 1e-7 to 2e-5; the
//! worst, 9e-5, for a run stopped by `maxiters = 2`).
//!
//! What does not live here: the exact (sort-based) statistic it is tested against and the shared
//! [`ClipParams`] / [`ClippedStats`] (`kernels::stats`), and the all-reduce itself (the `level`
//! stage sums [`ClipHistogram::counts_mut`] and reduces the extremes).

use ndarray::{ArrayView2, Axis};
use rayon::prelude::*;

use super::LevelError;
use crate::kernels::stats::{ClipParams, ClippedStats};

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

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{s, Array2};

    use crate::kernels::stats::sigma_clipped_stats;
    use crate::kernels::test_rng::{synth_differences as synth, Rng};

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
}

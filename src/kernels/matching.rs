//! Catalogue matching and fitting for astrometry (`align`: one shift per visit; `astrometry`: a
//! wide shift search, then a strict shift + rotation fit): pure functions on plain 2-D positions in
//! a common tangent-plane frame, arcsec, as `[x, y]` pairs. The caller projects both catalogues
//! (sky or pixel positions) into that frame; nothing here knows about WCSs.
//!
//! The model maps image positions onto reference positions,
//! `ref ~= T(img) = c + R(theta) (img - c) + d`, with `d = [dx, dy]` (arcsec), `theta` the rotation
//! (degrees, counter-clockwise from `+x` towards `+y`) about a given centre `c` (e.g. the tangent
//! point or the mosaic centre). Geometry `shift` fixes `theta = 0` (tweakwcs' `shift`), `rshift`
//! frees it (tweakwcs' `rshift`).
//!
//! [`match_catalogs`] does, in order:
//! 1. **Shift search** (optional, tweakwcs' `use2dhist`): every pair with
//!    `|ref - (img + d0)| <= search_radius` votes for its offset in a 2-D histogram of bin `bin`;
//!    the peak is the 3x3-bin block with most votes. Its significance is tested against the
//!    histogram's own background: with `lambda` the mean number of votes per 3x3 block outside the
//!    peak, the false-alarm probability is `n_bins * P(Poisson(lambda) >= peak)`; above
//!    `max_false_alarm` (default 1e-3) the search fails with [`MatchError::NoSignificantPeak`], so a
//!    wrong or non-overlapping catalogue is never turned into a random "best" shift. The start
//!    shift is the mean offset of the votes in the peak block.
//! 2. **Matching**: nearest neighbour within `tolerance` after applying the current transform,
//!    one-to-one (a reference source keeps the closest image source), repeated with the refitted
//!    transform until the pairs stop changing.
//! 3. **Fit with clipping**: least squares (closed form: the mean offset for `shift`, 2-D
//!    Procrustes/Umeyama without scale for `rshift`), then pairs whose residual exceeds
//!    `clip_sigma * rms` (2-D rms) are dropped and the fit repeated, at most `n_clip` times.
//! 4. **Checks**: fewer than `min_matches` pairs is [`MatchError::TooFewMatches`]; a match count
//!    that chance coincidences explain (false-alarm probability from the reference density within
//!    the tolerance) is [`MatchError::NotSignificant`]. A failure is always an error value that says
//!    why; there is no silent identity transform. The caller keeps the previous WCS.
//!
//! [`fit_transform`] is the fit alone on given pairs; [`match_groups`] solves one transform per
//! group (visit) of exposures against one reference list, groups in parallel.
//!
//! Determinism: votes, matches and sums are taken in index order; the result does not depend on
//! the thread count.
//!
//! What does not live here: source detection (`super::sources`), projection to the tangent plane
//! and applying the correction to WCSs (`geom`), reading catalogues (`io`), the configuration.
//!
//! References: tweakwcs (`XYXYMatcher`, `fit_wcs`/`iter_linear_fit`, STScI), as configured by
//! pjpipe for PHANGS-JWST (Williams et al. 2024, ApJS 273, 13); Umeyama 1991 (IEEE PAMI 13, 376).

use std::collections::HashMap;

use rayon::prelude::*;

// ----------------------------------------------------------------------------- types

/// Which transform is fitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FitGeometry {
    /// Translation only.
    #[default]
    Shift,
    /// Translation and rotation about the centre (no scale, no shear).
    RShift,
}

/// A rigid tangent-plane transform `p -> c + R(theta) (p - c) + d`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transform {
    /// Translation `d = [dx, dy]`, arcsec.
    pub shift_arcsec: [f64; 2],
    /// Rotation, degrees, counter-clockwise from `+x` towards `+y`.
    pub rotation_deg: f64,
    /// Centre of rotation `c = [x, y]`, arcsec.
    pub centre_arcsec: [f64; 2],
}

impl Transform {
    /// The identity about `centre_arcsec`.
    pub fn identity(centre_arcsec: [f64; 2]) -> Self {
        Self { shift_arcsec: [0.0, 0.0], rotation_deg: 0.0, centre_arcsec }
    }

    /// The 2x2 rotation matrix `[[cos, -sin], [sin, cos]]` (rows `x`, `y`).
    pub fn matrix(&self) -> [[f64; 2]; 2] {
        let (s, c) = self.rotation_deg.to_radians().sin_cos();
        [[c, -s], [s, c]]
    }

    /// Apply the transform to `p = [x, y]`, arcsec.
    pub fn apply(&self, p: [f64; 2]) -> [f64; 2] {
        let m = self.matrix();
        let [cx, cy] = self.centre_arcsec;
        let (u, v) = (p[0] - cx, p[1] - cy);
        [cx + m[0][0] * u + m[0][1] * v + self.shift_arcsec[0], cy + m[1][0] * u + m[1][1] * v + self.shift_arcsec[1]]
    }
}

/// Parameters of [`match_catalogs`]. Lengths in arcsec in the common tangent-plane frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MatchParams {
    /// Fitted geometry. Default [`FitGeometry::Shift`].
    pub geometry: FitGeometry,
    /// Run the 2-D histogram shift search first. Default true.
    pub use_histogram: bool,
    /// Half size of the shift search (radius around `initial_shift_arcsec`), arcsec. Default 2.
    pub search_radius_arcsec: f64,
    /// Histogram bin, arcsec; `None` means `tolerance / 2`. Default `None`.
    pub bin_arcsec: Option<f64>,
    /// Transform applied before the search and used as the start without the histogram
    /// (e.g. the negative of a previous iteration's shift). Default: identity about the origin.
    pub initial: Transform,
    /// Matching radius, arcsec. Default 0.3.
    pub tolerance_arcsec: f64,
    /// Clipping threshold in units of the 2-D rms of the residuals. Default 3.
    pub clip_sigma: f64,
    /// Maximum clipping passes per fit. Default 5.
    pub n_clip: usize,
    /// Maximum match-refit cycles. Default 10.
    pub max_iterations: usize,
    /// Minimum number of matched pairs for success (at least 2 for `rshift`, 1 for `shift`).
    /// Default 5.
    pub min_matches: usize,
    /// Maximum false-alarm probability of the histogram peak and of the final match count.
    /// Default 1e-3.
    pub max_false_alarm: f64,
}

impl Default for MatchParams {
    fn default() -> Self {
        Self {
            geometry: FitGeometry::Shift,
            use_histogram: true,
            search_radius_arcsec: 2.0,
            bin_arcsec: None,
            initial: Transform::identity([0.0, 0.0]),
            tolerance_arcsec: 0.3,
            clip_sigma: 3.0,
            n_clip: 5,
            max_iterations: 10,
            min_matches: 5,
            max_false_alarm: 1e-3,
        }
    }
}

impl MatchParams {
    fn bin(&self) -> f64 {
        self.bin_arcsec.unwrap_or(0.5 * self.tolerance_arcsec)
    }

    /// Check the parameters.
    ///
    /// # Errors
    /// [`MatchError::Param`] naming the first invalid field.
    pub fn validate(&self) -> Result<(), MatchError> {
        let chk = |name: &'static str, v: f64, ok: bool, reason: &'static str| {
            if ok && v.is_finite() {
                Ok(())
            } else {
                Err(MatchError::Param { name, value: v, reason })
            }
        };
        chk("search_radius_arcsec", self.search_radius_arcsec, self.search_radius_arcsec > 0.0, "must be > 0")?;
        chk("tolerance_arcsec", self.tolerance_arcsec, self.tolerance_arcsec > 0.0, "must be > 0")?;
        let b = self.bin();
        chk("bin_arcsec", b, b > 0.0 && b <= self.search_radius_arcsec, "must be in (0, search_radius]")?;
        if self.use_histogram {
            let n = (2.0 * self.search_radius_arcsec / b).ceil();
            chk("bin_arcsec", b, n <= 4096.0, "gives more than 4096 bins per axis")?;
        }
        chk("clip_sigma", self.clip_sigma, self.clip_sigma > 0.0, "must be > 0")?;
        chk("max_iterations", self.max_iterations as f64, self.max_iterations >= 1, "must be >= 1")?;
        let needed = if self.geometry == FitGeometry::RShift { 2 } else { 1 };
        chk(
            "min_matches",
            self.min_matches as f64,
            self.min_matches >= needed,
            "must be >= 2 for rshift, 1 for shift",
        )?;
        let f = self.max_false_alarm;
        chk("max_false_alarm", f, f > 0.0 && f < 1.0, "must be in (0, 1)")?;
        let t = self.initial;
        let all = [t.shift_arcsec[0], t.shift_arcsec[1], t.rotation_deg, t.centre_arcsec[0], t.centre_arcsec[1]];
        chk("initial", all.iter().sum::<f64>(), all.iter().all(|v| v.is_finite()), "must be finite")
    }
}

/// Which input list an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Catalog {
    /// The image (moving) catalogue.
    Image,
    /// The reference catalogue.
    Reference,
}

/// Why a match or fit failed. Each variant is a failure to be reported; none is a fallback value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum MatchError {
    /// A parameter is out of its range or not finite.
    #[error("matching parameter `{name}` = {value} is invalid: {reason}")]
    Param {
        /// The parameter's field name.
        name: &'static str,
        /// The rejected value.
        value: f64,
        /// What the value must satisfy.
        reason: &'static str,
    },
    /// A catalogue has fewer (finite) sources than the minimum number of matches.
    #[error("{catalog:?} catalogue has {found} sources, at least {needed} are needed")]
    TooFewSources {
        /// Which catalogue.
        catalog: Catalog,
        /// Finite sources in it.
        found: usize,
        /// `min_matches`.
        needed: usize,
    },
    /// No image source has a reference source within the search radius: the catalogues do not
    /// overlap (or the initial transform is far off).
    #[error("no pair of sources within the search radius of {search_radius_arcsec} arcsec: catalogues do not overlap")]
    NoOverlap {
        /// The search radius, arcsec.
        search_radius_arcsec: f64,
    },
    /// The shift histogram has no peak that stands out from its background.
    #[error(
        "no significant shift: histogram peak of {peak} votes over a background of {background:.2} per block \
         (false-alarm probability {false_alarm:.3e} > {max_false_alarm:.1e})"
    )]
    NoSignificantPeak {
        /// Votes in the highest 3x3-bin block.
        peak: usize,
        /// Mean votes per 3x3-bin block outside the peak.
        background: f64,
        /// False-alarm probability of the peak.
        false_alarm: f64,
        /// The accepted maximum.
        max_false_alarm: f64,
    },
    /// Fewer matched pairs than `min_matches` (after clipping).
    #[error("too few matches: {found} found, {needed} needed")]
    TooFewMatches {
        /// Pairs left.
        found: usize,
        /// `min_matches`.
        needed: usize,
    },
    /// The number of matches is explained by chance coincidences within the tolerance.
    #[error(
        "matches not significant: {found} pairs where chance alone gives {expected_chance:.2} \
         (false-alarm probability {false_alarm:.3e})"
    )]
    NotSignificant {
        /// Pairs found.
        found: usize,
        /// Expected chance pairs.
        expected_chance: f64,
        /// Probability of at least `found` chance pairs.
        false_alarm: f64,
    },
}

/// The shift-histogram peak, for diagnostics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HistogramPeak {
    /// Votes in the peak 3x3-bin block.
    pub votes: usize,
    /// Mean votes per block outside the peak.
    pub background: f64,
    /// False-alarm probability of the peak.
    pub false_alarm: f64,
    /// Shift at the peak (mean offset of its votes, including the initial transform), arcsec.
    pub shift_arcsec: [f64; 2],
}

/// A successful match and fit.
#[derive(Debug, Clone, PartialEq)]
pub struct MatchResult {
    /// The fitted transform image -> reference.
    pub transform: Transform,
    /// The fitted geometry.
    pub geometry: FitGeometry,
    /// Number of pairs used in the final fit.
    pub n_matches: usize,
    /// 2-D rms of the fit residuals `sqrt(mean |ref - T(img)|^2)`, arcsec.
    pub rms_arcsec: f64,
    /// Rms of the residuals per axis `[x, y]`, arcsec.
    pub rms_xy_arcsec: [f64; 2],
    /// The pairs `(image index, reference index)` of the final fit, by image index.
    pub pairs: Vec<(usize, usize)>,
    /// 1-sigma statistical uncertainty of the shift per axis, `rms_xy / sqrt(n)`, arcsec.
    pub shift_err_arcsec: [f64; 2],
    /// 1-sigma statistical uncertainty of the rotation, `rms_1d / sqrt(sum |a - mean(a)|^2)` in
    /// radians converted to degrees (0 for `shift`).
    pub rotation_err_deg: f64,
    /// Pairs matched within the tolerance but clipped from the final fit.
    pub n_clipped: usize,
    /// The histogram peak, if the search ran.
    pub peak: Option<HistogramPeak>,
    /// Chance pairs expected within the tolerance from the reference density.
    pub expected_chance: f64,
}

// ----------------------------------------------------------------------------- fitting

/// Least-squares fit of `geometry` mapping `src[k]` onto `dst[k]` (pairs given), rotation about
/// `centre_arcsec`. `shift`: `d = mean(dst - src)`. `rshift`: closed-form Procrustes without scale,
/// `theta = atan2(sum(a' x b'), sum(a' . b'))` on the centred point sets, `d = mean(b) - R mean(a)`.
///
/// # Errors
/// [`MatchError::TooFewMatches`] with fewer than 1 (`shift`) or 2 (`rshift`) pairs.
///
/// # Panics
/// If `src` and `dst` differ in length.
pub fn fit_transform(
    src: &[[f64; 2]],
    dst: &[[f64; 2]],
    geometry: FitGeometry,
    centre_arcsec: [f64; 2],
) -> Result<Transform, MatchError> {
    fit_transform_weighted(src, dst, &vec![1.0; src.len()], geometry, centre_arcsec)
}

/// [`fit_transform`] with a weight per pair (the inverse variance of its position difference per
/// axis): weighted means and weighted cross sums (weighted Procrustes). Unit weights give exactly
/// the unweighted fit.
///
/// # Errors
/// [`MatchError::TooFewMatches`] as [`fit_transform`].
///
/// # Panics
/// If `src`, `dst` and `weights` differ in length.
pub fn fit_transform_weighted(
    src: &[[f64; 2]],
    dst: &[[f64; 2]],
    weights: &[f64],
    geometry: FitGeometry,
    centre_arcsec: [f64; 2],
) -> Result<Transform, MatchError> {
    assert_eq!(src.len(), dst.len(), "fit_transform: src and dst lengths differ");
    assert_eq!(src.len(), weights.len(), "fit_transform: weights and points differ in length");
    let needed = if geometry == FitGeometry::RShift { 2 } else { 1 };
    if src.len() < needed {
        return Err(MatchError::TooFewMatches { found: src.len(), needed });
    }
    let n: f64 = weights.iter().sum();
    let [cx, cy] = centre_arcsec;
    let (mut ax, mut ay, mut bx, mut by) = (0.0, 0.0, 0.0, 0.0);
    for ((a, b), w) in src.iter().zip(dst).zip(weights) {
        ax += w * (a[0] - cx);
        ay += w * (a[1] - cy);
        bx += w * (b[0] - cx);
        by += w * (b[1] - cy);
    }
    let (ax, ay, bx, by) = (ax / n, ay / n, bx / n, by / n);
    let theta = match geometry {
        FitGeometry::Shift => 0.0,
        FitGeometry::RShift => {
            let (mut sc, mut ss) = (0.0, 0.0);
            for ((a, b), w) in src.iter().zip(dst).zip(weights) {
                let (u, v) = (a[0] - cx - ax, a[1] - cy - ay);
                let (p, q) = (b[0] - cx - bx, b[1] - cy - by);
                sc += w * (u * p + v * q);
                ss += w * (u * q - v * p);
            }
            ss.atan2(sc)
        }
    };
    let (s, c) = theta.sin_cos();
    let shift = [bx - (c * ax - s * ay), by - (s * ax + c * ay)];
    Ok(Transform { shift_arcsec: shift, rotation_deg: theta.to_degrees(), centre_arcsec })
}

/// The per-axis variance model `r^2 / 2 = a + b e^2` of matched residuals `r` against the image
/// sources' centroid errors `e` (arcsec), fitted by least squares with `a, b >= 0`: `a` is what the
/// image errors do not explain (the reference catalogue's noise, residual distortion), `b` rescales
/// the centroid errors. Returns `(a, b)`; `a` is kept above `(1e-4 arcsec)^2`.
pub fn fit_error_model(r2: &[f64], e2: &[f64]) -> (f64, f64) {
    let n = r2.len().max(1) as f64;
    let y: Vec<f64> = r2.iter().map(|r| r / 2.0).collect();
    let (my, mx) = (y.iter().sum::<f64>() / n, e2.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for (yi, xi) in y.iter().zip(e2) {
        sxy += (xi - mx) * (yi - my);
        sxx += (xi - mx) * (xi - mx);
    }
    let floor = 1e-8;
    let (mut a, mut b) = if sxx > 0.0 { (my - sxy / sxx * mx, sxy / sxx) } else { (my, 0.0) };
    if b < 0.0 {
        (a, b) = (my, 0.0);
    }
    if a < floor {
        // all of it in the centroid errors: b from the origin-constrained fit
        let sx2: f64 = e2.iter().map(|x| x * x).sum();
        let sxy0: f64 = y.iter().zip(e2).map(|(yi, xi)| yi * xi).sum();
        a = floor;
        b = if sx2 > 0.0 { ((sxy0 - floor * mx * n) / sx2).max(0.0) } else { 0.0 };
    }
    (a, b)
}

// ----------------------------------------------------------------------------- matching

/// A uniform grid of cell `cell` over points, for radius queries.
struct Grid<'a> {
    cell: f64,
    map: HashMap<(i64, i64), Vec<usize>>,
    pts: &'a [[f64; 2]],
}

impl<'a> Grid<'a> {
    fn new(pts: &'a [[f64; 2]], cell: f64) -> Self {
        let mut map: HashMap<(i64, i64), Vec<usize>> = HashMap::new();
        for (j, p) in pts.iter().enumerate() {
            if p[0].is_finite() && p[1].is_finite() {
                map.entry(Self::key(p, cell)).or_default().push(j);
            }
        }
        Self { cell, map, pts }
    }
    fn key(p: &[f64; 2], cell: f64) -> (i64, i64) {
        ((p[0] / cell).floor() as i64, (p[1] / cell).floor() as i64)
    }
    /// Indices within `r` of `p`, ascending. `r` must be <= `cell`.
    fn within(&self, p: [f64; 2], r: f64, out: &mut Vec<usize>) {
        out.clear();
        let (kx, ky) = Self::key(&p, self.cell);
        for dy in -1..=1 {
            for dx in -1..=1 {
                if let Some(v) = self.map.get(&(kx + dx, ky + dy)) {
                    for &j in v {
                        let q = self.pts[j];
                        if (q[0] - p[0]).powi(2) + (q[1] - p[1]).powi(2) <= r * r {
                            out.push(j);
                        }
                    }
                }
            }
        }
        out.sort_unstable();
    }
}

fn finite(p: &[f64; 2]) -> bool {
    p[0].is_finite() && p[1].is_finite()
}

/// `ln k!`, exact sum below 256, Stirling series above.
fn ln_factorial(k: u64) -> f64 {
    if k < 256 {
        (2..=k).map(|i| (i as f64).ln()).sum()
    } else {
        let x = k as f64 + 1.0;
        (x - 0.5) * x.ln() - x + 0.5 * (2.0 * std::f64::consts::PI).ln() + 1.0 / (12.0 * x) - 1.0 / (360.0 * x.powi(3))
    }
}

/// `P(X >= k)` for `X ~ Poisson(lambda)`; 1 when `k <= lambda` is not needed exactly.
fn poisson_sf(k: usize, lambda: f64) -> f64 {
    if k == 0 {
        return 1.0;
    }
    if lambda <= 0.0 {
        return 0.0;
    }
    if (k as f64) <= lambda + 1.0 {
        return 1.0;
    }
    // Upper tail summed from k; terms decrease since k > lambda.
    let mut term = (-lambda + k as f64 * lambda.ln() - ln_factorial(k as u64)).exp();
    let mut sum = 0.0;
    let mut i = k;
    while term > 1e-300 && term > 1e-17 * sum {
        sum += term;
        i += 1;
        term *= lambda / i as f64;
    }
    sum.min(1.0)
}

/// The 2-D histogram search of the shift (see the module docs). `img` are already mapped by the
/// initial transform. Returns the peak with its shift relative to the mapped positions.
fn histogram_search(img: &[[f64; 2]], refg: &Grid, p: &MatchParams) -> Result<HistogramPeak, MatchError> {
    let r = p.search_radius_arcsec;
    let b = p.bin();
    let nb = (2.0 * r / b).ceil() as usize;
    let mut hist = vec![0u32; nb * nb];
    let mut votes: Vec<(usize, [f64; 2])> = Vec::new(); // (bin index, offset)
    let mut near = Vec::new();
    for q in img.iter().filter(|q| finite(q)) {
        refg.within(*q, r, &mut near);
        for &j in &near {
            let d = [refg.pts[j][0] - q[0], refg.pts[j][1] - q[1]];
            let ix = (((d[0] + r) / b).floor() as usize).min(nb - 1);
            let iy = (((d[1] + r) / b).floor() as usize).min(nb - 1);
            hist[iy * nb + ix] += 1;
            votes.push((iy * nb + ix, d));
        }
    }
    let total = votes.len();
    if total == 0 {
        return Err(MatchError::NoOverlap { search_radius_arcsec: r });
    }
    // Highest 3x3 block (first in raster order on ties).
    let (mut best, mut by, mut bx) = (0u32, 0usize, 0usize);
    for iy in 0..nb {
        for ix in 0..nb {
            let mut s = 0;
            for yy in iy.saturating_sub(1)..(iy + 2).min(nb) {
                for xx in ix.saturating_sub(1)..(ix + 2).min(nb) {
                    s += hist[yy * nb + xx];
                }
            }
            if s > best {
                (best, by, bx) = (s, iy, ix);
            }
        }
    }
    let peak = best as usize;
    // Background: the other votes spread over the search disc, per 3x3 block.
    let disc = std::f64::consts::PI * r * r;
    let block = (9.0 * b * b).min(disc);
    let background = (total - peak) as f64 * block / (disc - block).max(block);
    let n_trials = (disc / (b * b)).max(1.0);
    let false_alarm = (n_trials * poisson_sf(peak, background)).min(1.0);
    if false_alarm > p.max_false_alarm {
        return Err(MatchError::NoSignificantPeak {
            peak,
            background,
            false_alarm,
            max_false_alarm: p.max_false_alarm,
        });
    }
    if peak < p.min_matches {
        return Err(MatchError::TooFewMatches { found: peak, needed: p.min_matches });
    }
    let in_block = |k: usize| (k / nb).abs_diff(by) <= 1 && (k % nb).abs_diff(bx) <= 1;
    let (mut sx, mut sy, mut n) = (0.0, 0.0, 0.0);
    for (k, d) in &votes {
        if in_block(*k) {
            sx += d[0];
            sy += d[1];
            n += 1.0;
        }
    }
    Ok(HistogramPeak { votes: peak, background, false_alarm, shift_arcsec: [sx / n, sy / n] })
}

/// One-to-one nearest-neighbour pairs `(image, reference)` within `tol` of `T(img)`, by image index.
fn match_pairs(img: &[[f64; 2]], refg: &Grid, t: &Transform, tol: f64) -> Vec<(usize, usize)> {
    let mut best_for_ref: HashMap<usize, (f64, usize)> = HashMap::new();
    let mut near = Vec::new();
    for (i, q) in img.iter().enumerate().filter(|(_, q)| finite(q)) {
        let m = t.apply(*q);
        refg.within(m, tol, &mut near);
        let nn = near
            .iter()
            .map(|&j| ((refg.pts[j][0] - m[0]).powi(2) + (refg.pts[j][1] - m[1]).powi(2), j))
            .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        if let Some((d2, j)) = nn {
            let e = best_for_ref.entry(j).or_insert((d2, i));
            if d2 < e.0 {
                *e = (d2, i);
            }
        }
    }
    let mut pairs: Vec<(usize, usize)> = best_for_ref.into_iter().map(|(j, (_, i))| (i, j)).collect();
    pairs.sort_unstable();
    pairs
}

/// Residual statistics of `pairs` under `t`: per-pair |r|^2, 2-D rms, per-axis rms.
fn residuals(
    img: &[[f64; 2]],
    refs: &[[f64; 2]],
    pairs: &[(usize, usize)],
    t: &Transform,
) -> (Vec<f64>, f64, [f64; 2]) {
    let mut r2 = Vec::with_capacity(pairs.len());
    let (mut sx, mut sy) = (0.0, 0.0);
    for &(i, j) in pairs {
        let m = t.apply(img[i]);
        let (dx, dy) = (refs[j][0] - m[0], refs[j][1] - m[1]);
        sx += dx * dx;
        sy += dy * dy;
        r2.push(dx * dx + dy * dy);
    }
    let n = pairs.len().max(1) as f64;
    (r2, ((sx + sy) / n).sqrt(), [(sx / n).sqrt(), (sy / n).sqrt()])
}

/// The pair weights `1 / (a + b e_i^2)` of the error model fitted to the residuals of `pairs` under
/// `t` (see [`fit_error_model`]); all ones without image errors.
fn pair_weights(
    img: &[[f64; 2]],
    img_err: Option<&[f64]>,
    refs: &[[f64; 2]],
    pairs: &[(usize, usize)],
    t: &Transform,
) -> (Vec<f64>, Option<(f64, f64)>) {
    let Some(err) = img_err else { return (vec![1.0; pairs.len()], None) };
    let (r2, _, _) = residuals(img, refs, pairs, t);
    let e2: Vec<f64> = pairs.iter().map(|&(i, _)| err[i] * err[i]).collect();
    let (a, b) = fit_error_model(&r2, &e2);
    (e2.iter().map(|e| 1.0 / (a + b * e)).collect(), Some((a, b)))
}

/// Fit with iterative clipping; returns the transform and the kept pairs. With image errors, each
/// fit is weighted by the error model of the previous fit's residuals (three passes).
fn clipped_fit(
    img: &[[f64; 2]],
    img_err: Option<&[f64]>,
    refs: &[[f64; 2]],
    mut pairs: Vec<(usize, usize)>,
    p: &MatchParams,
) -> Result<(Transform, Vec<(usize, usize)>), MatchError> {
    let centre = p.initial.centre_arcsec;
    let fit = |pairs: &[(usize, usize)]| -> Result<Transform, MatchError> {
        let src: Vec<[f64; 2]> = pairs.iter().map(|&(i, _)| img[i]).collect();
        let dst: Vec<[f64; 2]> = pairs.iter().map(|&(_, j)| refs[j]).collect();
        let mut t = fit_transform(&src, &dst, p.geometry, centre)?;
        if img_err.is_some() {
            for _ in 0..3 {
                let (w, _) = pair_weights(img, img_err, refs, pairs, &t);
                t = fit_transform_weighted(&src, &dst, &w, p.geometry, centre)?;
            }
        }
        Ok(t)
    };
    let mut t = fit(&pairs)?;
    for _ in 0..p.n_clip {
        let (r2, rms, _) = residuals(img, refs, &pairs, &t);
        let lim2 = (p.clip_sigma * rms).powi(2);
        let kept: Vec<(usize, usize)> = pairs.iter().zip(&r2).filter(|(_, &r)| r <= lim2).map(|(pr, _)| *pr).collect();
        if kept.len() == pairs.len() {
            break;
        }
        pairs = kept;
        t = fit(&pairs)?;
    }
    Ok((t, pairs))
}

/// Match the `image` catalogue to the `reference` catalogue and fit the transform image ->
/// reference (see the module docs). Positions are `[x, y]` in arcsec in one tangent-plane frame;
/// non-finite positions are ignored (indices refer to the slices as given).
///
/// # Errors
/// [`MatchError::Param`], [`MatchError::TooFewSources`], [`MatchError::NoOverlap`],
/// [`MatchError::NoSignificantPeak`], [`MatchError::TooFewMatches`] and
/// [`MatchError::NotSignificant`], each a failure the caller reports (keeping its previous WCS).
pub fn match_catalogs(image: &[[f64; 2]], reference: &[[f64; 2]], p: &MatchParams) -> Result<MatchResult, MatchError> {
    match_catalogs_weighted(image, None, reference, p)
}

/// [`match_catalogs`] with the image sources' centroid errors `image_err` (arcsec per axis, same
/// order as `image`): the fits are weighted by `1 / (a + b e^2)`, `a` and `b` fitted to the matched
/// residuals ([`fit_error_model`]: `a` absorbs the reference catalogue's noise), and the reported
/// errors are the weighted ones. Faint sources with poor centroids then count for what they are
/// worth; with `None` it is exactly [`match_catalogs`].
///
/// # Errors
/// As [`match_catalogs`].
///
/// # Panics
/// If `image_err` is given with another length than `image`.
pub fn match_catalogs_weighted(
    image: &[[f64; 2]],
    image_err: Option<&[f64]>,
    reference: &[[f64; 2]],
    p: &MatchParams,
) -> Result<MatchResult, MatchError> {
    if let Some(e) = image_err {
        assert_eq!(e.len(), image.len(), "match_catalogs_weighted: image_err and image differ in length");
    }
    p.validate()?;
    let n_img = image.iter().filter(|q| finite(q)).count();
    let n_ref = reference.iter().filter(|q| finite(q)).count();
    if n_img < p.min_matches {
        return Err(MatchError::TooFewSources { catalog: Catalog::Image, found: n_img, needed: p.min_matches });
    }
    if n_ref < p.min_matches {
        return Err(MatchError::TooFewSources { catalog: Catalog::Reference, found: n_ref, needed: p.min_matches });
    }
    let tol = p.tolerance_arcsec;
    let mut t = p.initial;
    let mut peak = None;
    if p.use_histogram {
        let mapped: Vec<[f64; 2]> = image.iter().map(|q| if finite(q) { t.apply(*q) } else { *q }).collect();
        let g = Grid::new(reference, p.search_radius_arcsec);
        let mut pk = histogram_search(&mapped, &g, p)?;
        t.shift_arcsec = [t.shift_arcsec[0] + pk.shift_arcsec[0], t.shift_arcsec[1] + pk.shift_arcsec[1]];
        pk.shift_arcsec = t.shift_arcsec;
        peak = Some(pk);
    }
    let g = Grid::new(reference, tol);
    let mut pairs = match_pairs(image, &g, &t, tol);
    let mut kept = Vec::new();
    let mut n_matched = pairs.len();
    for _ in 0..p.max_iterations {
        if pairs.len() < p.min_matches {
            return Err(MatchError::TooFewMatches { found: pairs.len(), needed: p.min_matches });
        }
        let (tn, kn) = clipped_fit(image, image_err, reference, pairs.clone(), p)?;
        t = tn;
        kept = kn;
        n_matched = pairs.len();
        let again = match_pairs(image, &g, &t, tol);
        if again == pairs {
            break;
        }
        pairs = again;
    }
    if kept.len() < p.min_matches {
        return Err(MatchError::TooFewMatches { found: kept.len(), needed: p.min_matches });
    }

    // Chance coincidences: reference density over its bounding box times the tolerance disc, for
    // every image source that lands inside that box.
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for q in reference.iter().filter(|q| finite(q)) {
        (x0, x1, y0, y1) = (x0.min(q[0]), x1.max(q[0]), y0.min(q[1]), y1.max(q[1]));
    }
    let area = ((x1 - x0) * (y1 - y0)).max(std::f64::consts::PI * tol * tol);
    let inside = image
        .iter()
        .filter(|q| finite(q))
        .map(|q| t.apply(*q))
        .filter(|m| m[0] >= x0 - tol && m[0] <= x1 + tol && m[1] >= y0 - tol && m[1] <= y1 + tol)
        .count();
    let expected_chance = inside as f64 * (n_ref as f64 / area) * std::f64::consts::PI * tol * tol;
    let false_alarm = poisson_sf(kept.len(), expected_chance);
    if false_alarm > p.max_false_alarm {
        return Err(MatchError::NotSignificant { found: kept.len(), expected_chance, false_alarm });
    }
    let (_, rms, rms_xy) = residuals(image, reference, &kept, &t);
    let n = kept.len() as f64;
    let mut shift_err_arcsec = [rms_xy[0] / n.sqrt(), rms_xy[1] / n.sqrt()];
    let (w, model) = pair_weights(image, image_err, reference, &kept, &t);
    let rotation_err_deg = if model.is_some() {
        // inverse-variance weights: var(shift) = 1 / sum w, var(theta) = 1 / sum w |p - mean_w|^2
        let sw: f64 = w.iter().sum();
        shift_err_arcsec = [sw.recip().sqrt(); 2];
        if p.geometry == FitGeometry::RShift {
            let (mx, my) = kept
                .iter()
                .zip(&w)
                .fold((0.0, 0.0), |(a, b), (&(i, _), wi)| (a + wi * image[i][0] / sw, b + wi * image[i][1] / sw));
            let spread: f64 = kept
                .iter()
                .zip(&w)
                .map(|(&(i, _), wi)| wi * ((image[i][0] - mx).powi(2) + (image[i][1] - my).powi(2)))
                .sum();
            spread.recip().sqrt().to_degrees()
        } else {
            0.0
        }
    } else if p.geometry == FitGeometry::RShift {
        let (mx, my) = kept.iter().fold((0.0, 0.0), |(a, b), &(i, _)| (a + image[i][0] / n, b + image[i][1] / n));
        let spread: f64 = kept.iter().map(|&(i, _)| (image[i][0] - mx).powi(2) + (image[i][1] - my).powi(2)).sum();
        (rms / 2f64.sqrt() / spread.sqrt()).to_degrees()
    } else {
        0.0
    };
    Ok(MatchResult {
        shift_err_arcsec,
        rotation_err_deg,
        transform: t,
        geometry: p.geometry,
        n_matches: kept.len(),
        rms_arcsec: rms,
        rms_xy_arcsec: rms_xy,
        n_clipped: n_matched - kept.len(),
        pairs: kept,
        peak,
        expected_chance,
    })
}

// ----------------------------------------------------------------------------- groups

/// The sources of one exposure (or detector), projected into the common frame, and its group
/// (visit) number.
#[derive(Debug, Clone, Copy)]
pub struct ExposureSources<'a> {
    /// Group (visit) this exposure moves with.
    pub group: usize,
    /// Positions `[x, y]`, arcsec, in the common tangent-plane frame.
    pub positions: &'a [[f64; 2]],
}

/// The fit of one group.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupFit {
    /// The group number.
    pub group: usize,
    /// For every position of the concatenated group list, `(exposure index, source index)`; the
    /// image indices of `result.pairs` refer to this list.
    pub origin: Vec<(usize, usize)>,
    /// The match of the group's concatenated sources to the reference, or why it failed.
    pub result: Result<MatchResult, MatchError>,
}

/// One rigid transform per group (all exposures and detectors of a visit move together, pjpipe's
/// `group_dithers`): the sources of the group's exposures are concatenated and matched to
/// `reference` with [`match_catalogs`]. Groups are solved in parallel (rayon) and returned in
/// ascending group number; the result does not depend on the thread count. A source seen in two
/// overlapping exposures of one group is matched once (one-to-one matching keeps the closer).
pub fn match_groups(exposures: &[ExposureSources], reference: &[[f64; 2]], p: &MatchParams) -> Vec<GroupFit> {
    let mut groups: Vec<usize> = exposures.iter().map(|e| e.group).collect();
    groups.sort_unstable();
    groups.dedup();
    groups
        .par_iter()
        .map(|&g| {
            let mut pos = Vec::new();
            let mut origin = Vec::new();
            for (e, ex) in exposures.iter().enumerate().filter(|(_, ex)| ex.group == g) {
                for (k, q) in ex.positions.iter().enumerate() {
                    pos.push(*q);
                    origin.push((e, k));
                }
            }
            GroupFit { group: g, origin, result: match_catalogs(&pos, reference, p) }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::sources::{find_sources, FindParams};
    use ndarray::Array2;

    use crate::kernels::test_rng::{add_star, Rng};

    fn inverse(t: &Transform) -> Transform {
        // p = c + R(q - c) + d  <=>  q = c + R^-1 (p - c - d) = c + R^-1 (p - c) - R^-1 d
        let inv = Transform { shift_arcsec: [0.0, 0.0], rotation_deg: -t.rotation_deg, centre_arcsec: t.centre_arcsec };
        let m = inv.matrix();
        let d = t.shift_arcsec;
        Transform { shift_arcsec: [-(m[0][0] * d[0] + m[0][1] * d[1]), -(m[1][0] * d[0] + m[1][1] * d[1])], ..inv }
    }

    #[test]
    fn poisson_tail_against_direct_sums() {
        // Values from summing the upper tail term by term with lgamma (Python).
        assert!((poisson_sf(3, 1.0) - 0.08030139707139416).abs() < 1e-14);
        assert!((poisson_sf(10, 2.0) / 4.649807501726388e-05 - 1.0).abs() < 1e-10);
        assert!((poisson_sf(400, 300.0) / 2.2066520142884778e-08 - 1.0).abs() < 1e-8);
        assert_eq!(poisson_sf(0, 5.0), 1.0);
        assert_eq!(poisson_sf(2, 0.0), 0.0);
    }

    #[test]
    fn fit_transform_by_hand() {
        // 90 degrees about (0, 0) then (1, 2): (1,0)->(1,3), (0,1)->(0,2), (-1,0)->(1,1).
        let src = [[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]];
        let dst = [[1.0, 3.0], [0.0, 2.0], [1.0, 1.0]];
        let t = fit_transform(&src, &dst, FitGeometry::RShift, [0.0, 0.0]).unwrap();
        assert!((t.rotation_deg - 90.0).abs() < 1e-12);
        assert!((t.shift_arcsec[0] - 1.0).abs() < 1e-12 && (t.shift_arcsec[1] - 2.0).abs() < 1e-12);
        // The same map about another centre: same rotation, d = (1,2) + R c - c.
        let t5 = fit_transform(&src, &dst, FitGeometry::RShift, [5.0, 5.0]).unwrap();
        assert!((t5.rotation_deg - 90.0).abs() < 1e-12);
        for (a, b) in src.iter().zip(&dst) {
            let m = t5.apply(*a);
            assert!((m[0] - b[0]).abs() < 1e-12 && (m[1] - b[1]).abs() < 1e-12);
        }
        // Shift only: the mean offset.
        let s = fit_transform(&src, &dst, FitGeometry::Shift, [0.0, 0.0]).unwrap();
        assert_eq!(s.rotation_deg, 0.0);
        assert!((s.shift_arcsec[0] - 2.0 / 3.0).abs() < 1e-12 && (s.shift_arcsec[1] - 5.0 / 3.0).abs() < 1e-12);
        assert!(matches!(
            fit_transform(&src[..1], &dst[..1], FitGeometry::RShift, [0.0, 0.0]),
            Err(MatchError::TooFewMatches { found: 1, needed: 2 })
        ));
        // The inverse helper used below.
        let i = inverse(&t5);
        let q = i.apply(t5.apply([3.0, -7.0]));
        assert!((q[0] - 3.0).abs() < 1e-12 && (q[1] + 7.0).abs() < 1e-12);
    }

    /// Reference: `n` stars uniform in +-60". Image: a random 70% of them mapped by the inverse of
    /// `truth` with `noise` arcsec per axis, plus 10% outliers; returns (image, reference, truth
    /// index of every image source or usize::MAX).
    fn synthetic(seed: u64, n: usize, truth: &Transform, noise: f64) -> (Vec<[f64; 2]>, Vec<[f64; 2]>, Vec<usize>) {
        let mut r = Rng(seed);
        let refs: Vec<[f64; 2]> = (0..n).map(|_| [120.0 * r.uniform() - 60.0, 120.0 * r.uniform() - 60.0]).collect();
        let inv = inverse(truth);
        let mut img = Vec::new();
        let mut idx = Vec::new();
        for (j, q) in refs.iter().enumerate() {
            if r.uniform() < 0.7 {
                let m = inv.apply(*q);
                img.push([m[0] + noise * r.normal(), m[1] + noise * r.normal()]);
                idx.push(j);
            }
        }
        for _ in 0..img.len() / 10 {
            img.push([120.0 * r.uniform() - 60.0, 120.0 * r.uniform() - 60.0]);
            idx.push(usize::MAX);
        }
        (img, refs, idx)
    }

    /// PHANGS-like two iterations: a wide shift search, then a strict rshift fit from it.
    fn two_step(img: &[[f64; 2]], refs: &[[f64; 2]], centre: [f64; 2], tol2: f64) -> Result<MatchResult, MatchError> {
        let p1 = MatchParams { initial: Transform::identity(centre), ..MatchParams::default() };
        let r1 = match_catalogs(img, refs, &p1)?;
        let p2 = MatchParams {
            geometry: FitGeometry::RShift,
            use_histogram: false,
            tolerance_arcsec: tol2,
            initial: r1.transform,
            ..MatchParams::default()
        };
        match_catalogs(img, refs, &p2)
    }

    #[test]
    fn error_model_recovers_its_parameters() {
        // r^2 / 2 = a + b e^2 exactly
        let e2: Vec<f64> = (0..50).map(|k| (1e-3 * k as f64).powi(2)).collect();
        let r2: Vec<f64> = e2.iter().map(|e| 2.0 * (1e-4 + 4.0 * e)).collect();
        let (a, b) = fit_error_model(&r2, &e2);
        assert!((a - 1e-4).abs() < 1e-15 && (b - 4.0).abs() < 1e-10, "{a} {b}");
        // residuals that fall with the errors: no centroid term, the mean variance
        let r2: Vec<f64> = e2.iter().map(|e| 2.0 * (1e-4 - 0.01 * e)).collect();
        let (a, b) = fit_error_model(&r2, &e2);
        assert_eq!(b, 0.0);
        assert!((a - r2.iter().sum::<f64>() / 100.0).abs() < 1e-15);
    }

    #[test]
    fn weighted_fit_uses_the_centroid_errors_and_reports_its_scatter() {
        // Half the image sources have 3 mas centroids, half 40 mas; the reference has 10 mas noise.
        // Over 200 realisations: the weighted rotation scatters less than the unweighted one, and
        // its reported error matches its scatter.
        let truth = Transform { shift_arcsec: [0.1, 0.2], rotation_deg: 0.01, centre_arcsec: [0.0, 0.0] };
        let inv = inverse(&truth);
        let (mut su, mut sw, mut rep) = (0.0, 0.0, 0.0);
        let trials = 200;
        for seed in 0..trials {
            let mut r = Rng(1000 + seed);
            let (mut img, mut err, mut refs) = (vec![], vec![], vec![]);
            for k in 0..160 {
                let q = [120.0 * r.uniform() - 60.0, 120.0 * r.uniform() - 60.0];
                let e = if k % 2 == 0 { 0.003 } else { 0.040 };
                let m = inv.apply(q);
                img.push([m[0] + e * r.normal(), m[1] + e * r.normal()]);
                err.push(e);
                refs.push([q[0] + 0.01 * r.normal(), q[1] + 0.01 * r.normal()]);
            }
            let p = MatchParams {
                geometry: FitGeometry::RShift,
                use_histogram: false,
                initial: Transform { rotation_deg: 0.0, ..truth },
                tolerance_arcsec: 0.3,
                clip_sigma: 10.0,
                ..MatchParams::default()
            };
            let u = match_catalogs(&img, &refs, &p).unwrap();
            let w = match_catalogs_weighted(&img, Some(&err), &refs, &p).unwrap();
            assert_eq!(u.n_matches, 160);
            su += (u.transform.rotation_deg - 0.01).powi(2);
            sw += (w.transform.rotation_deg - 0.01).powi(2);
            rep += w.rotation_err_deg.powi(2);
        }
        let n = trials as f64;
        let (su, sw, rep) = ((su / n).sqrt(), (sw / n).sqrt(), (rep / n).sqrt());
        eprintln!("rotation scatter: unweighted {su:.2e} deg, weighted {sw:.2e} deg (reported {rep:.2e})");
        assert!(sw < 0.75 * su, "weighting did not help: {sw} vs {su}");
        assert!((rep / sw - 1.0).abs() < 0.2, "reported {rep} vs scatter {sw}");
    }

    #[test]
    fn recovers_shift_and_rotation_with_outliers_and_incompleteness() {
        let truth = Transform { shift_arcsec: [0.15, -0.08], rotation_deg: 0.05, centre_arcsec: [0.0, 0.0] };
        let (img, refs, idx) = synthetic(5, 300, &truth, 0.002);
        let r = two_step(&img, &refs, [0.0, 0.0], 0.1).unwrap();
        let e_shift = ((r.transform.shift_arcsec[0] - 0.15).hypot(r.transform.shift_arcsec[1] + 0.08)) * 1e3;
        let e_rot = (r.transform.rotation_deg - 0.05).abs();
        eprintln!(
            "n {} clipped {} rms {:.2} mas, shift error {e_shift:.3} mas, rotation error {e_rot:.2e} deg, chance {:.3}",
            r.n_matches,
            r.n_clipped,
            r.rms_arcsec * 1e3,
            r.expected_chance
        );
        assert!(e_shift < 1.0);
        assert!(e_rot < 5e-4);
        // Every reported pair is a true pair; every true pair is found.
        assert!(r.pairs.iter().all(|&(i, j)| idx[i] == j));
        assert_eq!(r.n_matches, idx.iter().filter(|&&j| j != usize::MAX).count());
        // Step 1 alone (shift) gets the shift to the rotation's lever arm and reports its peak.
        let p1 = MatchParams::default();
        let r1 = match_catalogs(&img, &refs, &p1).unwrap();
        let pk = r1.peak.unwrap();
        eprintln!("step 1: peak {} votes over {:.3}, false alarm {:.1e}", pk.votes, pk.background, pk.false_alarm);
        assert!(pk.false_alarm < 1e-30);
        assert!((r1.transform.shift_arcsec[0] - 0.15).abs() < 0.01);
    }

    #[test]
    fn wrong_and_disjoint_catalogues_fail() {
        let truth = Transform { shift_arcsec: [0.15, -0.08], rotation_deg: 0.05, centre_arcsec: [0.0, 0.0] };
        let (_, refs, _) = synthetic(5, 300, &truth, 0.002);
        for seed in 100..120 {
            // An unrelated catalogue over the same field.
            let (wrong, _, _) = synthetic(seed, 300, &truth, 0.002);
            match match_catalogs(&wrong, &refs, &MatchParams::default()) {
                Err(MatchError::NoSignificantPeak { peak, background, false_alarm, .. }) => {
                    if seed == 100 {
                        eprintln!("wrong: peak {peak} over {background:.2}, false alarm {false_alarm:.2}")
                    }
                }
                other => panic!("seed {seed}: {other:?}"),
            }
            // Without the histogram: too few or insignificant matches, never success.
            let p = MatchParams { use_histogram: false, geometry: FitGeometry::RShift, ..MatchParams::default() };
            let e = match_catalogs(&wrong, &refs, &p).unwrap_err();
            assert!(matches!(e, MatchError::TooFewMatches { .. } | MatchError::NotSignificant { .. }), "{e:?}");
        }
        // A catalogue of another field.
        let far: Vec<[f64; 2]> = refs.iter().map(|q| [q[0] + 500.0, q[1]]).collect();
        assert_eq!(
            match_catalogs(&far, &refs, &MatchParams::default()),
            Err(MatchError::NoOverlap { search_radius_arcsec: 2.0 })
        );
        // Three common stars among unrelated ones: too few matches, said as such.
        let mut r = Rng(9);
        let mut few: Vec<[f64; 2]> = refs[..3].to_vec();
        few.extend((0..20).map(|_| [120.0 * r.uniform() - 60.0, 120.0 * r.uniform() - 60.0]));
        // With the histogram, three coincidences among chance pairs are not a significant peak.
        let e = match_catalogs(&few, &refs, &MatchParams::default()).unwrap_err();
        eprintln!("three common stars: {e}");
        assert!(matches!(e, MatchError::NoSignificantPeak { peak: 3, .. }), "{e:?}");
        let p = MatchParams { use_histogram: false, ..MatchParams::default() };
        assert!(matches!(match_catalogs(&few, &refs, &p), Err(MatchError::TooFewMatches { found: 3, needed: 5 })));
        // Empty or tiny catalogues.
        assert!(matches!(
            match_catalogs(&[], &refs, &MatchParams::default()),
            Err(MatchError::TooFewSources { catalog: Catalog::Image, found: 0, needed: 5 })
        ));
        assert!(matches!(
            match_catalogs(&refs, &refs[..2], &MatchParams::default()),
            Err(MatchError::TooFewSources { catalog: Catalog::Reference, found: 2, needed: 5 })
        ));
        let bad = MatchParams { tolerance_arcsec: -1.0, ..MatchParams::default() };
        assert!(matches!(match_catalogs(&refs, &refs, &bad), Err(MatchError::Param { name: "tolerance_arcsec", .. })));
    }

    #[test]
    fn groups_get_their_own_shift_and_fail_alone() {
        let refs = synthetic(5, 300, &Transform::identity([0.0, 0.0]), 0.0).1;
        let shifts = [[0.12, 0.03], [-0.2, 0.07]];
        let mut lists = Vec::new();
        for (g, s) in shifts.iter().enumerate() {
            for e in 0..2 {
                let t = Transform { shift_arcsec: *s, rotation_deg: 0.0, centre_arcsec: [0.0, 0.0] };
                lists.push((g, synthetic(5, 300, &t, 0.002).0.into_iter().skip(e * 50).take(120).collect::<Vec<_>>()));
            }
        }
        lists.push((7, synthetic(77, 300, &Transform::identity([0.0, 0.0]), 0.0).0));
        let ex: Vec<ExposureSources> = lists.iter().map(|(g, v)| ExposureSources { group: *g, positions: v }).collect();
        let out = match_groups(&ex, &refs, &MatchParams::default());
        assert_eq!(out.iter().map(|g| g.group).collect::<Vec<_>>(), vec![0, 1, 7]);
        for (g, s) in shifts.iter().enumerate() {
            let r = out[g].result.as_ref().unwrap();
            assert!(
                (r.transform.shift_arcsec[0] - s[0]).abs() < 5e-4 && (r.transform.shift_arcsec[1] - s[1]).abs() < 5e-4
            );
            assert_eq!(out[g].origin.len(), 240);
            assert!(r.pairs.iter().all(|&(i, _)| out[g].origin[i].0 / 2 == g));
        }
        assert!(matches!(out[2].result, Err(MatchError::NoSignificantPeak { .. })), "{:?}", out[2].result);
        assert_eq!(match_groups(&ex, &refs, &MatchParams::default()), out);
    }

    // ------------------------------------------------------------- end to end on rendered images

    /// Render the sky stars `stars` (pixel positions in frame A, fluxes) through `to_img` (frame A
    /// pixels -> this image's pixels) on 100 counts/px of sky, a galaxy (sigma 80 px, peak 600 at
    /// A (256, 240)), Poisson-like and read noise.
    fn render(stars: &[(f64, f64, f64)], to_img: &Transform, fwhm: f64, seed: u64) -> Array2<f32> {
        let n = 512;
        let g = to_img.apply([256.0, 240.0]);
        let mut img = Array2::from_shape_fn((n, n), |(y, x)| {
            100.0 + 600.0 * (-((x as f64 - g[0]).powi(2) + (y as f64 - g[1]).powi(2)) / (2.0 * 80.0 * 80.0)).exp()
        });
        for &(x, y, f) in stars {
            let p = to_img.apply([x, y]);
            add_star(&mut img, p[0], p[1], f, fwhm);
        }
        let mut r = Rng(seed);
        img.mapv(|v| (v + (v.max(0.0) + 25.0).sqrt() * r.normal()) as f32)
    }

    /// Relative alignment of two rendered images of one star field (the second shifted by
    /// `shift_px` and rotated by `rot_deg` about the centre), from detected sources only.
    /// Returns (alignment rms over the field in mas, rotation error in deg, matches, fit rms mas).
    fn align_rendered(scale: f64, fwhm: f64, flux_lo: f64, seed: u64) -> (f64, f64, usize, f64) {
        let mut r = Rng(seed);
        let stars: Vec<(f64, f64, f64)> = (0..150)
            .map(|_| (10.0 + 492.0 * r.uniform(), 10.0 + 492.0 * r.uniform(), flux_lo * 40f64.powf(r.uniform())))
            .collect();
        let c = [255.5, 255.5];
        let tb = Transform { shift_arcsec: [2.37, -1.61], rotation_deg: 0.05, centre_arcsec: c }; // pixels here
        let a = render(&stars, &Transform::identity(c), fwhm, seed + 1);
        let b = render(&stars, &tb, fwhm, seed + 2);
        let p = FindParams::new(fwhm);
        let sa = find_sources(a.view(), None, &p).unwrap().sources;
        let sb = find_sources(b.view(), None, &p).unwrap().sources;
        let to_arcsec =
            |s: &[crate::kernels::sources::Source]| s.iter().map(|s| [s.x * scale, s.y * scale]).collect::<Vec<_>>();
        let (qa, qb) = (to_arcsec(&sa), to_arcsec(&sb));
        let centre = [c[0] * scale, c[1] * scale];
        let fit = two_step(&qb, &qa, centre, 3.0 * scale).unwrap();
        // Truth in arcsec: B -> A is the inverse of tb (scaled).
        let tb_as =
            Transform { shift_arcsec: [2.37 * scale, -1.61 * scale], rotation_deg: 0.05, centre_arcsec: centre };
        let truth = inverse(&tb_as);
        let mut s2 = 0.0;
        let mut n = 0;
        for gy in 0..=16 {
            for gx in 0..=16 {
                let q = [gx as f64 * 32.0 * scale, gy as f64 * 32.0 * scale];
                let (u, v) = (fit.transform.apply(q), truth.apply(q));
                s2 += (u[0] - v[0]).powi(2) + (u[1] - v[1]).powi(2);
                n += 1;
            }
        }
        let rot_err = (fit.transform.rotation_deg - truth.rotation_deg).abs();
        eprintln!(
            "  estimated 1-sigma rotation {:.2e} deg, shift {:.3?} mas",
            fit.rotation_err_deg,
            fit.shift_err_arcsec.map(|v| v * 1e3)
        );
        ((s2 / n as f64).sqrt() * 1e3, rot_err, fit.n_matches, fit.rms_arcsec * 1e3)
    }

    #[test]
    fn relative_alignment_from_rendered_nircam_and_miri_images() {
        // Stars of 2000-80000 counts on 100 counts/px of sky: amplitude S/N ~30-1000 (NIRCam) and
        // ~20-700 (MIRI), the brighter part of a field, as the brightest-N cap selects.
        for (name, scale, fwhm, limit_mas) in
            [("NIRCam LW F300M", 0.063, 1.585, 5.0), ("MIRI F1000W", 0.11, 2.982, 10.0)]
        {
            let (rms, rot, n, fit_rms) = align_rendered(scale, fwhm, 2000.0, 1000);
            eprintln!(
                "{name}: field alignment rms {rms:.3} mas, rotation error {rot:.2e} deg, {n} matches, fit rms {fit_rms:.2} mas"
            );
            assert!(n >= 100);
            assert!(rms < limit_mas);
            assert!(rot < 0.002);
        }
    }

    #[test]
    fn field_without_point_sources_fails_clearly() {
        // Extended emission only: no sources, and the match says so.
        let mut img = render(&[], &Transform::identity([0.0, 0.0]), 1.6, 3);
        img.indexed_iter_mut().for_each(|((y, x), v)| {
            *v += (2000.0 * (-((x as f64 - 300.0).powi(2) + (y as f64 - 200.0).powi(2)) / 50.0).exp()) as f32
        });
        let s = find_sources(img.view(), None, &FindParams::new(1.6)).unwrap().sources;
        assert!(s.is_empty());
        let q: Vec<[f64; 2]> = s.iter().map(|s| [s.x * 0.063, s.y * 0.063]).collect();
        let refs = synthetic(5, 300, &Transform::identity([0.0, 0.0]), 0.0).1;
        assert_eq!(
            match_catalogs(&q, &refs, &MatchParams::default()),
            Err(MatchError::TooFewSources { catalog: Catalog::Image, found: 0, needed: 5 })
        );
    }
}

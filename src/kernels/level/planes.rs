//! Planes of the level matching (the `'level+slope'` option): [`Plane`] (offset and two slopes in
//! the band's plane frame), the exact fixed-point sums of one clipped least-squares plane step
//! ([`PlaneSums`], mergeable bit for bit and exported as `i64` words for an all-reduce), the
//! clipped fit of one pair ([`PlaneFit`]), and the generalised least squares of the planes per
//! image ([`solve_planes_gls`]), which weighs each pair by its plane fit's 3x3 information.
//!
//! What does not live here: the level statistic the fit starts from (`hist`, `kernels::stats`), the
//! connected components and gauges (`solve`), and the all-reduce of the sums (the `level` stage).

use nalgebra::{DMatrix, DVector};
use ndarray::{ArrayView2, Axis};
use rayon::prelude::*;

use super::solve::{canonical_edges, centre_components, components, unknown_positions, Components, Gauge};
use super::LevelError;

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

/// Planes per image from [`solve_planes_gls`].
#[derive(Debug, Clone, PartialEq)]
pub struct PlaneSolution {
    /// Plane per image to subtract (zero plane for images without used pairs).
    pub planes: Vec<Plane>,
    /// Per input pair: `plane_ij - (p_i - p_j)` coefficient-wise.
    pub residuals: Vec<Plane>,
    /// Connection structure and gauge.
    pub groups: Components,
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
/// normal matrix over `rms^2`, [`PlaneFit::normal`]). Unlike a solve with one scalar weight per
/// pair (which `info_ij = weight * identity` reproduces), a slope that a pair fixes poorly (across
/// a thin overlap strip) counts for little, and the well-fixed slope of another pair decides it.
/// Connection structure, references and gauge are those of [`solve_offsets`](super::solve_offsets)
/// with the pairs' scalar weights; each component's reduced block system is solved with Cholesky (LU if
/// it is not positive definite). If a pair's information is not finite with a positive diagonal,
/// its scalar weight times the identity is used instead.
///
/// # Errors
/// As [`solve_offsets`](super::solve_offsets) for a malformed pair or reference;
/// [`LevelError::Singular`] if a component's system cannot be solved.
///
/// # Panics
/// If `info` does not hold one matrix per pair.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::stats::{sigma_clipped_stats, ClipParams};
    use crate::kernels::test_rng::Rng;
    use ndarray::{s, Array2};

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
        // one scalar weight per pair (information = weight x identity): the scalar problem
        let scalar = solve_planes_gls(3, &pairs, &[diag(1.0, 1.0, 1.0); 3], &Gauge::Reference(vec![0])).unwrap();
        // hand solution of the scalar problem (equal weights): the error splits 1/3, 1/3, 1/3
        assert!((scalar.planes[2].slope_x - (3e-4 - 5e-3 / 3.0)).abs() < 1e-12, "{:?}", scalar.planes[2]);
        // GLS: the error is weighed by 1 against 1e10 on the other path
        assert!((gls.planes[2].slope_x - 3e-4).abs() < 1e-8, "{:?}", gls.planes[2]);
        assert!((gls.planes[1].slope_x - 1e-4).abs() < 1e-8, "{:?}", gls.planes[1]);
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
        // one scalar weight per pair: information = weight x identity
        let info: Vec<[[f64; 3]; 3]> =
            pairs.iter().map(|p| [[p.weight, 0.0, 0.0], [0.0, p.weight, 0.0], [0.0, 0.0, p.weight]]).collect();
        let sol = solve_planes_gls(5, &pairs, &info, &Gauge::Reference(vec![1])).unwrap();
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
}

//! The joint least-squares solve of every exposure's row and column stripes (issue 19's two-roll
//! case), the alternative to iterating pass A of the multi-exposure destriping.
//!
//! The data: every usable pixel of every exposure is one observation
//! `v = sky(cell) + s_row + s_col + noise` of the output-grid cell its centre falls in, where
//! `s_row` is the stripe of its (exposure, amplifier, row) and `s_col` that of its (exposure,
//! column). Eliminating the sky cell by cell (its weighted least-squares value is the weighted mean of `v - s` over the cell) leaves
//! the normal equations `H s = b` with, for every unknown `u`,
//! `(H s)_u = sum over u's observations of w (s_obs - mean_w s over the cell)` and
//! `b_u = sum over u's observations of w (v - mean_w v over the cell)`.
//! Pass A of pjpipe's multi-tile method (row medians of "exposure minus the average of all") is one
//! Jacobi step on this system; the slow convergence of its iterations on the widest stripes is the
//! slow convergence of Jacobi on the smooth modes. Here the system is solved by conjugate gradients
//! with a Jacobi preconditioner and a small ridge (`ridge x diag(H)`), which also damps the modes
//! the data hardly constrain. With exposures at one orientation every function of the sky's rows
//! that all exposures share is in the null space (no data-only method tells it from sky); with two
//! orientations only constants are for row stripes (with column stripes too, planes and
//! `x^2 + y^2` as well, which [`solve`]'s `detrend` takes out), so the full band becomes separable
//! where they overlap. `b` has
//! no component in the exact null space (it sums to 0 over each cell), so CG never excites it.
//!
//! Robustness: cells whose residual `v - s - mean` exceeds `kappa` sigma anywhere (sources the
//! nearest-cell sampling does not match between dithers, cosmic rays, which are not flagged yet at
//! this stage) are left out, sigma from the median absolute residual over all observations; the
//! clipping is redone from the full set after each solve ([`JointSystem::clip`]).
//!
//! Bit-identical for any number of ranks: the stage splits the cells between ranks (each cell's
//! observations whole on one rank, sorted), every per-unknown sum is accumulated in 2^-32 fixed
//! point (integer sums do not depend on their order) and summed over ranks by the caller's
//! `reduce`; the CG's own arithmetic runs on the full vectors, identically on every rank.
//!
//! What does not live here: reading exposures, the mapping from pixels to cells (`geom`), the
//! exchange of observations between ranks and the model's factored form ([`StripeModel`] is built
//! by the stage).
//!
//! [`StripeModel`]: super::StripeModel

use rayon::prelude::*;

/// One observation: a pixel of exposure `exp` landing in output cell `cell`, its row unknown
/// (exposure, amplifier, row) and column unknown (exposure, column), weight and value (MJy/sr,
/// earlier corrections subtracted).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct JointObs {
    /// Output-grid cell (`y * nx + x`).
    pub cell: u64,
    /// Exposure index (observations of one exposure only in a cell constrain nothing).
    pub exp: u32,
    /// Index of the row unknown.
    pub row: u32,
    /// Index of the column unknown.
    pub col: u32,
    /// Weight (> 0).
    pub w: f32,
    /// Value.
    pub v: f32,
}

/// Bytes of one encoded [`JointObs`].
pub const JOINT_OBS_BYTES: usize = 28;

impl JointObs {
    /// Append the little-endian encoding (for the exchange between ranks).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.cell.to_le_bytes());
        out.extend_from_slice(&self.exp.to_le_bytes());
        out.extend_from_slice(&self.row.to_le_bytes());
        out.extend_from_slice(&self.col.to_le_bytes());
        out.extend_from_slice(&self.w.to_le_bytes());
        out.extend_from_slice(&self.v.to_le_bytes());
    }

    /// Decode a buffer of [`JointObs::encode`]d observations (a trailing partial record is ignored).
    pub fn decode_all(buf: &[u8]) -> Vec<JointObs> {
        let u32_at = |b: &[u8], o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        buf.chunks_exact(JOINT_OBS_BYTES)
            .map(|b| JointObs {
                cell: u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
                exp: u32_at(b, 8),
                row: u32_at(b, 12),
                col: u32_at(b, 16),
                w: f32::from_bits(u32_at(b, 20)),
                v: f32::from_bits(u32_at(b, 24)),
            })
            .collect()
    }
}

/// Scale of the fixed-point sums: 2^32 (a resolution of 2.3e-10 per term).
const FIX: f64 = 4_294_967_296.0;

fn fix(x: f64) -> i64 {
    (x * FIX).round() as i64
}

/// A fixed-point vector (as exchanged by the caller's `reduce`) back to f64.
fn unfix(v: &[i64]) -> Vec<f64> {
    v.iter().map(|&x| x as f64 / FIX).collect()
}

/// The part of the joint system one rank holds: its cells' observations, sorted, and which cells
/// are in use.
#[derive(Debug, Clone)]
pub struct JointSystem {
    obs: Vec<JointObs>,
    /// Start of each cell's observations in `obs` (cells with observations of at least two
    /// exposures only), plus the end.
    starts: Vec<usize>,
    /// Per cell: kept by the clipping.
    active: Vec<bool>,
    /// Number of unknowns.
    n: usize,
}

/// Bins of the |residual| histogram: 64 per octave from 2^-40.
const HIST_PER_OCTAVE: f64 = 64.0;
const HIST_LOW_LOG2: f64 = -40.0;
/// Number of bins of [`JointSystem::abs_residual_histogram`].
pub const HIST_BINS: usize = 64 * 70;

impl JointSystem {
    /// The system over `obs` (any order) with `n` unknowns; cells observed by one exposure only are
    /// dropped.
    ///
    /// # Panics
    /// If an observation's unknown index is `>= n`.
    pub fn new(mut obs: Vec<JointObs>, n: usize) -> Self {
        assert!(obs.iter().all(|o| (o.row as usize) < n && (o.col as usize) < n), "joint: unknown out of range");
        obs.par_sort_unstable_by(|a, b| {
            (a.cell, a.exp, a.row, a.col, a.w.to_bits(), a.v.to_bits()).cmp(&(
                b.cell,
                b.exp,
                b.row,
                b.col,
                b.w.to_bits(),
                b.v.to_bits(),
            ))
        });
        let mut kept = Vec::with_capacity(obs.len());
        let mut starts = vec![];
        let mut i = 0;
        while i < obs.len() {
            let mut j = i + 1;
            while j < obs.len() && obs[j].cell == obs[i].cell {
                j += 1;
            }
            if obs[i].exp != obs[j - 1].exp {
                starts.push(kept.len());
                kept.extend_from_slice(&obs[i..j]);
            }
            i = j;
        }
        starts.push(kept.len());
        let active = vec![true; starts.len() - 1];
        JointSystem { obs: kept, starts, active, n }
    }

    /// Number of unknowns.
    pub fn unknowns(&self) -> usize {
        self.n
    }

    /// Observations held (in cells of two exposures or more).
    pub fn observations(&self) -> usize {
        self.obs.len()
    }

    /// Cells held, and how many the clipping keeps.
    pub fn cells(&self) -> (usize, usize) {
        (self.active.len(), self.active.iter().filter(|&&a| a).count())
    }

    /// Sum of `term(cell observations, mean)` contributions into a fixed-point vector of the
    /// unknowns, over the active cells, on rayon (integer sums: the result does not depend on the
    /// split). `value(o)` is what is averaged in a cell; `term(o, value, mean)` the contribution to
    /// both of `o`'s unknowns.
    fn accumulate(
        &self,
        value: impl Fn(&JointObs) -> f64 + Sync,
        term: impl Fn(&JointObs, f64, f64) -> f64 + Sync,
    ) -> Vec<i64> {
        let ncell = self.active.len();
        let chunk = 4096.max(ncell / 64 + 1);
        let n = self.n;
        (0..ncell.div_ceil(chunk))
            .into_par_iter()
            .fold(
                || vec![0i64; n],
                |mut acc, c| {
                    for k in c * chunk..((c + 1) * chunk).min(ncell) {
                        if !self.active[k] {
                            continue;
                        }
                        let cell = &self.obs[self.starts[k]..self.starts[k + 1]];
                        let (mut sw, mut swv) = (0.0, 0.0);
                        for o in cell {
                            sw += f64::from(o.w);
                            swv += f64::from(o.w) * value(o);
                        }
                        let mean = swv / sw;
                        for o in cell {
                            let t = fix(term(o, value(o), mean));
                            acc[o.row as usize] = acc[o.row as usize].wrapping_add(t);
                            acc[o.col as usize] = acc[o.col as usize].wrapping_add(t);
                        }
                    }
                    acc
                },
            )
            .reduce(
                || vec![0i64; n],
                |mut a, b| {
                    a.iter_mut().zip(&b).for_each(|(x, y)| *x = x.wrapping_add(*y));
                    a
                },
            )
    }

    /// This rank's part of `H s` (fixed point).
    pub fn apply_local(&self, s: &[f64]) -> Vec<i64> {
        self.accumulate(|o| s[o.row as usize] + s[o.col as usize], |o, x, m| f64::from(o.w) * (x - m))
    }

    /// This rank's part of `b` (fixed point).
    pub fn rhs_local(&self) -> Vec<i64> {
        self.accumulate(|o| f64::from(o.v), |o, x, m| f64::from(o.w) * (x - m))
    }

    /// This rank's part of the diagonal of `H` (fixed point): `w (1 - w / W)` per observation (the
    /// row-column cross terms left out: a preconditioner).
    pub fn diag_local(&self) -> Vec<i64> {
        let total: Vec<f64> = (0..self.active.len())
            .map(|k| self.obs[self.starts[k]..self.starts[k + 1]].iter().map(|o| f64::from(o.w)).sum())
            .collect();
        let mut acc = vec![0i64; self.n];
        for (k, &a) in self.active.iter().enumerate() {
            if !a {
                continue;
            }
            for o in &self.obs[self.starts[k]..self.starts[k + 1]] {
                let w = f64::from(o.w);
                let t = fix(w * (1.0 - w / total[k]));
                acc[o.row as usize] = acc[o.row as usize].wrapping_add(t);
                acc[o.col as usize] = acc[o.col as usize].wrapping_add(t);
            }
        }
        acc
    }

    /// Histogram of `|v - s - mean_w(v - s)|` over every observation of every held cell (active or
    /// not), [`HIST_BINS`] log-spaced bins (64 per octave from 2^-40); summed over ranks by the
    /// caller (exact), it gives the median absolute residual ([`sigma_from_histogram`]).
    pub fn abs_residual_histogram(&self, s: &[f64]) -> Vec<u64> {
        let mut h = vec![0u64; HIST_BINS];
        self.each_residual(s, |_, r| {
            let a = r.abs();
            let b = if a > 0.0 { ((a.log2() - HIST_LOW_LOG2) * HIST_PER_OCTAVE).floor() } else { 0.0 };
            h[(b.max(0.0) as usize).min(HIST_BINS - 1)] += 1;
        });
        h
    }

    fn each_residual(&self, s: &[f64], mut f: impl FnMut(usize, f64)) {
        for k in 0..self.active.len() {
            let cell = &self.obs[self.starts[k]..self.starts[k + 1]];
            let x = |o: &JointObs| f64::from(o.v) - s[o.row as usize] - s[o.col as usize];
            let (mut sw, mut swx) = (0.0, 0.0);
            for o in cell {
                sw += f64::from(o.w);
                swx += f64::from(o.w) * x(o);
            }
            let m = swx / sw;
            for o in cell {
                f(k, x(o) - m);
            }
        }
    }

    /// Keep the cells whose every residual `|v - s - mean_w(v - s)|` is at most `limit` (all cells
    /// are reconsidered, from the full set).
    pub fn clip(&mut self, s: &[f64], limit: f64) {
        let mut keep = vec![true; self.active.len()];
        self.each_residual(s, |k, r| {
            if r.is_nan() || r.abs() > limit {
                keep[k] = false;
            }
        });
        self.active = keep;
    }
}

/// Sigma (1.4826 x the median absolute residual) from a histogram of
/// [`JointSystem::abs_residual_histogram`] summed over ranks; `None` when it is empty.
pub fn sigma_from_histogram(h: &[u64]) -> Option<f64> {
    let total: u64 = h.iter().sum();
    if total == 0 {
        return None;
    }
    let mut seen = 0;
    for (b, &c) in h.iter().enumerate() {
        seen += c;
        if 2 * seen >= total {
            let mid = HIST_LOW_LOG2 + (b as f64 + 0.5) / HIST_PER_OCTAVE;
            return Some(1.4826 * mid.exp2());
        }
    }
    None
}

/// Settings of [`solve`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JointParams {
    /// Ridge added to the system, as a fraction of its diagonal. Default 1e-3.
    pub ridge: f64,
    /// Most conjugate-gradient iterations per solve. Default 300.
    pub max_iterations: usize,
    /// Stop when the preconditioned residual norm falls below this fraction of the right-hand
    /// side's. Default 1e-5.
    pub tolerance: f64,
    /// Clipping rounds (clip, then solve). Default 3.
    pub rounds: usize,
    /// Clipping threshold, sigma. Default 3.
    pub kappa: f64,
    /// Added to the diagonal of every constrained unknown, in observation weights (the stage
    /// normalises the weights so that no exposure's mean weight exceeds 1): a prior that shrinks
    /// toward 0 the stripes of rows and columns that few cells constrain, to about
    /// `d / (d + prior)` for an unknown whose diagonal is `d` (about half an observation per pixel
    /// in a two-exposure cell). A row measured in a handful of overlap pixels otherwise takes
    /// their noise and unmatched sky in full. Default 0 (none).
    pub prior: f64,
}

impl Default for JointParams {
    fn default() -> Self {
        Self { ridge: 1e-3, max_iterations: 300, tolerance: 1e-5, rounds: 3, kappa: 3.0, prior: 0.0 }
    }
}

/// What [`solve`] did.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct JointSummary {
    /// Unknowns (row and column stripes of every exposure).
    pub unknowns: usize,
    /// Per clipping round: sigma of the residuals (MJy/sr), cells kept, CG iterations, final
    /// relative residual.
    pub rounds: Vec<(f64, u64, usize, f64)>,
}

/// Solve the joint system: `rounds` times, clip the cells at `kappa` sigma of the residuals of the
/// current solution (0 at first), then preconditioned CG on `(H + ridge diag H + prior) s = b` from
/// it (the prior on the constrained unknowns only).
/// `reduce_i64` sums a fixed-point vector over ranks in place (the identity on one rank),
/// `reduce_u64` a histogram; every rank calls them the same number of times and gets the same
/// solution. Unknowns no observation constrains stay 0.
///
/// `detrend`: blocks of unknowns (each exposure's column stripes) held orthogonal to polynomials of
/// degree 2 along the block. With free columns, the functions that are a sum of a row profile and
/// a column profile in two frames rotated from each other are the constants, the planes and
/// `x^2 + y^2` (the only separable functions with a rotation-invariant mixed derivative): a sky
/// gradient or bowl common to every exposure would be in the null space, and the noise and the
/// sampling errors of the sky would pick one.
pub fn solve(
    sys: &mut JointSystem,
    p: &JointParams,
    detrend: &[std::ops::Range<usize>],
    reduce_i64: &mut dyn FnMut(&mut [i64]),
    reduce_u64: &mut dyn FnMut(&mut [u64]),
) -> (Vec<f64>, JointSummary) {
    let n = sys.unknowns();
    // orthonormal bases of {1, t, t^2} for each block length (Gram-Schmidt)
    let basis = |m: usize| -> Vec<Vec<f64>> {
        let mut q: Vec<Vec<f64>> = vec![];
        for d in 0..3.min(m) {
            let c = (m as f64 - 1.0) / 2.0;
            let mut v: Vec<f64> = (0..m).map(|i| ((i as f64 - c) / m as f64).powi(d as i32)).collect();
            for b in &q {
                let p: f64 = v.iter().zip(b).map(|(x, y)| x * y).sum();
                v.iter_mut().zip(b).for_each(|(x, y)| *x -= p * y);
            }
            let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
            v.iter_mut().for_each(|x| *x /= norm);
            q.push(v);
        }
        q
    };
    let mut bases: std::collections::BTreeMap<usize, Vec<Vec<f64>>> = Default::default();
    for r in detrend {
        bases.entry(r.len()).or_insert_with(|| basis(r.len()));
    }
    let proj = |v: &mut [f64]| {
        for r in detrend {
            let b = &mut v[r.clone()];
            for q in &bases[&r.len()] {
                let p: f64 = b.iter().zip(q).map(|(x, y)| x * y).sum();
                b.iter_mut().zip(q).for_each(|(x, y)| *x -= p * y);
            }
        }
    };
    let mut x = vec![0.0; n];
    let mut summary = JointSummary { unknowns: n, rounds: vec![] };
    let global = |v: Vec<i64>, reduce: &mut dyn FnMut(&mut [i64])| {
        let mut v = v;
        reduce(&mut v);
        unfix(&v)
    };
    for _ in 0..p.rounds.max(1) {
        let mut h = sys.abs_residual_histogram(&x);
        reduce_u64(&mut h);
        let Some(sigma) = sigma_from_histogram(&h) else { break };
        sys.clip(&x, p.kappa * sigma);
        let mut kept = [sys.cells().1 as u64];
        reduce_u64(&mut kept);
        let b = global(sys.rhs_local(), reduce_i64);
        let d = global(sys.diag_local(), reduce_i64);
        // the ridge and the prior, on the constrained unknowns
        let extra: Vec<f64> = d.iter().map(|&v| if v > 0.0 { p.ridge * v + p.prior } else { 0.0 }).collect();
        let minv: Vec<f64> = d.iter().zip(&extra).map(|(&v, e)| if v > 0.0 { 1.0 / (v + e) } else { 0.0 }).collect();
        let apply = |s: &[f64], reduce: &mut dyn FnMut(&mut [i64])| -> Vec<f64> {
            let hs = global(sys.apply_local(s), reduce);
            hs.iter().zip(&extra).zip(s).map(|((h, e), v)| h + e * v).collect()
        };
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
        // r = b - A x on the constrained unknowns
        let ax = apply(&x, reduce_i64);
        let mut r: Vec<f64> =
            b.iter().zip(&ax).zip(&minv).map(|((b, a), m)| if *m > 0.0 { b - a } else { 0.0 }).collect();
        proj(&mut r);
        let precond = |r: &[f64]| -> Vec<f64> {
            let mut z: Vec<f64> = r.iter().zip(&minv).map(|(r, m)| r * m).collect();
            proj(&mut z);
            z
        };
        let mut pb = b.clone();
        proj(&mut pb);
        let bnorm = dot(&precond(&pb), &pb).sqrt();
        let mut z = precond(&r);
        let mut pdir = z.clone();
        let mut rz = dot(&r, &z);
        let mut it = 0;
        let mut rel = if bnorm > 0.0 { rz.max(0.0).sqrt() / bnorm } else { 0.0 };
        while it < p.max_iterations && rel > p.tolerance && bnorm > 0.0 {
            let mut ap = apply(&pdir, reduce_i64);
            proj(&mut ap);
            let pap = dot(&pdir, &ap);
            if pap.is_nan() || pap <= 0.0 {
                break;
            }
            let alpha = rz / pap;
            x.iter_mut().zip(&pdir).for_each(|(x, p)| *x += alpha * p);
            r.iter_mut().zip(&ap).for_each(|(r, a)| *r -= alpha * a);
            z = precond(&r);
            let rz_new = dot(&r, &z);
            let beta = rz_new / rz;
            rz = rz_new;
            pdir.iter_mut().zip(&z).for_each(|(p, z)| *p = z + beta * *p);
            it += 1;
            rel = rz.max(0.0).sqrt() / bnorm;
        }
        summary.rounds.push((sigma, kept[0], it, rel));
    }
    (x, summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::destripe::gauss;

    /// Exposures of `n` x `n` pixels at two orientations 50 degrees apart (a 90-degree pair would
    /// leave one exposure's rows and the other's columns both functions of the same sky axis) and a
    /// few shifts over a common sky with structure at several scales; each has row stripes (one
    /// amplifier) and column stripes, smooth and rough. The joint solve recovers every exposure's
    /// stripes to a tenth, up to one constant per exposure (and the row-column trade of a constant).
    #[test]
    fn joint_solve_recovers_stripes_of_two_orientations() {
        let n = 48usize;
        let sky = |x: f64, y: f64| -> f64 { 0.3 * (x * 0.02).sin() * (y * 0.015).cos() };
        // exposures: (angle, dx, dy)
        let exps = [(0.0f64, 0.0, 0.0), (0.0, 3.3, 2.6), (50.0, 30.0, -10.0), (50.0, 32.4, -6.7)];
        let per = 2 * n; // n rows + n columns
        let truth: Vec<f64> = (0..exps.len() * per)
            .map(|u| {
                let (e, k) = (u / per, u % per);
                // rows smooth plus rough, wide modes included; columns rough (the model holds no
                // column polynomial of degree 2 or less, see `solve`)
                if k < n {
                    0.02 * ((k as f64) * 0.07 + e as f64).sin() + 0.01 * gauss(7, u as u64)
                } else {
                    0.006 * gauss(7, u as u64)
                }
            })
            .collect();
        let mut obs = vec![];
        for (e, &(ang, dx, dy)) in exps.iter().enumerate() {
            let (sn, cs) = ang.to_radians().sin_cos();
            for y in 0..n {
                for x in 0..n {
                    let (sx, sy) = (cs * x as f64 - sn * y as f64 + dx, sn * x as f64 + cs * y as f64 + dy);
                    let (cx, cy) = (sx.round() as i64 + 100, sy.round() as i64 + 100);
                    let row = e * per + y;
                    let col = e * per + n + x;
                    let v = sky(sx, sy) + truth[row] + truth[col] + 0.002 * gauss(9, (e * n * n + y * n + x) as u64);
                    obs.push(JointObs {
                        cell: (cy * 1000 + cx) as u64,
                        exp: e as u32,
                        row: row as u32,
                        col: col as u32,
                        w: 1.0,
                        v: v as f32,
                    });
                }
            }
        }
        // one cosmic ray
        obs[100].v += 50.0;
        let nunk = exps.len() * per;
        let mut sys = JointSystem::new(obs.clone(), nunk);
        let detrend: Vec<std::ops::Range<usize>> = (0..exps.len()).map(|e| e * per + n..(e + 1) * per).collect();
        let (s, summary) = solve(&mut sys, &JointParams::default(), &detrend, &mut |_| {}, &mut |_| {});
        eprintln!("{summary:?}");
        // compare the dense model per exposure, each about its mean (the free constant)
        let mut err2 = 0.0;
        let mut tr2 = 0.0;
        for e in 0..exps.len() {
            // the dense model minus its best plane (a plane is separable along both orientations'
            // rows and columns: a sky gradient, which no stripe model can tell)
            let dense = |v: &[f64]| -> Vec<f64> {
                let m: Vec<f64> = (0..n * n).map(|i| v[e * per + i / n] + v[e * per + n + i % n]).collect();
                let c = (n as f64 - 1.0) / 2.0;
                let (mut sm, mut sx, mut sy, mut xx) = (0.0, 0.0, 0.0, 0.0);
                for (i, v) in m.iter().enumerate() {
                    let (x, y) = ((i % n) as f64 - c, (i / n) as f64 - c);
                    (sm, sx, sy, xx) = (sm + v, sx + v * x, sy + v * y, xx + x * x);
                }
                let nn = m.len() as f64;
                m.iter()
                    .enumerate()
                    .map(|(i, v)| v - sm / nn - sx / xx * ((i % n) as f64 - c) - sy / xx * ((i / n) as f64 - c))
                    .collect()
            };
            let (a, b) = (dense(&truth), dense(&s));
            err2 += a.iter().zip(&b).map(|(a, b)| (a - b).powi(2)).sum::<f64>();
            tr2 += a.iter().map(|a| a * a).sum::<f64>();
        }
        let (err, tr) = ((err2 / (exps.len() * n * n) as f64).sqrt(), (tr2 / (exps.len() * n * n) as f64).sqrt());
        eprintln!("joint: stripes rms {tr:.5}, error {err:.5}");
        assert!(err < 0.1 * tr, "{err} of {tr}");
        // the same split over two 'ranks' (cells by parity), summed: the same bits
        let (mut a, mut b) = (
            JointSystem::new(obs.iter().filter(|o| o.cell % 2 == 0).copied().collect(), nunk),
            JointSystem::new(obs.iter().filter(|o| o.cell % 2 == 1).copied().collect(), nunk),
        );
        // a serial emulation of two ranks: each solve step needs both parts, so compare the parts'
        // sums with the whole's
        let s0 = vec![0.01; nunk];
        let whole = sys.apply_local(&s0);
        let mut parts = a.apply_local(&s0);
        parts.iter_mut().zip(b.apply_local(&s0)).for_each(|(x, y)| *x = x.wrapping_add(y));
        let _ = (&mut a, &mut b);
        // (the clipping of `sys` above changed its active cells: rebuild the whole)
        let whole_fresh = JointSystem::new(obs.clone(), nunk).apply_local(&s0);
        assert_ne!(whole.len(), 0);
        assert_eq!(parts, whole_fresh);
        // encoding round trip
        let mut buf = vec![];
        obs[..5].iter().for_each(|o| o.encode(&mut buf));
        assert_eq!(JointObs::decode_all(&buf), obs[..5].to_vec());
    }
}

//! The weighted least-squares offsets of the level matching ([`solve_offsets`]): the pairs'
//! canonical edges, the connected components of the pair graph with their pivots and gauges
//! ([`Gauge`], [`Components`], [`connected_components`]), and the direct solve of each component's
//! reduced normal equations (Cholesky with nalgebra), tessera's departure from pjpipe's Jacobi
//! iteration. The component, pivot and mean-zero helpers are shared with the plane solve
//! (`planes::solve_planes_gls`).
//!
//! What does not live here: the pair statistics (`hist`, `planes`), the rejection (`reject`), and
//! applying the offsets.

use std::cmp::Ordering;

use nalgebra::DMatrix;

use super::LevelError;

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
pub(super) struct Edge<const K: usize> {
    i: usize,
    j: usize,
    w: f64,
    rhs: [f64; K],
}

pub(super) fn canonical_edges<const K: usize>(
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
pub(super) fn components(
    n: usize,
    links: &[(usize, usize, f64)],
    gauge: &Gauge,
) -> Result<(Components, Vec<usize>), LevelError> {
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
pub(super) fn unknown_positions(n: usize, mem: &[usize], pivot: usize) -> (Vec<usize>, usize) {
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
pub(super) fn centre_components<const K: usize>(x: &mut [[f64; K]], groups: &Components, gauge: &Gauge) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::level::weight_from_rms;
    use crate::kernels::test_rng::Rng;

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
}

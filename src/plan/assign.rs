//! Deterministic, balanced assignment of weighted work items (output chunks, exposures) to ranks.
//!
//! Longest-processing-time-first greedy: items in decreasing weight (ties by index) go to the rank
//! with the least load so far (ties by lowest rank). The result is a pure function of the weights
//! and the rank count, and its makespan is within 4/3 of optimal (Graham 1969).

/// The rank of each item, for `nranks` ranks. Works for any `nranks >= 1`, including more ranks
/// than items (the extra ranks get nothing).
///
/// # Panics
/// If `nranks == 0`.
pub fn assign_lpt(weights: &[u64], nranks: usize) -> Vec<usize> {
    assert!(nranks > 0, "at least one rank");
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by(|&a, &b| weights[b].cmp(&weights[a]).then(a.cmp(&b)));
    let mut load = vec![0u64; nranks];
    let mut owner = vec![0usize; weights.len()];
    for i in order {
        let r = (0..nranks).min_by(|&a, &b| load[a].cmp(&load[b]).then(a.cmp(&b))).expect("nranks > 0");
        owner[i] = r;
        load[r] += weights[i];
    }
    owner
}

/// Total weight per rank for an assignment.
pub fn loads(weights: &[u64], owner: &[usize], nranks: usize) -> Vec<u64> {
    let mut load = vec![0u64; nranks];
    for (w, &o) in weights.iter().zip(owner) {
        load[o] += w;
    }
    load
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Brute force: the best makespan over all assignments (small cases only).
    fn optimal_makespan(w: &[u64], n: usize) -> u64 {
        let mut best = u64::MAX;
        let total = n.pow(w.len() as u32);
        for code in 0..total {
            let mut c = code;
            let mut load = vec![0; n];
            for &x in w {
                load[c % n] += x;
                c /= n;
            }
            best = best.min(*load.iter().max().unwrap());
        }
        best
    }

    #[test]
    fn lpt_within_four_thirds_of_brute_force_optimum() {
        let cases: Vec<Vec<u64>> =
            vec![vec![5, 5, 4, 4, 3, 3, 3], vec![7, 1, 1, 1, 1, 1, 1, 1], vec![10, 9, 8, 7, 6, 5]];
        for w in cases {
            for n in 1..=4 {
                let owner = assign_lpt(&w, n);
                let m = *loads(&w, &owner, n).iter().max().unwrap();
                let opt = optimal_makespan(&w, n);
                assert!(3 * m <= 4 * opt, "w {w:?} n {n}: lpt {m} opt {opt}");
            }
        }
    }

    #[test]
    fn more_ranks_than_items_and_determinism() {
        let w = [3, 1, 2];
        let o = assign_lpt(&w, 7);
        // each item on its own rank, heaviest first to the lowest rank
        assert_eq!(o, vec![0, 2, 1]);
        assert_eq!(assign_lpt(&w, 7), o);
        assert_eq!(assign_lpt(&[], 3), Vec::<usize>::new());
        assert_eq!(assign_lpt(&w, 1), vec![0, 0, 0]);
    }
}

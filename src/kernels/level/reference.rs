//! The reference tile and the band constant of the level matching: [`order_by_time`] (the
//! reference priority: the tile closest in time to the MIRI off-source backgrounds) and
//! [`lowest_sky`] (the band constant: the lowest sigma-clipped sky among the tile groups).
//!
//! What does not live here: the skies themselves (`kernels::stats::sigma_clipped_stats`, called by
//! the `level` stage) and the gauge that uses the priority (`solve`).

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
/// per group, e.g. the medians of
/// [`sigma_clipped_stats`](crate::kernels::stats::sigma_clipped_stats); NaN = no sky). Returns `(index, sky)`
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
    use crate::kernels::level::{solve_offsets, Gauge, PairOffset};

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

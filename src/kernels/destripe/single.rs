//! The single-exposure destriping ([`single_tile_model`], pjpipe `single_tile_destripe` with the
//! PHANGS settings): the column pass, then per amplifier the median-filter cascade on the masked
//! row medians, with the full-row fallback for rows more than 80% masked.
//!
//! What does not live here: the masks (`mask`), the diffuse filter (`diffuse`), the parameters
//! (`params`) and the multi-exposure pass (`multi`).

use ndarray::{s, ArrayView2, Zip};
use std::ops::Range;

use super::diffuse::{diffuse_filter_impl, DiffuseParams};
use super::filters::{interpolate_nans, map_range, median_filter_1d};
use super::mask::{flatten_amp_rows, source_mask_impl};
use super::model::StripeModel;
use super::params::{check_shape, DestripeError, SingleTileParams, SourceMaskParams, VerticalMethod};
use crate::kernels::stats::{median_mut, nanmedian};

/// Stripe model of one NIRCam exposure from that exposure alone (pjpipe `single_tile_destripe`,
/// PHANGS settings). `data` is the (flat-fielded) SCI image `[y, x]` in MJy/sr (or any unit; the
/// model has the same), `bad` marks pixels to ignore (DQ DO_NOT_USE / NON_SCIENCE); non-finite and
/// exactly-zero pixels are ignored as well (reference P2). Returns the model `[y, x]` to subtract:
///
/// 1. column pass (`vertical`): source mask (`sigma`, `npixels`, `dilate_size`, `max_iters`
///    iterations) of `data` on the whole frame, then on the frame without the reference border:
///    optional [`diffuse_filter`], per-column masked median, centred on its NaN-median, NaN columns
///    interpolated (if some are finite); with [`VerticalMethod::MedianFilter`] minus the median-filter
///    cascade; centred again; the model is that profile down the columns;
/// 2. row pass on `data - column model` (whole frame, border masked): source mask (5 iterations),
///    optional [`diffuse_filter`]; per amplifier, the per-row masked medians of the amp, where a row
///    has fewer than `min_mask_frac * width` unmasked pixels the masked median of the whole row
///    (with the amp's already-removed noise taken off its columns); NaN rows interpolated; then for
///    each scale in `filter_scales`: `noise = profile - median_filter(profile, scale, reflect)`,
///    removed from the amp and accumulated into its model. Structure wider than the largest scale
///    is kept as astrophysical;
/// 3. the reference border gets a zero model.
///
/// A fully masked exposure (or amp with no usable row anywhere) gives a zero model, never NaN.
///
/// # Errors
/// [`DestripeError::Shape`] if `bad` is not shaped like `data`; [`DestripeError::Param`] from
/// [`SingleTileParams::validate`].
pub fn single_tile_model(
    data: ArrayView2<f32>,
    bad: ArrayView2<bool>,
    p: &SingleTileParams,
) -> Result<StripeModel, DestripeError> {
    check_shape("bad-pixel mask", bad.dim(), data.dim())?;
    p.validate()?;
    Ok(single_tile_impl(data, bad, p, false))
}

/// [`single_tile_model`] with rows, columns, amplifiers and FFT lines on rayon; bit-identical.
///
/// # Errors
/// As [`single_tile_model`].
pub fn par_single_tile_model(
    data: ArrayView2<f32>,
    bad: ArrayView2<bool>,
    p: &SingleTileParams,
) -> Result<StripeModel, DestripeError> {
    check_shape("bad-pixel mask", bad.dim(), data.dim())?;
    p.validate()?;
    Ok(single_tile_impl(data, bad, p, true))
}

fn single_tile_impl(data: ArrayView2<f32>, bad: ArrayView2<bool>, p: &SingleTileParams, par: bool) -> StripeModel {
    let (ny, nx) = data.dim();
    let b = p.ref_border_px;
    if ny <= 2 * b || nx <= 2 * b {
        return StripeModel::zero(ny, nx);
    }
    // the column model, full-frame columns (0 on the border)
    let mut col_model = vec![0.0f64; nx];
    let in_border = |y: usize, x: usize| y < b || x < b || y >= ny - b || x >= nx - b;
    // reference P2 plus the reference border
    let bad2 =
        Zip::indexed(&data).and(&bad).map_collect(|(y, x), &d, &m| m || !d.is_finite() || d == 0.0 || in_border(y, x));
    let work0 = Zip::from(&data).and(&bad2).map_collect(|&d, &m| if m { f64::NAN } else { d as f64 });
    let diffuse = DiffuseParams {
        sigma: p.sigma,
        npixels: p.npixels,
        dilate_size: p.dilate_size,
        butterworth: p.butterworth,
        seed: p.seed,
    };

    let full_ranges = p.amps.ranges(nx);
    // amplifier ranges in trimmed coordinates
    let ranges: Vec<Range<usize>> = full_ranges
        .iter()
        .map(|r| r.start.max(b) - b..r.end.min(nx - b).saturating_sub(b))
        .filter(|r| !r.is_empty())
        .collect();

    // 1. column pass
    if p.vertical {
        let smp = SourceMaskParams {
            nsigma: p.sigma,
            npixels: p.npixels,
            dilate_size: p.dilate_size,
            maxiters: Some(p.max_iters),
        };
        let flat = flatten_amp_rows(work0.view(), bad2.view(), &full_ranges, par);
        let sm = source_mask_impl(flat.view(), bad2.view(), &smp, par);
        let inner = s![b..ny - b, b..nx - b];
        let mut mask = Zip::from(&sm).and(&bad2).map_collect(|&a, &c| a || c).slice(inner).to_owned();
        let mut d = work0.slice(inner).to_owned();
        if p.filter_diffuse {
            let dp = DiffuseParams { seed: p.seed ^ 0x05EE_DC01, ..diffuse };
            (d, mask) = diffuse_filter_impl(d.view(), mask.view(), bad2.slice(inner), &ranges, &dp, par);
        }
        let (my, mx) = d.dim();
        let mut prof = map_range(mx, par, |x| {
            let mut v: Vec<f64> =
                (0..my).filter(|&y| !mask[[y, x]]).map(|y| d[[y, x]]).filter(|v| v.is_finite()).collect();
            median_mut(&mut v)
        });
        let c = nanmedian(&prof);
        prof.iter_mut().for_each(|v| *v -= c);
        if interpolate_nans(&mut prof) {
            if p.vertical_method == VerticalMethod::MedianFilter {
                let mut rest = prof.clone();
                for &scale in &p.filter_scales {
                    rest = median_filter_1d(&rest, scale);
                }
                prof.iter_mut().zip(&rest).for_each(|(a, r)| *a -= r);
            }
            let c = nanmedian(&prof);
            for x in 0..mx {
                col_model[x + b] = prof[x] - c;
            }
        }
    }

    // 2. row pass, measured inside the reference border (pjpipe masks the zero-valued border
    // instead; trimming keeps the border's fill out of the diffuse filter's mirror padding)
    let inner = s![b..ny - b, b..nx - b];
    let work = Zip::indexed(&work0.slice(inner)).map_collect(|(_, x), &d| d - col_model[x + b]);
    let bad_in = bad2.slice(inner);
    let smp = SourceMaskParams { nsigma: p.sigma, npixels: p.npixels, dilate_size: p.dilate_size, maxiters: Some(5) };
    let flat = flatten_amp_rows(work.view(), bad_in, &ranges, par);
    let sm = source_mask_impl(flat.view(), bad_in, &smp, par);
    let mut mask = Zip::from(&sm).and(&bad_in).map_collect(|&a, &c| a || c);
    let mut d = work;
    if p.filter_diffuse {
        (d, mask) = diffuse_filter_impl(d.view(), mask.view(), bad_in, &ranges, &diffuse, par);
    }
    let noises: Vec<Vec<f64>> = ranges
        .iter()
        .map(|r| amp_cascade(d.view(), mask.view(), r.clone(), &p.filter_scales, p.min_mask_frac, par))
        .collect();
    // 3. the reference border keeps a zero model
    StripeModel {
        ny,
        nx,
        rows: b..ny - b,
        cols: b..nx - b,
        amps: ranges.iter().map(|r| r.start + b..r.end + b).collect(),
        amp_rows: noises
            .into_iter()
            .map(|n| {
                let mut v = vec![0.0; ny];
                v[b..ny - b].copy_from_slice(&n);
                v
            })
            .collect(),
        col: col_model,
        offset: 0.0,
    }
}

/// Masked median of row `y` of `d` over `cols`, with `shift` subtracted from the columns in
/// `shifted` (the amp's noise already removed); NaN if no pixel is usable.
fn masked_row_median(
    d: &ArrayView2<f64>,
    mask: &ArrayView2<bool>,
    y: usize,
    cols: Range<usize>,
    shifted: &Range<usize>,
    shift: f64,
) -> f64 {
    let mut v: Vec<f64> = cols
        .filter(|&x| !mask[[y, x]] && d[[y, x]].is_finite())
        .map(|x| if shifted.contains(&x) { d[[y, x]] - shift } else { d[[y, x]] })
        .collect();
    median_mut(&mut v)
}

/// pjpipe's median-filter cascade for one amplifier: returns the accumulated noise per row.
fn amp_cascade(
    d: ArrayView2<f64>,
    mask: ArrayView2<bool>,
    amp: Range<usize>,
    scales: &[usize],
    min_mask_frac: f64,
    par: bool,
) -> Vec<f64> {
    let (ny, nx) = d.dim();
    let width = amp.len();
    let min_good = min_mask_frac * width as f64;
    let none = 0..0;
    // per row: (amp median of the untouched data, too masked?)
    let base: Vec<(f64, bool)> = map_range(ny, par, |y| {
        let n_good = amp.clone().filter(|&x| !mask[[y, x]] && d[[y, x]].is_finite()).count();
        let med = masked_row_median(&d, &mask, y, amp.clone(), &none, 0.0);
        (med, (n_good as f64) < min_good)
    });
    let mut acc = vec![0.0; ny];
    for &scale in scales {
        let mut prof: Vec<f64> = map_range(ny, par, |y| {
            let (med, too_masked) = base[y];
            if too_masked {
                masked_row_median(&d, &mask, y, 0..nx, &none, 0.0) - acc[y]
            } else {
                med - acc[y]
            }
        });
        if !interpolate_nans(&mut prof) {
            break;
        }
        let filt = median_filter_1d(&prof, scale);
        for y in 0..ny {
            acc[y] += prof[y] - filt[y];
        }
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::destripe::test_scene::*;
    use crate::kernels::destripe::AmpLayout;
    use ndarray::Array2;

    #[test]
    fn single_tile_removes_in_band_stripes() {
        // Stripes whose 1/f power lies above 2.5 x the filter cutoff (periods < 20 rows here, < 80
        // on a full frame, where the Butterworth gain is > 0.97): what the single-tile method is
        // built to remove. Larger scales are left to destripe_multi, see
        // `single_then_multi_removes_full_band_stripes`.
        let (ny, nx, w, b) = (512, 512, 128, 4);
        let sc = scene(ny, nx, w, 0.02, 0.005, b, 11, 0.05);
        let m = par_single_tile_model(sc.data.view(), sc.bad.view(), &scaled_params())
            .unwrap()
            .to_array()
            .mapv(|v| v as f64);
        let before = regions(&sc.stripes, w, b);
        let after = regions(&(&sc.stripes - &m), w, b);
        eprintln!(
            "in-band stripes (whole, galaxy, empty, interior, empty interior): before {before:.5?} after {after:.5?}"
        );
        // >= 90% in the galaxy and on the frame less the 12 rows next to the top and bottom
        // reference borders
        for k in [1, 3] {
            assert!(after[k] <= 0.1 * before[k], "region {k}: {} -> {}", before[k], after[k]);
        }
        // KNOWN SHORTFALL, measured 89.6% (whole) and 88.4% (empty top rows): in the last ~12
        // rows the median filters' mirror ("reflect") ends fold the slope of the galaxy's
        // high-passed residual back into the row profile. Asserted at 85% so that it cannot get
        // worse unnoticed.
        for k in [0, 2, 4] {
            assert!(after[k] <= 0.15 * before[k], "region {k}: {} -> {}", before[k], after[k]);
        }
    }

    #[test]
    fn single_tile_no_stripes_leaves_galaxy_alone() {
        // The paper's test (a stripe-free image loses < 0.001 MJy/sr), on the real NIRCam
        // geometry: 2048 x 2048, four 512-column amps, default parameters. (On a 512 x 512 frame
        // with 128-column amps the noise of each amp-row median is twice as large, 0.0012.)
        let (ny, nx, w, b) = (2048, 2048, 512, 4);
        let sc = scene(ny, nx, w, 0.0, 0.005, b, 72, 0.0);
        let m = par_single_tile_model(sc.data.view(), sc.bad.view(), &SingleTileParams::default())
            .unwrap()
            .to_array()
            .mapv(|v| v as f64);
        let (r, c) = (rms(&m), corr(&m, &sc.galaxy, b));
        eprintln!("no stripes: model rms {r:.6} MJy/sr, corr with galaxy {c:+.4}");
        assert!(r < 1e-3 && c.abs() < 0.05);
        assert!(m.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn single_tile_edge_cases_and_par_identity() {
        let (ny, nx, w, b) = (256, 256, 64, 4);
        let sc = scene(ny, nx, w, 0.02, 0.005, b, 13, 0.0);
        let p = SingleTileParams { amps: AmpLayout::Columns { width_px: w }, ..scaled_params() };
        assert_eq!(
            single_tile_model(sc.data.view(), sc.bad.view(), &p).unwrap(),
            par_single_tile_model(sc.data.view(), sc.bad.view(), &p).unwrap()
        );
        // every pixel masked: zero model, no NaN
        let all = Array2::from_elem((ny, nx), true);
        let m = par_single_tile_model(sc.data.view(), all.view(), &p).unwrap();
        assert!(m.to_array().iter().all(|&v| v == 0.0));
        // all-NaN data too
        let nan = Array2::from_elem((ny, nx), f32::NAN);
        assert!(single_tile_model(nan.view(), sc.bad.view(), &p).unwrap().to_array().iter().all(|&v| v == 0.0));
        // a masked band of rows (> 80% of an amp, not of the whole row) uses the full-row fallback
        let mut bad = sc.bad.clone();
        bad.slice_mut(s![100..140, 0..60]).fill(true);
        let m = par_single_tile_model(sc.data.view(), bad.view(), &p).unwrap().to_array();
        assert!(m.iter().all(|v| v.is_finite()));
        // subarray: 64 x 256, whole rows, no border
        let mut ss = scene(64, 256, 256, 0.02, 0.005, 0, 14, 0.05);
        Zip::from(&mut ss.data).and(&ss.galaxy).for_each(|d, &g| *d -= g as f32);
        let ps = SingleTileParams { filter_scales: vec![3, 7, 15, 31], ..SingleTileParams::subarray() };
        let ps = SingleTileParams { butterworth: scaled_params().butterworth, ..ps };
        let ms = par_single_tile_model(ss.data.view(), ss.bad.view(), &ps).unwrap().to_array().mapv(|v| v as f64);
        let (bef, aft) =
            (stripe_rms(&ss.stripes, 256, 0..64, 0..256), stripe_rms(&(&ss.stripes - &ms), 256, 0..64, 0..256));
        eprintln!("subarray: stripes {bef:.5} -> {aft:.5}");
        assert!(aft < 0.2 * bef);
        // errors
        assert!(matches!(
            single_tile_model(sc.data.view(), Array2::from_elem((3, 3), false).view(), &p),
            Err(DestripeError::Shape { .. })
        ));
        let bad_p = SingleTileParams { filter_scales: vec![0], ..p };
        assert!(matches!(single_tile_model(sc.data.view(), sc.bad.view(), &bad_p), Err(DestripeError::Param { .. })));
    }
}

//! The destriping source masks: [`source_mask`] (pjpipe's `make_source_mask`, reference P3:
//! clipped background statistics, 8-connected detections, square dilation), the two-sided mask of
//! pjpipe's multi-exposure pass (sources of the data and of its negative), and the stripe-flattened
//! copy that detection sees, so that a stripe is not masked as a row-long "source".
//!
//! What does not live here: the clipped statistics (`kernels::stats`), the connected components
//! (`kernels::sources::connected_at_least`) and the uses of the masks (`diffuse`, `single`, `multi`).

use ndarray::{s, Array2, ArrayView2, Axis, Zip};
use std::ops::Range;

use super::filters::{map_range, median_filter_1d};
use super::params::{check_shape, DestripeError, SourceMaskParams};
use crate::kernels::stats::{median_mut, sigma_clipped_stats_select, ClipParams};

/// Source mask as pjpipe's `make_source_mask` (reference P3): background median `m` and std `s`
/// from [`sigma_clipped_stats_select`] of the finite pixels not in `exclude` (clipped at `nsigma`,
/// `maxiters`); pixels strictly above `m + nsigma s` (finite, not excluded) are grouped in
/// 8-connected components; components of at least `npixels` pixels are kept and dilated with a
/// square `dilate_size` footprint. All-false if nothing is detected or no pixel is usable.
/// `data` is `[y, x]` in any unit; the dilation may grow into excluded pixels.
///
/// # Errors
/// [`DestripeError::Shape`] if `exclude` is not shaped like `data`; [`DestripeError::Param`] for a
/// non-positive `nsigma`.
pub fn source_mask(
    data: ArrayView2<f64>,
    exclude: ArrayView2<bool>,
    p: &SourceMaskParams,
) -> Result<Array2<bool>, DestripeError> {
    check_shape("source-mask exclusion mask", exclude.dim(), data.dim())?;
    p.validate()?;
    Ok(source_mask_impl(data, exclude, p, false))
}

/// [`source_mask`] with the dilation rows run on rayon (bit-identical).
///
/// # Errors
/// As [`source_mask`].
pub fn par_source_mask(
    data: ArrayView2<f64>,
    exclude: ArrayView2<bool>,
    p: &SourceMaskParams,
) -> Result<Array2<bool>, DestripeError> {
    check_shape("source-mask exclusion mask", exclude.dim(), data.dim())?;
    p.validate()?;
    Ok(source_mask_impl(data, exclude, p, true))
}

pub(super) fn source_mask_impl(
    data: ArrayView2<f64>,
    exclude: ArrayView2<bool>,
    p: &SourceMaskParams,
    par: bool,
) -> Array2<bool> {
    let (ny, nx) = data.dim();
    let mut vals = Vec::with_capacity(ny * nx);
    Zip::from(&data).and(&exclude).for_each(|&d, &e| {
        if !e && d.is_finite() {
            vals.push(d);
        }
    });
    let st = sigma_clipped_stats_select(&mut vals, &ClipParams::with_usize_iters(p.nsigma, p.maxiters));
    drop(vals);
    if st.n_kept == 0.0 {
        return Array2::from_elem((ny, nx), false);
    }
    let thr = st.median + p.nsigma * st.std;
    let above = Zip::from(&data).and(&exclude).map_collect(|&d, &e| !e && d > thr);
    let seg = crate::kernels::sources::connected_at_least(&above, p.npixels.max(1));
    dilate_square(&seg, p.dilate_size.max(1), par)
}

/// Binary dilation with a `size` x `size` square (offsets `-size/2 ..= size - 1 - size/2`), via
/// running counts along rows then columns.
fn dilate_square(m: &Array2<bool>, size: usize, par: bool) -> Array2<bool> {
    if size <= 1 {
        return m.clone();
    }
    let (ny, nx) = m.dim();
    let (l, r) = (size / 2, size - 1 - size / 2);
    // rows: h[y, x] = any m[y, x - r ..= x + l] (dilation reflects the footprint)
    let rows = map_range(ny, par, |y| {
        let row = m.row(y);
        let mut pre = vec![0u32; nx + 1];
        for x in 0..nx {
            pre[x + 1] = pre[x] + row[x] as u32;
        }
        (0..nx).map(|x| pre[(x + l + 1).min(nx)] > pre[x.saturating_sub(r)]).collect::<Vec<bool>>()
    });
    // columns: prefix counts of h down each column
    let mut pre = Array2::<u32>::zeros((ny + 1, nx));
    for y in 0..ny {
        for x in 0..nx {
            pre[[y + 1, x]] = pre[[y, x]] + rows[y][x] as u32;
        }
    }
    let out_rows = map_range(ny, par, |y| {
        let (a, b) = (y.saturating_sub(r), (y + l + 1).min(ny));
        (0..nx).map(|x| pre[[b, x]] > pre[[a, x]]).collect::<Vec<bool>>()
    });
    Array2::from_shape_fn((ny, nx), |(y, x)| out_rows[y][x])
}

/// Scale (rows) separating stripes from emission in the detection copy of [`flatten_amp_rows`].
const FLATTEN_SCALE_PX: usize = 31;

/// The copy of `data` that source detection sees: each amplifier row (`amps`, column ranges) minus
/// the median of its finite pixels outside `exclude` (0 where there is none); `data` itself when
/// `amps` is empty. Stripes are offsets of whole amplifier rows: a stripe a few times the pixel
/// noise would otherwise be detected as an 8-connected "source" a row long, and its dilation would
/// mask the very rows whose offset is to be measured. Compact and extended sources, which do not
/// fill an amplifier row, are still found. Only the part of each amplifier's row profile that
/// varies along y on scales below [`FLATTEN_SCALE_PX`] is removed (that is where stripes live;
/// emission varies slowly along y, and removing it would hide it from the mask).
pub(super) fn flatten_amp_rows(
    data: ArrayView2<f64>,
    exclude: ArrayView2<bool>,
    amps: &[Range<usize>],
    par: bool,
) -> Array2<f64> {
    let mut out = data.to_owned();
    if amps.is_empty() {
        return out;
    }
    let meds: Vec<Vec<f64>> = map_range(data.nrows(), par, |y| {
        amps.iter()
            .map(|r| {
                let mut v: Vec<f64> =
                    r.clone().filter(|&x| !exclude[[y, x]]).map(|x| data[[y, x]]).filter(|v| v.is_finite()).collect();
                let m = median_mut(&mut v);
                if m.is_finite() {
                    m
                } else {
                    0.0
                }
            })
            .collect()
    });
    let hp: Vec<Vec<f64>> = (0..amps.len())
        .map(|k| {
            let prof: Vec<f64> = meds.iter().map(|m| m[k]).collect();
            let smooth = median_filter_1d(&prof, FLATTEN_SCALE_PX);
            prof.iter().zip(&smooth).map(|(a, b)| a - b).collect()
        })
        .collect();
    for (y, mut row) in out.axis_iter_mut(Axis(0)).enumerate() {
        for (k, r) in amps.iter().enumerate() {
            row.slice_mut(s![r.clone()]).mapv_inplace(|v| v - hp[k][y]);
        }
    }
    out
}

/// pjpipe's two-sided mask: sources of `data` (`p`) OR sources of `-data` not already positive
/// sources (`p` with `neg_npixels`, `neg_dilate`), OR `exclude`.
pub(super) fn two_sided_mask(
    data: ArrayView2<f64>,
    exclude: ArrayView2<bool>,
    pos: &SourceMaskParams,
    neg: &SourceMaskParams,
    par: bool,
) -> Array2<bool> {
    let pm = source_mask_impl(data, exclude, pos, par);
    let neg_data = data.mapv(|v| -v);
    let neg_excl = Zip::from(&exclude).and(&pm).map_collect(|&e, &q| e || q);
    let nm = source_mask_impl(neg_data.view(), neg_excl.view(), neg, par);
    Zip::from(&pm).and(&nm).and(&exclude).map_collect(|&a, &b, &c| a || b || c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::destripe::gauss;

    #[test]
    fn source_mask_detects_dilates_and_rejects_small() {
        let (ny, nx) = (64, 64);
        let mut img = Array2::from_shape_fn((ny, nx), |(y, x)| 0.01 * gauss(5, (y * nx + x) as u64));
        // 3x3 source at (20, 20), single hot pixel at (40, 40), two-pixel source at (50, 10)
        for y in 19..22 {
            for x in 19..22 {
                img[[y, x]] = 1.0;
            }
        }
        img[[40, 40]] = 1.0;
        img[[50, 10]] = 1.0;
        img[[51, 11]] = 1.0; // diagonal neighbour: 8-connected, 2 pixels
        let excl = Array2::from_elem((ny, nx), false);
        let p = SourceMaskParams { nsigma: 3.0, npixels: 3, dilate_size: 5, maxiters: Some(5) };
        let m = source_mask(img.view(), excl.view(), &p).unwrap();
        // 3x3 dilated by 5x5 -> 7x7 = 49 pixels, the rest rejected
        assert_eq!(m.iter().filter(|&&v| v).count(), 49);
        assert!(m[[17, 17]] && m[[23, 23]] && !m[[16, 20]] && !m[[40, 40]] && !m[[50, 10]]);
        let p2 = SourceMaskParams { npixels: 2, dilate_size: 1, ..p };
        let m2 = par_source_mask(img.view(), excl.view(), &p2).unwrap();
        assert_eq!(m2.iter().filter(|&&v| v).count(), 9 + 2);
        // excluded pixels are neither statistics nor detections
        let mut ex = excl.clone();
        ex.slice_mut(s![19..22, 19..22]).fill(true);
        assert_eq!(source_mask(img.view(), ex.view(), &p).unwrap().iter().filter(|&&v| v).count(), 0);
    }
}

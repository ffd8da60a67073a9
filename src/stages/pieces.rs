//! Exposure pieces: the sub-rectangle of an exposure that lands on an output rectangle, read with
//! cfitsio subset reads (never the whole file), with its pixel map onto the output grid and the input
//! weights the drizzle uses. Shared by the `outlier` and `drizzle` stages.

use super::corrections::{Corrections, OutlierFlags};
use crate::config::WeightType;
use crate::geom::pixmap::{input_window, pixel_map, DEFAULT_STEP};
use crate::geom::TanSip;
use crate::io::fits::{read_region_dq, read_region_f32, FitsError, FitsProblem};
use crate::kernels::dq;
use crate::kernels::drizzle::{par_drizzle_add_window, DrizzleAccum, DrizzleParams, InputWindow};
use crate::plan::CalMeta;
use ndarray::{Array2, Array3, ArrayView2};

use std::ops::Range;

/// DQ bits that make a pixel unusable (JWST resample's default `good_bits = ~DO_NOT_USE+NON_SCIENCE`).
pub const BAD_BITS: u32 = dq::DO_NOT_USE | dq::NON_SCIENCE;

/// The part of one exposure that lands on an output rectangle.
pub struct Piece {
    /// Index of the exposure in the plan's exposure table.
    pub index: usize,
    /// The input rectangle read (0-based exposure pixels).
    pub rows: Range<usize>,
    pub cols: Range<usize>,
    pub sci: Array2<f32>,
    /// ERR, read only when asked for ([`Want::err`]); empty otherwise.
    pub err: Array2<f32>,
    pub dq: Array2<u32>,
    /// VAR_POISSON, VAR_RNOISE, VAR_FLAT (read when asked for).
    pub vars: Option<[Array2<f32>; 3]>,
    /// Output coordinates `[y, x, (x_out, y_out)]` of each input pixel centre, relative to the
    /// output origin given to [`read_piece`].
    pub pixmap: Array3<f64>,
    /// The pixels to drizzle (indices into the piece): the piece less a one-pixel border wherever the
    /// border is a cut rather than the detector edge, so that every drizzled pixel's corners are
    /// interpolated between true neighbours, whichever chunk reads it.
    pub inner: InputWindow,
}

/// Pixels left out on each side of the Lyot box edge when the two parts are matched.
pub const LYOT_GAP_PX: usize = 2;

/// Which pixels of an exposure take part: the whole frame, or (for level matching) the MIRI imager
/// field without the Lyot box, or the Lyot box alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Whole,
    /// Outside the box `[y0, y1, x0, x1]`.
    Main([usize; 4]),
    /// Inside the box.
    Lyot([usize; 4]),
}

impl Part {
    /// Whether exposure pixel `(y, x)` belongs to the part. [`LYOT_GAP_PX`] pixels on either side
    /// of the box edge belong to neither part, so that no output pixel is resampled from both sides
    /// of the edge or only partly covered at it (which biases the pair differences wherever the
    /// emission has a gradient across the edge).
    pub fn contains(&self, y: usize, x: usize) -> bool {
        let (y, x, g) = (y as i64, x as i64, LYOT_GAP_PX as i64);
        let inside = |[y0, y1, x0, x1]: [usize; 4], m: i64| {
            (y0 as i64 + m..y1 as i64 - m).contains(&y) && (x0 as i64 + m..x1 as i64 - m).contains(&x)
        };
        match *self {
            Part::Whole => true,
            Part::Main(b) => !inside(b, -g),
            Part::Lyot(b) => inside(b, g),
        }
    }
}

/// What to read besides SCI, ERR and DQ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Want {
    /// All three variance planes.
    pub vars: bool,
    /// VAR_RNOISE alone (for inverse-variance weights).
    pub rnoise: bool,
    /// ERR (the outlier test); the drizzle and the resampled stacks do not need it.
    pub err: bool,
}

/// Read the piece of exposure `index` covering output rows x cols (grid pixels), with `margin` input
/// pixels around it, with `corrections` subtracted from SCI; pixel-map coordinates are relative to the
/// output pixel `origin = (y0, x0)`. `None` when the exposure does not reach the rectangle.
///
/// # Errors
/// [`FitsError`] naming the file and extension.
#[allow(clippy::too_many_arguments)]
pub fn read_piece(
    meta: &CalMeta,
    index: usize,
    grid: &TanSip,
    out_rows: Range<usize>,
    out_cols: Range<usize>,
    margin: usize,
    origin: (usize, usize),
    want: Want,
    corrections: &Corrections,
) -> Result<Option<Piece>, FitsError> {
    let Some((rows, cols)) = input_window(&meta.wcs, meta.shape, grid, out_rows, out_cols, margin) else {
        return Ok(None);
    };
    let p = &meta.path;
    let mut sci = read_region_f32(p, "SCI", rows.clone(), cols.clone())?;
    corrections.apply_window(index, rows.clone(), cols.clone(), &mut sci);
    let err = if want.err { read_region_f32(p, "ERR", rows.clone(), cols.clone())? } else { Array2::zeros((0, 0)) };
    let mut dqa = read_region_dq(p, rows.clone(), cols.clone())?;
    corrections.mask_dq(index, &mut dqa, rows.clone(), cols.clone());
    let read_var = |name: &str| read_region_f32(p, name, rows.clone(), cols.clone());
    let vars = if want.vars {
        Some([read_var("VAR_POISSON")?, read_var("VAR_RNOISE")?, read_var("VAR_FLAT")?])
    } else if want.rnoise {
        // only VAR_RNOISE is needed: keep it in the middle slot
        let rn = read_var("VAR_RNOISE")?;
        let z = Array2::zeros((0, 0));
        Some([z.clone(), rn, z])
    } else {
        None
    };
    let pixmap = pixel_map(&meta.wcs, grid, rows.clone(), cols.clone(), origin, DEFAULT_STEP);
    corrections.apply_plane(index, &mut sci, &pixmap, origin);
    let [ny, nx] = meta.shape;
    let cut = |start: usize, end: usize, n: usize| {
        let a = usize::from(start > 0);
        let b = (end - start) - usize::from(end < n);
        a..b.max(a)
    };
    let inner = InputWindow { rows: cut(rows.start, rows.end, ny), cols: cut(cols.start, cols.end, nx) };
    Ok(Some(Piece { index, rows, cols, sci, err, dq: dqa, vars, pixmap, inner }))
}

/// Drizzle `part` of exposure `index` alone (square kernel at `pixfrac`, no variance planes, no
/// outlier flags) onto output rows x cols of the grid, with its corrections subtracted: the
/// individually resampled exposure the `level` and `outlier` stages compare. `None` when the
/// exposure misses the rectangle.
///
/// # Errors
/// [`FitsError`] naming the file and extension.
#[allow(clippy::too_many_arguments)]
pub fn resample_alone(
    meta: &CalMeta,
    index: usize,
    grid: &TanSip,
    out_rows: Range<usize>,
    out_cols: Range<usize>,
    wt: WeightType,
    pixfrac: f64,
    corrections: &Corrections,
    part: Part,
) -> Result<Option<DrizzleAccum>, FitsError> {
    let want = Want { vars: false, rnoise: wt == WeightType::Ivm, err: false };
    let origin = [out_rows.start, out_cols.start];
    let (h, w) = (out_rows.len(), out_cols.len());
    let Some(piece) = read_piece(meta, index, grid, out_rows, out_cols, 3, (0, 0), want, corrections)? else {
        return Ok(None);
    };
    let mut weights = piece.weights(meta, wt, None)?;
    if part != Part::Whole {
        let (y0, x0) = (piece.rows.start, piece.cols.start);
        weights.indexed_iter_mut().filter(|((y, x), _)| !part.contains(y0 + y, x0 + x)).for_each(|(_, w)| *w = 0.0);
    }
    let mut acc = DrizzleAccum::with_origin(origin, h, w, 0, 1);
    let dp = DrizzleParams { pixfrac };
    par_drizzle_add_window(piece.sci.view(), weights.view(), piece.pixmap.view(), &[], &piece.inner, 0, &dp, &mut acc);
    Ok(Some(acc))
}

impl Piece {
    /// Input weights of the piece (see [`input_weights`]), with the outlier flags applied.
    ///
    /// # Errors
    /// VAR_RNOISE not read with `Ivm` weights, naming the file.
    pub fn weights(
        &self,
        meta: &CalMeta,
        wt: WeightType,
        flags: Option<&OutlierFlags>,
    ) -> Result<Array2<f32>, FitsError> {
        let flagged = flags.map(|f| f.mask(self.index, meta.shape[1], self.rows.clone(), self.cols.clone()));
        let rn = match (&self.vars, wt) {
            (Some(v), WeightType::Ivm) if v[1].dim() == self.sci.dim() => Some(v[1].view()),
            (_, WeightType::Ivm) => {
                return Err(FitsError {
                    path: meta.path.clone(),
                    hdu: Some("VAR_RNOISE".into()),
                    keyword: None,
                    problem: FitsProblem::BadData(
                        "needed for ivm weights (drizzle.weight_type = \"ivm\") but not read".into(),
                    ),
                })
            }
            (_, WeightType::Exptime) => None,
        };
        Ok(input_weights(self.sci.view(), self.dq.view(), rn, flagged.as_ref().map(|m| m.view()), meta.effexptm_s))
    }
}

/// The weights of a whole exposure (no pixel map, no outlier flags): read SCI, DQ and, for `Ivm`,
/// VAR_RNOISE.
///
/// # Errors
/// [`FitsError`] naming the file and extension.
pub fn exposure_weights(meta: &CalMeta, wt: WeightType) -> Result<Array2<f32>, FitsError> {
    let [ny, nx] = meta.shape;
    let sci = read_region_f32(&meta.path, "SCI", 0..ny, 0..nx)?;
    let dqa = read_region_dq(&meta.path, 0..ny, 0..nx)?;
    let rn = match wt {
        WeightType::Ivm => Some(read_region_f32(&meta.path, "VAR_RNOISE", 0..ny, 0..nx)?),
        WeightType::Exptime => None,
    };
    Ok(input_weights(sci.view(), dqa.view(), rn.as_ref().map(|r| r.view()), None, meta.effexptm_s))
}

/// Input weights: 0 for unusable pixels (non-finite SCI, [`BAD_BITS`] in DQ, `flagged`), otherwise
/// the inverse of VAR_RNOISE (`rnoise` given: JWST's default "ivm"; 0 where it is not positive) or the
/// exposure time.
pub fn input_weights(
    sci: ArrayView2<f32>,
    dq: ArrayView2<u32>,
    rnoise: Option<ArrayView2<f32>>,
    flagged: Option<ArrayView2<bool>>,
    effexptm_s: f64,
) -> Array2<f32> {
    Array2::from_shape_fn(sci.dim(), |(y, x)| {
        let s = sci[[y, x]];
        if !s.is_finite() || dq[[y, x]] & BAD_BITS != 0 || flagged.as_ref().is_some_and(|m| m[[y, x]]) {
            return 0.0;
        }
        match &rnoise {
            Some(v) => {
                let r = v[[y, x]];
                if r.is_finite() && r > 0.0 {
                    1.0 / r
                } else {
                    0.0
                }
            }
            None => effexptm_s as f32,
        }
    })
}

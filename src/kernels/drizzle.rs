//! The drizzle square kernel (Fruchter & Hook 2002, PASP 114, 144): each input pixel, shrunk by
//! `pixfrac` about its centre, is mapped onto the output grid as a quadrilateral, and its value is
//! added to every output pixel it overlaps with the weight `overlap area / quadrilateral area *
//! input weight`. The output is the weighted mean, so surface brightness (MJy/sr) is preserved and
//! flux is conserved. Extra planes (VAR_POISSON, VAR_RNOISE, VAR_FLAT) are propagated with squared
//! weights, and a context image records which exposures touched each output pixel.
//!
//! The arithmetic follows the reference C implementation, cdrizzle in spacetelescope/drizzle
//! (`do_kernel_square_var` in `cdrizzlebox.c`, `interpolate_point`/`interpolate_four_points` in
//! `cdrizzlemap.c`), operation for operation where it decides bits:
//! - the corners `(i -+ pixfrac/2, j -+ pixfrac/2)` of input pixel `(i, j)` are mapped by bilinear
//!   interpolation of the pixel map of pixel centres. Near the input edges (`i == 0`, `i >= nx - 2`,
//!   `j == 0` or `j >= ny - 2`) every corner is interpolated on its own in the cell whose lower
//!   corner is `(clamp(trunc(x), 0, nx - 2), clamp(trunc(y), 0, ny - 2))`, so corners beyond the
//!   outermost pixel centres are linearly *extrapolated* from the outermost 2x2 cell (no clamping of
//!   the coordinates themselves). Elsewhere the four corners are weighted sums of the 3x3
//!   neighbourhood with weights `(pixfrac/2)^2`, `pixfrac/2 (1 - pixfrac/2)` and
//!   `(1 - pixfrac/2)^2`, summed in cdrizzle's order. A NaN corner drops the input pixel;
//! - the Jacobian is the quadrilateral's area, `0.5 ((x1 - x3)(y0 - y2) - (x0 - x2)(y1 - y3))`, in
//!   output pixels (so it includes the `pixfrac^2` shrink);
//! - the overlap with output pixel `(ii, jj)` is exact: `boxer`, the sum of signed areas under the
//!   four edges clipped to the unit square (`sgarea`);
//! - `dow = overlap * weight / jacobian`; the context bit is set where `dow > 0` (as f32).
//!
//! tessera accumulates f64 sums (`sum dow`, `sum dow * value`, `sum dow^2 * var`) and divides once in
//! [`DrizzleAccum::finish`]; cdrizzle keeps an f32 running mean, so the two agree to f32 rounding
//! (~1e-7 relative), not bit for bit. The weight normalisation is the same: `wht = sum dow`, with no
//! exposure-time or pixel-scale factor.
//!
//! One deliberate difference at the edge of the *output*: cdrizzle only visits input pixels whose
//! centres map inside the output image (its polygon scanner, `init_image_scanner`), so the partial
//! overlap of an input pixel whose centre lies just outside is dropped. Here every overlap inside the
//! chunk counts and overlap outside it is ignored, which is what makes drizzling onto chunks and
//! stitching them bit-identical to drizzling onto the whole grid. All arithmetic is done in output
//! *grid* coordinates (the accumulator knows its chunk's origin), so a chunk sees exactly the
//! numbers the whole grid would.
//!
//! Parallelism: [`par_drizzle_add`] splits the chunk's output rows into bands and runs the same band
//! body as [`drizzle_add`] on each band over the whole input. Every output pixel receives its
//! contributions in input raster order either way, so the two are bit-identical.
//!
//! What does not live here: computing the pixel map from WCSs (`geom`), blot (inverse drizzle),
//! reading inputs or writing outputs (`io`), choosing chunks (`plan`) and merging chunks across ranks.

use ndarray::{Array2, Array3, ArrayView2, ArrayView3, ArrayViewMut2, Axis, CowArray, Ix3};
use rayon::prelude::*;
use std::ops::Range;

/// Parameters of the drizzle square kernel.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DrizzleParams {
    /// Linear size of the drop relative to the input pixel, `0 < pixfrac <= 1`. Default 1.0.
    pub pixfrac: f64,
}

impl Default for DrizzleParams {
    fn default() -> Self {
        Self { pixfrac: 1.0 }
    }
}

/// Invalid drizzle parameters.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum DrizzleError {
    /// `pixfrac` outside `(0, 1]` or not finite.
    #[error("drizzle pixfrac must be in (0, 1], got {pixfrac}")]
    Pixfrac {
        /// The rejected value.
        pixfrac: f64,
    },
}

impl DrizzleParams {
    /// Check the parameters.
    ///
    /// # Errors
    /// [`DrizzleError::Pixfrac`] if `pixfrac` is not in `(0, 1]`.
    pub fn validate(&self) -> Result<(), DrizzleError> {
        if self.pixfrac > 0.0 && self.pixfrac <= 1.0 {
            Ok(())
        } else {
            Err(DrizzleError::Pixfrac { pixfrac: self.pixfrac })
        }
    }
}

/// Running sums for one output chunk, all `[y, x]` with the chunk's shape. f64 sums make the
/// result independent of how exposures are split across threads as long as exposures are added in
/// a fixed order.
#[derive(Debug, Clone, PartialEq)]
pub struct DrizzleAccum {
    /// `[y, x]` output-grid pixel of element `[0, 0]` of the chunk. Pixel maps are in grid
    /// coordinates; with the default origin `[0, 0]` grid and chunk coordinates coincide.
    pub origin: [usize; 2],
    /// Sum of `dow = overlap / jacobian * weight`.
    pub wsum: Array2<f64>,
    /// Sum of `dow * value`.
    pub sci_wsum: Array2<f64>,
    /// Per extra variance plane: sum of `dow^2 * var`.
    pub var_w2sum: Vec<Array2<f64>>,
    /// `[plane, y, x]`: bit `i % 32` of plane `i / 32` is set if exposure `i` contributed.
    pub context: Array3<u32>,
}

/// Finished drizzle products of one chunk, all `[y, x]`.
#[derive(Debug, Clone, PartialEq)]
pub struct DrizzleOut {
    /// Weighted mean surface brightness (unit of the input, MJy/sr); NaN where nothing landed.
    pub sci: Array2<f32>,
    /// Total weight `sum dow`.
    pub wht: Array2<f32>,
    /// Propagated variance planes, `sum dow^2 var / (sum dow)^2`; NaN where nothing landed.
    pub var: Vec<Array2<f32>>,
    /// `[plane, y, x]` context bits (see [`DrizzleAccum::context`]).
    pub context: Array3<u32>,
}

/// What happened to the input pixels of one [`drizzle_add`] call (counts of input pixels).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrizzleStats {
    /// Input pixels looked at (the input window).
    pub pixels_in: usize,
    /// Pixels with positive weight and a finite mapping whose drop reaches the chunk.
    pub pixels_used: usize,
    /// Pixels with positive weight and a finite mapping whose drop misses the chunk.
    pub pixels_off_chunk: usize,
    /// Pixels skipped because their weight is not positive (0, negative or NaN).
    pub pixels_zero_weight: usize,
    /// Pixels with positive weight skipped because a corner maps to NaN.
    pub pixels_unmapped: usize,
}

impl DrizzleAccum {
    /// Zeroed sums for an `ny` x `nx` chunk at grid origin `[0, 0]` with `n_var` variance planes and
    /// room for `n_exposures` context bits (at least one plane).
    pub fn new(ny: usize, nx: usize, n_var: usize, n_exposures: usize) -> Self {
        Self::with_origin([0, 0], ny, nx, n_var, n_exposures)
    }

    /// Like [`DrizzleAccum::new`] for a chunk whose element `[0, 0]` is output-grid pixel
    /// `origin = [y0, x0]`.
    pub fn with_origin(origin: [usize; 2], ny: usize, nx: usize, n_var: usize, n_exposures: usize) -> Self {
        let planes = n_exposures.div_ceil(32).max(1);
        Self {
            origin,
            wsum: Array2::zeros((ny, nx)),
            sci_wsum: Array2::zeros((ny, nx)),
            var_w2sum: (0..n_var).map(|_| Array2::zeros((ny, nx))).collect(),
            context: Array3::zeros((planes, ny, nx)),
        }
    }

    /// `[ny, nx]` of the chunk.
    pub fn shape(&self) -> [usize; 2] {
        [self.wsum.nrows(), self.wsum.ncols()]
    }

    /// Finalise: `sci = sci_wsum / wsum` (NaN where `wsum == 0`), `wht = wsum` (f32),
    /// `var_k = var_w2sum_k / wsum^2` (NaN where `wsum == 0`).
    pub fn finish(&self) -> DrizzleOut {
        let ratio = |num: &Array2<f64>, square: bool| {
            let mut out = Array2::<f32>::zeros(num.raw_dim());
            ndarray::Zip::from(&mut out).and(num).and(&self.wsum).for_each(|o, &n, &w| {
                *o = if w == 0.0 { f32::NAN } else { (n / if square { w * w } else { w }) as f32 };
            });
            out
        };
        DrizzleOut {
            sci: ratio(&self.sci_wsum, false),
            wht: self.wsum.mapv(|w| w as f32),
            var: self.var_w2sum.iter().map(|v| ratio(v, true)).collect(),
            context: self.context.clone(),
        }
    }
}

/// A rectangle of input pixels, `[rows, cols]` ranges of array indices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputWindow {
    /// Input rows (y) to drizzle.
    pub rows: Range<usize>,
    /// Input columns (x) to drizzle.
    pub cols: Range<usize>,
}

/// Drizzle one input image into `acc` (serial).
///
/// - `sci` `[y, x]`: input surface brightness.
/// - `weight` `[y, x]`: per-input-pixel weight; pixels with weight `<= 0` (or NaN) are skipped
///   (bad DQ, NaN data must be given weight 0).
/// - `pixmap` `[y, x, 2]`: output-grid pixel coordinates `(x_out, y_out)` (0-based, pixel centres
///   on integers, relative to the grid origin, which is the chunk origin for an accumulator made by
///   [`DrizzleAccum::new`]) of each input pixel centre; NaN = unmapped.
/// - `vars`: extra planes (VAR_POISSON, VAR_RNOISE, VAR_FLAT) drizzled with `dow^2`.
/// - `exposure_index`: which context bit to set.
///
/// The whole input is processed; a caller can pass a sub-rectangle read from a file (pixmap, sci,
/// weight and vars cut alike). The corners of the outermost pixels are then extrapolated from the
/// cut pixel map, as cdrizzle does at its image edges; to reproduce a full-image run exactly, read
/// a one-pixel margin and use [`drizzle_add_window`].
///
/// # Panics
/// If `pixfrac` is invalid, the shapes of `weight`, `pixmap` (`[ny, nx, 2]`) and `vars` do not
/// match `sci`, `vars.len()` differs from the accumulator's variance planes, or `exposure_index`
/// has no context plane.
pub fn drizzle_add(
    sci: ArrayView2<f32>,
    weight: ArrayView2<f32>,
    pixmap: ArrayView3<f64>,
    vars: &[ArrayView2<f32>],
    exposure_index: usize,
    p: &DrizzleParams,
    acc: &mut DrizzleAccum,
) -> DrizzleStats {
    let window = InputWindow { rows: 0..sci.nrows(), cols: 0..sci.ncols() };
    drizzle_add_window(sci, weight, pixmap, vars, &window, exposure_index, p, acc)
}

/// [`drizzle_add`] with the output rows split into bands processed in parallel by rayon; the result
/// is bit-identical to the serial version.
///
/// # Panics
/// As [`drizzle_add`].
pub fn par_drizzle_add(
    sci: ArrayView2<f32>,
    weight: ArrayView2<f32>,
    pixmap: ArrayView3<f64>,
    vars: &[ArrayView2<f32>],
    exposure_index: usize,
    p: &DrizzleParams,
    acc: &mut DrizzleAccum,
) -> DrizzleStats {
    let window = InputWindow { rows: 0..sci.nrows(), cols: 0..sci.ncols() };
    par_drizzle_add_window(sci, weight, pixmap, vars, &window, exposure_index, p, acc)
}

/// [`drizzle_add`] restricted to the input pixels in `window`; corners are still interpolated in
/// the whole `pixmap` (cdrizzle's `xmin..xmax`, `ymin..ymax`).
///
/// # Panics
/// As [`drizzle_add`], and if `window` exceeds the input.
#[allow(clippy::too_many_arguments)]
pub fn drizzle_add_window(
    sci: ArrayView2<f32>,
    weight: ArrayView2<f32>,
    pixmap: ArrayView3<f64>,
    vars: &[ArrayView2<f32>],
    window: &InputWindow,
    exposure_index: usize,
    p: &DrizzleParams,
    acc: &mut DrizzleAccum,
) -> DrizzleStats {
    let ny = acc.shape()[0];
    add_impl(sci, weight, pixmap, vars, window, exposure_index, p, acc, ny.max(1), false)
}

/// [`par_drizzle_add`] restricted to the input pixels in `window`.
///
/// # Panics
/// As [`drizzle_add_window`].
#[allow(clippy::too_many_arguments)]
pub fn par_drizzle_add_window(
    sci: ArrayView2<f32>,
    weight: ArrayView2<f32>,
    pixmap: ArrayView3<f64>,
    vars: &[ArrayView2<f32>],
    window: &InputWindow,
    exposure_index: usize,
    p: &DrizzleParams,
    acc: &mut DrizzleAccum,
) -> DrizzleStats {
    let ny = acc.shape()[0];
    let threads = rayon::current_num_threads();
    // one thread: one band, which skips the pre-scan's stored drops
    let band_rows = if threads <= 1 { ny.max(1) } else { ny.div_ceil(4 * threads).max(BAND_ROWS_MIN) };
    add_impl(sci, weight, pixmap, vars, window, exposure_index, p, acc, band_rows, true)
}

/// Smallest band of output rows given to one rayon task.
const BAND_ROWS_MIN: usize = 16;

/// Input pixels per block in the pre-scan: each block of a row remembers which output rows its
/// drops reach, so a band skips blocks that cannot touch it.
const BLOCK_PX: usize = 32;

/// The corners of one drop on the output grid, in cdrizzle's order: `(i - h, j + h)`,
/// `(i + h, j + h)`, `(i + h, j - h)`, `(i - h, j - h)` with `h = pixfrac / 2`.
#[derive(Debug, Clone, Copy, Default)]
struct Quad {
    x: [f64; 4],
    y: [f64; 4],
}

impl Quad {
    /// Signed area (output pixels^2), cdrizzle's `jaco`.
    #[inline]
    fn jacobian(&self) -> f64 {
        let (x, y) = (&self.x, &self.y);
        0.5 * ((x[1] - x[3]) * (y[0] - y[2]) - (x[0] - x[2]) * (y[1] - y[3]))
    }

    /// `[x_min, x_max, y_min, y_max]` of the output pixels (grid indices) the drop can touch:
    /// rounded extremes of the corners, as cdrizzle bounds its loop.
    #[inline]
    fn pixel_bounds(&self) -> [i64; 4] {
        let (x, y) = (&self.x, &self.y);
        let min = |v: &[f64; 4]| v[0].min(v[1]).min(v[2]).min(v[3]);
        let max = |v: &[f64; 4]| v[0].max(v[1]).max(v[2]).max(v[3]);
        [round_i64(min(x)), round_i64(max(x)), round_i64(min(y)), round_i64(max(y))]
    }
}

/// C `round` (half away from zero) to an integer, saturating far outside any grid; NaN gives 0.
///
/// Done with a truncating conversion and the exact fractional part instead of `f64::round`, which
/// is a libm call on baseline x86-64 (no SSE4.1) and showed up at 5% of the drizzle profile.
#[inline]
fn round_i64(v: f64) -> i64 {
    let c = v.clamp(-1.0e15, 1.0e15);
    let t = c as i64;
    // exact: |c| < 2^53, so `t as f64` is exact and so is the difference
    let frac = c - t as f64;
    if frac >= 0.5 {
        t + 1
    } else if frac <= -0.5 {
        t - 1
    } else {
        t
    }
}

/// Bilinear interpolation of the pixel map at the corners of input pixels, as cdrizzle does it.
struct CornerMap<'a> {
    /// `[y, x, 2]` in standard layout.
    map: &'a [f64],
    nx: usize,
    ny: usize,
    /// Half the drop size, `pixfrac / 2`.
    dh: f64,
    /// Weights of the interior four-corner interpolation: `dh^2`, `dh (1 - dh)`, `(1 - dh)^2`.
    w_far: f64,
    w_side: f64,
    w_near: f64,
}

impl<'a> CornerMap<'a> {
    fn new(map: &'a [f64], ny: usize, nx: usize, pixfrac: f64) -> Self {
        let dh = 0.5 * pixfrac;
        let om = 1.0 - dh;
        Self { map, nx, ny, dh, w_far: dh * dh, w_side: dh * om, w_near: om * om }
    }

    /// Pixel map `(x_out, y_out)` at input pixel `(i, j)`.
    #[inline]
    fn at(&self, i: usize, j: usize) -> (f64, f64) {
        let k = 2 * (j * self.nx + i);
        (self.map[k], self.map[k + 1])
    }

    /// cdrizzle's `interpolate_point`: bilinear in the cell whose lower corner is the truncated
    /// position clamped to `[0, n - 2]`, which extrapolates linearly beyond the outer centres.
    #[inline]
    fn point(&self, xin: f64, yin: f64) -> (f64, f64) {
        let i0 = (xin as i64).clamp(0, self.nx as i64 - 2) as usize;
        let j0 = (yin as i64).clamp(0, self.ny as i64 - 2) as usize;
        let x = xin - i0 as f64;
        let y = yin - j0 as f64;
        let x1 = 1.0 - x;
        let y1 = 1.0 - y;
        let (f00, g00) = self.at(i0, j0);
        let (f10, g10) = self.at(i0 + 1, j0);
        let (f01, g01) = self.at(i0, j0 + 1);
        let (f11, g11) = self.at(i0 + 1, j0 + 1);
        (
            f00 * x1 * y1 + f10 * x * y1 + f01 * x1 * y + f11 * x * y,
            g00 * x1 * y1 + g10 * x * y1 + g01 * x1 * y + g11 * x * y,
        )
    }

    /// The drop's corners for input pixel `(i, j)`, or `None` if one is NaN.
    #[inline]
    fn quad(&self, i: usize, j: usize) -> Option<Quad> {
        let mut q = Quad::default();
        if i > 0 && i + 2 < self.nx && j > 0 && j + 2 < self.ny {
            // cdrizzle's `interpolate_four_points`; the summation order is cdrizzle's.
            let (a, b, c) = (self.w_far, self.w_side, self.w_near);
            let (xmm, ymm) = self.at(i - 1, j - 1);
            let (x0m, y0m) = self.at(i, j - 1);
            let (xpm, ypm) = self.at(i + 1, j - 1);
            let (xm0, ym0) = self.at(i - 1, j);
            let (x00, y00) = self.at(i, j);
            let (xp0, yp0) = self.at(i + 1, j);
            let (xmp, ymp) = self.at(i - 1, j + 1);
            let (x0p, y0p) = self.at(i, j + 1);
            let (xpp, ypp) = self.at(i + 1, j + 1);
            q.x[0] = b * xm0 + c * x00 + a * xmp + b * x0p;
            q.y[0] = b * ym0 + c * y00 + a * ymp + b * y0p;
            q.x[1] = c * x00 + b * xp0 + b * x0p + a * xpp;
            q.y[1] = c * y00 + b * yp0 + b * y0p + a * ypp;
            q.x[2] = a * xpm + b * x0m + c * x00 + b * xp0;
            q.y[2] = a * ypm + b * y0m + c * y00 + b * yp0;
            q.x[3] = b * x0m + a * xmm + b * xm0 + c * x00;
            q.y[3] = b * y0m + a * ymm + b * ym0 + c * y00;
        } else {
            let (fi, fj) = (i as f64, j as f64);
            let (xl, xr) = (fi - self.dh, fi + self.dh);
            let (yb, yt) = (fj - self.dh, fj + self.dh);
            for (k, (xin, yin)) in [(xl, yt), (xr, yt), (xr, yb), (xl, yb)].into_iter().enumerate() {
                (q.x[k], q.y[k]) = self.point(xin, yin);
            }
        }
        if q.x.iter().chain(q.y.iter()).any(|v| v.is_nan()) {
            None
        } else {
            Some(q)
        }
    }
}

/// Signed area under the segment `(x1, y1) -> (x2, y2)` inside the unit square `[0, 1]^2`
/// (cdrizzle's `sgarea`): positive for segments running towards +x.
#[inline]
fn sgarea(x1: f64, y1: f64, x2: f64, y2: f64) -> f64 {
    let dx = x2 - x1;
    let dy = y2 - y1;
    if dx == 0.0 {
        return 0.0;
    }
    sgarea_with(x1, y1, x2, y2, dx, dy, dy / dx)
}

/// The body of [`sgarea`] given `dx = x2 - x1`, `dy = y2 - y1` and `slope = dy / dx` (`dx != 0`),
/// operation for operation, so a caller that knows those bits already gets the same result.
#[inline(always)]
fn sgarea_with(x1: f64, y1: f64, x2: f64, y2: f64, dx: f64, dy: f64, slope: f64) -> f64 {
    let (sgn_dx, mut xlo, mut xhi) = if dx < 0.0 { (-1.0, x2, x1) } else { (1.0, x1, x2) };
    if xlo >= 1.0 || xhi <= 0.0 {
        return 0.0;
    }
    xlo = if xlo > 0.0 { xlo } else { 0.0 };
    xhi = if xhi < 1.0 { xhi } else { 1.0 };
    let ylo = y1 + slope * (xlo - x1);
    let yhi = y1 + slope * (xhi - x1);
    sgarea_clip_y([x1, y1, x2, y2, dx, dy, sgn_dx], [xlo, xhi], [ylo, yhi])
}

/// The rest of [`sgarea_with`] once the segment is clipped to `0 <= x <= 1` (`xlo..xhi`, where it
/// reaches heights `ylo`, `yhi`): clipped to `0 <= y <= 1` and integrated, operation for
/// operation, for [`sgarea_with`] and [`sgarea_rest`] alike. `seg` is `[x1, y1, x2, y2, dx, dy,
/// sgn_dx]`.
#[inline(always)]
fn sgarea_clip_y(seg: [f64; 7], [mut xlo, mut xhi]: [f64; 2], [mut ylo, mut yhi]: [f64; 2]) -> f64 {
    let [x1, y1, x2, y2, dx, dy, sgn_dx] = seg;
    if ylo <= 0.0 && yhi <= 0.0 {
        return 0.0;
    }
    if ylo >= 1.0 && yhi >= 1.0 {
        return sgn_dx * (xhi - xlo);
    }
    let det = x1 * y2 - y1 * x2;
    if ylo < 0.0 {
        ylo = 0.0;
        xlo = det / dy;
    }
    if yhi < 0.0 {
        yhi = 0.0;
        xhi = det / dy;
    }
    if ylo <= 1.0 {
        if yhi <= 1.0 {
            return sgn_dx * 0.5 * (xhi - xlo) * (yhi + ylo);
        }
        let xtop = (dx + det) / dy;
        return sgn_dx * (0.5 * (xtop - xlo) * (1.0 + ylo) + xhi - xtop);
    }
    let xtop = (dx + det) / dy;
    sgn_dx * (0.5 * (xhi - xtop) * (1.0 + yhi) + xtop - xlo)
}

/// Overlap area of the quadrilateral `q` with output pixel `(ii, jj)` (the square from
/// `(ii - 0.5, jj - 0.5)` to `(ii + 0.5, jj + 0.5)`), signed like the quadrilateral's orientation
/// (cdrizzle's `boxer`).
#[inline]
fn boxer(ii: f64, jj: f64, q: &Quad) -> f64 {
    let is = ii - 0.5;
    let js = jj - 0.5;
    let px = [q.x[0] - is, q.x[1] - is, q.x[2] - is, q.x[3] - is];
    let py = [q.y[0] - js, q.y[1] - js, q.y[2] - js, q.y[3] - js];
    let mut sum = 0.0;
    for k in 0..4 {
        let n = (k + 1) & 3;
        sum += sgarea(px[k], py[k], px[n], py[n]);
    }
    sum
}

/// A drop's edge differences and slopes, computed once per drop instead of once per output pixel.
///
/// [`boxer`] shifts the corners by the pixel's lower-left corner `(is, js)` before it takes the
/// edge differences. Where every shift `q.x[k] - is` (and `q.y[k] - js`) is exact, the shifted
/// differences are the rounded differences of the unshifted corners, whatever the pixel, and so are
/// the slopes: by Sterbenz's lemma `a - b` is exact when `b / 2 <= a <= 2 b`, which
/// [`Edges::exact_for`] checks for the drop's whole pixel box. [`boxer_with`] is then [`boxer`] to
/// the bit, with three of its operations per edge and pixel (two subtractions and the division)
/// done once per drop.
#[derive(Debug, Clone, Copy)]
struct Edges {
    dx: [f64; 4],
    dy: [f64; 4],
    slope: [f64; 4],
}

impl Edges {
    #[inline]
    fn new(q: &Quad) -> Self {
        let mut e = Self { dx: [0.0; 4], dy: [0.0; 4], slope: [0.0; 4] };
        for k in 0..4 {
            let n = (k + 1) & 3;
            e.dx[k] = q.x[n] - q.x[k];
            e.dy[k] = q.y[n] - q.y[k];
            e.slope[k] = e.dy[k] / e.dx[k];
        }
        e
    }

    /// Whether every corner shift of [`boxer`] is exact for the output pixels `xlo..=xhi` x
    /// `ylo..=yhi`: each corner coordinate `a` and each pixel edge `s` (`ii - 0.5`, `jj - 0.5`)
    /// satisfy `0 < s / 2 <= a <= 2 s`. The bounds `(hi - 0.5) / 2` and `2 (lo - 0.5)` are exact.
    #[inline]
    fn exact_for(q: &Quad, [xlo, xhi, ylo, yhi]: [i64; 4]) -> bool {
        let ok = |v: &[f64; 4], lo: i64, hi: i64| {
            let (s_lo, s_hi) = (lo as f64 - 0.5, hi as f64 - 0.5);
            let (a_lo, a_hi) = (v[0].min(v[1]).min(v[2]).min(v[3]), v[0].max(v[1]).max(v[2]).max(v[3]));
            s_lo > 0.0 && a_lo >= 0.5 * s_hi && a_hi <= 2.0 * s_lo
        };
        ok(&q.x, xlo, xhi) && ok(&q.y, ylo, yhi)
    }
}

/// [`boxer`] with the edge constants of [`Edges`]; bit-identical to it where
/// [`Edges::exact_for`] holds for the pixel.
#[inline]
fn boxer_with(ii: f64, jj: f64, q: &Quad, e: &Edges) -> f64 {
    let is = ii - 0.5;
    let js = jj - 0.5;
    let px = [q.x[0] - is, q.x[1] - is, q.x[2] - is, q.x[3] - is];
    let py = [q.y[0] - js, q.y[1] - js, q.y[2] - js, q.y[3] - js];
    let mut sum = 0.0;
    for k in 0..4 {
        let n = (k + 1) & 3;
        sum += if e.dx[k] == 0.0 { 0.0 } else { sgarea_with(px[k], py[k], px[n], py[n], e.dx[k], e.dy[k], e.slope[k]) };
    }
    sum
}

/// Which output rows (grid indices, inclusive) the drops of one block of input pixels reach;
/// empty when `lo > hi`.
#[derive(Debug, Clone, Copy)]
struct RowReach {
    lo: i64,
    hi: i64,
}

impl RowReach {
    const EMPTY: Self = Self { lo: i64::MAX, hi: i64::MIN };
}

/// One input pixel's drop as the pre-scan found it: corners and the output pixels it can touch,
/// clipped to the chunk (`[x_lo, x_hi, y_lo, y_hi]`, grid indices), or [`Drop::SKIP`] for pixels
/// with no weight, no mapping or no reach into the chunk.
#[derive(Debug, Clone, Copy)]
struct Drop {
    q: Quad,
    bounds: [i32; 4],
}

impl Drop {
    /// Marks a pixel the bands skip (empty bounds).
    const SKIP: Self = Self { q: Quad { x: [0.0; 4], y: [0.0; 4] }, bounds: [1, 0, 1, 0] };

    #[inline]
    fn is_skip(&self) -> bool {
        self.bounds[0] > self.bounds[1]
    }
}

/// Everything a band needs to read, shared by all bands.
struct Inputs<'a> {
    sci: ArrayView2<'a, f32>,
    weight: ArrayView2<'a, f32>,
    vars: &'a [ArrayView2<'a, f32>],
    corners: CornerMap<'a>,
    window: InputWindow,
    /// Grid columns of the chunk, inclusive.
    col_lo: i64,
    col_hi: i64,
    /// Grid rows of the chunk, inclusive.
    row_lo: i64,
    row_hi: i64,
    /// Blocks per input row of the window.
    blocks: usize,
}

/// Why an input pixel drops nothing into the chunk.
enum Skip {
    ZeroWeight,
    Unmapped,
    OffChunk,
}

impl Inputs<'_> {
    /// The drop of input pixel `(i, j)` with its output-pixel bounds clipped to the chunk.
    #[inline]
    fn drop_at(&self, i: usize, j: usize) -> Result<Drop, Skip> {
        let w_in = self.weight[[j, i]];
        if w_in.is_nan() || w_in <= 0.0 {
            return Err(Skip::ZeroWeight);
        }
        let q = self.corners.quad(i, j).ok_or(Skip::Unmapped)?;
        let [bx0, bx1, by0, by1] = q.pixel_bounds();
        let (xlo, xhi) = (bx0.max(self.col_lo), bx1.min(self.col_hi));
        let (ylo, yhi) = (by0.max(self.row_lo), by1.min(self.row_hi));
        if xlo > xhi || ylo > yhi {
            return Err(Skip::OffChunk);
        }
        // chunk indices are grid indices, far below i32::MAX
        Ok(Drop { q, bounds: [xlo as i32, xhi as i32, ylo as i32, yhi as i32] })
    }
}

impl DrizzleStats {
    #[inline]
    fn count(&mut self, r: &Result<Drop, Skip>) {
        match r {
            Ok(_) => self.pixels_used += 1,
            Err(Skip::ZeroWeight) => self.pixels_zero_weight += 1,
            Err(Skip::Unmapped) => self.pixels_unmapped += 1,
            Err(Skip::OffChunk) => self.pixels_off_chunk += 1,
        }
    }

    fn plus(self, b: Self) -> Self {
        Self {
            pixels_in: self.pixels_in + b.pixels_in,
            pixels_used: self.pixels_used + b.pixels_used,
            pixels_off_chunk: self.pixels_off_chunk + b.pixels_off_chunk,
            pixels_zero_weight: self.pixels_zero_weight + b.pixels_zero_weight,
            pixels_unmapped: self.pixels_unmapped + b.pixels_unmapped,
        }
    }
}

/// Mutable rows `[row0, row0 + n)` of the chunk's sums (one band).
struct BandMut<'a> {
    /// Grid row of the band's first row.
    row0: i64,
    wsum: ArrayViewMut2<'a, f64>,
    sci_wsum: ArrayViewMut2<'a, f64>,
    var: Vec<ArrayViewMut2<'a, f64>>,
    ctx: ArrayViewMut2<'a, u32>,
}

/// A band's sums as flat slices, and the band's place on the grid.
struct BandSums<'a> {
    row_lo: i64,
    row_hi: i64,
    ncols: usize,
    wsum: &'a mut [f64],
    sci_wsum: &'a mut [f64],
    var: Vec<&'a mut [f64]>,
    ctx: &'a mut [u32],
    /// Scratch: the variance values of the current input pixel.
    var_in: Vec<f64>,
}

impl<'a> BandSums<'a> {
    fn new(band: &'a mut BandMut) -> Self {
        const LAYOUT: &str = "accumulator arrays are in standard layout";
        let nrows = band.wsum.nrows();
        let n_var = band.var.len();
        Self {
            row_lo: band.row0,
            row_hi: band.row0 + nrows as i64 - 1,
            ncols: band.wsum.ncols(),
            wsum: band.wsum.as_slice_mut().expect(LAYOUT),
            sci_wsum: band.sci_wsum.as_slice_mut().expect(LAYOUT),
            var: band.var.iter_mut().map(|v| v.as_slice_mut().expect(LAYOUT)).collect(),
            ctx: band.ctx.as_slice_mut().expect(LAYOUT),
            var_in: vec![0.0; n_var],
        }
    }

    /// Add the drop of input pixel `(i, j)` to the band's rows.
    #[inline]
    fn deposit(&mut self, inputs: &Inputs, d: &Drop, i: usize, j: usize, bit: u32) {
        let q = &d.q;
        let [bx0, bx1, by0, by1] = d.bounds.map(i64::from);
        let (ylo, yhi) = (by0.max(self.row_lo), by1.min(self.row_hi));
        let (xlo, xhi) = (bx0, bx1);
        if ylo > yhi || xlo > xhi {
            return;
        }
        let w = f64::from(inputs.weight[[j, i]]) / q.jacobian();
        let value = f64::from(inputs.sci[[j, i]]);
        for (k, v) in self.var_in.iter_mut().enumerate() {
            *v = f64::from(inputs.vars[k][[j, i]]);
        }
        let box_ = [xlo, xhi, ylo, yhi];
        let edges = Edges::new(q);
        if Edges::exact_for(q, box_) {
            // the common case: the column part of every edge once per column (see `ColEdge`)
            match self.var.len() {
                0 => self.add_columns::<0>(inputs, q, &edges, box_, w, value, bit),
                3 => self.add_columns::<3>(inputs, q, &edges, box_, w, value, bit),
                _ => self.add_rows_dyn(inputs, box_, w, value, bit, |jj, c| {
                    boxer_with((xlo + c as i64) as f64, jj as f64, q, &edges)
                }),
            }
        } else {
            self.add_rows_dyn(inputs, box_, w, value, bit, |jj, c| boxer((xlo + c as i64) as f64, jj as f64, q));
        }
    }

    /// The accumulation of [`BandSums::deposit`] over the box `[xlo, xhi, ylo, yhi]` (rows already
    /// clipped to the band) with `NV` variance planes, column by column: each column's edge terms
    /// ([`ColEdge`]) once, then the rows. Every output pixel receives one contribution per drop,
    /// so the visiting order within the box does not change any sum.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn add_columns<const NV: usize>(
        &mut self,
        inputs: &Inputs,
        q: &Quad,
        e: &Edges,
        [xlo, xhi, ylo, yhi]: [i64; 4],
        w: f64,
        value: f64,
        bit: u32,
    ) {
        let var_in: [f64; NV] = std::array::from_fn(|k| self.var_in[k]);
        let col0 = (xlo - inputs.col_lo) as usize;
        for ii in xlo..=xhi {
            let ce = ColEdge::column(q, e, ii);
            let col = col0 + (ii - xlo) as usize;
            for jj in ylo..=yhi {
                let dover = ColEdge::boxer(&ce, q, e, jj);
                if dover != 0.0 {
                    self.add_at((jj - self.row_lo) as usize * self.ncols + col, dover * w, value, bit, &var_in);
                }
            }
        }
    }

    /// One drop's share `dow` (overlap x weight) of output pixel `k`, as cdrizzle adds it: nothing
    /// when the weight rounds to 0 in f32 (cdrizzle tests it after that rounding), the context bit
    /// where it is positive, then the weight, the weighted value and the variances (`var_in` the
    /// input pixel's, weighted by `dow^2`).
    #[inline(always)]
    fn add_at(&mut self, k: usize, dow: f64, value: f64, bit: u32, var_in: &[f64]) {
        let dow32 = dow as f32;
        if dow32 == 0.0 {
            return;
        }
        if dow32 > 0.0 {
            self.ctx[k] |= bit;
        }
        self.wsum[k] += dow;
        self.sci_wsum[k] += dow * value;
        let dow2 = dow * dow;
        for (plane, v) in self.var.iter_mut().zip(var_in) {
            plane[k] += dow2 * v;
        }
    }

    /// [`BandSums::add_columns`] row by row for any number of variance planes and any overlap
    /// function: `area(jj, c)` is the overlap with output pixel `(xlo + c, jj)`.
    #[inline(always)]
    fn add_rows_dyn<F: Fn(i64, usize) -> f64>(
        &mut self,
        inputs: &Inputs,
        [xlo, xhi, ylo, yhi]: [i64; 4],
        w: f64,
        value: f64,
        bit: u32,
        area: F,
    ) {
        let n = (xhi - xlo + 1) as usize;
        let col = (xlo - inputs.col_lo) as usize;
        // the scratch moves out for the loop (no copy), so `add_at` can borrow the sums
        let var_in = std::mem::take(&mut self.var_in);
        for jj in ylo..=yhi {
            let k0 = (jj - self.row_lo) as usize * self.ncols + col;
            for c in 0..n {
                let dover = area(jj, c);
                if dover != 0.0 {
                    self.add_at(k0 + c, dover * w, value, bit, &var_in);
                }
            }
        }
        self.var_in = var_in;
    }
}

/// The part of one edge's [`sgarea_with`] that depends only on the output column (where
/// [`Edges::exact_for`] holds): the shifted x ends, the sign, the clipped x range, whether the edge
/// misses the column, and `slope * (x - x1)` at both ends of the clipped range. [`ColEdge::boxer`]
/// then does per pixel only what depends on the row, with the same operations on the same operands
/// as [`boxer_with`], so the result is [`boxer`]'s to the bit.
#[derive(Clone, Copy)]
struct ColEdge {
    /// The edge is vertical or its x range misses the column (`sgarea` is 0).
    off: bool,
    x1: f64,
    x2: f64,
    sgn: f64,
    xlo: f64,
    xhi: f64,
    /// `slope * (xlo - x1)` and `slope * (xhi - x1)`.
    tlo: f64,
    thi: f64,
}

impl ColEdge {
    /// The four edges' column terms for output column `ii`.
    #[inline(always)]
    fn column(q: &Quad, e: &Edges, ii: i64) -> [Self; 4] {
        let is = ii as f64 - 0.5;
        std::array::from_fn(|k| {
            let nk = (k + 1) & 3;
            let (x1, x2) = (q.x[k] - is, q.x[nk] - is);
            let (sgn, xl, xh) = if e.dx[k] < 0.0 { (-1.0, x2, x1) } else { (1.0, x1, x2) };
            let off = e.dx[k] == 0.0 || xl >= 1.0 || xh <= 0.0;
            let xl = if xl > 0.0 { xl } else { 0.0 };
            let xh = if xh < 1.0 { xh } else { 1.0 };
            let slope = e.slope[k];
            Self { off, x1, x2, sgn, xlo: xl, xhi: xh, tlo: slope * (xl - x1), thi: slope * (xh - x1) }
        })
    }

    /// [`boxer_with`] for output pixel `(ii, jj)` given column `ii`'s terms.
    #[inline(always)]
    fn boxer(ce: &[Self; 4], q: &Quad, e: &Edges, jj: i64) -> f64 {
        let js = jj as f64 - 0.5;
        let mut sum = 0.0;
        for (k, c) in ce.iter().enumerate() {
            sum += if c.off {
                0.0
            } else {
                let nk = (k + 1) & 3;
                sgarea_rest(c, q.y[k] - js, q.y[nk] - js, e.dx[k], e.dy[k])
            };
        }
        sum
    }
}

/// [`sgarea_with`] after its column part (see [`ColEdge`]), operation for operation.
#[inline(always)]
fn sgarea_rest(ce: &ColEdge, y1: f64, y2: f64, dx: f64, dy: f64) -> f64 {
    let ylo = y1 + ce.tlo;
    let yhi = y1 + ce.thi;
    sgarea_clip_y([ce.x1, y1, ce.x2, y2, dx, dy, ce.sgn], [ce.xlo, ce.xhi], [ylo, yhi])
}

thread_local! {
    /// The pre-scan's drops and row reaches, kept between calls on the calling thread so that a
    /// chunk of many exposures does not allocate (and fault in) them once per exposure.
    static SCRATCH: std::cell::RefCell<(Vec<Drop>, Vec<RowReach>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

#[allow(clippy::too_many_arguments)]
fn add_impl(
    sci: ArrayView2<f32>,
    weight: ArrayView2<f32>,
    pixmap: ArrayView3<f64>,
    vars: &[ArrayView2<f32>],
    window: &InputWindow,
    exposure_index: usize,
    p: &DrizzleParams,
    acc: &mut DrizzleAccum,
    band_rows: usize,
    parallel: bool,
) -> DrizzleStats {
    if let Err(e) = p.validate() {
        panic!("{e}");
    }
    let (ny_in, nx_in) = sci.dim();
    assert_eq!(weight.dim(), (ny_in, nx_in), "drizzle: weight shape differs from sci");
    assert_eq!(pixmap.dim(), (ny_in, nx_in, 2), "drizzle: pixmap must be [ny, nx, 2] of sci");
    assert_eq!(vars.len(), acc.var_w2sum.len(), "drizzle: number of variance planes differs from the accumulator");
    for v in vars {
        assert_eq!(v.dim(), (ny_in, nx_in), "drizzle: variance plane shape differs from sci");
    }
    assert!(
        window.rows.start <= window.rows.end
            && window.rows.end <= ny_in
            && window.cols.start <= window.cols.end
            && window.cols.end <= nx_in,
        "drizzle: input window {window:?} exceeds the input {ny_in}x{nx_in}"
    );
    let plane = exposure_index / 32;
    assert!(plane < acc.context.dim().0, "drizzle: exposure index {exposure_index} has no context plane");
    let bit = 1u32 << (exposure_index % 32);

    let win_ny = window.rows.len();
    let win_nx = window.cols.len();
    let mut stats = DrizzleStats { pixels_in: win_ny * win_nx, ..Default::default() };
    let [ny, nx] = acc.shape();
    if win_ny == 0 || win_nx == 0 || ny == 0 || nx == 0 {
        return stats;
    }
    if ny_in < 2 || nx_in < 2 {
        // No cell to interpolate the corners in.
        stats.pixels_unmapped = stats.pixels_in;
        return stats;
    }

    let map: CowArray<f64, Ix3> = pixmap.as_standard_layout();
    let map_slice = map.as_slice().expect("standard layout");
    let [y0, x0] = acc.origin;
    let inputs = Inputs {
        sci,
        weight,
        vars,
        corners: CornerMap::new(map_slice, ny_in, nx_in, p.pixfrac),
        window: window.clone(),
        col_lo: x0 as i64,
        col_hi: (x0 + nx) as i64 - 1,
        row_lo: y0 as i64,
        row_hi: (y0 + ny) as i64 - 1,
        blocks: win_nx.div_ceil(BLOCK_PX),
    };

    // Split the chunk's sums into bands of output rows.
    let band_rows = band_rows.max(1);
    let mut wsum_it = acc.wsum.axis_chunks_iter_mut(Axis(0), band_rows);
    let mut sci_it = acc.sci_wsum.axis_chunks_iter_mut(Axis(0), band_rows);
    let mut var_its: Vec<_> = acc.var_w2sum.iter_mut().map(|v| v.axis_chunks_iter_mut(Axis(0), band_rows)).collect();
    let mut ctx_it = acc.context.index_axis_mut(Axis(0), plane).into_axis_chunks_iter_mut(Axis(0), band_rows);
    let mut bands = Vec::with_capacity(ny.div_ceil(band_rows));
    for k in 0..ny.div_ceil(band_rows) {
        bands.push(BandMut {
            row0: (y0 + k * band_rows) as i64,
            wsum: wsum_it.next().expect("band"),
            sci_wsum: sci_it.next().expect("band"),
            var: var_its.iter_mut().map(|it| it.next().expect("band")).collect(),
            ctx: ctx_it.next().expect("band"),
        });
    }

    if bands.len() == 1 {
        // One band: drop by drop in input raster order, with nothing stored in between (the same
        // contributions in the same order as the banded path below).
        let mut band = bands.pop().expect("one band");
        let mut sums = BandSums::new(&mut band);
        for j in inputs.window.rows.clone() {
            for i in inputs.window.cols.clone() {
                let d = inputs.drop_at(i, j);
                stats.count(&d);
                if let Ok(d) = d {
                    sums.deposit(&inputs, &d, i, j, bit);
                }
            }
        }
        return stats;
    }

    // Pre-scan: every drop's corners and bounds once (the bands reuse them), and per input row and
    // block the output rows reached inside the chunk, plus counts.
    let (mut drops, mut reach) = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
    // every entry is written by the scan below, so growing is the only initialisation needed
    if drops.len() < win_ny * win_nx {
        drops.resize(win_ny * win_nx, Drop::SKIP);
    }
    reach.clear();
    reach.resize(win_ny * inputs.blocks, RowReach::EMPTY);
    let scan_row = |jw: usize, row: &mut [RowReach], drops: &mut [Drop]| -> DrizzleStats {
        let j = inputs.window.rows.start + jw;
        let mut st = DrizzleStats::default();
        for (b, r) in row.iter_mut().enumerate() {
            let i_start = inputs.window.cols.start + b * BLOCK_PX;
            let i_end = (i_start + BLOCK_PX).min(inputs.window.cols.end);
            for i in i_start..i_end {
                let d = inputs.drop_at(i, j);
                st.count(&d);
                let slot = &mut drops[i - inputs.window.cols.start];
                *slot = match d {
                    Ok(d) => {
                        r.lo = r.lo.min(i64::from(d.bounds[2]));
                        r.hi = r.hi.max(i64::from(d.bounds[3]));
                        d
                    }
                    Err(_) => Drop::SKIP,
                };
            }
        }
        st
    };
    let used = &mut drops[..win_ny * win_nx];
    let scanned = if parallel {
        reach
            .par_chunks_mut(inputs.blocks)
            .zip(used.par_chunks_mut(win_nx))
            .enumerate()
            .map(|(jw, (row, d))| scan_row(jw, row, d))
            .reduce(DrizzleStats::default, DrizzleStats::plus)
    } else {
        reach
            .chunks_mut(inputs.blocks)
            .zip(used.chunks_mut(win_nx))
            .enumerate()
            .map(|(jw, (row, d))| scan_row(jw, row, d))
            .fold(DrizzleStats::default(), DrizzleStats::plus)
    };
    stats = stats.plus(scanned);
    if stats.pixels_used > 0 {
        let used = &drops[..win_ny * win_nx];
        if parallel {
            bands.into_par_iter().for_each(|band| drizzle_band(&inputs, &reach, used, bit, band));
        } else {
            bands.into_iter().for_each(|band| drizzle_band(&inputs, &reach, used, bit, band));
        }
    }
    SCRATCH.with(|s| *s.borrow_mut() = (drops, reach));
    stats
}

/// The per-band body shared by the serial and rayon versions: drizzle every input pixel of the
/// window whose drop reaches the band's rows, in input raster order.
fn drizzle_band(inputs: &Inputs, reach: &[RowReach], drops: &[Drop], bit: u32, mut band: BandMut) {
    let mut sums = BandSums::new(&mut band);
    let win_nx = inputs.window.cols.len();
    for (jw, row_reach) in reach.chunks(inputs.blocks).enumerate() {
        let j = inputs.window.rows.start + jw;
        let row_drops = &drops[jw * win_nx..(jw + 1) * win_nx];
        for (b, r) in row_reach.iter().enumerate() {
            if r.lo > sums.row_hi || r.hi < sums.row_lo {
                continue;
            }
            let i_start = inputs.window.cols.start + b * BLOCK_PX;
            let i_end = (i_start + BLOCK_PX).min(inputs.window.cols.end);
            for i in i_start..i_end {
                let d = &row_drops[i - inputs.window.cols.start];
                if !d.is_skip() {
                    sums.deposit(inputs, d, i, j, bit);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{s, Array3};

    // ---------------------------------------------------------------- helpers

    fn le_f32(bytes: &[u8]) -> Vec<f32> {
        bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
    }
    fn le_f64(bytes: &[u8]) -> Vec<f64> {
        bytes.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect()
    }
    fn le_u32(bytes: &[u8]) -> Vec<u32> {
        bytes.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect()
    }

    use crate::kernels::test_rng::Rng;

    fn random_image(ny: usize, nx: usize, seed: u64, lo: f64, hi: f64) -> Array2<f32> {
        let mut r = Rng(seed);
        Array2::from_shape_simple_fn((ny, nx), || (lo + (hi - lo) * r.uniform()) as f32)
    }

    fn identity_map(ny: usize, nx: usize) -> Array3<f64> {
        Array3::from_shape_fn((ny, nx, 2), |(j, i, c)| if c == 0 { i as f64 } else { j as f64 })
    }

    /// Rotation by `rot_deg` and scaling by `scale` (output px per input px) about the input
    /// centre, placed at output pixel `(cx_out, cy_out)`.
    fn affine_map(ny: usize, nx: usize, rot_deg: f64, scale: f64, cx_out: f64, cy_out: f64) -> Array3<f64> {
        let (s, c) = rot_deg.to_radians().sin_cos();
        let (cx, cy) = ((nx as f64 - 1.0) / 2.0, (ny as f64 - 1.0) / 2.0);
        Array3::from_shape_fn((ny, nx, 2), |(j, i, k)| {
            let (dx, dy) = (i as f64 - cx, j as f64 - cy);
            if k == 0 {
                cx_out + scale * (c * dx - s * dy)
            } else {
                cy_out + scale * (s * dx + c * dy)
            }
        })
    }

    fn assert_accum_bits_eq(a: &DrizzleAccum, b: &DrizzleAccum) {
        let bits = |x: &Array2<f64>| x.mapv(f64::to_bits);
        assert_eq!(bits(&a.wsum), bits(&b.wsum), "wsum differs");
        assert_eq!(bits(&a.sci_wsum), bits(&b.sci_wsum), "sci_wsum differs");
        for (va, vb) in a.var_w2sum.iter().zip(&b.var_w2sum) {
            assert_eq!(bits(va), bits(vb), "var_w2sum differs");
        }
        assert_eq!(a.context, b.context, "context differs");
    }

    // ---------------------------------------------------------------- cdrizzle fixture

    struct Exposure {
        pixmap: Array3<f64>,
        sci: Array2<f32>,
        wht: Array2<f32>,
        var: Array2<f32>,
    }

    const IN_SHAPE: (usize, usize) = (40, 36);
    const OUT_SHAPE: (usize, usize) = (54, 54);

    fn fixture_exposures() -> Vec<Exposure> {
        let img = |b: &[u8]| Array2::from_shape_vec(IN_SHAPE, le_f32(b)).unwrap();
        let map = |b: &[u8]| Array3::from_shape_vec((IN_SHAPE.0, IN_SHAPE.1, 2), le_f64(b)).unwrap();
        vec![
            Exposure {
                pixmap: map(include_bytes!("../../tests/fixtures/drizzle/in0_pixmap.f64")),
                sci: img(include_bytes!("../../tests/fixtures/drizzle/in0_sci.f32")),
                wht: img(include_bytes!("../../tests/fixtures/drizzle/in0_wht.f32")),
                var: img(include_bytes!("../../tests/fixtures/drizzle/in0_var.f32")),
            },
            Exposure {
                pixmap: map(include_bytes!("../../tests/fixtures/drizzle/in1_pixmap.f64")),
                sci: img(include_bytes!("../../tests/fixtures/drizzle/in1_sci.f32")),
                wht: img(include_bytes!("../../tests/fixtures/drizzle/in1_wht.f32")),
                var: img(include_bytes!("../../tests/fixtures/drizzle/in1_var.f32")),
            },
        ]
    }

    struct Reference {
        sci: Array2<f32>,
        wht: Array2<f32>,
        var: Array2<f32>,
        ctx: Array2<u32>,
    }

    fn fixture_reference(pixfrac_pct: u32) -> Reference {
        let img = |b: &[u8]| Array2::from_shape_vec(OUT_SHAPE, le_f32(b)).unwrap();
        let ctx = |b: &[u8]| Array2::from_shape_vec(OUT_SHAPE, le_u32(b)).unwrap();
        match pixfrac_pct {
            100 => Reference {
                sci: img(include_bytes!("../../tests/fixtures/drizzle/out_pf100_sci.f32")),
                wht: img(include_bytes!("../../tests/fixtures/drizzle/out_pf100_wht.f32")),
                var: img(include_bytes!("../../tests/fixtures/drizzle/out_pf100_var.f32")),
                ctx: ctx(include_bytes!("../../tests/fixtures/drizzle/out_pf100_ctx.u32")),
            },
            70 => Reference {
                sci: img(include_bytes!("../../tests/fixtures/drizzle/out_pf070_sci.f32")),
                wht: img(include_bytes!("../../tests/fixtures/drizzle/out_pf070_wht.f32")),
                var: img(include_bytes!("../../tests/fixtures/drizzle/out_pf070_var.f32")),
                ctx: ctx(include_bytes!("../../tests/fixtures/drizzle/out_pf070_ctx.u32")),
            },
            _ => unreachable!(),
        }
    }

    /// Max relative differences (sci, wht, var) against cdrizzle where wht > 10% of its max; the
    /// coverage (wht > 0) and the context bits must agree exactly everywhere.
    fn compare_with_cdrizzle(pixfrac_pct: u32) -> (f64, f64, f64) {
        let p = DrizzleParams { pixfrac: f64::from(pixfrac_pct) / 100.0 };
        let exps = fixture_exposures();
        let mut acc = DrizzleAccum::new(OUT_SHAPE.0, OUT_SHAPE.1, 1, exps.len());
        for (k, e) in exps.iter().enumerate() {
            let st = drizzle_add(e.sci.view(), e.wht.view(), e.pixmap.view(), &[e.var.view()], k, &p, &mut acc);
            assert_eq!(st.pixels_off_chunk + st.pixels_unmapped, 0);
            assert_eq!(st.pixels_used + st.pixels_zero_weight, st.pixels_in);
        }
        let out = acc.finish();
        let r = fixture_reference(pixfrac_pct);
        assert_eq!(out.context.index_axis(Axis(0), 0), r.ctx, "context bits differ from cdrizzle");
        let wmax = r.wht.iter().cloned().fold(0.0f32, f32::max);
        let (mut dsci, mut dwht, mut dvar) = (0.0f64, 0.0f64, 0.0f64);
        let rel = |a: f32, b: f32| ((f64::from(a) - f64::from(b)) / f64::from(b).abs()).abs();
        let mut n = 0;
        for ((j, i), &w_ref) in r.wht.indexed_iter() {
            assert_eq!(out.wht[[j, i]] > 0.0, w_ref > 0.0, "coverage differs at [{j}, {i}]");
            if w_ref > 0.1 * wmax {
                n += 1;
                dsci = dsci.max(rel(out.sci[[j, i]], r.sci[[j, i]]));
                dwht = dwht.max(rel(out.wht[[j, i]], w_ref));
                dvar = dvar.max(rel(out.var[0][[j, i]], r.var[[j, i]]));
            }
        }
        assert!(n > 1000, "too few compared pixels: {n}");
        let dall = r
            .wht
            .indexed_iter()
            .filter(|(_, &w)| w > 0.0)
            .map(|((j, i), _)| rel(out.sci[[j, i]], r.sci[[j, i]]))
            .fold(0.0f64, f64::max);
        eprintln!("pixfrac {}: max rel diff of sci over all covered pixels {dall:.2e}", p.pixfrac);
        (dsci, dwht, dvar)
    }

    #[test]
    fn matches_cdrizzle_pixfrac_1() {
        let (dsci, dwht, dvar) = compare_with_cdrizzle(100);
        eprintln!("pixfrac 1.0: max rel diff sci {dsci:.2e} wht {dwht:.2e} var {dvar:.2e}");
        assert!(dsci < 1e-4 && dwht < 1e-4 && dvar < 1e-4);
    }

    #[test]
    fn matches_cdrizzle_pixfrac_07() {
        let (dsci, dwht, dvar) = compare_with_cdrizzle(70);
        eprintln!("pixfrac 0.7: max rel diff sci {dsci:.2e} wht {dwht:.2e} var {dvar:.2e}");
        assert!(dsci < 1e-4 && dwht < 1e-4 && dvar < 1e-4);
    }

    #[test]
    fn round_i64_is_c_round() {
        for v in [0.0, 0.49999999999999994, 0.5, 1.5, 2.5, -0.5, -1.5, -2.4999, 1e15, 3e20, -3e20, 1023.5, -7.75] {
            assert_eq!(round_i64(v), v.round().clamp(-1.0e15, 1.0e15) as i64, "{v}");
        }
        assert_eq!(round_i64(f64::NAN), 0);
        let mut x = 0.123_456_789f64;
        for _ in 0..100_000 {
            x = (x * 7.31 + 0.17).rem_euclid(4096.0) - 2048.0;
            assert_eq!(round_i64(x), x.round() as i64, "{x}");
        }
    }

    #[test]
    fn boxer_matches_cdrizzle_bit_for_bit() {
        // Rows of (is, js, x[4], y[4], area) from cdrizzle's exported `boxer`.
        let v = le_f64(include_bytes!("../../tests/fixtures/drizzle/boxer_cases.f64"));
        assert!(v.len() >= 11 * 100);
        for row in v.chunks_exact(11) {
            let q = Quad { x: [row[2], row[3], row[4], row[5]], y: [row[6], row[7], row[8], row[9]] };
            let a = boxer(row[0], row[1], &q);
            assert_eq!(a.to_bits(), row[10].to_bits(), "boxer{row:?} = {a:e}");
        }
    }

    // ---------------------------------------------------------------- invariants

    #[test]
    fn hoisted_edges_match_boxer_bit_for_bit() {
        // Random drops (rotated, stretched, either orientation) all over a large grid: wherever
        // `Edges::exact_for` holds, `boxer_with` and the column terms of `ColEdge` must give `boxer`'s
        // bits for every pixel of the box.
        let mut r = Rng(20);
        let (mut drops, mut pixels) = (0, 0);
        for _ in 0..20_000 {
            let (cx, cy) = (0.5 + 4000.0 * r.uniform(), 0.5 + 4000.0 * r.uniform());
            let (a, b) = (0.2 + 2.5 * r.uniform(), 0.2 + 2.5 * r.uniform());
            let t = std::f64::consts::TAU * r.uniform();
            let flip = if r.uniform() < 0.5 { -1.0 } else { 1.0 };
            let corner = |u: f64, v: f64| {
                (cx + a * u * t.cos() - b * v * t.sin(), cy + flip * (a * u * t.sin() + b * v * t.cos()))
            };
            let c = [corner(-0.5, 0.5), corner(0.5, 0.5), corner(0.5, -0.5), corner(-0.5, -0.5)];
            let q = Quad { x: c.map(|p| p.0), y: c.map(|p| p.1) };
            let bounds = q.pixel_bounds();
            if !Edges::exact_for(&q, bounds) {
                continue;
            }
            let e = Edges::new(&q);
            let [x0, x1, y0, y1] = bounds;
            for ii in x0..=x1 {
                let ce = ColEdge::column(&q, &e, ii);
                for jj in y0..=y1 {
                    let a = boxer(ii as f64, jj as f64, &q).to_bits();
                    assert_eq!(boxer_with(ii as f64, jj as f64, &q, &e).to_bits(), a, "{q:?} at {ii}, {jj}");
                    assert_eq!(ColEdge::boxer(&ce, &q, &e, jj).to_bits(), a, "column terms: {q:?} at {ii}, {jj}");
                    pixels += 1;
                }
            }
            drops += 1;
        }
        assert!(drops > 19_000 && pixels > 4 * drops, "{drops} drops, {pixels} pixels checked");
        // near the grid origin the shifts are not exact, and the plain boxer is used
        let q = Quad { x: [0.2, 1.2, 1.2, 0.2], y: [5.2, 5.2, 4.2, 4.2] };
        assert!(!Edges::exact_for(&q, q.pixel_bounds()));
    }

    #[test]
    fn overlap_area_basics() {
        let unit = |x0: f64, y0: f64| Quad { x: [x0, x0 + 1.0, x0 + 1.0, x0], y: [y0 + 1.0, y0 + 1.0, y0, y0] };
        assert_eq!(boxer(0.0, 0.0, &unit(-0.5, -0.5)), 1.0);
        assert_eq!(boxer(0.0, 0.0, &unit(0.0, 0.0)), 0.25);
        assert_eq!(boxer(1.0, 1.0, &unit(0.0, 0.0)), 0.25);
        assert_eq!(boxer(2.0, 0.0, &unit(0.0, 0.0)), 0.0);
        assert_eq!(unit(0.0, 0.0).jacobian(), 1.0);
        // Mirrored (anticlockwise) quadrilateral: area and Jacobian both change sign.
        let m = Quad { x: [0.0, -1.0, -1.0, 0.0], y: [1.0, 1.0, 0.0, 0.0] };
        assert_eq!(boxer(-0.5, 0.5, &m), -1.0);
        assert_eq!(m.jacobian(), -1.0);
    }

    #[test]
    fn identity_map_returns_input() {
        let (ny, nx) = (23, 31);
        let sci = random_image(ny, nx, 1, -5.0, 50.0);
        let mut wht = random_image(ny, nx, 2, 0.2, 3.0);
        wht[[0, 0]] = 0.0;
        wht[[7, 9]] = 0.0;
        wht[[ny - 1, nx - 1]] = 0.0;
        let var = random_image(ny, nx, 3, 0.1, 2.0);
        let pm = identity_map(ny, nx);
        let mut acc = DrizzleAccum::new(ny, nx, 1, 1);
        let st = drizzle_add(sci.view(), wht.view(), pm.view(), &[var.view()], 0, &DrizzleParams::default(), &mut acc);
        assert_eq!(st.pixels_used, ny * nx - 3);
        let out = acc.finish();
        for ((j, i), &w) in wht.indexed_iter() {
            if w > 0.0 {
                assert_eq!(out.sci[[j, i]], sci[[j, i]], "sci at [{j}, {i}]");
                assert_eq!(out.wht[[j, i]], w, "wht at [{j}, {i}]");
                assert_eq!(out.var[0][[j, i]], var[[j, i]], "var at [{j}, {i}]");
                assert_eq!(out.context[[0, j, i]], 1);
            } else {
                assert!(out.sci[[j, i]].is_nan());
                assert_eq!(out.wht[[j, i]], 0.0);
                assert_eq!(out.context[[0, j, i]], 0);
            }
        }
    }

    #[test]
    fn flux_is_conserved_under_rotation_and_scale() {
        let (ny, nx) = (30, 26);
        let scale = 0.87; // output pixels per input pixel
        let jacobian = scale * scale; // projected input pixel area, output px^2
        let pm = affine_map(ny, nx, 23.0, scale, 24.3, 22.7);
        let sci = random_image(ny, nx, 5, 0.0, 10.0);
        let wht = random_image(ny, nx, 6, 0.5, 2.0);
        let mut acc = DrizzleAccum::new(48, 50, 0, 1);
        let st = drizzle_add(sci.view(), wht.view(), pm.view(), &[], 0, &DrizzleParams::default(), &mut acc);
        assert_eq!(st.pixels_used, ny * nx);
        // Flux into the output: sum over output pixels of value * weighted area. Each input pixel
        // spreads weight w exactly, so sum dow v = sum w v over the input (and sum dow = sum w).
        let flux_in: f64 = sci.iter().zip(&wht).map(|(&v, &w)| f64::from(v) * f64::from(w) * jacobian).sum();
        let flux_out: f64 = acc.sci_wsum.sum() * jacobian;
        assert!(((flux_out - flux_in) / flux_in).abs() < 1e-10, "{flux_out} vs {flux_in}");
        let w_in: f64 = wht.iter().map(|&w| f64::from(w)).sum();
        assert!(((acc.wsum.sum() - w_in) / w_in).abs() < 1e-10);
        // With unit weights the finished image itself conserves flux: sum(sci * covered area).
        let ones = Array2::<f32>::ones((ny, nx));
        let mut acc = DrizzleAccum::new(48, 50, 0, 1);
        drizzle_add(sci.view(), ones.view(), pm.view(), &[], 0, &DrizzleParams::default(), &mut acc);
        let out = acc.finish();
        let flux_out: f64 =
            out.sci.iter().zip(&acc.wsum).filter(|(_, &w)| w > 0.0).map(|(&v, &w)| f64::from(v) * w * jacobian).sum();
        let flux_in: f64 = sci.iter().map(|&v| f64::from(v) * jacobian).sum();
        assert!(((flux_out - flux_in) / flux_in).abs() < 1e-6, "{flux_out} vs {flux_in}"); // f32 sci
                                                                                           // Fully covered interior output pixels have unit coverage.
        assert!((acc.wsum[[24, 25]] * jacobian - 1.0).abs() < 1e-12);
    }

    #[test]
    fn identical_frames_coadd_to_the_frame() {
        let (ny, nx) = (21, 19);
        let pm = affine_map(ny, nx, -14.0, 1.1, 17.0, 16.0);
        let sci = random_image(ny, nx, 7, 1.0, 9.0);
        let wht = random_image(ny, nx, 8, 0.5, 1.5);
        let var = random_image(ny, nx, 9, 0.1, 0.3);
        let p = DrizzleParams { pixfrac: 0.8 };
        let mut one = DrizzleAccum::new(34, 33, 1, 1);
        drizzle_add(sci.view(), wht.view(), pm.view(), &[var.view()], 0, &p, &mut one);
        let n = 3;
        let mut many = DrizzleAccum::new(34, 33, 1, n);
        for k in 0..n {
            drizzle_add(sci.view(), wht.view(), pm.view(), &[var.view()], k, &p, &mut many);
        }
        let (o1, on) = (one.finish(), many.finish());
        for ((j, i), &w1) in one.wsum.indexed_iter() {
            if w1 == 0.0 {
                assert_eq!(many.wsum[[j, i]], 0.0);
                assert_eq!(on.context[[0, j, i]], 0);
                continue;
            }
            let s1 = f64::from(o1.sci[[j, i]]);
            assert!((f64::from(on.sci[[j, i]]) - s1).abs() <= 1e-6 * s1.abs());
            assert!((many.wsum[[j, i]] - 3.0 * w1).abs() <= 1e-12 * w1);
            // Variance of the mean of n identical, independent frames drops by n.
            let v1 = f64::from(o1.var[0][[j, i]]);
            assert!((f64::from(on.var[0][[j, i]]) * 3.0 - v1).abs() <= 1e-6 * v1);
            assert_eq!(on.context[[0, j, i]], 0b111);
        }
    }

    #[test]
    fn zero_weight_pixels_are_ignored() {
        let (ny, nx) = (20, 24);
        let pm = affine_map(ny, nx, 31.0, 0.95, 17.0, 15.0);
        let wht = {
            let mut w = random_image(ny, nx, 10, 0.5, 1.5);
            w.slice_mut(s![4..9, 6..10]).fill(0.0);
            w[[15, 3]] = 0.0;
            w[[0, 23]] = -1.0;
            w[[1, 1]] = f32::NAN;
            w
        };
        let clean = random_image(ny, nx, 11, 0.0, 5.0);
        let mut dirty = clean.clone();
        for ((j, i), w) in wht.indexed_iter() {
            if w.is_nan() || *w <= 0.0 {
                dirty[[j, i]] = if (i + j) % 2 == 0 { f32::NAN } else { 1e30 };
            }
        }
        let var_dirty = dirty.mapv(|v| v * 0.01);
        let var_clean = clean.mapv(|v| v * 0.01);
        let p = DrizzleParams { pixfrac: 0.9 };
        let mut a = DrizzleAccum::new(34, 34, 1, 1);
        let mut b = DrizzleAccum::new(34, 34, 1, 1);
        let st = drizzle_add(dirty.view(), wht.view(), pm.view(), &[var_dirty.view()], 0, &p, &mut a);
        drizzle_add(clean.view(), wht.view(), pm.view(), &[var_clean.view()], 0, &p, &mut b);
        assert_eq!(st.pixels_zero_weight, 5 * 4 + 3);
        assert_accum_bits_eq(&a, &b);
        assert!(a.sci_wsum.iter().all(|v| v.is_finite()));
        // With the identity map, a zero-weight pixel leaves its output pixel empty.
        let pm = identity_map(ny, nx);
        let mut c = DrizzleAccum::new(ny, nx, 0, 1);
        drizzle_add(dirty.view(), wht.view(), pm.view(), &[], 0, &DrizzleParams::default(), &mut c);
        assert_eq!(c.wsum[[6, 7]], 0.0);
        assert_eq!(c.context[[0, 6, 7]], 0);
        assert!(c.finish().sci[[6, 7]].is_nan());
    }

    /// Input and map for the chunk tests: rotated, partly off the grid, with distortion and NaNs.
    fn chunk_case() -> (Array2<f32>, Array2<f32>, Array2<f32>, Array3<f64>) {
        let (ny, nx) = (44, 40);
        let mut pm = affine_map(ny, nx, 17.0, 1.07, 22.4, 26.9);
        for ((j, i, k), v) in pm.indexed_iter_mut() {
            let (x, y) = (i as f64 / nx as f64, j as f64 / ny as f64);
            *v += if k == 0 { 0.3 * x * y } else { -0.2 * x * x };
        }
        pm[[10, 12, 0]] = f64::NAN;
        pm[[30, 0, 1]] = f64::NAN;
        let sci = random_image(ny, nx, 12, -1.0, 20.0);
        let mut wht = random_image(ny, nx, 13, 0.3, 2.0);
        wht[[5, 5]] = 0.0;
        let var = random_image(ny, nx, 14, 0.01, 1.0);
        (sci, wht, var, pm)
    }

    #[test]
    fn chunks_stitch_bit_identically() {
        let (sci, wht, var, pm) = chunk_case();
        let (gy, gx) = (47, 45);
        let vars = [var.view()];
        for pixfrac in [1.0, 0.6] {
            let p = DrizzleParams { pixfrac };
            let mut whole = DrizzleAccum::new(gy, gx, 1, 40);
            let st = drizzle_add(sci.view(), wht.view(), pm.view(), &vars, 33, &p, &mut whole);
            assert!(st.pixels_off_chunk > 0, "the case should spill off the grid");
            let mut stitched = DrizzleAccum::new(gy, gx, 1, 40);
            let (cy, cx) = (20, 27);
            for (y0, ny) in [(0, cy), (cy, gy - cy)] {
                for (x0, nx) in [(0, cx), (cx, gx - cx)] {
                    let mut chunk = DrizzleAccum::with_origin([y0, x0], ny, nx, 1, 40);
                    drizzle_add(sci.view(), wht.view(), pm.view(), &vars, 33, &p, &mut chunk);
                    let sl = s![y0..y0 + ny, x0..x0 + nx];
                    stitched.wsum.slice_mut(sl).assign(&chunk.wsum);
                    stitched.sci_wsum.slice_mut(sl).assign(&chunk.sci_wsum);
                    stitched.var_w2sum[0].slice_mut(sl).assign(&chunk.var_w2sum[0]);
                    stitched.context.slice_mut(s![.., y0..y0 + ny, x0..x0 + nx]).assign(&chunk.context);
                }
            }
            assert_accum_bits_eq(&whole, &stitched);
            assert!(whole.context.index_axis(Axis(0), 1).iter().any(|&c| c == 1 << 1));
        }
    }

    #[test]
    fn rayon_matches_serial_bit_for_bit() {
        let (sci, wht, var, pm) = chunk_case();
        let vars = [var.view()];
        let p = DrizzleParams { pixfrac: 0.75 };
        let window = InputWindow { rows: 0..sci.nrows(), cols: 0..sci.ncols() };
        let mut serial = DrizzleAccum::new(47, 45, 1, 1);
        let s1 = drizzle_add(sci.view(), wht.view(), pm.view(), &vars, 0, &p, &mut serial);
        let mut par = DrizzleAccum::new(47, 45, 1, 1);
        let s2 = par_drizzle_add(sci.view(), wht.view(), pm.view(), &vars, 0, &p, &mut par);
        assert_eq!(s1, s2);
        assert_accum_bits_eq(&serial, &par);
        // Thin bands (rows straddling several bands) in parallel and serially.
        for band_rows in [1, 3, 7] {
            for parallel in [false, true] {
                let mut acc = DrizzleAccum::new(47, 45, 1, 1);
                let s3 =
                    add_impl(sci.view(), wht.view(), pm.view(), &vars, &window, 0, &p, &mut acc, band_rows, parallel);
                assert_eq!(s1, s3);
                assert_accum_bits_eq(&serial, &acc);
            }
        }
    }

    #[test]
    fn window_matches_full_run_on_its_pixels() {
        let (sci, wht, var, pm) = chunk_case();
        let vars = [var.view()];
        let p = DrizzleParams { pixfrac: 0.9 };
        // Drizzling two windows that tile the input equals drizzling it whole (same raster order).
        let mut whole = DrizzleAccum::new(47, 45, 1, 1);
        drizzle_add(sci.view(), wht.view(), pm.view(), &vars, 0, &p, &mut whole);
        let mut parts = DrizzleAccum::new(47, 45, 1, 1);
        let (ny, nx) = sci.dim();
        for rows in [0..17, 17..ny] {
            let w = InputWindow { rows, cols: 0..nx };
            drizzle_add_window(sci.view(), wht.view(), pm.view(), &vars, &w, 0, &p, &mut parts);
        }
        assert_accum_bits_eq(&whole, &parts);
    }

    #[test]
    fn constant_variance_is_preserved() {
        let (ny, nx) = (17, 22);
        let sci = random_image(ny, nx, 15, 0.0, 3.0);
        let wht = random_image(ny, nx, 16, 0.1, 4.0);
        let var = Array2::<f32>::from_elem((ny, nx), 0.37);
        let pm = identity_map(ny, nx);
        let mut acc = DrizzleAccum::new(ny, nx, 2, 1);
        drizzle_add(
            sci.view(),
            wht.view(),
            pm.view(),
            &[var.view(), var.view()],
            0,
            &DrizzleParams::default(),
            &mut acc,
        );
        let out = acc.finish();
        for v in &out.var {
            assert!(v.iter().all(|&x| x == 0.37f32));
        }
    }

    #[test]
    fn invalid_pixfrac_is_rejected() {
        assert!(DrizzleParams { pixfrac: 0.0 }.validate().is_err());
        assert!(DrizzleParams { pixfrac: 1.5 }.validate().is_err());
        assert!(DrizzleParams { pixfrac: f64::NAN }.validate().is_err());
        assert!(DrizzleParams::default().validate().is_ok());
    }
}

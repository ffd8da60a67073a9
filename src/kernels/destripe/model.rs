//! The factored stripe model the destriping methods return ([`StripeModel`]): per-amplifier row
//! offsets plus column offsets, a few kB per exposure, which the stages store and exchange and
//! expand to the dense `[y, x]` model (bit for bit the values subtracted).
//!
//! What does not live here: computing the model (`single`, `multi`) and subtracting or storing it
//! (the stages, `io`).

use ndarray::Array2;
use std::ops::Range;

/// A stripe model in the factored form the methods produce: inside `rows` x `cols` the value at
/// `(y, x)` is `((amp_rows[a][y] + col[x]) - offset) as f32`, `a` the amplifier whose column range
/// holds `x` (0 for columns of no amplifier); outside (the reference border) it is 0. MJy/sr.
/// [`StripeModel::value`] and [`StripeModel::to_array`] give the same bits as the dense model, and
/// the factored form is what the stages store and exchange (a few kB per exposure).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StripeModel {
    /// Image height, rows.
    pub ny: usize,
    /// Image width, columns.
    pub nx: usize,
    /// Rows the model covers.
    pub rows: Range<usize>,
    /// Columns the model covers.
    pub cols: Range<usize>,
    /// Column range of each amplifier (full-frame columns).
    pub amps: Vec<Range<usize>>,
    /// Per amplifier, the row offsets `[y]` (length `ny`).
    pub amp_rows: Vec<Vec<f64>>,
    /// The column offsets `[x]` (length `nx`).
    pub col: Vec<f64>,
    /// A constant subtracted everywhere inside.
    pub offset: f64,
}

impl StripeModel {
    /// The zero model of an `ny` x `nx` image.
    pub fn zero(ny: usize, nx: usize) -> Self {
        StripeModel { ny, nx, rows: 0..0, cols: 0..0, amps: vec![], amp_rows: vec![], col: vec![0.0; nx], offset: 0.0 }
    }

    /// Whether every value is 0.
    pub fn is_zero(&self) -> bool {
        self.rows.is_empty() || self.cols.is_empty()
    }

    fn amp_index(&self) -> Vec<Option<usize>> {
        let mut a = vec![None; self.nx];
        for (k, r) in self.amps.iter().enumerate() {
            for x in r.clone() {
                a[x] = Some(k);
            }
        }
        a
    }

    /// The model over rows `ys` x columns `xs` (`[y, x]`, f32 as subtracted).
    ///
    /// # Panics
    /// If the window leaves the image.
    pub fn window(&self, ys: Range<usize>, xs: Range<usize>) -> Array2<f32> {
        assert!(ys.end <= self.ny && xs.end <= self.nx, "stripe model window outside the image");
        let amp = self.amp_index();
        Array2::from_shape_fn((ys.len(), xs.len()), |(j, i)| {
            let (y, x) = (ys.start + j, xs.start + i);
            if !self.rows.contains(&y) || !self.cols.contains(&x) {
                return 0.0;
            }
            let r = amp[x].map_or(0.0, |k| self.amp_rows[k][y]);
            ((r + self.col[x]) - self.offset) as f32
        })
    }

    /// The whole model `[ny, nx]`.
    pub fn to_array(&self) -> Array2<f32> {
        self.window(0..self.ny, 0..self.nx)
    }
}

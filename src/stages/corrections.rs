//! The corrections the correcting stages find, as products, and the one place that turns them into
//! the table every exposure read applies.
//!
//! Each correcting stage writes what it found to `<output_dir>/<stage>/corrections.json` (a
//! [`Corrections`] holding that stage's part only: `destripe` and `destripe_multi` their stripe
//! models, `level` the offsets, Lyot-box levels and tile planes), and `outlier` writes its flags to
//! `outlier/flags.json`. [`compose`] adds the parts of the stages upstream of a stage, in chain
//! order, into the table that [`read_piece`](super::pieces::read_piece) subtracts. No stage hands
//! another an in-memory table. The visit shifts of `align` and the corrected copies of `prep` change
//! the exposure metadata instead; `stages::runner` applies them when it loads a band.
//!
//! Nothing here reads pixels or talks to other ranks.

use crate::kernels::destripe::StripeModel;
use ndarray::{Array2, Array3};
use serde::{Deserialize, Serialize};
use std::ops::Range;

/// Additive corrections found by the `prep`, `destripe`, `level` and `destripe_multi` stages, in
/// MJy/sr per exposure (indexed like the plan's exposure table). [`read_piece`] subtracts them from
/// SCI, so every later stage sees corrected pixels and no stage can forget them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Corrections {
    /// Constant subtracted from each exposure, MJy/sr (empty = none).
    pub offset_mjysr: Vec<f64>,
    /// MIRI: a further constant subtracted inside each exposure's Lyot box (level-matched as its own
    /// image and recombined), MJy/sr (empty = none).
    #[serde(default)]
    pub lyot_offset_mjysr: Vec<f64>,
    /// The Lyot box `[y0, y1, x0, x1]` of each exposure, where there is one.
    #[serde(default)]
    pub lyot_box: Vec<Option<[usize; 4]>>,
    /// MIRI: exposures whose Lyot box overlaps nothing its level could be matched to: the box is
    /// masked (DO_NOT_USE) in every later read (empty = none).
    #[serde(default)]
    pub lyot_masked: Vec<bool>,
    /// A plane subtracted from each exposure (`level.tile_fit = "plane"`): `[value at
    /// plane_origin_xy, d/dx, d/dy]` in MJy/sr and MJy/sr per output-grid pixel (empty = none).
    #[serde(default)]
    pub plane: Vec<Option<[f64; 3]>>,
    /// Output-grid pixel `[x, y]` where the planes' values are given.
    #[serde(default)]
    pub plane_origin_xy: [f64; 2],
    /// Stripe models subtracted from each exposure (`destripe`, then `destripe_multi`, in that
    /// order), in the kernels' factored form (empty or `[]` = none).
    #[serde(default)]
    pub stripes: Vec<Vec<StripeModel>>,
}

impl Corrections {
    /// No correction for `n` exposures.
    pub fn none(n: usize) -> Self {
        Self { offset_mjysr: vec![0.0; n], ..Self::default() }
    }

    /// This table with `models` (one per exposure, `None` = none) added after the stripe models
    /// already held.
    pub fn with_stripes(&self, models: Vec<Option<StripeModel>>) -> Self {
        let mut c = self.clone();
        c.stripes.resize(models.len().max(c.stripes.len()), vec![]);
        for (k, m) in models.into_iter().enumerate() {
            if let Some(m) = m.filter(|m| !m.is_zero()) {
                c.stripes[k].push(m);
            }
        }
        c
    }

    /// Subtract the exposure's corrections from `sci`, the exposure's pixels `rows` x `cols`:
    /// the stripe models (f32 arithmetic, exact zeros and NaN kept, as pjpipe restores them),
    /// then the constant.
    pub fn apply_window(&self, index: usize, rows: Range<usize>, cols: Range<usize>, sci: &mut Array2<f32>) {
        for m in self.stripes.get(index).into_iter().flatten() {
            if m.ny < rows.end || m.nx < cols.end {
                continue; // a model of another shape cannot be this exposure's
            }
            let w = m.window(rows.clone(), cols.clone());
            ndarray::Zip::from(&mut *sci).and(&w).for_each(|v, &s| {
                if *v != 0.0 {
                    *v -= s;
                }
            });
        }
        self.apply(index, sci, rows, cols);
    }

    /// The constant of exposure `index` (0 when none is known).
    pub fn offset(&self, index: usize) -> f64 {
        self.offset_mjysr.get(index).copied().unwrap_or(0.0)
    }

    /// The Lyot box of exposure `index` when it is masked ([`Corrections::lyot_masked`]).
    pub fn masked_lyot(&self, index: usize) -> Option<[usize; 4]> {
        self.lyot_masked.get(index).copied().unwrap_or(false).then(|| self.lyot_box.get(index).copied().flatten())?
    }

    /// Set DO_NOT_USE in `dq`, the exposure's pixels `rows` x `cols`, inside its masked Lyot box.
    pub fn mask_dq(&self, index: usize, dq: &mut Array2<u32>, rows: Range<usize>, cols: Range<usize>) {
        if let Some([y0, y1, x0, x1]) = self.masked_lyot(index) {
            let (ya, yb) = (y0.max(rows.start), y1.min(rows.end));
            let (xa, xb) = (x0.max(cols.start), x1.min(cols.end));
            if ya < yb && xa < xb {
                dq.slice_mut(ndarray::s![ya - rows.start..yb - rows.start, xa - cols.start..xb - cols.start])
                    .mapv_inplace(|d| d | crate::kernels::dq::DO_NOT_USE);
            }
        }
    }

    /// The extra constant of exposure `index` inside its Lyot box, with the box.
    pub fn lyot(&self, index: usize) -> Option<(f64, [usize; 4])> {
        let b = self.lyot_box.get(index).copied().flatten()?;
        Some((self.lyot_offset_mjysr.get(index).copied().unwrap_or(0.0), b))
    }

    /// Subtract the exposure's correction from `sci`, the exposure's pixels `rows` x `cols` (f32
    /// arithmetic, NaN stays NaN).
    pub fn apply(&self, index: usize, sci: &mut Array2<f32>, rows: Range<usize>, cols: Range<usize>) {
        let c = self.offset(index) as f32;
        if c != 0.0 {
            sci.mapv_inplace(|v| v - c);
        }
        if let Some((l, [y0, y1, x0, x1])) = self.lyot(index).filter(|(l, _)| *l != 0.0) {
            let (ya, yb) = (y0.max(rows.start), y1.min(rows.end));
            let (xa, xb) = (x0.max(cols.start), x1.min(cols.end));
            if ya < yb && xa < xb {
                let mut part =
                    sci.slice_mut(ndarray::s![ya - rows.start..yb - rows.start, xa - cols.start..xb - cols.start]);
                part.mapv_inplace(|v| v - l as f32);
            }
        }
    }
}

impl Corrections {
    /// Subtract the exposure's plane, if any, from `sci`, whose pixels land at output-grid positions
    /// `pixmap` (`[y, x, (x_out, y_out)]`) relative to the grid pixel `origin = (y0, x0)`.
    pub fn apply_plane(&self, index: usize, sci: &mut Array2<f32>, pixmap: &Array3<f64>, origin: (usize, usize)) {
        let Some([p0, sx, sy]) = self.plane.get(index).copied().flatten() else {
            return;
        };
        let (ox, oy) = (origin.1 as f64 - self.plane_origin_xy[0], origin.0 as f64 - self.plane_origin_xy[1]);
        sci.indexed_iter_mut().for_each(|((y, x), v)| {
            let (gx, gy) = (pixmap[[y, x, 0]] + ox, pixmap[[y, x, 1]] + oy);
            *v -= (p0 + sx * gx + sy * gy) as f32;
        });
    }
}

/// Outlier flags of every exposure: sorted linear pixel indices `y * nx + x`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OutlierFlags {
    pub per_exposure: Vec<Vec<u64>>,
}

impl OutlierFlags {
    /// Whether nothing is flagged.
    pub fn total(&self) -> usize {
        self.per_exposure.iter().map(Vec::len).sum()
    }

    /// The flags of exposure `index` (with `nx` columns) inside `rows` x `cols`, as a mask.
    pub fn mask(&self, index: usize, nx: usize, rows: Range<usize>, cols: Range<usize>) -> Array2<bool> {
        let mut m = Array2::from_elem((rows.len(), cols.len()), false);
        if let Some(v) = self.per_exposure.get(index) {
            let lo = v.partition_point(|&i| i < (rows.start * nx) as u64);
            let hi = v.partition_point(|&i| i < (rows.end * nx) as u64);
            for &i in &v[lo..hi] {
                let (y, x) = ((i / nx as u64) as usize, (i % nx as u64) as usize);
                if cols.contains(&x) {
                    m[[y - rows.start, x - cols.start]] = true;
                }
            }
        }
        m
    }
}

/// The table of corrections made of the parts `parts` (one per correcting stage, in chain order) for
/// `n` exposures: constants and Lyot levels add up, planes and Lyot boxes are taken from the part
/// that has them, and stripe models are applied in the order their stages ran. With one stage
/// setting the constants (level) the sum is that stage's value to the bit (`0.0 + x == x`).
pub fn compose(n: usize, parts: &[Corrections]) -> Corrections {
    let mut c = Corrections::none(n);
    for p in parts {
        for (k, o) in p.offset_mjysr.iter().enumerate().take(n) {
            c.offset_mjysr[k] += o;
        }
        if !p.lyot_offset_mjysr.is_empty() {
            c.lyot_offset_mjysr.resize(n, 0.0);
            for (k, o) in p.lyot_offset_mjysr.iter().enumerate().take(n) {
                c.lyot_offset_mjysr[k] += o;
            }
        }
        if !p.lyot_box.is_empty() {
            c.lyot_box = p.lyot_box.clone();
        }
        if !p.lyot_masked.is_empty() {
            c.lyot_masked = p.lyot_masked.clone();
        }
        if !p.plane.is_empty() {
            c.plane = p.plane.clone();
            c.plane_origin_xy = p.plane_origin_xy;
        }
        if p.stripes.iter().any(|s| !s.is_empty()) {
            c.stripes.resize(n.max(c.stripes.len()), vec![]);
            for (k, s) in p.stripes.iter().enumerate() {
                c.stripes[k].extend(s.iter().cloned());
            }
        }
    }
    c
}

impl Corrections {
    /// The stripe models this table holds beyond those of `prior` (what a stripe stage added).
    pub fn stripes_beyond(&self, prior: &Corrections) -> Corrections {
        let stripes = self
            .stripes
            .iter()
            .enumerate()
            .map(|(k, s)| s[prior.stripes.get(k).map_or(0, Vec::len).min(s.len())..].to_vec())
            .collect();
        Corrections { stripes, ..Corrections::default() }
    }

    /// This table without its stripe models (what `level` found: constants, Lyot levels, planes).
    pub fn without_stripes(&self) -> Corrections {
        Corrections { stripes: vec![], ..self.clone() }
    }
}

impl OutlierFlags {
    /// The flags as written to `outlier/flags.json`: per exposure the file name, its width, the count
    /// and the linear indices.
    pub fn report(&self, files: &[String], nx: &[usize]) -> serde_json::Value {
        let rows: Vec<serde_json::Value> = self
            .per_exposure
            .iter()
            .zip(files.iter().zip(nx))
            .map(|(v, (f, nx))| serde_json::json!({ "file": f, "nx": nx, "n_flagged": v.len(), "pixels": v }))
            .collect();
        serde_json::json!({ "exposures": rows })
    }

    /// The flags back from [`OutlierFlags::report`]'s form, for the exposures named `files` in that
    /// order.
    ///
    /// # Errors
    /// A file that the report does not list, or a malformed report.
    pub fn from_report(v: &serde_json::Value, files: &[String]) -> Result<OutlierFlags, String> {
        let rows = v["exposures"].as_array().ok_or("no `exposures` list")?;
        let mut by_file = std::collections::HashMap::new();
        for r in rows {
            let f = r["file"].as_str().ok_or("an exposure without `file`")?;
            let px: Vec<u64> = serde_json::from_value(r["pixels"].clone()).map_err(|e| format!("{f}: {e}"))?;
            by_file.insert(f.to_string(), px);
        }
        let per_exposure = files
            .iter()
            .map(|f| by_file.remove(f).ok_or_else(|| format!("{f} is not listed")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(OutlierFlags { per_exposure })
    }
}

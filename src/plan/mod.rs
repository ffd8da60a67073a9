//! The plan: exposure table, output grid, chunk grid, and who owns what.
//!
//! [`build_plan`] is a pure, deterministic function of the exposures' header metadata, the `[plan]`
//! config, the memory budget and the rank count. Every rank can compute it and get the same answer,
//! which is what makes results independent of the decomposition: owners change with the rank count,
//! the chunks and their contents do not. Reading headers is `io`'s job; running the stage (and
//! broadcasting) is `stages::plan`'s.

mod assign;
mod inventory;

pub use assign::{assign_lpt, loads};
pub use inventory::{miri_lyot_box, CalMeta, ExposureId, ExposureRecord};

use crate::config::{Instrument, PlanConfig};
use crate::geom::{OutputGrid, Polygon, SkyCoord};
use serde::{Deserialize, Serialize};
use std::ops::Range;
use std::path::PathBuf;

/// Why a plan cannot be made.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PlanError {
    #[error("no exposures to plan")]
    Empty,
    #[error("the inputs hold several bands ({bands}); a mosaic is made per band: pass the files of one band")]
    MixedBands { bands: String },
    #[error("{path}: filter {filter} is not a JWST imaging filter tessera knows (DETECTOR {detector})")]
    UnknownBand { path: PathBuf, filter: String, detector: String },
    #[error("{path}: the SIP distortion stretches a pixel to {ratio:.2}x its nominal area or folds the detector; the SCI WCS looks broken (A_p_q/B_p_q keywords)")]
    BadFootprint { path: PathBuf, ratio: f64 },
    #[error("{path}: pixel scale {scale_arcsec:.4}\" from the SCI WCS (CD keywords) differs from {band}'s native {native_arcsec}\"")]
    BadPixelScale { path: PathBuf, scale_arcsec: f64, native_arcsec: f64, band: String },
    #[error("runaway output grid {nx}x{ny} ({mpix:.0} Mpix) is {fill:.1}x the {union_mpix:.1} Mpix the footprints cover (limit plan.max_fill_ratio = {limit}); the exposure farthest from the others is {outlier}: check its WCS (CRVAL)")]
    Runaway { nx: usize, ny: usize, mpix: f64, union_mpix: f64, fill: f64, limit: f64, outlier: PathBuf },
    #[error("output grid {nx}x{ny} ({mpix:.0} Mpix) exceeds plan.max_output_mpix = {limit}")]
    TooLarge { nx: usize, ny: usize, mpix: f64, limit: f64 },
    #[error("no exposure overlaps the user grid (plan.grid)")]
    NoOverlap,
}

/// A rectangle of the output grid owned by one rank. Rows `y0..y1`, columns `x0..x1` (0-based,
/// end-exclusive).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Chunk {
    pub index: usize,
    /// Chunk row and column in the chunk grid.
    pub cy: usize,
    pub cx: usize,
    pub y0: usize,
    pub y1: usize,
    pub x0: usize,
    pub x1: usize,
    /// Estimated input pixels that land on this chunk (the balancing weight).
    pub input_px: u64,
    /// Exposures overlapping this chunk (indices into the exposure table).
    pub exposures: Vec<usize>,
    /// Owning rank.
    pub owner: usize,
}

/// The whole plan for one band.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub version: String,
    pub band: String,
    pub instrument: Instrument,
    pub ranks: usize,
    pub grid: OutputGrid,
    pub chunk_px: usize,
    pub chunks_x: usize,
    pub chunks_y: usize,
    pub exposures: Vec<ExposureRecord>,
    pub chunks: Vec<Chunk>,
    /// Input pixels per rank over its chunks.
    pub rank_input_px: Vec<u64>,
}

impl Plan {
    /// Chunks owned by `rank`.
    pub fn chunks_of(&self, rank: usize) -> impl Iterator<Item = &Chunk> {
        self.chunks.iter().filter(move |c| c.owner == rank)
    }
    /// Exposures owned by `rank`.
    pub fn exposures_of(&self, rank: usize) -> impl Iterator<Item = &ExposureRecord> {
        self.exposures.iter().filter(move |e| e.owner == rank)
    }
    /// Largest rank load over the mean (1.0 = perfect balance).
    pub fn imbalance(&self) -> f64 {
        let total: u64 = self.rank_input_px.iter().sum();
        let busy = self.ranks.min(self.chunks.len()).max(1);
        let mean = total as f64 / busy as f64;
        if mean == 0.0 {
            1.0
        } else {
            *self.rank_input_px.iter().max().unwrap_or(&0) as f64 / mean
        }
    }
}

/// Chunk side from the memory budget: the largest multiple of 64 with
/// `side^2 * bytes_per_output_px <= budget / 2` (half the budget is left for the exposure pieces),
/// clamped to 256..=8192.
pub fn chunk_side_from_budget(mem_budget_mb: u64, bytes_per_output_px: u64) -> usize {
    let budget = mem_budget_mb as f64 * 1024.0 * 1024.0 / 2.0;
    let side = (budget / bytes_per_output_px as f64).sqrt() as usize;
    (side / 64 * 64).clamp(256, 8192)
}

/// Chunk side that gives every rank about 4 chunks to balance (a multiple of 64, at least 256).
/// Results do not depend on the chunk layout, so the side may follow the rank count.
pub fn chunk_side_for_ranks(npix: usize, nranks: usize) -> usize {
    let side = (npix as f64 / (4 * nranks) as f64).sqrt();
    ((side / 64.0).ceil() as usize * 64).max(256)
}

/// Build the plan for one band.
///
/// `exposures` may come in any order: the table is sorted by (visit, dither group, exposure,
/// detector, path). `nranks` is the number of ranks that will run the stages.
///
/// # Errors
/// [`PlanError`] for an empty or mixed-band input, a broken footprint, or a runaway grid.
pub fn build_plan(
    exposures: &[CalMeta],
    cfg: &PlanConfig,
    mem_budget_mb: u64,
    nranks: usize,
) -> Result<Plan, PlanError> {
    assert!(nranks > 0, "at least one rank");
    if exposures.is_empty() {
        return Err(PlanError::Empty);
    }
    let mut metas: Vec<&CalMeta> = exposures.iter().collect();
    metas.sort_by(|a, b| {
        (a.id.visit_key(), a.id.dither_group_key(), &a.id.exposure, &a.detector, &a.path).cmp(&(
            b.id.visit_key(),
            b.id.dither_group_key(),
            &b.id.exposure,
            &b.detector,
            &b.path,
        ))
    });
    let mut bands: Vec<String> = metas.iter().map(|m| m.band()).collect();
    bands.sort();
    bands.dedup();
    if bands.len() > 1 {
        return Err(PlanError::MixedBands { bands: bands.join(", ") });
    }
    let band = bands.remove(0);
    let first = metas[0];
    let instrument = Instrument::of_filter(&band).ok_or_else(|| PlanError::UnknownBand {
        path: first.path.clone(),
        filter: band.clone(),
        detector: first.detector.clone(),
    })?;

    // Footprints on the sky, and a sanity check of each exposure's WCS: the native pixel scale, and a
    // local pixel area within 0.5..2 of nominal with one orientation everywhere (no folding SIP).
    let footprints: Vec<Vec<[f64; 2]>> = metas.iter().map(|m| m.footprint_sky(8)).collect();
    for m in &metas {
        let s = m.wcs.pixel_scale_arcsec();
        let native = instrument.native_pixscale_arcsec();
        if !(0.8..=1.25).contains(&(s / native)) {
            return Err(PlanError::BadPixelScale {
                path: m.path.clone(),
                scale_arcsec: s,
                native_arcsec: native,
                band: band.clone(),
            });
        }
        let cd_sign = (m.wcs.cd[0][0] * m.wcs.cd[1][1] - m.wcs.cd[0][1] * m.wcs.cd[1][0]).signum();
        let [ny, nx] = m.shape;
        for j in 0..=4 {
            for i in 0..=4 {
                let (x, y) = (i as f64 / 4.0 * (nx as f64 - 1.0), j as f64 / 4.0 * (ny as f64 - 1.0));
                let jac = m.wcs.jacobian_arcsec(x, y);
                // the tangent plane is (east, north): a CD with east to the left has det < 0 there too
                let det = jac[0][0] * jac[1][1] - jac[0][1] * jac[1][0];
                let ratio = det.abs() / (s * s);
                if !(0.5..=2.0).contains(&ratio) || !ratio.is_finite() || det.signum() != cd_sign {
                    return Err(PlanError::BadFootprint { path: m.path.clone(), ratio });
                }
            }
        }
    }

    // The output grid.
    let grid = match &cfg.grid {
        Some(g) => {
            let mut grid = OutputGrid {
                crval_deg: [g.ra_deg, g.dec_deg],
                crpix: [(g.nx as f64 + 1.0) / 2.0, (g.ny as f64 + 1.0) / 2.0],
                pixscale_arcsec: g.pixscale_arcsec,
                rotation_deg: g.rotation_deg,
                nx: g.nx,
                ny: g.ny,
            };
            grid.rotation_deg = g.rotation_deg;
            grid
        }
        None => {
            let scale =
                if cfg.pixscale_arcsec > 0.0 { cfg.pixscale_arcsec } else { instrument.native_pixscale_arcsec() };
            let pts: Vec<SkyCoord> =
                footprints.iter().flatten().map(|p| SkyCoord { ra_deg: p[0], dec_deg: p[1] }).collect();
            OutputGrid::covering(&pts, scale, cfg.margin_px).expect("non-empty points and positive scale")
        }
    };
    let wcs = grid.wcs();
    let footprints_px: Vec<Vec<[f64; 2]>> = footprints
        .iter()
        .map(|fp| {
            fp.iter()
                .map(|p| {
                    // a plain TAN inverse converges in one step; fall back to NaN far off the grid
                    let (x, y) = wcs.sky_to_pixel(p[0], p[1]).unwrap_or((f64::NAN, f64::NAN));
                    [x, y]
                })
                .collect()
        })
        .collect();

    // Runaway guard: the grid area against the union of the footprints (rasterised on a coarse mask).
    let mpix = grid.npix() as f64 / 1e6;
    let union_px = union_area_px(&footprints_px, grid.nx, grid.ny);
    if cfg.grid.is_none() {
        let fill = grid.npix() as f64 / union_px.max(1.0);
        if fill > cfg.max_fill_ratio {
            let outlier = farthest_exposure(&metas, &footprints);
            return Err(PlanError::Runaway {
                nx: grid.nx,
                ny: grid.ny,
                mpix,
                union_mpix: union_px / 1e6,
                fill,
                limit: cfg.max_fill_ratio,
                outlier,
            });
        }
    } else if union_px <= 0.0 {
        return Err(PlanError::NoOverlap);
    }
    if mpix > cfg.max_output_mpix {
        return Err(PlanError::TooLarge { nx: grid.nx, ny: grid.ny, mpix, limit: cfg.max_output_mpix });
    }

    // The chunk grid and the input pixels landing on each chunk.
    let chunk_px = if cfg.chunk_px > 0 {
        cfg.chunk_px
    } else {
        chunk_side_from_budget(mem_budget_mb, cfg.bytes_per_output_px).min(chunk_side_for_ranks(grid.npix(), nranks))
    };
    let chunks_x = grid.nx.div_ceil(chunk_px);
    let chunks_y = grid.ny.div_ceil(chunk_px);
    let polys: Vec<Polygon> = footprints_px.iter().map(|fp| Polygon::new(fp.clone())).collect();
    let boxes: Vec<crate::geom::polygon::BBox> = polys.iter().map(Polygon::bbox).collect();
    let mut chunks = vec![];
    for cy in 0..chunks_y {
        for cx in 0..chunks_x {
            let (y0, x0) = (cy * chunk_px, cx * chunk_px);
            let (y1, x1) = ((y0 + chunk_px).min(grid.ny), (x0 + chunk_px).min(grid.nx));
            let rect = Polygon::rect(&crate::geom::polygon::BBox {
                x0: x0 as f64 - 0.5,
                y0: y0 as f64 - 0.5,
                x1: x1 as f64 - 0.5,
                y1: y1 as f64 - 0.5,
            });
            let mut input_px = 0.0;
            let mut exps = vec![];
            for (i, (p, m)) in polys.iter().zip(&metas).enumerate() {
                // a footprint whose box is a pixel or more away from the chunk cannot overlap it (its
                // clip is empty): skip the clip
                let b = &boxes[i];
                if b.x0 > x1 as f64 + 0.5 || b.x1 < x0 as f64 - 1.5 || b.y0 > y1 as f64 + 0.5 || b.y1 < y0 as f64 - 1.5
                {
                    continue;
                }
                let a = p.intersect(&rect).area();
                if a > 0.0 {
                    let r = grid.pixscale_arcsec / m.wcs.pixel_scale_arcsec();
                    input_px += a * r * r;
                    exps.push(i);
                }
            }
            chunks.push(Chunk {
                index: chunks.len(),
                cy,
                cx,
                y0,
                y1,
                x0,
                x1,
                input_px: input_px.round() as u64,
                exposures: exps,
                owner: 0,
            });
        }
    }
    let weights: Vec<u64> = chunks.iter().map(|c| c.input_px).collect();
    let owners = assign_lpt(&weights, nranks);
    for (c, &o) in chunks.iter_mut().zip(&owners) {
        c.owner = o;
    }
    let rank_input_px = loads(&weights, &owners, nranks);
    let exp_weights: Vec<u64> = metas.iter().map(|m| (m.shape[0] * m.shape[1]) as u64).collect();
    let exp_owners = assign_lpt(&exp_weights, nranks);

    let exposures = metas
        .iter()
        .enumerate()
        .map(|(i, m)| ExposureRecord {
            index: i,
            path: m.path.clone(),
            instrument: m.instrument.clone(),
            detector: m.detector.clone(),
            band: band.clone(),
            visit: m.id.visit_key(),
            dither_group: m.id.dither_group_key(),
            exposure: m.id.exposure.clone(),
            expmid_mjd: m.expmid_mjd,
            effexptm_s: m.effexptm_s,
            shape: m.shape,
            footprint_sky: footprints[i].clone(),
            footprint_px: footprints_px[i].clone(),
            owner: exp_owners[i],
        })
        .collect();

    Ok(Plan {
        version: crate::VERSION.to_string(),
        band,
        instrument,
        ranks: nranks,
        grid,
        chunk_px,
        chunks_x,
        chunks_y,
        exposures,
        chunks,
        rank_input_px,
    })
}

/// A half-open range of mask cells `(first, end)` along one axis.
type CellSpan = (usize, usize);

/// A footprint's polygon and the cells `[x0, x1) x [y0, y1)` of an `mx x my` mask of `cell`-pixel
/// cells that its bounding box meets; `None` for a footprint with a non-finite corner.
fn footprint_cells(fp: &[[f64; 2]], cell: f64, mx: usize, my: usize) -> Option<(Polygon, CellSpan, CellSpan)> {
    let p = Polygon::new(fp.to_vec());
    let b = p.bbox();
    if !b.x0.is_finite() || !b.x1.is_finite() || !b.y0.is_finite() || !b.y1.is_finite() {
        return None;
    }
    let cx0 = ((b.x0 + 0.5) / cell).floor().max(0.0) as usize;
    let cy0 = ((b.y0 + 0.5) / cell).floor().max(0.0) as usize;
    let cx1 = (((b.x1 + 0.5) / cell).ceil().max(0.0) as usize).min(mx);
    let cy1 = (((b.y1 + 0.5) / cell).ceil().max(0.0) as usize).min(my);
    Some((p, (cx0, cx1), (cy0, cy1)))
}

/// Area in output pixels of the union of footprints, rasterised on a mask of at most 1024 x 1024
/// cells over the grid (an estimate good to a cell's area per footprint edge).
fn union_area_px(footprints_px: &[Vec<[f64; 2]>], nx: usize, ny: usize) -> f64 {
    let cell = (nx.max(ny) as f64 / 1024.0).max(1.0);
    let (mx, my) = ((nx as f64 / cell).ceil() as usize, (ny as f64 / cell).ceil() as usize);
    let mut mask = vec![false; mx * my];
    for fp in footprints_px {
        let Some((p, (cx0, cx1), (cy0, cy1))) = footprint_cells(fp, cell, mx, my) else {
            continue;
        };
        for j in cy0..cy1 {
            let y = (j as f64 + 0.5) * cell - 0.5;
            let inside = |i: usize| p.contains((i as f64 + 0.5) * cell - 0.5, y);
            if let Some(r) = row_interval(cx0..cx1, &inside, row_guess(fp, y, cell)) {
                mask[j * mx + r.start..j * mx + r.end].fill(true);
            }
        }
    }
    mask.iter().filter(|&&m| m).count() as f64 * cell * cell
}

/// The cells `i` of `cells` where `inside(i)` holds, as one range, found with few calls of
/// `inside`. Exact for `Polygon::contains` along a row: it is a conjunction of one test per edge,
/// each monotone in x (a rounded product and difference of monotone terms), so the cells that pass
/// form one interval. From `guess` (a cell likely inside) a binary search finds each end; if the
/// guess is outside, every cell is tested.
fn row_interval(cells: Range<usize>, inside: &dyn Fn(usize) -> bool, guess: Option<usize>) -> Option<Range<usize>> {
    let g = guess.filter(|g| cells.contains(g) && inside(*g));
    let Some(g) = g else {
        let first = cells.clone().find(|&i| inside(i))?;
        let end = (first..cells.end).find(|&i| !inside(i)).unwrap_or(cells.end);
        return Some(first..end);
    };
    // first inside in [start, g]: inside is false..false true..true there
    let (mut lo, mut hi) = (cells.start, g);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if inside(mid) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    let first = lo;
    // one past the last inside in [g, end): true..true false..false there
    let (mut lo, mut hi) = (g + 1, cells.end);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if inside(mid) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    Some(first..lo)
}

/// The cell nearest the middle of the polygon `fp`'s chord at height `y` (cells of side `cell`,
/// centres at `(i + 0.5) cell - 0.5`), or `None` if no edge crosses `y`.
fn row_guess(fp: &[[f64; 2]], y: f64, cell: f64) -> Option<usize> {
    let n = fp.len();
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for k in 0..n {
        let (a, b) = (fp[k], fp[(k + 1) % n]);
        if (a[1] <= y && y <= b[1]) || (b[1] <= y && y <= a[1]) {
            let x = if a[1] == b[1] { a[0] } else { a[0] + (y - a[1]) * (b[0] - a[0]) / (b[1] - a[1]) };
            lo = lo.min(x);
            hi = hi.max(x);
        }
    }
    let mid = ((lo + hi) / 2.0 + 0.5) / cell;
    (lo <= hi && mid.is_finite() && mid >= 0.0).then_some(mid as usize)
}

/// The exposure whose footprint centre is farthest from the median centre (to name in errors).
fn farthest_exposure(metas: &[&CalMeta], footprints: &[Vec<[f64; 2]>]) -> PathBuf {
    let centres: Vec<SkyCoord> = footprints
        .iter()
        .map(|fp| {
            let (x, y, z) = fp.iter().fold((0.0, 0.0, 0.0), |(x, y, z), p| {
                let (ra, de) = (p[0].to_radians(), p[1].to_radians());
                (x + de.cos() * ra.cos(), y + de.cos() * ra.sin(), z + de.sin())
            });
            SkyCoord { ra_deg: y.atan2(x).to_degrees(), dec_deg: z.atan2((x * x + y * y).sqrt()).to_degrees() }
        })
        .collect();
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let m = SkyCoord {
        ra_deg: median(centres.iter().map(|c| c.ra_deg).collect()),
        dec_deg: median(centres.iter().map(|c| c.dec_deg).collect()),
    };
    let i = (0..centres.len())
        .max_by(|&a, &b| {
            crate::geom::separation_deg(centres[a], m).total_cmp(&crate::geom::separation_deg(centres[b], m))
        })
        .expect("non-empty");
    metas[i].path.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The union area as it was computed before the row intervals: every cell centre in a
    /// footprint's box tested.
    fn union_area_slow(footprints_px: &[Vec<[f64; 2]>], nx: usize, ny: usize) -> f64 {
        let cell = (nx.max(ny) as f64 / 1024.0).max(1.0);
        let (mx, my) = ((nx as f64 / cell).ceil() as usize, (ny as f64 / cell).ceil() as usize);
        let mut mask = vec![false; mx * my];
        for fp in footprints_px {
            let Some((p, (cx0, cx1), (cy0, cy1))) = footprint_cells(fp, cell, mx, my) else {
                continue;
            };
            for j in cy0..cy1 {
                for i in cx0..cx1 {
                    if p.contains((i as f64 + 0.5) * cell - 0.5, (j as f64 + 0.5) * cell - 0.5) {
                        mask[j * mx + i] = true;
                    }
                }
            }
        }
        mask.iter().filter(|&&m| m).count() as f64 * cell * cell
    }

    #[test]
    fn union_area_by_row_intervals_is_the_cell_by_cell_count() {
        // rotated squares and thin slivers (32 vertices each, as footprint_sky(8) gives), some off
        // the grid's edges, some with vertices on cell centres, on a 1:1 grid and a coarse one
        let poly = |cx: f64, cy: f64, w: f64, h: f64, rot: f64| -> Vec<[f64; 2]> {
            let (c, s) = (rot.cos(), rot.sin());
            let mut v = vec![];
            for (ax, ay, bx, by) in
                [(-1.0, -1.0, 1.0, -1.0), (1.0, -1.0, 1.0, 1.0), (1.0, 1.0, -1.0, 1.0), (-1.0, 1.0, -1.0, -1.0)]
            {
                for k in 0..8 {
                    let t = k as f64 / 8.0;
                    let (x, y) = ((ax + t * (bx - ax)) * w / 2.0, (ay + t * (by - ay)) * h / 2.0);
                    v.push([cx + c * x - s * y, cy + s * x + c * y]);
                }
            }
            v
        };
        let mut fps = vec![];
        for k in 0..12 {
            let f = k as f64;
            fps.push(poly(40.0 + 37.0 * f, 300.0 - 11.0 * f, 120.0 + 9.0 * f, 90.0, 0.13 * f - 0.7));
        }
        fps.push(poly(-20.0, 10.0, 100.0, 60.0, 0.4)); // off the left and top edges
        fps.push(poly(250.0, 200.0, 400.0, 2.0, 0.01)); // a sliver
        fps.push(poly(100.0, 100.0, 20.0, 20.0, 0.0)); // axis-aligned, vertices on cell centres
        fps.push(vec![[f64::NAN, 0.0], [1.0, 1.0], [2.0, 0.0]]); // broken: skipped
        for (nx, ny) in [(600, 420), (3000, 2100)] {
            let scale = nx as f64 / 600.0;
            let fs: Vec<Vec<[f64; 2]>> =
                fps.iter().map(|fp| fp.iter().map(|p| [p[0] * scale, p[1] * scale]).collect()).collect();
            let (fast, slow) = (union_area_px(&fs, nx, ny), union_area_slow(&fs, nx, ny));
            assert!(slow > 0.0);
            assert_eq!(fast, slow, "{nx} x {ny}");
        }
    }
}

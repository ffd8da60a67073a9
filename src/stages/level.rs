//! Stage `level`: background level matching (pjpipe level_match, with the departures of SPEC
//! section 6), distributed over the chunk owners.
//!
//! 1. **Dithers**: the images are the exposures; pairs are exposures of the same dither group and
//!    detector. Each chunk owner resamples every overlapping exposure onto its chunk (drizzle,
//!    pixfrac 1, row bands within the memory budget) and keeps the pixel-by-pixel differences of
//!    every pair, emission included, on a lattice of grid pixels that thins them only when the
//!    budget demands it (the lattice is fixed on the grid, so it does not depend on the chunks).
//! 2. **Tiles**: the images are the dither groups (per detector), each stacked as the weighted mean of
//!    its exposures after step 1; pairs are all overlapping groups.
//! 3. Per pair, the sigma-clipped median and rms of the differences come from fixed-bin histograms
//!    whose integer counts are summed across ranks and refined around the median
//!    ([`crate::kernels::level::ClipHistogram`]), so they are the same for any decomposition. The
//!    pair table is gathered on rank 0, pairs are rejected by pjpipe's rules, the weighted least
//!    squares (1/rms^2) is solved directly with a gauge (step 1: mean zero per group; step 2: the
//!    best connected tile), disconnected groups are named in a warning, and the offsets are broadcast.
//! 4. One constant for the band: the lowest sigma-clipped sky among the tile stacks.
//!
//! The result is a [`Corrections`] table (constant per exposure) that every later read subtracts, and
//! a report (`level/level.json`, `level/pairs.csv`) of every pair and the solved offsets.
//! What does not live here: the statistics and the solve themselves (`kernels::level`).

use super::pieces::{resample_alone, Corrections};
use crate::config::{Config, WeightType};
use crate::dist::{Comm, CommExt};
use crate::geom::TanSip;
use crate::kernels::level::{
    lowest_sky, reject_pairs, solve_offsets, weight_from_rms, ClipHistogram, ClipParams, ClipPass, ClipStep,
    ClippedStats, Gauge, HistParams, IndexExtent, PairMeasure, PairOffset, PairStatus, RejectParams, ValueRange,
};
use crate::plan::{CalMeta, Chunk, Plan};
use anyhow::Context;
use ndarray::Array2;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// The HDF5 group, output folder and log target.
pub const STAGE: &str = "level";

/// One matching step: which image each exposure belongs to and which image pairs are compared.
struct Step<'a> {
    name: &'a str,
    /// Image of each exposure (plan order).
    image_of: Vec<usize>,
    /// Image names for the report and warnings.
    names: Vec<String>,
    /// Whether images `a < b` are compared.
    pair_ok: Box<dyn Fn(usize, usize) -> bool + 'a>,
    /// Collect the image values too (for the sky of each image).
    sky: bool,
}

/// What one rank measured in one step.
#[derive(Default)]
struct Local {
    diffs: BTreeMap<(usize, usize), Vec<f32>>,
    pair_ext: BTreeMap<(usize, usize), IndexExtent>,
    image_ext: BTreeMap<usize, IndexExtent>,
    values: BTreeMap<usize, Vec<f32>>,
}

/// One row of the pair report.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PairRow {
    pub step: String,
    pub a: String,
    pub b: String,
    /// Overlap in grid pixels (on the sampling lattice).
    pub npix: u64,
    /// Sigma-clipped median of a - b, MJy/sr.
    pub median_mjysr: f64,
    /// Sigma-clipped rms of a - b, MJy/sr.
    pub rms_mjysr: f64,
    /// "used" or why the pair was rejected.
    pub status: String,
    /// median - (offset a - offset b) after the solve, MJy/sr (used pairs).
    pub residual_mjysr: Option<f64>,
}

/// The stage's report and result.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LevelReport {
    pub pairs: Vec<PairRow>,
    /// Step-1 offset per exposure file, MJy/sr.
    pub exposure_offsets_mjysr: BTreeMap<String, f64>,
    /// Step-2 offset per tile group, MJy/sr.
    pub tile_offsets_mjysr: BTreeMap<String, f64>,
    /// Clipped sky of each tile group after matching, MJy/sr.
    pub tile_sky_mjysr: BTreeMap<String, f64>,
    /// The band constant subtracted at the end, MJy/sr.
    pub band_sky_mjysr: f64,
    /// Sampling lattice step in grid pixels (1 = every pixel).
    pub lattice_step: usize,
    /// Warnings raised (disconnected groups, unmatched images).
    pub warnings: Vec<String>,
}

/// Run the stage on top of `prior` corrections; returns the corrected table and the report (rank 0
/// writes the report files).
///
/// # Errors
/// A failed read on any rank (ranks agree before failing), or a failed report write.
pub fn run(
    comm: &dyn Comm,
    plan: &Plan,
    metas: &[CalMeta],
    cfg: &Config,
    prior: &Corrections,
) -> anyhow::Result<(Corrections, LevelReport)> {
    let n = metas.len();
    let lattice = lattice_step(comm, plan, cfg);
    let clip = ClipParams { sigma: cfg.level.sigma, maxiters: Some(cfg.level.maxiters) };
    let rej = RejectParams {
        min_area_frac: cfg.level.min_area_frac,
        min_linear_frac: cfg.level.min_linear_frac,
        rms_sig_limit: cfg.level.rms_sig_limit,
    };
    let file = |k: usize| metas[k].path.file_name().map_or_else(String::new, |f| f.to_string_lossy().into_owned());
    // groups: dither group and detector
    let gkey = |m: &CalMeta| format!("{}_{}", m.id.dither_group_key(), m.detector.to_ascii_lowercase());
    let keys: BTreeSet<String> = metas.iter().map(gkey).collect();
    let keys: Vec<String> = keys.into_iter().collect();
    let group_of: Vec<usize> = metas.iter().map(|m| keys.binary_search(&gkey(m)).expect("key listed")).collect();
    let mut warnings = vec![];
    let mut rows = vec![];

    // step 1: exposures within their dither group
    let s1 = Step {
        name: "dithers",
        image_of: (0..n).collect(),
        names: (0..n).map(file).collect(),
        pair_ok: Box::new(|a, b| group_of[a] == group_of[b]),
        sky: false,
    };
    let (o1, _) = match_step(
        comm,
        plan,
        metas,
        cfg,
        prior,
        &s1,
        lattice,
        &clip,
        &rej,
        Gauge::MeanZero,
        &mut rows,
        &mut warnings,
    )?;
    let mut corr = Corrections {
        offset_mjysr: o1.iter().enumerate().map(|(k, o)| prior.offset(k) + o).collect(),
        ..prior.clone()
    };

    // step 2: tile groups, reference = the best connected
    let s2 = Step {
        name: "tiles",
        image_of: group_of.clone(),
        names: keys.clone(),
        pair_ok: Box::new(|_, _| true),
        sky: true,
    };
    let (o2, skies) = match_step(
        comm,
        plan,
        metas,
        cfg,
        &corr,
        &s2,
        lattice,
        &clip,
        &rej,
        Gauge::Reference(vec![]),
        &mut rows,
        &mut warnings,
    )?;
    let skies: Vec<f64> = (0..keys.len()).map(|g| skies[g] - o2[g]).collect();
    let band_sky = if cfg.level.subtract_sky { lowest_sky(&skies).map_or(0.0, |(_, s)| s) } else { 0.0 };
    for k in 0..n {
        corr.offset_mjysr[k] += o2[group_of[k]] + band_sky;
    }
    let report = LevelReport {
        pairs: rows,
        exposure_offsets_mjysr: (0..n).map(|k| (file(k), o1[k])).collect(),
        tile_offsets_mjysr: keys.iter().cloned().zip(o2.iter().copied()).collect(),
        tile_sky_mjysr: keys.iter().cloned().zip(skies.iter().copied()).collect(),
        band_sky_mjysr: band_sky,
        lattice_step: lattice,
        warnings,
    };
    if comm.rank() == 0 {
        write_report(&cfg.run.output_dir.join(STAGE), &report)?;
    }
    Ok((corr, report))
}

/// Grid-pixel step of the sampling lattice: 1 unless keeping every difference of the owned chunks
/// would take more than a quarter of the memory budget (the largest such step over the ranks, so
/// every rank samples the same lattice).
fn lattice_step(comm: &dyn Comm, plan: &Plan, cfg: &Config) -> usize {
    let mine: f64 = plan
        .chunks_of(comm.rank())
        .map(|c| ((c.y1 - c.y0) * (c.x1 - c.x0)) as f64 * c.exposures.len() as f64 * 0.5 * 4.0)
        .sum();
    let mut need = [mine / (cfg.run.mem_budget_mb as f64 * 1024.0 * 1024.0 / 4.0)];
    comm.all_reduce_max_f64(&mut need);
    need[0].sqrt().ceil().max(1.0) as usize
}

/// Measure, gather, reject and solve one step. Returns the offset and clipped sky (NaN without
/// `step.sky`) per image.
#[allow(clippy::too_many_arguments)]
fn match_step(
    comm: &dyn Comm,
    plan: &Plan,
    metas: &[CalMeta],
    cfg: &Config,
    corr: &Corrections,
    step: &Step,
    lattice: usize,
    clip: &ClipParams,
    rej: &RejectParams,
    gauge: Gauge,
    rows: &mut Vec<PairRow>,
    warnings: &mut Vec<String>,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let nimg = step.names.len();
    let grid = plan.grid.wcs();
    let owned: Vec<&Chunk> = plan.chunks_of(comm.rank()).collect();
    let local = super::outlier::agree(comm, || -> anyhow::Result<Local> {
        let mut l = Local::default();
        let budget = cfg.run.mem_budget_mb as usize * 1024 * 1024 / 4;
        for c in &owned {
            measure_chunk(c, metas, &grid, cfg.drizzle.weight_type, corr, step, lattice, budget, &mut l)?;
        }
        Ok(l)
    })?;

    // the union of the pairs any rank saw, in one order everywhere
    let mut keys: BTreeSet<(usize, usize)> = BTreeSet::new();
    for part in comm.all_gather_bytes(&serde_json::to_vec(&local.diffs.keys().collect::<Vec<_>>())?) {
        keys.extend(serde_json::from_slice::<Vec<(usize, usize)>>(&part)?);
    }
    let keys: Vec<(usize, usize)> = keys.into_iter().collect();
    let empty: Vec<f32> = vec![];
    let pair_sets: Vec<&[f32]> = keys.iter().map(|k| local.diffs.get(k).map_or(&empty[..], |v| &v[..])).collect();
    let pair_stats = clipped_stats_all(comm, &pair_sets, clip);
    let pair_ext = merged_extents(comm, keys.iter().map(|k| local.pair_ext.get(k).copied()).collect());
    let image_ext = merged_extents(comm, (0..nimg).map(|i| local.image_ext.get(&i).copied()).collect());
    let skies: Vec<f64> = if step.sky {
        let sets: Vec<&[f32]> = (0..nimg).map(|i| local.values.get(&i).map_or(&empty[..], |v| &v[..])).collect();
        clipped_stats_all(comm, &sets, clip).iter().map(|s| s.median).collect()
    } else {
        vec![f64::NAN; nimg]
    };

    // rank 0 rejects and solves; everyone gets the offsets
    let root = comm.rank() == 0;
    let solved = if root {
        let measures: Vec<PairMeasure> = keys
            .iter()
            .enumerate()
            .map(|(p, &(a, b))| PairMeasure {
                npix: pair_stats[p].n_total,
                rms: pair_stats[p].std,
                overlap_extent_yx: pair_ext[p].extent_yx(),
                extent_a_yx: image_ext[a].extent_yx(),
                extent_b_yx: image_ext[b].extent_yx(),
            })
            .collect();
        let status = reject_pairs(&measures, rej);
        let used: Vec<usize> = (0..keys.len()).filter(|&p| status[p] == PairStatus::Used).collect();
        let pairs: Vec<PairOffset> = used
            .iter()
            .map(|&p| PairOffset {
                i: keys[p].0,
                j: keys[p].1,
                delta: pair_stats[p].median,
                weight: weight_from_rms(pair_stats[p].std.max(1e-12)),
            })
            .collect();
        let sol = solve_offsets(nimg, &pairs, &gauge).context("level: solving the offsets")?;
        let mut msgs = vec![];
        let groups = sol.groups.groups();
        if groups.len() > 1 && step.name == "tiles" {
            for (i, g) in groups.iter().enumerate() {
                let names: Vec<&str> = g.iter().map(|&k| step.names[k].as_str()).collect();
                msgs.push(format!(
                    "level {}: the images fall into {} disconnected groups; group {} ({}) is matched only internally",
                    step.name,
                    groups.len(),
                    i + 1,
                    names.join(", ")
                ));
            }
        }
        let lone = sol.groups.isolated();
        if !lone.is_empty() && nimg > 1 {
            let names: Vec<&str> = lone.iter().map(|&k| step.names[k].as_str()).collect();
            let what = if step.name == "tiles" { "tiles" } else { "exposures" };
            msgs.push(format!(
                "level {}: no usable overlap for {} {what} ({}): left unmatched",
                step.name,
                lone.len(),
                names.join(", ")
            ));
        }
        let mut out_rows = vec![];
        let mut r = 0;
        for (p, &(a, b)) in keys.iter().enumerate() {
            let residual = if status[p] == PairStatus::Used {
                r += 1;
                Some(sol.residuals[r - 1])
            } else {
                None
            };
            out_rows.push(PairRow {
                step: step.name.to_string(),
                a: step.names[a].clone(),
                b: step.names[b].clone(),
                npix: pair_stats[p].n_total,
                median_mjysr: pair_stats[p].median,
                rms_mjysr: pair_stats[p].std,
                status: status_name(status[p]).to_string(),
                residual_mjysr: residual,
            });
        }
        Some((sol.offsets, out_rows, msgs))
    } else {
        None
    };
    let (offsets, new_rows, msgs): (Vec<f64>, Vec<PairRow>, Vec<String>) =
        comm.broadcast_value(0, solved.as_ref()).context("level: broadcasting the offsets")?;
    if root {
        for m in &msgs {
            tracing::warn!("{m}");
        }
        let used = new_rows.iter().filter(|r| r.status == "used").count();
        tracing::info!("[level] {}: {} images, {} pairs ({} used)", step.name, nimg, new_rows.len(), used);
    }
    rows.extend(new_rows);
    warnings.extend(msgs);
    Ok((offsets, skies))
}

fn status_name(s: PairStatus) -> &'static str {
    match s {
        PairStatus::Used => "used",
        PairStatus::Invalid => "rejected: no valid overlap",
        PairStatus::SmallOverlap => "rejected: overlap below level.min_area_frac of the mean",
        PairStatus::NarrowOverlap => "rejected: overlap narrower than level.min_linear_frac on both axes",
        PairStatus::HighRms => "rejected: rms above mean + level.rms_sig_limit sigma",
    }
}

/// Resample the exposures of chunk `c` band by band and record the pair differences, extents and
/// (for `step.sky`) image values on the lattice.
#[allow(clippy::too_many_arguments)]
fn measure_chunk(
    c: &Chunk,
    metas: &[CalMeta],
    grid: &TanSip,
    wt: WeightType,
    corr: &Corrections,
    step: &Step,
    lattice: usize,
    budget_bytes: usize,
    out: &mut Local,
) -> anyhow::Result<()> {
    let (ny, nx) = (c.y1 - c.y0, c.x1 - c.x0);
    let n = c.exposures.len();
    if n == 0 {
        return Ok(());
    }
    let band = (budget_bytes / (n * nx * 24 + 1)).clamp(1, ny);
    let mut y = 0;
    while y < ny {
        let rows = c.y0 + y..(c.y0 + y + band).min(c.y1);
        let h = rows.len();
        // per image: sum w * v and sum w, in exposure order
        let mut planes: BTreeMap<usize, (Array2<f64>, Array2<f64>)> = BTreeMap::new();
        for &k in &c.exposures {
            let m = &metas[k];
            let Some(acc) = resample_alone(m, k, grid, rows.clone(), c.x0..c.x1, wt, 1.0, corr)
                .with_context(|| format!("level: reading {}", m.path.display()))?
            else {
                continue;
            };
            let img = step.image_of[k];
            let (num, den) = planes.entry(img).or_insert_with(|| (Array2::zeros((h, nx)), Array2::zeros((h, nx))));
            ndarray::Zip::from(num).and(den).and(&acc.wsum).and(&acc.sci_wsum).for_each(|nu, de, &ws, &sw| {
                if ws > 0.0 {
                    *nu += sw;
                    *de += ws;
                }
            });
        }
        let images: Vec<usize> = planes.keys().copied().collect();
        let value = |img: usize, yy: usize, xx: usize| -> Option<f32> {
            let (nu, de) = &planes[&img];
            let d = de[[yy, xx]];
            (d > 0.0).then(|| (nu[[yy, xx]] / d) as f32)
        };
        let on_lattice = |gy: usize, gx: usize| gy % lattice == 0 && gx % lattice == 0;
        for &a in &images {
            let ext = out.image_ext.entry(a).or_default();
            for yy in 0..h {
                for xx in 0..nx {
                    if let Some(v) = value(a, yy, xx) {
                        let (gy, gx) = (rows.start + yy, c.x0 + xx);
                        ext.add(gy as i64, gx as i64);
                        if step.sky && on_lattice(gy, gx) {
                            out.values.entry(a).or_default().push(v);
                        }
                    }
                }
            }
        }
        for (ia, &a) in images.iter().enumerate() {
            for &b in &images[ia + 1..] {
                if !(step.pair_ok)(a, b) {
                    continue;
                }
                let mut d = vec![];
                let mut ext = IndexExtent::new();
                for yy in 0..h {
                    let gy = rows.start + yy;
                    for xx in 0..nx {
                        let gx = c.x0 + xx;
                        if let (Some(va), Some(vb)) = (value(a, yy, xx), value(b, yy, xx)) {
                            ext.add(gy as i64, gx as i64);
                            if on_lattice(gy, gx) {
                                d.push(va - vb);
                            }
                        }
                    }
                }
                if !d.is_empty() {
                    out.diffs.entry((a, b)).or_default().extend(d);
                    out.pair_ext.entry((a, b)).or_default().merge(&ext);
                }
            }
        }
        y += h;
    }
    Ok(())
}

/// Extents merged across ranks (min and max reductions), one per key.
fn merged_extents(comm: &dyn Comm, local: Vec<Option<IndexExtent>>) -> Vec<IndexExtent> {
    let e: Vec<IndexExtent> = local.into_iter().map(|e| e.unwrap_or_else(IndexExtent::new)).collect();
    let mut lo: Vec<f64> = e.iter().flat_map(|e| [e.ymin as f64, e.xmin as f64]).collect();
    let mut hi: Vec<f64> = e.iter().flat_map(|e| [e.ymax as f64, e.xmax as f64]).collect();
    comm.all_reduce_min_f64(&mut lo);
    comm.all_reduce_max_f64(&mut hi);
    (0..e.len())
        .map(|i| {
            let mut x = IndexExtent::new();
            if lo[2 * i] <= hi[2 * i] {
                x.add(lo[2 * i] as i64, lo[2 * i + 1] as i64);
                x.add(hi[2 * i] as i64, hi[2 * i + 1] as i64);
            }
            x
        })
        .collect()
}

/// Sigma-clipped statistics of every set of values, each spread over the ranks: value ranges, then
/// histogram passes whose counts are summed across ranks until every set has converged. The same on
/// every rank and for any split of the values.
fn clipped_stats_all(comm: &dyn Comm, sets: &[&[f32]], clip: &ClipParams) -> Vec<ClippedStats> {
    let hp = HistParams::default();
    let m = sets.len();
    // ranges
    let mut lo: Vec<f64> = sets.iter().map(|s| s.iter().fold(f64::INFINITY, |a, &v| a.min(f64::from(v)))).collect();
    let mut hi: Vec<f64> = sets.iter().map(|s| s.iter().fold(f64::NEG_INFINITY, |a, &v| a.max(f64::from(v)))).collect();
    let mut count: Vec<u64> = sets.iter().map(|s| s.len() as u64).collect();
    comm.all_reduce_min_f64(&mut lo);
    comm.all_reduce_max_f64(&mut hi);
    comm.all_reduce_sum_u64(&mut count);
    let mut state: Vec<Option<ClipPass>> =
        (0..m).map(|i| ClipPass::first(&ValueRange { min: lo[i], max: hi[i], count: count[i] }, hp.nbins)).collect();
    let mut result: Vec<ClippedStats> = (0..m)
        .map(|i| ClippedStats {
            n_total: count[i],
            n_kept: 0.0,
            mean: f64::NAN,
            median: f64::NAN,
            std: f64::NAN,
            lo: f64::NAN,
            hi: f64::NAN,
        })
        .collect();
    loop {
        let active: Vec<usize> = (0..m).filter(|&i| state[i].is_some()).collect();
        if active.is_empty() {
            break;
        }
        let hists: Vec<ClipHistogram> = active
            .iter()
            .map(|&i| {
                let mut h = ClipHistogram::new(*state[i].as_ref().expect("active").spec());
                for &v in sets[i] {
                    h.add(f64::from(v));
                }
                h
            })
            .collect();
        let mut counts: Vec<u64> = hists.iter().flat_map(|h| h.counts().iter().copied()).collect();
        let mut mins: Vec<f64> = hists.iter().map(|h| h.extremes().0).collect();
        let mut maxs: Vec<f64> = hists.iter().map(|h| h.extremes().1).collect();
        comm.all_reduce_sum_u64(&mut counts);
        comm.all_reduce_min_f64(&mut mins);
        comm.all_reduce_max_f64(&mut maxs);
        let mut off = 0;
        for (j, &i) in active.iter().enumerate() {
            let pass = state[i].take().expect("active");
            let len = pass.spec().nbins + 2;
            let h = ClipHistogram::from_parts(*pass.spec(), counts[off..off + len].to_vec(), mins[j], maxs[j]);
            off += len;
            match h.step(clip, &hp, &pass) {
                ClipStep::Done(mut st) => {
                    st.n_total = count[i];
                    result[i] = st;
                }
                ClipStep::Refine(next) => state[i] = Some(next),
            }
        }
    }
    result
}

fn write_report(dir: &std::path::Path, r: &LevelReport) -> anyhow::Result<()> {
    crate::io::json::write_json(&dir.join("level.json"), r)?;
    let mut csv = String::from("step,a,b,npix,median_mjysr,rms_mjysr,status,residual_mjysr\n");
    for p in &r.pairs {
        csv.push_str(&format!(
            "{},{},{},{},{},{},{},{}\n",
            p.step,
            p.a,
            p.b,
            p.npix,
            p.median_mjysr,
            p.rms_mjysr,
            p.status,
            p.residual_mjysr.map_or(String::new(), |v| v.to_string())
        ));
    }
    crate::io::json::write_text(&dir.join("pairs.csv"), &csv)?;
    Ok(())
}

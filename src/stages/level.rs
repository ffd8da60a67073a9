//! Stage `level`: background level matching (pjpipe level_match, with the departures of SPEC
//! section 6), distributed over the chunk owners.
//!
//! 1. **Dithers**: the images are the exposures; pairs are exposures of the same dither group and
//!    detector. Each chunk owner resamples every overlapping exposure onto its chunk (drizzle,
//!    pixfrac 1, row bands within the memory budget) and keeps the pixel-by-pixel differences of
//!    every pair, emission included, on a lattice of grid pixels that thins them only when the
//!    budget demands it (the lattice is fixed on the grid, so it does not depend on the chunks).
//! 2. **Tiles**: the images are the dither groups (per detector), each stacked as the weighted mean of
//!    its exposures after step 1; pairs are all overlapping groups. The exposures are step 1's
//!    resampled ones less their step-1 offsets: step 1 keeps them within half of
//!    `run.mem_budget_mb`, and what does not fit is resampled again exactly as in step 1 (the same
//!    numbers either way; the log says how many of each).
//! 3. Per pair, the sigma-clipped median and rms of the differences come from fixed-bin histograms
//!    whose integer counts are summed across ranks and refined around the median
//!    ([`crate::kernels::level::ClipHistogram`]), so they are the same for any decomposition. The
//!    pair table is gathered on rank 0, pairs are rejected by pjpipe's rules, the weighted least
//!    squares (1/rms^2) is solved directly with a gauge (step 1: mean zero per group; step 2: the
//!    best connected tile), disconnected groups are named in a warning, and the offsets are broadcast.
//! 4. One constant for the band: the lowest sigma-clipped sky among the tile stacks.
//! 5. **Lyot** (MIRI full frames): steps 1 and 2 use the imager field alone; then each exposure's
//!    Lyot box is an image of its own, matched against the matched imager fields (one reference
//!    image) and every other Lyot box it overlaps on the sky; a box connected to no imager field is
//!    reported and masked.
//!
//! The result is a [`Corrections`] table (constant per exposure) that every later read subtracts, and
//! a report (`level/level.json`, `level/pairs.csv`) of every pair and the solved offsets.
//! What does not live here: the statistics and the solve themselves (`kernels::level`).

use super::corrections::Corrections;
use super::pieces::{read_piece, Part, Want};
use crate::config::{Config, WeightType};
use crate::dist::{Comm, CommExt};
use crate::error::Context;
use crate::geom::TanSip;
use crate::kernels::drizzle::{par_drizzle_add_window, DrizzleAccum, DrizzleParams};
use crate::kernels::level::{
    lowest_sky, order_by_time, reject_pairs, solve_offsets, solve_planes_gls, weight_from_rms, ClipHistogram,
    ClipParams, ClipPass, ClipStep, ClippedStats, Gauge, HistParams, IndexExtent, PairMeasure, PairOffset, PairPlane,
    PairStatus, Plane, PlaneFit, PlaneFitParams, PlaneSums, RejectParams, ValueRange, PLANE_WORDS,
};
use crate::plan::{CalMeta, Chunk, Plan};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

/// The HDF5 group, output folder and log target.
pub const STAGE: &str = "level";

/// One matching step: which image each exposure belongs to and which image pairs are compared.
struct Step<'a> {
    name: &'a str,
    /// The images each exposure (plan order) contributes to, with the part of the exposure that
    /// goes into each (MIRI: the imager field and the Lyot box are separate images).
    parts: Vec<Vec<(Part, usize)>>,
    /// Image names for the report and warnings.
    names: Vec<String>,
    /// Whether images `a < b` are compared.
    pair_ok: Box<dyn Fn(usize, usize) -> bool + 'a>,
    /// Collect the image values too (for the sky of each image).
    sky: bool,
    /// Fit planes (offset and slopes) instead of constants; keeps each difference's grid position.
    planes: bool,
    /// The matching problem each image belongs to: pjpipe solves each dither group on its own, so
    /// its pair rejection (which compares a pair with the mean of the others) runs per problem.
    problem_of: Box<dyn Fn(usize) -> usize + 'a>,
}

/// What one rank measured in one step.
#[derive(Default)]
struct Local {
    diffs: BTreeMap<(usize, usize), Vec<f32>>,
    /// Grid `[x, y]` of each difference, relative to the plane origin (plane steps only).
    diff_xy: BTreeMap<(usize, usize), Vec<[i32; 2]>>,
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
    /// MIRI: offset of each exposure's Lyot box relative to its imager field (step "lyot"), MJy/sr.
    #[serde(default)]
    pub lyot_offsets_mjysr: BTreeMap<String, f64>,
    /// MIRI: exposures whose Lyot box overlaps no matched image and is masked.
    #[serde(default)]
    pub lyot_masked: Vec<String>,
    /// The tile used as the gauge reference of step 2 where DT_BGR chose it (closest in time to the
    /// off-source backgrounds).
    #[serde(default)]
    pub reference_tile: Option<String>,
    /// Step-2 offset per tile group, MJy/sr (with planes: the plane's value at the tile's centre).
    pub tile_offsets_mjysr: BTreeMap<String, f64>,
    /// `level.tile_fit = "plane"`: the plane per tile group, `[value at plane_origin_xy, d/dx, d/dy]`
    /// in MJy/sr and MJy/sr per output-grid pixel.
    #[serde(default)]
    pub tile_planes: BTreeMap<String, [f64; 3]>,
    /// Output-grid pixel `[x, y]` the planes refer to (the grid centre).
    #[serde(default)]
    pub plane_origin_xy: [i32; 2],
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
) -> crate::Result<(Corrections, LevelReport)> {
    let n = metas.len();
    let lattice = lattice_step(comm, plan, cfg);
    let clip = ClipParams { sigma: cfg.level.sigma, maxiters: Some(cfg.level.maxiters) };
    let rej = RejectParams {
        min_area_frac: cfg.level.min_area_frac,
        min_linear_frac: cfg.level.min_linear_frac,
        rms_sig_limit: cfg.level.rms_sig_limit,
    };
    let file = |k: usize| metas[k].file_name();
    // groups: dither group and detector
    let gkey = |m: &CalMeta| format!("{}_{}", m.id.dither_group_key(), m.detector.to_ascii_lowercase());
    let keys: BTreeSet<String> = metas.iter().map(gkey).collect();
    let keys: Vec<String> = keys.into_iter().collect();
    let group_of: Vec<usize> = metas.iter().map(|m| keys.binary_search(&gkey(m)).expect("key listed")).collect();
    let mut warnings = vec![];
    let mut rows = vec![];

    // step 1: exposures within their dither group (MIRI: the imager field without the Lyot box)
    let lyot_of: Vec<Option<[usize; 4]>> =
        metas.iter().map(|m| if cfg.prep.enabled && cfg.prep.lyot_separate { m.lyot_box() } else { None }).collect();
    let s1 = Step {
        name: "dithers",
        parts: (0..n).map(|k| vec![(lyot_of[k].map_or(Part::Whole, Part::Main), k)]).collect(),
        names: (0..n).map(file).collect(),
        pair_ok: Box::new(|a, b| group_of[a] == group_of[b]),
        sky: false,
        planes: false,
        problem_of: Box::new(|a| group_of[a]),
    };
    // step 2 resamples the same exposure parts as step 1 with the same corrections, less the step-1
    // offsets: step 1 keeps what fits in half the memory budget for it
    let share = if cfg.level.share_pieces { cfg.run.mem_budget_mb as usize * 1024 * 1024 / 2 } else { 0 };
    let mut cache = Cache::new(share);
    let mut src1 = Source { corr: prior, delta: vec![], cache: Some(&mut cache) };
    let r1 = match_step(
        comm,
        plan,
        metas,
        cfg,
        &mut src1,
        &s1,
        lattice,
        &clip,
        &rej,
        Gauge::MeanZero,
        &mut rows,
        &mut warnings,
    )?;
    let o1 = &r1.offsets;
    let mut corr = Corrections {
        offset_mjysr: (0..n).map(|k| prior.offset(k) + o1[k]).collect(),
        lyot_offset_mjysr: (0..n).map(|k| prior.lyot(k).map_or(0.0, |(l, _)| l)).collect(),
        lyot_box: lyot_of.clone(),
        ..prior.clone()
    };

    // step 2: tile groups; reference = the tile closest in time to the off-source backgrounds
    // (smallest |DT_BGR|), else the best connected
    let dt: Vec<Option<f64>> = (0..keys.len())
        .map(|g| {
            let v: Vec<f64> = (0..n).filter(|&k| group_of[k] == g).filter_map(|k| metas[k].dt_bgr_days).collect();
            (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
        })
        .collect();
    let order = order_by_time(&dt);
    let reference_tile = order.first().map(|&g| keys[g].clone());
    let s2 = Step {
        name: "tiles",
        // MIRI: the imager field; the Lyot boxes are matched in their own step below
        parts: (0..n).map(|k| vec![(lyot_of[k].map_or(Part::Whole, Part::Main), group_of[k])]).collect(),
        names: keys.clone(),
        pair_ok: Box::new(|_, _| true),
        sky: true,
        planes: cfg.level.tile_planes,
        problem_of: Box::new(|_| 0),
    };
    let (held, n_held) = (cache.bytes, cache.pieces.len());
    cache.store = false;
    let mut src2 = Source { corr: prior, delta: o1.clone(), cache: Some(&mut cache) };
    let r2 = match_step(
        comm,
        plan,
        metas,
        cfg,
        &mut src2,
        &s2,
        lattice,
        &clip,
        &rej,
        Gauge::Reference(order),
        &mut rows,
        &mut warnings,
    )?;
    tracing::info!(
        "[level] tiles: {} resampled exposure parts kept from step dithers ({:.0} MiB, at most {:.0} MiB: half \
         of run.mem_budget_mb), {} resampled again",
        cache.kept,
        held as f64 / 1048576.0,
        cache.limit as f64 / 1048576.0,
        cache.recomputed
    );
    debug_assert_eq!(n_held, cache.kept);
    // with planes the tile's correction at its own centre stands for its level (sky, report)
    let at_centre = |g: usize| {
        let [p0, sx, sy] = r2.planes[g];
        let [cx, cy] = r2.centres[g];
        if cx.is_finite() && cy.is_finite() {
            p0 + sx * cx + sy * cy
        } else {
            p0
        }
    };
    let o2: Vec<f64> = (0..keys.len()).map(at_centre).collect();
    let skies: Vec<f64> = (0..keys.len()).map(|g| r2.skies[g] - o2[g]).collect();
    let band_sky = if cfg.level.subtract_sky { lowest_sky(&skies).map_or(0.0, |(_, s)| s) } else { 0.0 };
    if cfg.level.tile_planes {
        let origin = plane_origin(plan);
        corr.plane_origin_xy = [f64::from(origin[0]), f64::from(origin[1])];
        corr.plane = (0..n).map(|k| Some(r2.planes[group_of[k]])).collect();
        for k in 0..n {
            corr.offset_mjysr[k] += band_sky;
        }
    } else {
        for k in 0..n {
            corr.offset_mjysr[k] += o2[group_of[k]] + band_sky;
        }
    }
    if lyot_of.iter().any(Option::is_some) {
        match_lyot(comm, plan, metas, cfg, &lyot_of, lattice, &clip, &rej, &mut corr, &mut rows, &mut warnings)?;
    }
    let report = LevelReport {
        pairs: rows,
        exposure_offsets_mjysr: (0..n).map(|k| (file(k), o1[k])).collect(),
        lyot_offsets_mjysr: (0..n)
            .filter(|&k| lyot_of[k].is_some())
            .map(|k| (file(k), corr.lyot_offset_mjysr[k]))
            .collect(),
        lyot_masked: (0..n).filter(|&k| corr.lyot_masked.get(k).copied().unwrap_or(false)).map(file).collect(),
        reference_tile,
        tile_offsets_mjysr: keys.iter().cloned().zip(o2.iter().copied()).collect(),
        tile_planes: if cfg.level.tile_planes {
            keys.iter().cloned().zip(r2.planes.iter().copied()).collect()
        } else {
            BTreeMap::new()
        },
        plane_origin_xy: plane_origin(plan),
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

/// What one step solved.
struct StepResult {
    /// Offset per image, MJy/sr (0 for unmatched images); with planes, the value at the origin.
    offsets: Vec<f64>,
    /// Plane per image `[value at the plane origin, d/dx, d/dy]` (slopes 0 without planes).
    planes: Vec<[f64; 3]>,
    /// Centre of each image's extent, grid `[x, y]` relative to the plane origin.
    centres: Vec<[f64; 2]>,
    /// Clipped sky per image (NaN without `step.sky`).
    skies: Vec<f64>,
    /// Connected component of each image in the graph of used pairs.
    labels: Vec<usize>,
}

/// Step "lyot" (MIRI), after the tiles: every exposure's Lyot box is an image of its own, matched
/// wherever it overlaps anything on the sky: the imager fields of all exposures, already matched
/// and stacked as one reference image, and the other Lyot boxes (their own dither group when the
/// dithers are large, else other tiles). pjpipe's recombine_lyot matches the box against its own
/// dither group's imager stack only; on MIRI's real focal plane the box rarely overlaps that (the
/// imager field starts ~70 columns to its right), so that graph leaves most boxes unmatched. A box
/// not connected to the imager through used pairs has no knowable level: it is reported and masked
/// ([`Corrections::lyot_masked`]), never left at an arbitrary level.
#[allow(clippy::too_many_arguments)]
fn match_lyot(
    comm: &dyn Comm,
    plan: &Plan,
    metas: &[CalMeta],
    cfg: &Config,
    lyot_of: &[Option<[usize; 4]>],
    lattice: usize,
    clip: &ClipParams,
    rej: &RejectParams,
    corr: &mut Corrections,
    rows: &mut Vec<PairRow>,
    warnings: &mut Vec<String>,
) -> crate::Result<()> {
    let n = metas.len();
    // image 0: every imager field; image 1 + j: the Lyot box of the j-th exposure that has one
    let with_box: Vec<usize> = (0..n).filter(|&k| lyot_of[k].is_some()).collect();
    let mut image_of = vec![usize::MAX; n];
    for (j, &k) in with_box.iter().enumerate() {
        image_of[k] = 1 + j;
    }
    let sl = Step {
        name: "lyot",
        parts: (0..n)
            .map(|k| match lyot_of[k] {
                Some(b) => vec![(Part::Main(b), 0), (Part::Lyot(b), image_of[k])],
                None => vec![(Part::Whole, 0)],
            })
            .collect(),
        names: std::iter::once("imager fields".to_string())
            .chain(with_box.iter().map(|&k| format!("{}[lyot]", metas[k].file_name())))
            .collect(),
        pair_ok: Box::new(|a, b| a != b),
        sky: false,
        planes: false,
        problem_of: Box::new(|_| 0),
    };
    let mut src = Source { corr: &*corr, delta: vec![], cache: None };
    let rl = match_step(
        comm,
        plan,
        metas,
        cfg,
        &mut src,
        &sl,
        lattice,
        clip,
        rej,
        Gauge::Reference(vec![0]),
        rows,
        warnings,
    )?;
    corr.lyot_masked = vec![false; n];
    let mut masked = vec![];
    for &k in &with_box {
        let i = image_of[k];
        if rl.labels[i] == rl.labels[0] {
            corr.lyot_offset_mjysr[k] += rl.offsets[i] - rl.offsets[0];
        } else {
            corr.lyot_masked[k] = true;
            masked.push(metas[k].file_name());
        }
    }
    if !masked.is_empty() {
        let msg = format!(
            "level lyot: the Lyot boxes of {} exposures overlap no matched image ({}): masked",
            masked.len(),
            masked.join(", ")
        );
        if comm.rank() == 0 {
            tracing::warn!("{msg}");
        }
        warnings.push(msg);
    }
    Ok(())
}

/// Measure, gather, reject and solve one step (rank 0 also draws the step's PNG).
#[allow(clippy::too_many_arguments)]
fn match_step(
    comm: &dyn Comm,
    plan: &Plan,
    metas: &[CalMeta],
    cfg: &Config,
    src: &mut Source,
    step: &Step,
    lattice: usize,
    clip: &ClipParams,
    rej: &RejectParams,
    gauge: Gauge,
    rows: &mut Vec<PairRow>,
    warnings: &mut Vec<String>,
) -> crate::Result<StepResult> {
    let nimg = step.names.len();
    let grid = plan.grid.wcs();
    let owned: Vec<&Chunk> = plan.chunks_of(comm.rank()).collect();
    let local = super::outlier::agree(comm, || -> crate::Result<Local> {
        let mut l = Local::default();
        let budget = cfg.run.mem_budget_mb as usize * 1024 * 1024 / 4;
        for c in &owned {
            let origin = plane_origin(plan);
            measure_chunk(c, metas, &grid, cfg.drizzle.weight_type, src, step, lattice, budget, origin, &mut l)?;
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

    // every rank rejects the same pairs (the statistics are the same everywhere); with planes, every
    // rank takes part in the clipped plane fits of the used pairs; rank 0 solves and broadcasts
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
    // pair rejection per matching problem
    let mut status = vec![PairStatus::Invalid; keys.len()];
    let mut problems: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (p, &(a, _)) in keys.iter().enumerate() {
        problems.entry((step.problem_of)(a)).or_default().push(p);
    }
    for members in problems.values() {
        let m: Vec<PairMeasure> = members.iter().map(|&p| measures[p]).collect();
        for (&p, st) in members.iter().zip(reject_pairs(&m, rej)) {
            status[p] = st;
        }
    }
    let used: Vec<usize> = (0..keys.len()).filter(|&p| status[p] == PairStatus::Used).collect();
    let pair_planes =
        if step.planes { fit_pair_planes(comm, &keys, &used, &local, &pair_stats, clip)? } else { vec![] };
    let origin = plane_origin(plan);
    // where a pair's residual is reported: the centre of its overlap, relative to the plane origin
    let centre = |p: usize| {
        let e = &pair_ext[p];
        (0.5 * (e.xmin + e.xmax) as f64 - f64::from(origin[0]), 0.5 * (e.ymin + e.ymax) as f64 - f64::from(origin[1]))
    };
    let root = comm.rank() == 0;
    let solved = if root {
        let (planes, residuals, groups) = if step.planes {
            let pairs: Vec<PairPlane> = used
                .iter()
                .zip(&pair_planes)
                .map(|(&p, (plane, rms, _))| PairPlane {
                    i: keys[p].0,
                    j: keys[p].1,
                    plane: *plane,
                    weight: weight_from_rms(rms.max(1e-12)),
                })
                .collect();
            // each pair's plane information: its normal matrix over rms^2
            let info: Vec<[[f64; 3]; 3]> = pair_planes
                .iter()
                .map(|(_, rms, n)| {
                    let w = weight_from_rms(rms.max(1e-12));
                    n.map(|row| row.map(|v| v * w))
                })
                .collect();
            let sol = solve_planes_gls(nimg, &pairs, &info, &gauge).context("level: solving the planes")?;
            let res = used.iter().zip(&sol.residuals).map(|(&p, r)| r.eval(centre(p).0, centre(p).1)).collect();
            (sol.planes, res, sol.groups)
        } else {
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
            let planes = sol.offsets.iter().map(|&o| Plane { offset: o, slope_x: 0.0, slope_y: 0.0 }).collect();
            (planes, sol.residuals, sol.groups)
        };
        let mut msgs = vec![];
        let comps = groups.groups();
        if comps.len() > 1 && step.name == "tiles" {
            for (i, g) in comps.iter().enumerate() {
                let names: Vec<&str> = g.iter().map(|&k| step.names[k].as_str()).collect();
                msgs.push(format!(
                    "level {}: the images fall into {} disconnected groups; group {} ({}) is matched only internally",
                    step.name,
                    comps.len(),
                    i + 1,
                    names.join(", ")
                ));
            }
        }
        let lone = groups.isolated();
        // (step "lyot" reports and masks its unconnected boxes itself)
        if !lone.is_empty() && nimg > 1 && step.name != "lyot" {
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
                Some(residuals[r - 1])
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
        let planes: Vec<[f64; 3]> = planes.iter().map(|p| [p.offset, p.slope_x, p.slope_y]).collect();
        Some((planes, out_rows, msgs, groups.labels.clone()))
    } else {
        None
    };
    let (planes, new_rows, msgs, labels): (Vec<[f64; 3]>, Vec<PairRow>, Vec<String>, Vec<usize>) =
        comm.broadcast_value(0, solved.as_ref()).context("level: broadcasting the offsets")?;
    let offsets: Vec<f64> = planes.iter().map(|p| p[0]).collect();
    // the centre of each image's extent, relative to the plane origin (where a plane's sky is read)
    let centres: Vec<[f64; 2]> = image_ext
        .iter()
        .map(|e| {
            [
                0.5 * (e.xmin + e.xmax) as f64 - f64::from(origin[0]),
                0.5 * (e.ymin + e.ymax) as f64 - f64::from(origin[1]),
            ]
        })
        .collect();
    let hists = pair_histograms(comm, &keys, &local, &pair_stats);
    if root {
        let path = cfg.run.output_dir.join(STAGE).join(format!("{}.png", step.name));
        if let Err(e) = draw_step(&path, step.name, &new_rows, &hists, &pair_stats) {
            tracing::warn!("level {}: no PNG: {e}", step.name);
        }
    }
    if root {
        for m in &msgs {
            tracing::warn!("{m}");
        }
        let used = new_rows.iter().filter(|r| r.status == "used").count();
        tracing::info!("[level] {}: {} images, {} pairs ({} used)", step.name, nimg, new_rows.len(), used);
    }
    rows.extend(new_rows);
    warnings.extend(msgs);
    Ok(StepResult { offsets, planes, centres, skies, labels })
}

/// The grid pixel `[x, y]` planes are referred to: the grid centre.
fn plane_origin(plan: &Plan) -> [i32; 2] {
    [(plan.grid.nx / 2) as i32, (plan.grid.ny / 2) as i32]
}

/// A pair's fitted plane, the rms of its kept points about it and their normal matrix
/// ([`PlaneFit::normal`]).
type PairFit = (Plane, f64, [[f64; 3]; 3]);

/// The clipped least-squares plane of each used pair's differences (pjpipe "level+slope"), every
/// rank summing its points exactly ([`PlaneSums`], integer limbs) and all-reducing each step, so the
/// planes are the same on every rank and for any decomposition. Returns a [`PairFit`] per used pair.
fn fit_pair_planes(
    comm: &dyn Comm,
    keys: &[(usize, usize)],
    used: &[usize],
    local: &Local,
    stats: &[ClippedStats],
    clip: &ClipParams,
) -> crate::Result<Vec<PairFit>> {
    let params = PlaneFitParams { sigma: clip.sigma, ..PlaneFitParams::default() };
    let mut fits: Vec<PlaneFit> = used
        .iter()
        .map(|&p| PlaneFit::start(stats[p].median, stats[p].std, params))
        .collect::<Result<_, _>>()
        .context("level: starting the plane fits")?;
    loop {
        let active: Vec<usize> = (0..fits.len()).filter(|&i| !fits[i].is_done()).collect();
        if active.is_empty() {
            break;
        }
        let mut words: Vec<u64> = Vec::with_capacity(active.len() * PLANE_WORDS);
        for &i in &active {
            let key = keys[used[i]];
            let mut sums = PlaneSums::new();
            let (plane, hw) = (fits[i].plane(), fits[i].halfwidth());
            if let (Some(d), Some(xy)) = (local.diffs.get(&key), local.diff_xy.get(&key)) {
                for (&v, &[x, y]) in d.iter().zip(xy) {
                    sums.add(i64::from(x), i64::from(y), f64::from(v), &plane, hw);
                }
            }
            // two's complement: summing the i64 limbs as wrapping u64 gives the i64 sums
            words.extend(sums.to_words().into_iter().map(|w| w as u64));
        }
        comm.all_reduce_sum_u64(&mut words);
        for (j, &i) in active.iter().enumerate() {
            let w: Vec<i64> = words[j * PLANE_WORDS..(j + 1) * PLANE_WORDS].iter().map(|&w| w as i64).collect();
            fits[i].update(&PlaneSums::from_words(&w));
        }
    }
    Ok(fits.iter().map(|f| (f.plane(), f.rms(), f.normal())).collect())
}

/// Bins of the per-pair difference histograms drawn in the step PNG.
const PNG_BINS: usize = 48;

/// Per pair, the histogram of its pixel differences over median -/+ 5 rms ([`PNG_BINS`] bins),
/// summed across ranks (returned on every rank).
fn pair_histograms(comm: &dyn Comm, keys: &[(usize, usize)], local: &Local, stats: &[ClippedStats]) -> Vec<Vec<u64>> {
    let mut counts = vec![0u64; keys.len() * PNG_BINS];
    for (p, key) in keys.iter().enumerate() {
        let (med, rms) = (stats[p].median, stats[p].std);
        if !(med.is_finite() && rms.is_finite() && rms > 0.0) {
            continue;
        }
        let (lo, width) = (med - 5.0 * rms, 10.0 * rms / PNG_BINS as f64);
        for &d in local.diffs.get(key).map_or(&[][..], |v| &v[..]) {
            let b = ((f64::from(d) - lo) / width).floor();
            if b >= 0.0 && b < PNG_BINS as f64 {
                counts[p * PNG_BINS + b as usize] += 1;
            }
        }
    }
    comm.all_reduce_sum_u64(&mut counts);
    counts.chunks(PNG_BINS).map(<[u64]>::to_vec).collect()
}

/// The step's picture: the pixel-difference histograms of the largest used pairs, the distribution
/// of the pair medians and of their residuals after the solve, and measured against solved
/// differences.
fn draw_step(
    path: &std::path::Path,
    step: &str,
    rows: &[PairRow],
    hists: &[Vec<u64>],
    stats: &[ClippedStats],
) -> Result<(), crate::io::IoError> {
    use crate::io::plot::{charts, histogram_series, Chart, Series, Style};
    let mut used: Vec<usize> = (0..rows.len()).filter(|&p| rows[p].status == "used").collect();
    used.sort_by_key(|&p| std::cmp::Reverse(rows[p].npix));
    let shown: Vec<Series> = used
        .iter()
        .take(6)
        .map(|&p| {
            let (med, rms) = (stats[p].median, stats[p].std);
            let width = 10.0 * rms / PNG_BINS as f64;
            let total: u64 = hists[p].iter().sum::<u64>().max(1);
            Series {
                label: format!("{} - {}", short_name(&rows[p].a), short_name(&rows[p].b)),
                x: (0..PNG_BINS).map(|b| med - 5.0 * rms + (b as f64 + 0.5) * width).collect(),
                y: hists[p].iter().map(|&c| c as f64 / total as f64).collect(),
            }
        })
        .collect();
    let medians: Vec<f64> = used.iter().map(|&p| rows[p].median_mjysr).collect();
    let residuals: Vec<f64> = used.iter().filter_map(|&p| rows[p].residual_mjysr).collect();
    let solved: Vec<f64> =
        used.iter().map(|&p| rows[p].median_mjysr - rows[p].residual_mjysr.unwrap_or(f64::NAN)).collect();
    let lo = medians.iter().chain(&residuals).fold(f64::INFINITY, |a, &b| a.min(b));
    let hi = medians.iter().chain(&residuals).fold(f64::NEG_INFINITY, |a, &b| a.max(b));
    let range = (lo.is_finite() && hi > lo).then_some((lo, hi));
    let figure = [
        Chart {
            title: format!("pixel differences a - b ({} largest used pairs)", shown.len()),
            xlabel: "MJy/sr".into(),
            ylabel: "fraction of pixels".into(),
            style: Style::Lines,
            series: shown,
        },
        Chart {
            title: format!("{} used pairs: medians and residuals after the solve", used.len()),
            xlabel: "MJy/sr".into(),
            ylabel: "pairs".into(),
            style: Style::Lines,
            series: vec![
                histogram_series("pair median", &medians, 30, range),
                histogram_series("residual", &residuals, 30, range),
            ],
        },
        Chart {
            title: "measured vs solved difference".into(),
            xlabel: "pair median (MJy/sr)".into(),
            ylabel: "offset a - offset b (MJy/sr)".into(),
            style: Style::Points,
            series: vec![Series { label: String::new(), x: medians, y: solved }],
        },
    ];
    charts(path, &format!("level matching, step {step}"), &figure)
}

/// A file or group name shortened for a legend: without `_cal.fits` and without the leading `jw`
/// and programme (`jw09999001001_02101_00001_mirimage_cal.fits` -> `001001_02101_00001_mirimage`).
fn short_name(name: &str) -> String {
    let n = name.replace("_cal.fits", "");
    match n.strip_prefix("jw") {
        Some(rest) if rest.len() > 5 && rest.is_char_boundary(5) => rest[5..].to_string(),
        _ => n,
    }
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

/// Where a step's resampled exposures come from: each exposure part drizzled alone with `corr`,
/// less `delta[k]` (MJy/sr) afterwards, taken from (and, in the first step, put into) the shared
/// [`Cache`] when one is given.
struct Source<'a> {
    corr: &'a Corrections,
    /// Subtracted from exposure `k`'s resampled values (the offsets solved since `corr`).
    delta: Vec<f64>,
    cache: Option<&'a mut Cache>,
}

/// The resampled exposure parts of step 1, kept for step 2 within a share of `run.mem_budget_mb`
/// (step 2 differs only by the step-1 offsets, subtracted after the resampling): an exposure part
/// that does not fit is drizzled again in step 2, from the same inputs and corrections, so the
/// numbers are the same either way. Keyed by chunk origin, band start row and exposure.
struct Cache {
    pieces: BTreeMap<(usize, usize, usize, usize), Option<Alone>>,
    /// Bytes held, and the most it may hold.
    bytes: usize,
    limit: usize,
    /// Whether this pass stores (step 1) or takes (step 2).
    store: bool,
    kept: usize,
    recomputed: usize,
}

impl Cache {
    fn new(limit: usize) -> Self {
        Self { pieces: BTreeMap::new(), bytes: 0, limit, store: true, kept: 0, recomputed: 0 }
    }
}

/// Bytes an [`Alone`] holds (values, weights and bookkeeping).
fn alone_bytes(a: &Option<Alone>) -> usize {
    64 + a.as_ref().map_or(0, |a| a.v.len() * 8)
}

/// Resample the exposures of chunk `c` band by band and record the pair differences, extents and
/// (for `step.sky`) image values on the lattice.
#[allow(clippy::too_many_arguments)]
fn measure_chunk(
    c: &Chunk,
    metas: &[CalMeta],
    grid: &TanSip,
    wt: WeightType,
    src: &mut Source,
    step: &Step,
    lattice: usize,
    budget_bytes: usize,
    plane_origin: [i32; 2],
    out: &mut Local,
) -> crate::Result<()> {
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
        // per image: its members (resampled exposure part, delta), in exposure order
        let mut members: BTreeMap<usize, Vec<(Alone, f64)>> = BTreeMap::new();
        for &k in &c.exposures {
            let m = &metas[k];
            for &(part, img) in &step.parts[k] {
                let key = (c.y0, c.x0, rows.start, k);
                let cached = match src.cache.as_deref_mut() {
                    Some(cache) if !cache.store => cache.pieces.remove(&key),
                    _ => None,
                };
                let alone = match cached {
                    Some(a) => {
                        if let Some(cache) = src.cache.as_deref_mut() {
                            cache.bytes -= alone_bytes(&a);
                            cache.kept += 1;
                        }
                        a
                    }
                    None => {
                        let a = resample_box(m, k, grid, rows.clone(), c.x0..c.x1, wt, src.corr, part)
                            .with_context(|| format!("level: reading {}", m.path.display()))?;
                        if let Some(cache) = src.cache.as_deref_mut() {
                            let b = alone_bytes(&a);
                            if cache.store && cache.bytes + b <= cache.limit {
                                cache.bytes += b;
                                cache.pieces.insert(key, a.clone());
                            } else if !cache.store {
                                cache.recomputed += 1;
                            }
                        }
                        a
                    }
                };
                if let Some(a) = alone {
                    members.entry(img).or_default().push((a, src.delta.get(k).copied().unwrap_or(0.0)));
                }
            }
        }
        // per image: its values and where it has one, on a box of the band
        let images: Vec<usize> = members.keys().copied().collect();
        let resampled: Vec<Alone> = images.iter().map(|img| combine(&members[img], h, nx)).collect();
        drop(members);
        let on_lattice = |gy: usize, gx: usize| gy % lattice == 0 && gx % lattice == 0;
        for (&a, ra) in images.iter().zip(&resampled) {
            let ext = out.image_ext.entry(a).or_default();
            for yy in ra.rows.clone() {
                for xx in ra.cols.clone() {
                    let k = ra.at(yy, xx);
                    if ra.w[k] > 0.0 {
                        let (gy, gx) = (rows.start + yy, c.x0 + xx);
                        ext.add(gy as i64, gx as i64);
                        if step.sky && on_lattice(gy, gx) {
                            out.values.entry(a).or_default().push(ra.v[k]);
                        }
                    }
                }
            }
        }
        for (ia, &a) in images.iter().enumerate() {
            for (ib, &b) in images.iter().enumerate().skip(ia + 1) {
                if !(step.pair_ok)(a, b) {
                    continue;
                }
                let (ra, rb) = (&resampled[ia], &resampled[ib]);
                let (r0, r1) = (ra.rows.start.max(rb.rows.start), ra.rows.end.min(rb.rows.end));
                let (c0, c1) = (ra.cols.start.max(rb.cols.start), ra.cols.end.min(rb.cols.end));
                if r0 >= r1 || c0 >= c1 {
                    continue;
                }
                let mut d = vec![];
                let mut xy = vec![];
                let mut ext = IndexExtent::new();
                for yy in r0..r1 {
                    let gy = rows.start + yy;
                    let (ka, kb) = (ra.at(yy, c0), rb.at(yy, c0));
                    for (i, xx) in (c0..c1).enumerate() {
                        let (ka, kb) = (ka + i, kb + i);
                        if ra.w[ka] > 0.0 && rb.w[kb] > 0.0 {
                            let gx = c.x0 + xx;
                            ext.add(gy as i64, gx as i64);
                            if on_lattice(gy, gx) {
                                d.push(ra.v[ka] - rb.v[kb]);
                                if step.planes {
                                    xy.push([gx as i32 - plane_origin[0], gy as i32 - plane_origin[1]]);
                                }
                            }
                        }
                    }
                }
                if !d.is_empty() {
                    out.diffs.entry((a, b)).or_default().extend(d);
                    out.pair_ext.entry((a, b)).or_default().merge(&ext);
                    if step.planes {
                        out.diff_xy.entry((a, b)).or_default().extend(xy);
                    }
                }
            }
        }
        y += h;
    }
    Ok(())
}

/// One image resampled onto a box of a row band: `v = sum w v / sum w` (f32) and `w = sum w`
/// (f32, positive exactly where the image has a value), both row-major over the box; the box's rows
/// are relative to the band, its columns to the chunk.
#[derive(Clone)]
struct Alone {
    rows: Range<usize>,
    cols: Range<usize>,
    v: Vec<f32>,
    w: Vec<f32>,
}

impl Alone {
    /// Index of band pixel `(yy, xx)` (inside the box).
    fn at(&self, yy: usize, xx: usize) -> usize {
        (yy - self.rows.start) * self.cols.len() + (xx - self.cols.start)
    }
}

/// An image from its members: a lone member with nothing to subtract is the image itself (step 1:
/// every exposure alone); otherwise the weighted mean `sum w (v - delta) / sum w` over the union of
/// the boxes, in member order.
fn combine(members: &[(Alone, f64)], h: usize, nx: usize) -> Alone {
    if members.len() == 1 && members[0].1 == 0.0 {
        return members[0].0.clone();
    }
    let (mut r0, mut r1, mut c0, mut c1) = (h, 0, nx, 0);
    for (a, _) in members {
        if !a.v.is_empty() {
            (r0, r1) = (r0.min(a.rows.start), r1.max(a.rows.end));
            (c0, c1) = (c0.min(a.cols.start), c1.max(a.cols.end));
        }
    }
    if r0 >= r1 || c0 >= c1 {
        return Alone { rows: 0..0, cols: 0..0, v: vec![], w: vec![] };
    }
    let w = c1 - c0;
    let mut num = vec![0.0f64; (r1 - r0) * w];
    let mut den = vec![0.0f64; (r1 - r0) * w];
    for (a, d) in members.iter().filter(|(a, _)| !a.v.is_empty()) {
        for yy in a.rows.clone() {
            let (k0, j0) = ((yy - r0) * w + (a.cols.start - c0), a.at(yy, a.cols.start));
            for i in 0..a.cols.len() {
                let wt = a.w[j0 + i];
                if wt > 0.0 {
                    num[k0 + i] += f64::from(wt) * (f64::from(a.v[j0 + i]) - d);
                    den[k0 + i] += f64::from(wt);
                }
            }
        }
    }
    let v = num.iter().zip(&den).map(|(&n, &d)| if d > 0.0 { (n / d) as f32 } else { 0.0 }).collect();
    let wsum = den.iter().map(|&d| if d > 0.0 { (d as f32).max(f32::MIN_POSITIVE) } else { 0.0 }).collect();
    Alone { rows: r0..r1, cols: c0..c1, v, w: wsum }
}

/// Drizzle `part` of exposure `k` alone (square kernel, pixfrac 1, no variance planes, no outlier
/// flags) onto output rows x cols of the grid with `corr` subtracted, as
/// [`resample_alone`](super::pieces::resample_alone) does, but onto the box of the rectangle its
/// weighted drops can reach rather than the whole rectangle (each output pixel's sums are the
/// same). `None` when the exposure misses the rectangle.
#[allow(clippy::too_many_arguments)]
fn resample_box(
    meta: &CalMeta,
    k: usize,
    grid: &TanSip,
    out_rows: Range<usize>,
    out_cols: Range<usize>,
    wt: WeightType,
    corr: &Corrections,
    part: Part,
) -> Result<Option<Alone>, crate::io::fits::FitsError> {
    let want = Want { vars: false, rnoise: wt == WeightType::Ivm, err: false };
    let (band_y0, chunk_x0) = (out_rows.start, out_cols.start);
    let Some(piece) = read_piece(meta, k, grid, out_rows.clone(), out_cols.clone(), 3, (0, 0), want, corr)? else {
        return Ok(None);
    };
    let mut weights = piece.weights(meta, wt, None)?;
    if part != Part::Whole {
        let (y0, x0) = (piece.rows.start, piece.cols.start);
        weights.indexed_iter_mut().filter(|((y, x), _)| !part.contains(y0 + y, x0 + x)).for_each(|(_, w)| *w = 0.0);
    }
    // the box: the weighted drop centres, widened by the largest step between neighbouring centres
    // (a drop's corners lie between its centre and its neighbours') and two pixels
    let pm = &piece.pixmap;
    let (mut lo, mut hi, mut step) = ([f64::INFINITY; 2], [f64::NEG_INFINITY; 2], 0.0f64);
    let (ry, rx) = (piece.inner.rows.clone(), piece.inner.cols.clone());
    let (py, px) = (pm.dim().0, pm.dim().1);
    for y in ry.clone() {
        for x in rx.clone() {
            if weights[[y, x]] <= 0.0 {
                continue;
            }
            let c = [pm[[y, x, 0]], pm[[y, x, 1]]];
            if !(c[0].is_finite() && c[1].is_finite()) {
                continue;
            }
            for a in 0..2 {
                lo[a] = lo[a].min(c[a]);
                hi[a] = hi[a].max(c[a]);
            }
            for (yn, xn) in [(y.saturating_sub(1), x), (y + 1, x), (y, x.saturating_sub(1)), (y, x + 1)] {
                if yn < py && xn < px {
                    for a in 0..2 {
                        let d = (pm[[yn, xn, a]] - c[a]).abs();
                        if d.is_finite() {
                            step = step.max(d);
                        }
                    }
                }
            }
        }
    }
    if !lo[0].is_finite() {
        return Ok(Some(Alone { rows: 0..0, cols: 0..0, v: vec![], w: vec![] }));
    }
    let m = step.ceil() + 2.0;
    let clampr = |a: f64, b: f64, r: &Range<usize>| {
        let s = (a - m).floor().max(r.start as f64).min(r.end as f64) as usize;
        let e = (b + m).ceil().max(0.0).min(r.end as f64 - 1.0) as usize + 1;
        s..e.max(s)
    };
    let (by, bx) = (clampr(lo[1], hi[1], &out_rows), clampr(lo[0], hi[0], &out_cols));
    if by.is_empty() || bx.is_empty() {
        return Ok(Some(Alone { rows: 0..0, cols: 0..0, v: vec![], w: vec![] }));
    }
    let mut acc = DrizzleAccum::with_origin([by.start, bx.start], by.len(), bx.len(), 0, 1);
    let dp = DrizzleParams { pixfrac: 1.0 };
    par_drizzle_add_window(piece.sci.view(), weights.view(), piece.pixmap.view(), &[], &piece.inner, 0, &dp, &mut acc);
    let v = acc
        .sci_wsum
        .iter()
        .zip(&acc.wsum)
        .map(|(&sw, &ws)| if ws > 0.0 { ((0.0 + sw) / ws) as f32 } else { 0.0 })
        .collect();
    let w = acc.wsum.iter().map(|&ws| if ws > 0.0 { (ws as f32).max(f32::MIN_POSITIVE) } else { 0.0 }).collect();
    Ok(Some(Alone { rows: by.start - band_y0..by.end - band_y0, cols: bx.start - chunk_x0..bx.end - chunk_x0, v, w }))
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

fn write_report(dir: &std::path::Path, r: &LevelReport) -> crate::Result<()> {
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

/// The `level` stage for the runner: on top of the stripe models upstream, its part of the
/// corrections (offsets, Lyot levels, tile planes) in `level/corrections.json`.
///
/// # Errors
/// As [`run`].
pub(crate) fn stage(ctx: &super::runner::Ctx, b: &super::runner::Band) -> crate::Result<super::runner::Written> {
    let (comm, cfg) = (ctx.comm, ctx.cfg);
    let t = std::time::Instant::now();
    let (c, report) = run(comm, &b.plan, &b.metas, cfg, &b.corr)?;
    if comm.rank() == 0 {
        let dir = cfg.run.output_dir.join(STAGE);
        crate::io::json::write_json(&dir.join(super::runner::CORRECTIONS), &c.without_stripes())?;
        tracing::info!(
            "[level] band sky {:.4} MJy/sr subtracted; report in {} ({:.1} s)",
            report.band_sky_mjysr,
            dir.display(),
            t.elapsed().as_secs_f64()
        );
    }
    Ok(Default::default())
}

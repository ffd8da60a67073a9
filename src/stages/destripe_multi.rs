//! `destripe_multi`: residual NIRCam stripes from each exposure's difference against the other
//! exposures (pjpipe `multi_tile_destripe` passes A and B, SPEC section 3 stage 6; the numerics are
//! in [`kernels::destripe`](crate::kernels::destripe)).
//!
//! By step, for every NIRCam exposure, by its owner:
//! - pass A: the weighted average of every *other* overlapping exposure is drizzled directly onto
//!   this exposure's own pixel grid (its TAN-SIP WCS taken as the output grid; square kernel,
//!   pixfrac 1, the `drizzle.weight_type` weights, all earlier corrections subtracted by
//!   [`resample_alone`](super::pieces::resample_alone)), summed in exposure order. This is the
//!   average image blotted back to the exposure, without the second interpolation. The difference
//!   exposure - average is scaled by `W_others / (W_others + w_self)` per pixel, which makes it the
//!   difference against the average of *all* exposures, this one included (pjpipe's average);
//!   it goes to the per-amplifier sigma-clipped row medians with the 20% fallback; the model is
//!   appended to the [`Corrections`];
//! - pass A is iterated (pjpipe's `do_convergence`, `destripe_multi.max_iterations`), each time on
//!   top of the models so far, until no exposure's update exceeds `destripe_multi.convergence_mjysr`
//!   rms. Summed over the exposures of a pixel the updates cancel, so on a band observed at one
//!   orientation iterating only shares stripes out between exposures (the mosaic keeps their sum,
//!   which no data-only method can tell from sky along the rows): the automatic setting runs it
//!   once. With two orientations (rolls) only a constant is a function of both orientations' rows:
//!   each iteration takes out more of the stripes wider than any filter, so the automatic setting
//!   iterates there ([`AUTO_ITERATIONS_ROLLS`]);
//! - with `destripe_multi.method = "joint"` (the automatic choice on a band observed at several
//!   orientations) pass A and its iterations are replaced by one joint least-squares solve of every
//!   exposure's per-amplifier row stripes and column stripes over the output grid's cells
//!   ([`joint_models`], [`joint_solve`](crate::kernels::destripe::joint_solve)): the observations
//!   go to the rank owning their band of output rows, the solve's sums are exact (fixed point), so
//!   the models do not depend on the number of ranks; only one constant for the band is removed,
//!   so the solve also corrects the exposures' relative levels `level` found on striped data (no
//!   prior, [`JOINT_PRIOR_PER_AMP_PX`]: on a stripe-free two-roll scene with little overlap its
//!   models are 0.0019 to 0.0027 MJy/sr rms, above issue 19's 0.001);
//! - pass B (`destripe_multi.large_scale`, on top of pass A; not after the joint solve, which
//!   already separates the stripes the exposures share): the average of the others is rebuilt the
//!   same way; the stripes common to all exposures, which survive averaging, are what is left of it
//!   after a median filter of `large_scale_filter_px` (rows / 10) along the exposure's columns
//!   ([`large_scale_smooth`], horizontal: the row profile is taken along this exposure's own rows,
//!   whatever the others' angles; pjpipe smooths isotropically on the mosaic grid when the exposures
//!   are rotated from each other, which leaves the emission's curvature in the rows); their full-row
//!   clipped medians ([`row_profile`], under [`large_scale_mask`], rows with fewer usable pixels
//!   than pass A's amp rows left to the interpolation) are taken out of the average, and the
//!   exposure is destriped against that corrected average as in pass A (against the others'
//!   average alone, not iterated). pjpipe builds the average and its smoothing on the mosaic grid
//!   and reprojects them to each exposure; here both live on the exposure's own frame, so an owner
//!   needs no halo from other ranks (the median filter reflects at the exposure's edge instead of
//!   seeing the mosaic beyond it);
//! - models are all-gathered in rank order (so every rank takes the same decision to stop
//!   iterating); rank 0 writes `destripe_multi/destripe_multi.json` (both passes' model rms per
//!   exposure, the largest update of each pass-A iteration) and `destripe_multi/<band>.h5` (group
//!   `destripe_multi`: per exposure the sum of the models this stage subtracted).

use super::corrections::Corrections;
use super::destripe::{applies_to, rms, write_store, DestripeReport, ExposureReport};
use super::pieces::{exposure_weights, resample_alone, Part, BAD_BITS};
use crate::config::Config;
use crate::dist::{Comm, CommExt};
use crate::error::Context;
use crate::io::fits::{read_region_dq, read_region_f32};
use crate::kernels::destripe::{
    default_large_scale_filter_px, joint_solve, large_scale_mask, large_scale_smooth, par_multi_tile_model,
    par_multi_tile_model_preferring, row_profile, stripe_direction, AmpLayout, JointObs, JointParams, JointSummary,
    JointSystem, MultiTileParams, StripeDirection, StripeModel,
};
use crate::kernels::stats::nanmedian;
use crate::plan::{CalMeta, Plan};
use ndarray::{Array1, Array2, Zip};
use rayon::prelude::*;

/// The stage name (CLI, TOML section, HDF5 group, output folder).
pub const STAGE: &str = "destripe_multi";

/// The weighted average of every other overlapping exposure of the same band on exposure `index`'s
/// frame (`prior` subtracted from each), NaN where none lands, the sum of their weights there, the
/// sum of the weights of those at another orientation (rows 10 deg or more from this exposure's),
/// and how many contributed; `None` when none overlaps.
fn average_of_others(
    metas: &[CalMeta],
    index: usize,
    cfg: &Config,
    prior: &Corrections,
) -> crate::Result<Option<Average>> {
    let me = &metas[index];
    let [ny, nx] = me.shape;
    let own = rows_angle_deg(me);
    let mut wsum = Array2::<f64>::zeros((ny, nx));
    let mut cross = Array2::<f64>::zeros((ny, nx));
    let mut swsum = Array2::<f64>::zeros((ny, nx));
    let mut used = 0;
    for (k, m) in metas.iter().enumerate() {
        if k == index || m.band() != me.band() {
            continue;
        }
        let Some(acc) = resample_alone(m, k, &me.wcs, 0..ny, 0..nx, cfg.drizzle.weight_type, 1.0, prior, Part::Whole)?
        else {
            continue;
        };
        if !acc.wsum.iter().any(|&w| w > 0.0) {
            continue;
        }
        used += 1;
        wsum += &acc.wsum;
        swsum += &acc.sci_wsum;
        if stripe_direction(&[0.0, rows_angle_deg(m) - own]) == StripeDirection::Isotropic {
            cross += &acc.wsum;
        }
    }
    if used == 0 {
        return Ok(None);
    }
    let avg = Zip::from(&swsum).and(&wsum).map_collect(|&s, &w| if w > 0.0 { s / w } else { f64::NAN });
    Ok(Some(Average { avg, wsum, cross, used }))
}

/// The average of the other exposures on one exposure's frame ([`average_of_others`]).
struct Average {
    /// The weighted average, NaN where no other exposure lands, MJy/sr.
    avg: Array2<f64>,
    /// The sum of the others' weights.
    wsum: Array2<f64>,
    /// The sum of the weights of the others at another orientation (0 on a band of one orientation).
    cross: Array2<f64>,
    /// How many others contributed.
    used: usize,
}

/// The angle of a detector's rows (its x axis) on the sky, degrees, from the WCS's CD matrix.
fn rows_angle_deg(m: &CalMeta) -> f64 {
    let cd = m.wcs.cd;
    cd[1][0].atan2(cd[0][0]).to_degrees()
}

/// The stripe direction on exposure `index`'s frame by pjpipe's rule, from the angles of every
/// same-band exposure's rows relative to its own rows (isotropic: the band has two orientations).
fn direction_on(metas: &[CalMeta], index: usize) -> StripeDirection {
    let me = &metas[index];
    let own = rows_angle_deg(me);
    let angles: Vec<f64> = metas.iter().filter(|m| m.band() == me.band()).map(|m| rows_angle_deg(m) - own).collect();
    stripe_direction(&angles)
}

/// Pass B's reference correction on exposure `index`'s frame: the row profile of the stripes
/// common to the average `avg` (`avg` minus its median filter along the exposure's columns, under
/// the two-sided source mask).
fn common_stripes(metas: &[CalMeta], index: usize, cfg: &Config, avg: &Array2<f64>) -> crate::Result<Array1<f64>> {
    let me = &metas[index];
    // the row profile is measured along this exposure's own rows, so the smoothing runs along its own
    // columns whatever the other exposures' angles: pjpipe smooths on the mosaic grid, with a 2-D
    // boxcar when the exposures are rotated from each other (two rolls), which leaves the curvature
    // of the emission (a galaxy minus its boxcar mean) in the residual, and its row medians put it
    // into every exposure's model (0.0014 to 0.006 MJy/sr rms on a stripe-free two-roll scene,
    // against 0.0008 to 0.0010 smoothing along the columns); a median along the columns keeps
    // monotonic emission whole
    let dir = StripeDirection::Horizontal;
    let l = match cfg.destripe_multi.large_scale_filter_px {
        0 => default_large_scale_filter_px(me.shape[0]),
        l => l,
    };
    let smooth = large_scale_smooth(avg.view(), dir, l).with_context(|| me.path.display().to_string())?;
    let resid = avg - &smooth;
    let mask = large_scale_mask(resid.view(), cfg.destripe.sigma, cfg.destripe.dilate_size, None);
    // a row is measured over at least as many pixels as an amp row of pass A (`destripe.min_mask_frac`
    // of the narrowest amp): where the others barely overlap this frame, a median of a few pixels
    // of the smoothed average's residual is noise and the NaN fill's edge, not common stripes
    let min_count =
        (cfg.destripe.min_mask_frac * amp_ranges(me).iter().map(|r| r.len()).min().unwrap_or(0) as f64).ceil() as usize;
    Ok(row_profile(resid.view(), mask.view(), cfg.destripe.sigma, None, min_count)?)
}

/// Exposure `index` minus `reference` (both on its frame), `prior` subtracted from the exposure,
/// NaN where either is unknown; and its bad-pixel mask.
fn difference(
    me: &CalMeta,
    index: usize,
    prior: &Corrections,
    reference: &Array2<f64>,
) -> crate::Result<(Array2<f32>, Array2<bool>)> {
    let [ny, nx] = me.shape;
    let mut sci = read_region_f32(&me.path, "SCI", 0..ny, 0..nx)?;
    prior.apply_window(index, 0..ny, 0..nx, &mut sci);
    let dq = read_region_dq(&me.path, 0..ny, 0..nx)?;
    let diff = Zip::from(&sci).and(reference).map_collect(|&s, &r| {
        if r.is_finite() && s.is_finite() && s != 0.0 {
            (f64::from(s) - r) as f32
        } else {
            f32::NAN
        }
    });
    Ok((diff, dq.mapv(|v| v & BAD_BITS != 0)))
}

/// The per-amplifier row-median model of `diff` (pass A's step 4, also pass B's last step), each
/// amplifier row measured over the pixels of `prefer` where it has enough of them.
fn amp_model(
    me: &CalMeta,
    cfg: &Config,
    diff: &Array2<f32>,
    bad: &Array2<bool>,
    prefer: Option<(&Array2<bool>, bool)>,
) -> crate::Result<StripeModel> {
    let nx = me.shape[1];
    let full = me.subarray.trim().eq_ignore_ascii_case("FULL");
    let p = MultiTileParams {
        amps: if full && nx >= 4 { AmpLayout::Columns { width_px: nx / 4 } } else { AmpLayout::WholeRows },
        sigma: cfg.destripe.sigma,
        dilate_size: cfg.destripe.dilate_size,
        min_mask_frac: cfg.destripe.min_mask_frac,
        ..MultiTileParams::default()
    };
    match prefer {
        Some((q, only)) => par_multi_tile_model_preferring(diff.view(), bad.view(), q.view(), only, &p),
        None => par_multi_tile_model(diff.view(), bad.view(), &p),
    }
    .with_context(|| me.path.display().to_string())
}

/// The amplifier layout of the row unknowns of an exposure (as pass A's [`amp_model`]): four amps of
/// `nx / 4` columns on full frames, whole rows on subarrays.
fn amp_ranges(me: &CalMeta) -> Vec<std::ops::Range<usize>> {
    let nx = me.shape[1];
    let full = me.subarray.trim().eq_ignore_ascii_case("FULL");
    let layout = if full && nx >= 4 { AmpLayout::Columns { width_px: nx / 4 } } else { AmpLayout::WholeRows };
    layout.ranges(nx)
}

/// The joint least-squares solve of every NIRCam exposure's per-amplifier row stripes and column
/// stripes ([`joint_solve`], `destripe_multi.method = "joint"`), in place of pass A:
/// - every exposure's owner reads it (SCI with `prior` subtracted, level's planes left out as in
///   pass A; the `drizzle.weight_type` weights, normalised by the largest exposure mean weight over
///   ranks), and maps each usable pixel's centre to the output-grid cell it falls in;
/// - the observations go to the rank owning the cell's band of output rows (`rows x rank / ranks`),
///   each cell whole on one rank;
/// - the conjugate-gradient solve sums every vector over ranks in fixed point (integers): the
///   solution does not depend on the number of ranks;
/// - each exposure's model is centred on its median (the per-exposure constants stay `level`'s).
///
/// Returns one model per exposure (`None` for exposures it does not apply to) and the solve's
/// summary.
fn joint_models(
    comm: &dyn Comm,
    plan: &Plan,
    metas: &[CalMeta],
    cfg: &Config,
    prior: &Corrections,
) -> crate::Result<(Vec<Option<StripeModel>>, JointSummary)> {
    let prior = &Corrections { plane: vec![], ..prior.clone() };
    // the unknowns: per applicable exposure, amps x rows, then columns
    let mut base = vec![None; metas.len()];
    let mut n = 0usize;
    for (k, m) in metas.iter().enumerate() {
        if applies_to(m) {
            base[k] = Some(n);
            n += amp_ranges(m).len() * m.shape[0] + m.shape[1];
        }
    }
    crate::ensure!(n < u32::MAX as usize, "destripe_multi: {n} stripe unknowns are too many for the joint solve");
    let grid = plan.grid.wcs();
    let (gnx, gny) = (plan.grid.nx, plan.grid.ny);
    let size = comm.size();
    let mine: Vec<usize> = plan.exposures_of(comm.rank()).map(|e| e.index).filter(|&k| base[k].is_some()).collect();
    // read the owned exposures: values and weights
    let mut errors = vec![];
    let mut loaded: Vec<(usize, Array2<f32>, Array2<f32>)> = vec![];
    for &k in &mine {
        let me = &metas[k];
        let [ny, nx] = me.shape;
        let got = (|| -> crate::Result<(Array2<f32>, Array2<f32>)> {
            let mut sci = read_region_f32(&me.path, "SCI", 0..ny, 0..nx)?;
            prior.apply_window(k, 0..ny, 0..nx, &mut sci);
            let w = exposure_weights(me, cfg.drizzle.weight_type)?;
            Ok((sci, w))
        })();
        match got {
            Ok((sci, w)) => loaded.push((k, sci, w)),
            Err(e) => errors.push(format!("{}: {e:#}", me.path.display())),
        }
    }
    let local = if errors.is_empty() { Ok(()) } else { Err(errors.join("; ")) };
    comm.agree(local).map_err(|e| crate::err!("{STAGE}: {e}"))?;
    // the weight scale: the largest mean positive weight of an exposure, over ranks (exact)
    let mut scale = [loaded
        .iter()
        .map(|(_, _, w)| {
            let (s, c) = w.iter().filter(|&&v| v > 0.0).fold((0.0, 0usize), |(s, c), &v| (s + f64::from(v), c + 1));
            if c > 0 {
                s / c as f64
            } else {
                0.0
            }
        })
        .fold(0.0, f64::max)];
    comm.all_reduce_max_f64(&mut scale);
    let scale = if scale[0] > 0.0 { scale[0] } else { 1.0 };
    let mut sends: Vec<Vec<u8>> = vec![vec![]; size];
    for (k, sci, w) in loaded {
        let me = &metas[k];
        let [ny, nx] = me.shape;
        let b = base[k].expect("applicable");
        let ranges = amp_ranges(me);
        let namps = ranges.len();
        let amp_of: Vec<usize> = (0..nx).map(|x| ranges.iter().position(|r| r.contains(&x)).unwrap_or(0)).collect();
        let rows: Vec<Vec<(usize, JointObs)>> = (0..ny)
            .into_par_iter()
            .map(|y| {
                let mut out = vec![];
                for x in 0..nx {
                    let (v, wt) = (sci[[y, x]], w[[y, x]]);
                    if !(wt > 0.0 && v.is_finite() && v != 0.0) {
                        continue;
                    }
                    let (ra, dec) = me.wcs.pixel_to_sky(x as f64, y as f64);
                    let Ok((gx, gy)) = grid.sky_to_pixel(ra, dec) else { continue };
                    let (cx, cy) = (gx.round(), gy.round());
                    if !(cx >= 0.0 && cy >= 0.0 && (cx as usize) < gnx && (cy as usize) < gny) {
                        continue;
                    }
                    let (cx, cy) = (cx as usize, cy as usize);
                    let o = JointObs {
                        cell: (cy * gnx + cx) as u64,
                        exp: k as u32,
                        row: (b + amp_of[x] * ny + y) as u32,
                        col: (b + namps * ny + x) as u32,
                        w: (f64::from(wt) / scale) as f32,
                        v,
                    };
                    out.push((cy * size / gny, o));
                }
                out
            })
            .collect();
        for (dest, o) in rows.into_iter().flatten() {
            o.encode(&mut sends[dest]);
        }
    }
    let received = comm.exchange(sends.into_iter().enumerate().filter(|(_, b)| !b.is_empty()).collect());
    let mut obs = vec![];
    for (_, bytes) in received {
        obs.extend(JointObs::decode_all(&bytes));
    }
    let mut sys = JointSystem::new(obs, n);
    let narrowest_amp = metas
        .iter()
        .filter(|m| applies_to(m))
        .flat_map(|m| amp_ranges(m).into_iter().map(|r| r.len()))
        .min()
        .unwrap_or(0);
    let detrend: Vec<std::ops::Range<usize>> = metas
        .iter()
        .zip(&base)
        .filter_map(|(m, b)| {
            let b = (*b)?;
            let start = b + amp_ranges(m).len() * m.shape[0];
            Some(start..start + m.shape[1])
        })
        .collect();
    let (x, summary) = joint_solve(
        &mut sys,
        &JointParams { prior: JOINT_PRIOR_PER_AMP_PX * narrowest_amp as f64, ..JointParams::default() },
        &detrend,
        &mut |v: &mut [i64]| {
            let mut u: Vec<u64> = v.iter().map(|&a| a as u64).collect();
            comm.all_reduce_sum_u64(&mut u);
            v.iter_mut().zip(u).for_each(|(a, b)| *a = b as i64);
        },
        &mut |v: &mut [u64]| comm.all_reduce_sum_u64(v),
    );
    let mut models: Vec<Option<StripeModel>> = metas
        .iter()
        .enumerate()
        .map(|(k, me)| {
            let b = base[k]?;
            let [ny, nx] = me.shape;
            let amps = amp_ranges(me);
            let namps = amps.len();
            let amp_rows: Vec<Vec<f64>> = (0..namps).map(|a| x[b + a * ny..b + (a + 1) * ny].to_vec()).collect();
            let col = x[b + namps * ny..b + namps * ny + nx].to_vec();
            Some(StripeModel { ny, nx, rows: 0..ny, cols: 0..nx, amps, amp_rows, col, offset: 0.0 })
        })
        .collect();
    // one constant for the band: the mean of the models' medians (the solve fixes the exposures'
    // constants relative to each other, better than level could on striped data, but not the band's)
    let medians: Vec<f64> = models
        .iter()
        .flatten()
        .map(|m| nanmedian(m.to_array().mapv(f64::from).as_slice().expect("standard layout")))
        .filter(|v| v.is_finite())
        .collect();
    let c = if medians.is_empty() { 0.0 } else { medians.iter().sum::<f64>() / medians.len() as f64 };
    models.iter_mut().flatten().for_each(|m| m.offset = c);
    Ok((models, summary))
}

/// The joint solve's prior ([`JointParams`]`::prior`) per pixel of the band's narrowest amplifier
/// row: 0, none. At 0.1 (an amp row fully inside a two-exposure overlap keeping about 83% of its
/// stripe) it brought the solve's models on a stripe-free two-roll medium scene (1024^2, one dither
/// per roll) from 0.0019-0.0027 to 0.0008-0.0009 MJy/sr rms, but on the small 2x2-tile two-roll
/// bench scene the full band removed where the rolls overlap fell from 79% to 34%: the wide stripes
/// are the modes the data constrain least (only through the crossing of the two orientations), and
/// a prior on the diagonal takes them first. A prior for the sparsely observed rows alone is open
/// (issue 19).
const JOINT_PRIOR_PER_AMP_PX: f64 = 0.0;

/// Which pass of the stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    /// Against the plain average of all exposures (this one included): the first iteration.
    A,
    /// A later iteration of pass A (only the rows another orientation covers are updated).
    AIterated,
    /// Against the average with its common stripes (scales below the large-scale filter) removed.
    LargeScale,
}

/// The model of exposure `index` for `pass`, and the number of other exposures it was compared
/// with. With `destripe.png`, also writes `destripe_multi/<file stem>[_large_scale].png`
/// (difference, model, corrected).
///
/// # Errors
/// A failed read (naming file and extension) or a kernel parameter error.
pub fn exposure_model(
    metas: &[CalMeta],
    index: usize,
    cfg: &Config,
    prior: &Corrections,
    pass: Pass,
) -> crate::Result<(StripeModel, usize)> {
    let me = &metas[index];
    let [ny, nx] = me.shape;
    // level's tile planes are given in output-grid pixels, and here the grid is this exposure's own
    // frame: leave them out on both sides (they are smooth; the row medians look for stripes)
    let prior = &Corrections { plane: vec![], ..prior.clone() };
    let Some(Average { mut avg, wsum, cross, used }) = average_of_others(metas, index, cfg, prior)? else {
        return Ok((StripeModel::zero(ny, nx), 0));
    };
    if pass == Pass::LargeScale {
        let common = common_stripes(metas, index, cfg, &avg)?;
        Zip::indexed(&mut avg).for_each(|(y, _), v| *v -= common[y]);
    }
    let (mut diff, bad) = difference(me, index, prior, &avg)?;
    if pass != Pass::LargeScale {
        // against the average of all exposures, this one included (pjpipe): exposure minus that
        // average is (exposure minus the others' average) x W_others / (W_others + w_self). Summed
        // over the exposures of a pixel the updates cancel, so iterating moves stripes between
        // exposures without drifting, and the exposures' disagreements shrink every iteration.
        let own = exposure_weights(me, cfg.drizzle.weight_type)?;
        Zip::from(&mut diff).and(&wsum).and(&own).for_each(|d, &wo, &ws| {
            let t = wo + f64::from(ws);
            if t > 0.0 {
                *d = (f64::from(*d) * wo / t) as f32;
            }
        });
    }
    // where another orientation covers the exposure, the difference holds even the stripes every
    // exposure of this orientation shares: pass A's row medians are taken there when they can be
    // (the later iterations update those rows only: elsewhere they would only stir the noise of
    // the row medians between exposures)
    let prefer = (pass != Pass::LargeScale && cross.iter().any(|&w| w > 0.0)).then(|| cross.mapv(|w| w > 0.0));
    let model = amp_model(me, cfg, &diff, &bad, prefer.as_ref().map(|q| (q, pass == Pass::AIterated)))?;
    if cfg.destripe.png {
        let file = me.file_name();
        let stem = file.trim_end_matches(".fits");
        let (name, title) = match pass {
            Pass::A => (format!("{stem}.png"), format!("destripe_multi {file}")),
            Pass::AIterated => return Ok((model, used)),
            Pass::LargeScale => (format!("{stem}_large_scale.png"), format!("destripe_multi large scale {file}")),
        };
        let png = cfg.run.output_dir.join(STAGE).join(name);
        super::destripe::plot_model(&png, &title, &diff, &model.to_array(), "exposure - average")?;
    }
    Ok((model, used))
}

/// The dense sum of `models` (all of one exposure), empty when there are none.
fn dense_sum(models: &[&StripeModel]) -> Array2<f32> {
    let mut it = models.iter();
    let Some(first) = it.next() else { return Array2::zeros((0, 0)) };
    let mut a = first.to_array();
    for m in it {
        a += &m.to_array();
    }
    a
}

/// Pass A's iterations when `destripe_multi.max_iterations` is 0: 1 when the band's NIRCam
/// exposures share one orientation (iterating then only moves stripes between exposures, which
/// the mosaic sums back), [`AUTO_ITERATIONS_ROLLS`] when they are rotated 10 deg or more from each
/// other: there a stripe of one orientation crosses the rows of the other, and only a constant is
/// a function of both orientations' rows, so the iterations separate stripes from sky.
fn auto_iterations(metas: &[CalMeta]) -> usize {
    match metas.iter().position(applies_to) {
        Some(k) if direction_on(metas, k) == StripeDirection::Isotropic => AUTO_ITERATIONS_ROLLS,
        _ => 1,
    }
}

/// Whether `destripe_multi.method = "auto"` solves jointly: when the band's NIRCam exposures are
/// rotated 10 deg or more from each other (two rolls), where only a constant is a function of both
/// orientations' rows. At one orientation the joint solve has a null space as wide as the stripes
/// all exposures share along the sky's rows, and the single pass A is kept.
fn auto_joint(metas: &[CalMeta]) -> bool {
    auto_iterations(metas) > 1
}

/// Bytes per input pixel the joint solve holds on a rank, over the ranks: its own exposures' values
/// and weights (8) and their encoded observations (28) while they are sent, and the observations it
/// receives, encoded and decoded (2 x 28), taking the pixels as evenly dealt.
const JOINT_BYTES_PER_PX: usize = 8 + 28 + 2 * 28;

/// Whether the joint solve's observations fit `run.mem_budget_mb` on every rank (an estimate:
/// [`JOINT_BYTES_PER_PX`] times the band's NIRCam pixels over the ranks); when they do not, the
/// automatic setting iterates pass A instead, with a warning naming both keys.
fn joint_fits_budget(comm: &dyn Comm, metas: &[CalMeta], cfg: &Config) -> bool {
    let px: usize = metas.iter().filter(|m| applies_to(m)).map(|m| m.shape[0] * m.shape[1]).sum();
    let need_mb = (px * JOINT_BYTES_PER_PX / comm.size().max(1)) as u64 / (1024 * 1024);
    let fits = need_mb <= cfg.run.mem_budget_mb;
    if !fits && comm.rank() == 0 {
        tracing::warn!(
            "[{STAGE}] two orientations, but the joint solve would hold about {need_mb} MiB per rank (run.mem_budget_mb = \
             {}): pass A is iterated instead; more ranks, a larger budget or destripe_multi.method = \"joint\" \
             solve jointly",
            cfg.run.mem_budget_mb
        );
    }
    fits
}

/// Most pass-A iterations on a band observed at several orientations (the automatic setting).
pub const AUTO_ITERATIONS_ROLLS: usize = 5;

/// Run the stage on top of `prior` corrections (those of `destripe` and `level`): pass A, then pass
/// B with `destripe_multi.large_scale`.
///
/// # Errors
/// A failed read or kernel error on any rank (all ranks return it), or a failed product write.
pub fn run(
    comm: &dyn Comm,
    plan: &Plan,
    metas: &[CalMeta],
    cfg: &Config,
    prior: &Corrections,
) -> crate::Result<(Corrections, DestripeReport)> {
    let pass = |prior: &Corrections, pass: Pass| -> crate::Result<(Vec<Option<StripeModel>>, Vec<usize>)> {
        let results = super::on_exposure_owners(
            comm,
            plan,
            STAGE,
            cfg.run.progress_interval_s,
            |k| applies_to(&metas[k]),
            |k| exposure_model(metas, k, cfg, prior, pass),
        )?;
        Ok(results.into_iter().map(|r| r.map_or((None, 0), |(m, u)| (Some(m), u))).unzip())
    };
    // pass A, iterated (pjpipe's do_convergence): every rank holds every update (all-gathered), so
    // every rank takes the same decision to stop
    let max_iterations = match cfg.destripe_multi.max_iterations {
        0 => auto_iterations(metas),
        n => n,
    };
    let mut after_a = prior.clone();
    let mut pass_a: Vec<Vec<StripeModel>> = vec![vec![]; metas.len()];
    let mut others = vec![0; metas.len()];
    let mut updates = vec![];
    let joint = match cfg.destripe_multi.method.as_str() {
        "joint" => true,
        "iterate" => false,
        _ => auto_joint(metas) && joint_fits_budget(comm, metas, cfg),
    };
    let mut joint_summary = None;
    if joint {
        let (models, summary) = joint_models(comm, plan, metas, cfg, prior)?;
        let nircam = models.iter().flatten().count();
        for (k, m) in models.iter().enumerate() {
            if let Some(m) = m {
                others[k] = nircam - 1;
                pass_a[k].extend(std::iter::once(m.clone()).filter(|m| !m.is_zero()));
            }
        }
        if comm.rank() == 0 {
            tracing::info!(
                "[destripe_multi] joint solve: {} unknowns; per round sigma, cells kept, CG iterations, residual: {:?}",
                summary.unknowns,
                summary.rounds
            );
        }
        joint_summary = Some(summary);
        after_a = after_a.with_stripes(models);
    }
    for it in 0..if joint { 0 } else { max_iterations } {
        let (models, used) = pass(&after_a, if it == 0 { Pass::A } else { Pass::AIterated })?;
        if it == 0 {
            others = used;
        }
        let largest = models.iter().flatten().map(|m| rms(&m.to_array())).fold(0.0, f64::max);
        updates.push(largest);
        for (k, m) in models.iter().enumerate() {
            pass_a[k].extend(m.iter().filter(|m| !m.is_zero()).cloned());
        }
        after_a = after_a.with_stripes(models);
        if comm.rank() == 0 && max_iterations > 1 {
            tracing::info!("[destripe_multi] pass A iteration {}: largest update {largest:.6} MJy/sr rms", it + 1);
        }
        if largest < cfg.destripe_multi.convergence_mjysr {
            break;
        }
    }
    // pass B after the joint solve adds nothing but noise: the solve already separates the stripes
    // every exposure of one orientation shares (only a constant is common to both orientations'
    // rows), which pass B approximates from a smoothing of the average (on the small two-roll bench
    // scene 78% / 99% of the full / narrow band removed without it, 79% / 98% with it; on a
    // stripe-free two-roll scene its models were 0.001 to 0.0015 MJy/sr rms, above the limit)
    let large_after_joint = cfg.destripe_multi.large_scale && joint;
    let large: Vec<Option<StripeModel>> = if cfg.destripe_multi.large_scale && !joint {
        pass(&after_a, Pass::LargeScale)?.0
    } else {
        vec![None; metas.len()]
    };
    let mut report =
        DestripeReport { pass_a_update_rms_mjysr: updates, joint: joint_summary, ..DestripeReport::default() };
    if large_after_joint {
        report.notes.push(
            "destripe_multi.large_scale: pass B is not run after the joint solve, which already separates the stripes \
             the exposures share"
                .to_string(),
        );
    }
    for (k, m) in metas.iter().enumerate() {
        let file = m.file_name();
        let (status, rms_a, amps) = if !applies_to(m) {
            (format!("passed through: {} is not NIRCam", m.instrument), 0.0, 0)
        } else if others[k] > 0 {
            let refs: Vec<&StripeModel> = pass_a[k].iter().collect();
            let amps = pass_a[k].first().map_or(0, |s| s.amps.len());
            let how = if joint { "jointly with" } else { "against" };
            (format!("destriped {how} {} other exposures", others[k]), rms(&dense_sum(&refs)), amps)
        } else {
            report.notes.push(format!("{file}: no other exposure overlaps it; no multi-exposure model"));
            ("passed through: no overlapping exposure".to_string(), 0.0, 0)
        };
        let large_scale_rms_mjysr = large[k].as_ref().filter(|_| others[k] > 0).map(|s| rms(&s.to_array()));
        let large_scale_direction = large_scale_rms_mjysr.map(|_| StripeDirection::Horizontal.name().to_string());
        report.exposures.push(ExposureReport {
            file,
            status,
            model_rms_mjysr: rms_a,
            amps,
            large_scale_rms_mjysr,
            large_scale_direction,
        });
    }
    // the store holds, per exposure, everything this stage subtracts
    let parts: Vec<Vec<&StripeModel>> =
        pass_a.iter().zip(&large).map(|(a, b)| a.iter().chain(b.iter()).collect()).collect();
    let out = cfg.run.output_dir.join(STAGE);
    comm.on_root_then_broadcast(0, || -> crate::Result<()> {
        crate::io::make_dir(&out)?;
        crate::io::json::write_json(&out.join("destripe_multi.json"), &report)?;
        write_store(&out.join(format!("{}.h5", plan.band)), STAGE, metas, &parts)?;
        Ok(())
    })?;
    Ok((after_a.with_stripes(large), report))
}

/// The `destripe_multi` stage for the runner: the models, and their part of the corrections in
/// `destripe_multi/corrections.json`.
///
/// # Errors
/// As [`run`].
pub(crate) fn stage(ctx: &super::runner::Ctx, b: &super::runner::Band) -> crate::Result<super::runner::Written> {
    let (comm, cfg) = (ctx.comm, ctx.cfg);
    let t = std::time::Instant::now();
    let (c, report) = run(comm, &b.plan, &b.metas, cfg, &b.corr)?;
    if comm.rank() == 0 {
        let dir = cfg.run.output_dir.join(STAGE);
        crate::io::json::write_json(&dir.join(super::runner::CORRECTIONS), &c.stripes_beyond(&b.corr))?;
        for note in &report.notes {
            tracing::warn!("[destripe_multi] {note}");
        }
        tracing::info!("[destripe_multi] models in {} ({:.1} s)", dir.display(), t.elapsed().as_secs_f64());
    }
    Ok(Default::default())
}

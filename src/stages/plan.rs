//! Stage `plan`: read the headers of every input, build the plan (exposure table, output grid,
//! chunk grid, owners) and write it to `<output_dir>/plan/plan.json`.
//!
//! Rank 0 reads the headers (in parallel threads) and broadcasts them; every rank then builds the
//! plan itself with the pure `plan::build_plan`, and the ranks check that they agree (a hash of the
//! plan gathered to rank 0). A file whose headers cannot be read is reported and skipped.

use super::{Outcome, Provenance};
use crate::config::{Config, RawConfig};
use crate::dist::{Comm, CommExt};
use crate::error::Context;
use crate::plan::{build_plan, CalMeta, Plan};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// What the plan stage produced.
pub struct PlanOutput {
    pub plan: Plan,
    /// Header metadata of the exposures, in the order of the plan's exposure table.
    pub metas: Vec<CalMeta>,
    /// Inputs that could not be read, with the reason.
    pub skipped: Vec<(PathBuf, String)>,
    /// Off-source background exposures of the plan's band (TARGPROP containing `prep.off_name`, or
    /// found in an `off/` folder or `prep.off_inputs`), sorted by path; they are not in the plan.
    pub offs: Vec<CalMeta>,
    pub outcome: Outcome,
}

/// What the plan stage read from the inputs' headers, as read (`plan/inventory.json`): later stages
/// rebuild the plan from it for their own rank count, without reading the headers again.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Inventory {
    /// The science exposures, in the order read.
    pub metas: Vec<CalMeta>,
    /// The off-source exposures (every band).
    pub offs: Vec<CalMeta>,
    /// Inputs that could not be read, with the reason.
    pub skipped: Vec<(PathBuf, String)>,
}

/// The inventory's file inside the plan stage's folder.
pub const INVENTORY: &str = "inventory.json";

/// Every file the plan stage reads: the cal files of `inputs` and the off-source exposures of the
/// `off/` folders beside them and of `prep.off_inputs`, sorted, each once.
///
/// # Errors
/// Inputs that cannot be listed.
pub fn input_files(inputs: &[PathBuf], cfg: &Config) -> crate::Result<Vec<PathBuf>> {
    let off_dirs = off_locations(inputs, cfg);
    let mut all = crate::io::expand_cal_inputs(inputs)?;
    if !off_dirs.is_empty() {
        all.extend(crate::io::expand_cal_inputs(&off_dirs)?);
    }
    all.sort();
    all.dedup();
    Ok(all)
}

/// Where off-source exposures are looked for: `off/` beside (inside) each input directory, and the
/// configured `prep.off_inputs`.
fn off_locations(inputs: &[PathBuf], cfg: &Config) -> Vec<PathBuf> {
    let has_cal = |d: &Path| {
        std::fs::read_dir(d)
            .is_ok_and(|mut it| it.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().ends_with("_cal.fits"))))
    };
    let mut dirs: Vec<PathBuf> = inputs.iter().map(|p| p.join("off")).filter(|p| p.is_dir() && has_cal(p)).collect();
    dirs.extend(cfg.prep.off_inputs.iter().cloned());
    dirs
}

/// Split the headers into science and off-source exposures: off = TARGPROP containing `off_name`
/// (lower-case) or a file from `off_files`.
fn split_offs(metas: Vec<CalMeta>, off_files: &[PathBuf], off_name: &str) -> (Vec<CalMeta>, Vec<CalMeta>) {
    metas.into_iter().partition(|m| !(m.target.to_ascii_lowercase().contains(off_name) || off_files.contains(&m.path)))
}

/// The plan file as written: the plan plus provenance and the skipped inputs.
#[derive(Serialize, Deserialize)]
pub struct PlanFile {
    pub provenance: Provenance,
    pub skipped: Vec<(PathBuf, String)>,
    pub plan: Plan,
}

/// Read the headers of every input in parallel and check each file once
/// ([`crate::io::fits::verify_cal`]: whole, not truncated, checksums right where present, a finite
/// SCI pixel); unreadable or damaged files, and duplicates ([`drop_duplicates`]), are returned as
/// skipped with the reason.
///
/// # Errors
/// When the inputs cannot be listed, or no file could be read.
#[allow(clippy::type_complexity)]
pub fn read_inventory(inputs: &[PathBuf]) -> crate::Result<(Vec<CalMeta>, Vec<(PathBuf, String)>)> {
    let files = crate::io::expand_cal_inputs(inputs)?;
    let results = files.par_iter().map(|p| (p.clone(), crate::io::fits::verify_cal(p).map_err(|e| e.to_string())));
    inventory_from(results.collect())
}

/// One input's check: its metadata, or why it cannot be used.
type Checked = (PathBuf, Result<CalMeta, String>);

/// [`read_inventory`] with the reading shared by the ranks: rank 0 lists the files, rank `r` checks
/// files `r, r + size, ...` (the check reads every byte of a file whose HDUs carry checksums, which
/// on one rank is the plan's serial part: `SCALING.md`), and the results, all-gathered in file
/// order, make the same inventory on every rank.
///
/// # Errors
/// As [`read_inventory`], on every rank.
#[allow(clippy::type_complexity)]
fn read_inventory_shared(comm: &dyn Comm, inputs: &[PathBuf]) -> crate::Result<(Vec<CalMeta>, Vec<(PathBuf, String)>)> {
    let files: Vec<PathBuf> = comm.on_root_then_broadcast(0, || crate::io::expand_cal_inputs(inputs))?;
    let (rank, size) = (comm.rank(), comm.size());
    let mine: Vec<(usize, Result<CalMeta, String>)> = files
        .par_iter()
        .enumerate()
        .filter(|(i, _)| i % size == rank)
        .map(|(i, p)| (i, crate::io::fits::verify_cal(p).map_err(|e| e.to_string())))
        .collect();
    let mut results: Vec<Option<Result<CalMeta, String>>> = vec![None; files.len()];
    for part in comm.all_gather_bytes(&serde_json::to_vec(&mine)?) {
        for (i, r) in serde_json::from_slice::<Vec<(usize, Result<CalMeta, String>)>>(&part)? {
            results[i] = Some(r);
        }
    }
    let checked: Vec<Checked> = files
        .into_iter()
        .zip(results)
        .map(|(p, r)| (p, r.unwrap_or_else(|| Err("not checked by any rank".into()))))
        .collect();
    if rank == 0 {
        inventory_from(checked)
    } else {
        tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), || inventory_from(checked))
    }
}

/// The inventory from every input's check, in file order: the skipped inputs (warned about) and the
/// usable ones without duplicates.
#[allow(clippy::type_complexity)]
fn inventory_from(checked: Vec<Checked>) -> crate::Result<(Vec<CalMeta>, Vec<(PathBuf, String)>)> {
    let mut metas = vec![];
    let mut skipped = vec![];
    for (p, r) in checked {
        match r {
            Ok(m) => metas.push(m),
            Err(e) => {
                tracing::warn!("skipping {}: {e}", p.display());
                skipped.push((p, e));
            }
        }
    }
    let (metas, duplicates) = drop_duplicates(metas);
    for (p, why) in &duplicates {
        tracing::warn!("skipping {}: {why}", p.display());
    }
    skipped.extend(duplicates);
    if metas.is_empty() {
        let first = skipped.first().map(|(_, e)| e.clone()).unwrap_or_default();
        crate::bail!("none of the {} input files could be read; the first error: {first}", skipped.len());
    }
    Ok((metas, skipped))
}

/// Drop the inputs that repeat another: the same file under another path (a symbolic or hard link,
/// `dir` and `dir/../dir`), or another file holding the same exposure (PROGRAM, OBSERVTN, VISIT,
/// VISITGRP, SEQ_ID, ACT_ID, EXPOSURE, DETECTOR and band: a copy under another name). Mosaicking an
/// exposure twice would weigh it double and break the level solve, so the first in path order is
/// kept and every later one is returned with a reason naming the one kept.
pub fn drop_duplicates(mut metas: Vec<CalMeta>) -> (Vec<CalMeta>, Vec<(PathBuf, String)>) {
    use std::collections::HashMap;
    use std::os::unix::fs::MetadataExt;
    metas.sort_by(|a, b| a.path.cmp(&b.path));
    let mut by_file: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut by_id: HashMap<(crate::plan::ExposureId, String, String), PathBuf> = HashMap::new();
    let mut kept = vec![];
    let mut dropped = vec![];
    for m in metas {
        let file = std::fs::metadata(&m.path).ok().map(|md| (md.dev(), md.ino()));
        if let Some(first) = file.and_then(|k| by_file.get(&k)) {
            dropped.push((
                m.path.clone(),
                format!("duplicate input: the same file as {} (given twice by different paths)", first.display()),
            ));
            continue;
        }
        let id = (m.id.clone(), m.detector.trim().to_ascii_uppercase(), m.band());
        if let Some(first) = by_id.get(&id) {
            dropped.push((
                m.path.clone(),
                format!(
                    "duplicate input: the same exposure as {} (exposure {}_{}, detector {}, band {}: a copy?)",
                    first.display(),
                    m.id.dither_group_key(),
                    m.id.exposure,
                    m.detector,
                    m.band()
                ),
            ));
            continue;
        }
        if let Some(k) = file {
            by_file.insert(k, m.path.clone());
        }
        by_id.insert(id, m.path.clone());
        kept.push(m);
    }
    (kept, dropped)
}

/// Run the plan stage for `nranks` ranks (normally `comm.size()`).
///
/// # Errors
/// Unreadable inputs (all of them), a plan error, or ranks that disagree.
pub fn run(
    comm: &dyn Comm,
    raw: &RawConfig,
    cfg: &Config,
    inputs: &[PathBuf],
    nranks: usize,
) -> crate::Result<PlanOutput> {
    // the off-source files, listed by rank 0; every input checked by the ranks in shares
    let off_files: Vec<PathBuf> = comm.on_root_then_broadcast(0, || -> crate::Result<Vec<PathBuf>> {
        let off_dirs = off_locations(inputs, cfg);
        Ok(if off_dirs.is_empty() { vec![] } else { crate::io::expand_cal_inputs(&off_dirs)? })
    })?;
    let mut all = inputs.to_vec();
    all.extend(off_files.iter().cloned());
    let (metas, skipped) = read_inventory_shared(comm, &all)?;
    let (metas, offs) = split_offs(metas, &off_files, &cfg.prep.off_name);
    if metas.is_empty() {
        crate::bail!(
            "all {} readable inputs are off-source exposures (TARGPROP containing `{}`, prep.off_name)",
            offs.len(),
            cfg.prep.off_name
        );
    }
    let inv = Inventory { metas, offs, skipped };
    let out = from_inventory(comm, cfg, &inv, nranks)?;
    if comm.rank() == 0 {
        let dir = cfg.run.output_dir.join("plan");
        let path = dir.join("plan.json");
        let file =
            PlanFile { provenance: Provenance::new(raw, comm), skipped: inv.skipped.clone(), plan: out.plan.clone() };
        crate::io::json::write_json(&path, &file)?;
        crate::io::json::write_json(&dir.join(INVENTORY), &inv)?;
        tracing::info!(
            "[plan] {} exposures, grid {}x{}, written to {}",
            out.plan.exposures.len(),
            out.plan.grid.nx,
            out.plan.grid.ny,
            path.display()
        );
    }
    Ok(out)
}

/// The plan for `nranks` ranks from an inventory: every rank builds it with the pure
/// `plan::build_plan` (or takes it from this process's [`build_plan_memo`]), and the ranks check
/// that they agree (a hash of the plan gathered to rank 0) before anyone fails. The exposures'
/// metadata come back in the plan's order.
///
/// # Errors
/// A plan error, or ranks that disagree (on every rank).
pub fn from_inventory(comm: &dyn Comm, cfg: &Config, inv: &Inventory, nranks: usize) -> crate::Result<PlanOutput> {
    let built = build_plan_memo(&inv.metas, cfg, nranks);
    let digest = match &built {
        Ok((_, d)) => d.clone(),
        Err(e) => format!("error: {e}"),
    };
    let digests = comm.gather_values(0, &digest)?;
    let agree = comm.on_root_then_broadcast(0, || -> Result<(), String> {
        let d = digests.expect("root has the gathered digests");
        match d.iter().position(|x| x != &d[0]) {
            None => Ok(()),
            Some(r) => Err(format!("ranks disagree on the plan: rank {r} computed {} but rank 0 {}", d[r], d[0])),
        }
    });
    agree?;
    let (plan, _) = built.context("plan")?;
    let outcome = if inv.skipped.is_empty() { Outcome::Clean } else { Outcome::Partial };
    let by_path: std::collections::HashMap<&Path, &CalMeta> = inv.metas.iter().map(|m| (m.path.as_path(), m)).collect();
    let metas = plan.exposures.iter().map(|e| (*by_path[e.path.as_path()]).clone()).collect();
    let mut offs: Vec<CalMeta> = inv.offs.iter().filter(|m| m.band() == plan.band).cloned().collect();
    offs.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(PlanOutput { plan, metas, skipped: inv.skipped.clone(), offs, outcome })
}

/// Plans this process has built, by the digest of everything `build_plan` reads, with the plan's own
/// digest; the newest last, at most [`MEMO_PLANS`].
static PLANS: std::sync::Mutex<Vec<(String, Plan, String)>> = std::sync::Mutex::new(Vec::new());

/// Plans kept by [`build_plan_memo`]: the plan before and after `align`.
const MEMO_PLANS: usize = 2;

/// `plan::build_plan(metas, cfg.plan, cfg.run.mem_budget_mb, nranks)` and the SHA-256 of the plan's
/// JSON, built once per process for the same arguments: every stage of a chain loads its band, and
/// with it the plan before and after `align`, which it would otherwise rebuild (its chunk x
/// exposure overlaps grow as the product of the two). The key is the digest of the arguments' JSON
/// (exact: floats round-trip) and the tessera version; a plan error is not kept.
///
/// # Errors
/// As `plan::build_plan`.
pub(crate) fn build_plan_memo(
    metas: &[CalMeta],
    cfg: &Config,
    nranks: usize,
) -> Result<(Plan, String), crate::plan::PlanError> {
    let args = (metas, &cfg.plan, cfg.run.mem_budget_mb, nranks, crate::VERSION);
    let key = hex(&Sha256::digest(serde_json::to_vec(&args).expect("plan arguments serialise")));
    let found =
        PLANS.lock().ok().and_then(|m| m.iter().find(|(k, ..)| *k == key).map(|(_, p, d)| (p.clone(), d.clone())));
    if let Some(hit) = found {
        return Ok(hit);
    }
    let plan = build_plan(metas, &cfg.plan, cfg.run.mem_budget_mb, nranks)?;
    let digest = hex(&Sha256::digest(serde_json::to_vec(&plan).expect("plan serialises")));
    if let Ok(mut m) = PLANS.lock() {
        m.retain(|(k, ..)| *k != key);
        m.push((key, plan.clone(), digest.clone()));
        let extra = m.len().saturating_sub(MEMO_PLANS);
        m.drain(..extra);
    }
    Ok((plan, digest))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A human-readable summary of a plan.
pub fn summary(plan: &Plan) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let visits: std::collections::BTreeSet<_> = plan.exposures.iter().map(|e| &e.visit).collect();
    let groups: std::collections::BTreeSet<_> = plan.exposures.iter().map(|e| &e.dither_group).collect();
    let dets: std::collections::BTreeSet<_> = plan.exposures.iter().map(|e| &e.detector).collect();
    let inpix: usize = plan.exposures.iter().map(|e| e.shape[0] * e.shape[1]).sum();
    let _ = writeln!(s, "band {} ({}), tessera {}", plan.band, plan.instrument.name(), plan.version);
    let _ = writeln!(
        s,
        "exposures: {} files, {} visits, {} dither groups, {} detectors, {:.1} Mpix in",
        plan.exposures.len(),
        visits.len(),
        groups.len(),
        dets.len(),
        inpix as f64 / 1e6
    );
    let g = &plan.grid;
    let _ = writeln!(
        s,
        "output grid: {} x {} px at {:.4}\"/px, centre RA {:.6} Dec {:.6}, rotation {:.2} deg",
        g.nx, g.ny, g.pixscale_arcsec, g.crval_deg[0], g.crval_deg[1], g.rotation_deg
    );
    let _ = writeln!(s, "chunks: {} x {} of {} px, {} ranks", plan.chunks_x, plan.chunks_y, plan.chunk_px, plan.ranks);
    for r in 0..plan.ranks {
        let n = plan.chunks_of(r).count();
        let e = plan.exposures_of(r).count();
        let _ = writeln!(
            s,
            "  rank {r}: {n} chunks, {:.2} Mpix of input, {e} exposures",
            plan.rank_input_px[r] as f64 / 1e6
        );
    }
    let _ = writeln!(s, "load imbalance (max/mean): {:.3}", plan.imbalance());
    s
}

/// Write the plan of a stage run beside other products (used by `mosaic`).
///
/// # Errors
/// [`crate::io::IoError`] naming the path.
pub fn write_plan(path: &Path, plan: &Plan) -> Result<(), crate::io::IoError> {
    crate::io::json::write_json(path, plan)
}

/// The `plan` stage for the runner: read the inputs' headers, write the plan and the inventory.
///
/// # Errors
/// As [`run`].
pub(crate) fn stage(ctx: &super::runner::Ctx) -> crate::Result<super::runner::Written> {
    let out = run(ctx.comm, ctx.raw, ctx.cfg, ctx.inputs, ctx.comm.size())?;
    Ok(super::runner::Written { partial: out.outcome == Outcome::Partial, ..Default::default() })
}

//! `tessera run config.toml`: every band of every `[[target]]` of the config, each through the
//! single-band chain of `mosaic` into `<output_dir>/<target>/<band>/`, then the release tree.
//!
//! **Tasks and chains.** A task is one (target, band). The bands of one target and instrument
//! (NIRCam's two channels count as one: they observe the same visits at once) form a chain: the
//! reference band first (`[align] reference_band` and `[astrometry] reference_band` when they name a
//! band of it, else F300M for NIRCam and F1000W for MIRI), then the bands that take its visit shifts
//! (`align/align.json` as `align.shifts_file`) and its absolute solution (`astrometry.json` as
//! `astrometry.solution_file`), as pjpipe's align_mapping does. When the reference band is missing
//! or fails, the other bands solve for themselves, with a warning. The queue lists the chains target
//! by target (NIRCam before MIRI), each in that order.
//!
//! **Anchoring.** The bands of a chain other than the instrument's anchor reference band
//! (`anchor.reference_band_nircam` / `_miri`: F300M, F770W) are tied to its anchored mosaic
//! (`anchor.reference_band_mosaic`, set here). When that band comes later in the chain (MIRI by
//! default: F1000W gives the visit shifts, F770W is anchored), the band runs up to astrometry
//! (`run.stop_after`), waits, and resumes its own run for `anchor` and `psfmatch` once the anchor
//! reference band has finished, as pjpipe runs each step for every band before the next. A band
//! whose anchor reference band failed or is missing is not anchored, with a warning. The anchor
//! stage's dependency hash holds the reference mosaic's checksum, so a reference band that reran
//! with another offset reruns its dependants' anchoring on `--resume`.
//!
//! **Communicator groups.** `run.groups` (or `auto`: see [`auto_groups`]) cuts the world into
//! contiguous groups (`Comm::split`). The chains are dealt to the groups before anything runs,
//! largest first to the least loaded group ([`assign`]: a pure function of the inputs' sizes), so
//! a dependent band always runs after its reference band on the same group and the schedule is the
//! same run to run. Every band's products are computed on its group alone and do not depend on the
//! group's rank count, so they are the same whatever the number of groups.
//!
//! **Failure isolation.** A failing task is reported and kept for inspection; its group goes on
//! with its next task. Group leaders write `<output_dir>/campaign/status/group-<g>.json` as tasks
//! start and end; world rank 0 reads them on a thread of its own and prints the campaign's progress
//! (done, running, failed, ETA). At the end world rank 0 writes `<output_dir>/campaign/summary.json`
//! and prints a table (task, status, reason, wall time, ranks, products); any failed task makes the
//! exit code 3.
//!
//! **Resume.** `--resume` hands every task to the stage runner with `--resume`, which keeps what its
//! manifest records as done and verified and reruns the rest; a band whose reference band reran in
//! this invocation reruns from the start (`--overwrite`), since the solutions it took may have
//! changed.
//!
//! **Common grid.** With `plan.common_grid`, rank 0 computes one output grid per target and
//! instrument (or per target) covering every band's footprints, and each band takes it as its
//! `plan.grid`.

use super::Outcome;
use crate::config::{CommonGrid, Config, Groups, Instrument, RawConfig, RawGrid};
use crate::dist::{group_of, Comm, CommExt};
use crate::geom::{grid::OutputGrid, SkyCoord};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// NIRCam's two channels observe the same visits at once, so they share one reference band.
fn family(band: &str) -> Option<&'static str> {
    match Instrument::of_filter(band)? {
        Instrument::Miri => Some("miri"),
        Instrument::NircamSw | Instrument::NircamLw => Some("nircam"),
    }
}

/// The reference band of `band`'s instrument: the configured one when it belongs to the same
/// instrument, else the instrument's default.
pub fn reference_band_of(configured: Option<&str>, band: &str) -> Option<String> {
    let fam = family(band)?;
    match configured {
        Some(b) if family(b) == Some(fam) => Some(b.to_string()),
        _ => {
            let default = if fam == "miri" { Instrument::Miri } else { Instrument::NircamLw };
            Some(super::align::default_reference_band(default).to_string())
        }
    }
}

/// The bands in run order: every reference band before the bands that use it, otherwise by name.
pub fn run_order(bands: &[String], cfg: &Config) -> Vec<String> {
    let is_ref = |b: &String| {
        reference_band_of(cfg.align.reference_band.as_deref(), b).as_ref() == Some(b)
            || reference_band_of(cfg.astrometry.reference_band.as_deref(), b).as_ref() == Some(b)
    };
    let mut order: Vec<String> = bands.iter().filter(|b| is_ref(b)).cloned().collect();
    order.extend(bands.iter().filter(|b| !is_ref(b)).cloned());
    order
}

/// The input side of one target, read by rank 0.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct TargetInputs {
    name: String,
    /// Band -> (files, bytes).
    bands: BTreeMap<String, (Vec<PathBuf>, u64)>,
    /// Inputs skipped as unreadable.
    skipped: usize,
    /// Bands of `target.bands` without any exposure among the inputs.
    missing: Vec<String>,
    /// Band -> the shared output grid (`plan.common_grid`).
    grids: BTreeMap<String, RawGrid>,
    /// Band -> the `off/` folders beside its files (MIRI off-source exposures: the band's chain gets
    /// files, not folders, so they are handed over as `prep.off_inputs`).
    off_dirs: BTreeMap<String, Vec<PathBuf>>,
    catalog: Option<PathBuf>,
}

/// One (target, band) of the queue.
#[derive(Clone, Debug)]
pub struct Task {
    /// Position in the queue.
    pub index: usize,
    pub target: String,
    pub band: String,
    /// Input bytes (for the schedule and `auto` groups).
    pub bytes: u64,
    /// The chain (target, instrument) it belongs to.
    pub chain: usize,
}

/// How a task ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Queued,
    Running,
    /// Finished.
    Done,
    /// Finished with some inputs skipped (reported in its plan).
    Partial,
    Failed,
}

/// A task's line of the summary.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TaskReport {
    /// `target/band`.
    pub task: String,
    pub target: String,
    pub band: String,
    pub status: TaskStatus,
    /// Why it failed (or what it skipped).
    #[serde(default)]
    pub reason: Option<String>,
    pub wall_s: f64,
    pub group: usize,
    pub ranks: usize,
    /// Whether any stage ran in this invocation (false: everything kept by `--resume`).
    #[serde(default)]
    pub ran: bool,
    /// The mosaic and the band's folder, relative to `run.output_dir`.
    #[serde(default)]
    pub products: Vec<String>,
}

/// `<output_dir>/campaign/summary.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Summary {
    pub tessera_version: String,
    pub ranks: usize,
    pub groups: usize,
    pub wall_s: f64,
    pub tasks: Vec<TaskReport>,
    /// The release of each target (`None` = not built).
    #[serde(default)]
    pub release: Vec<super::release::TargetRelease>,
}

/// The folder of the campaign's own files.
pub const DIR: &str = "campaign";

/// The output folder of a task.
pub fn band_dir(cfg: &Config, target: &str, band: &str) -> PathBuf {
    cfg.run.output_dir.join(target).join(band)
}

/// The mosaic of a task.
pub fn mosaic_path(cfg: &Config, target: &str, band: &str) -> PathBuf {
    band_dir(cfg, target, band).join(format!("{}_{}_i2d.fits", target, band.to_ascii_lowercase()))
}

/// The number of groups for `run.groups = "auto"`: groups as large as the largest task needs (its
/// input bytes over half of the per-rank budget: the other half holds its output chunks), as many as
/// fit in `ranks`, and no more than there are chains to share.
pub fn auto_groups(tasks: &[Task], ranks: usize, mem_budget_mb: u64) -> usize {
    let half = (mem_budget_mb as f64 * 1024.0 * 1024.0 / 2.0).max(1.0);
    let need = tasks.iter().map(|t| (t.bytes as f64 / half).ceil() as usize).max().unwrap_or(1).clamp(1, ranks);
    let chains = tasks.iter().map(|t| t.chain).max().map_or(1, |c| c + 1);
    (ranks / need).clamp(1, chains.max(1))
}

/// Deal the chains to `groups` groups: the largest chain (by input bytes; ties by queue order) to
/// the group with the least bytes so far (ties: the lowest group). Returns each chain's group.
pub fn assign(tasks: &[Task], groups: usize) -> Vec<usize> {
    let nchains = tasks.iter().map(|t| t.chain).max().map_or(0, |c| c + 1);
    let mut bytes = vec![0u64; nchains];
    for t in tasks {
        bytes[t.chain] += t.bytes;
    }
    let mut order: Vec<usize> = (0..nchains).collect();
    order.sort_by(|&a, &b| bytes[b].cmp(&bytes[a]).then(a.cmp(&b)));
    let mut load = vec![0u64; groups];
    let mut of = vec![0usize; nchains];
    for c in order {
        let g = (0..groups).min_by_key(|&g| (load[g], g)).expect("at least one group");
        load[g] += bytes[c];
        of[c] = g;
    }
    of
}

/// Group status, written by the group leader.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct GroupStatus {
    group: usize,
    ranks: usize,
    /// (task, status, wall seconds).
    tasks: Vec<(String, TaskStatus, f64)>,
}

fn status_path(out: &Path, group: usize) -> PathBuf {
    out.join(DIR).join("status").join(format!("group-{group}.json"))
}

/// World rank 0's progress thread: every `interval_s`, the groups' status files in one line.
fn monitor(
    out: PathBuf,
    groups: usize,
    total: usize,
    interval_s: f64,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let start = Instant::now();
        let mut last = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(std::time::Duration::from_millis(200));
            if last.elapsed().as_secs_f64() < interval_s {
                continue;
            }
            last = Instant::now();
            let (mut done, mut running, mut failed) = (0, 0, 0);
            for g in 0..groups {
                let Ok(s) = crate::io::json::read_json::<GroupStatus>(&status_path(&out, g)) else { continue };
                for (_, st, _) in &s.tasks {
                    match st {
                        TaskStatus::Done | TaskStatus::Partial => done += 1,
                        TaskStatus::Running => running += 1,
                        TaskStatus::Failed => failed += 1,
                        TaskStatus::Queued => {}
                    }
                }
            }
            let finished = done + failed;
            let elapsed = start.elapsed().as_secs_f64();
            let eta = if finished > 0 && finished < total {
                format!(", ETA {:.0} s", elapsed / finished as f64 * (total - finished) as f64)
            } else {
                String::new()
            };
            tracing::info!(
                "[run] campaign: {done}/{total} tasks done, {running} running, {failed} failed ({groups} groups, \
                 {elapsed:.0} s{eta})"
            );
        }
    })
}

/// Read the targets' inputs (rank 0), check the listed bands, compute the common grids.
fn read_targets(cfg: &Config, raw: &RawConfig) -> crate::Result<Vec<TargetInputs>> {
    let mut out = vec![];
    for t in &cfg.targets {
        let (metas, skipped) =
            super::plan::read_inventory(&t.inputs).map_err(|e| crate::err!("target {}: {e:#}", t.name))?;
        for (p, e) in &skipped {
            tracing::warn!("target {}: skipping {}: {e}", t.name, p.display());
        }
        let mut by_band: BTreeMap<String, Vec<&crate::plan::CalMeta>> = BTreeMap::new();
        for m in &metas {
            by_band.entry(m.band()).or_default().push(m);
        }
        let missing: Vec<String> = t.bands.iter().filter(|b| !by_band.contains_key(*b)).cloned().collect();
        if !t.bands.is_empty() {
            by_band.retain(|b, _| t.bands.contains(b));
        }
        let bands = by_band
            .iter()
            .map(|(b, ms)| {
                let bytes = ms.iter().map(|m| std::fs::metadata(&m.path).map_or(0, |x| x.len())).sum();
                (b.clone(), (ms.iter().map(|m| m.path.clone()).collect(), bytes))
            })
            .collect();
        // the shared grids: per instrument, or one for the target
        let mut grids = BTreeMap::new();
        if cfg.plan.common_grid != CommonGrid::None {
            let key = |b: &str| match cfg.plan.common_grid {
                CommonGrid::All => "all",
                _ => family(b).unwrap_or("other"),
            };
            let mut sets: BTreeMap<&str, Vec<&String>> = BTreeMap::new();
            for b in by_band.keys() {
                sets.entry(key(b)).or_default().push(b);
            }
            for members in sets.values() {
                let mut pts = vec![];
                let mut scale = f64::INFINITY;
                let mut margin = 0;
                for b in members {
                    let task = raw.for_task(&t.name, b)?.resolve()?;
                    if task.plan.grid.is_some() {
                        continue; // a user grid of its own wins
                    }
                    let native = Instrument::of_filter(b).map_or(0.063, |i| i.native_pixscale_arcsec());
                    scale = scale.min(if task.plan.pixscale_arcsec > 0.0 { task.plan.pixscale_arcsec } else { native });
                    margin = margin.max(task.plan.margin_px);
                    for m in &by_band[*b] {
                        pts.extend(m.footprint_sky(8).iter().map(|p| SkyCoord { ra_deg: p[0], dec_deg: p[1] }));
                    }
                }
                if let Some(g) = OutputGrid::covering(&pts, scale, margin) {
                    for b in members {
                        grids.insert(
                            (*b).clone(),
                            RawGrid {
                                ra_deg: g.crval_deg[0],
                                dec_deg: g.crval_deg[1],
                                nx: g.nx,
                                ny: g.ny,
                                pixscale_arcsec: g.pixscale_arcsec,
                                rotation_deg: 0.0,
                            },
                        );
                    }
                }
            }
        }
        let mut off_dirs: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
        for (b, ms) in &by_band {
            let mut dirs: Vec<PathBuf> =
                ms.iter().filter_map(|m| m.path.parent().map(|p| p.join("off"))).filter(|d| d.is_dir()).collect();
            dirs.retain(|d| crate::io::expand_cal_inputs(std::slice::from_ref(d)).is_ok_and(|v| !v.is_empty()));
            dirs.sort();
            dirs.dedup();
            off_dirs.insert(b.clone(), dirs);
        }
        out.push(TargetInputs {
            name: t.name.clone(),
            off_dirs,
            bands,
            skipped: skipped.len(),
            missing,
            grids,
            catalog: t.catalog.clone(),
        });
    }
    Ok(out)
}

/// The queue: per target, per instrument (NIRCam, MIRI, other), the bands in run order.
fn queue(targets: &[TargetInputs], cfg: &Config) -> Vec<Task> {
    let mut tasks = vec![];
    let mut chain = 0;
    for t in targets {
        let names: Vec<String> = t.bands.keys().cloned().collect();
        for fam in [Some("nircam"), Some("miri"), None] {
            let mine: Vec<String> = names.iter().filter(|b| family(b) == fam).cloned().collect();
            if mine.is_empty() {
                continue;
            }
            // a band of no known instrument is a chain of its own (its plan will say why it fails)
            let chains: Vec<Vec<String>> =
                if fam.is_some() { vec![run_order(&mine, cfg)] } else { mine.into_iter().map(|b| vec![b]).collect() };
            for c in chains {
                for band in c {
                    let bytes = t.bands[&band].1;
                    tasks.push(Task { index: tasks.len(), target: t.name.clone(), band, bytes, chain });
                }
                chain += 1;
            }
        }
    }
    tasks
}

/// Run the campaign on `world`: the targets named in `only` (all when empty).
///
/// # Errors
/// A config without targets, a name in `only` that is no target, unreadable inputs of a target, a
/// refused output folder. A failing task is not an error: it is reported (exit code 3).
pub fn run(
    world: &dyn Comm,
    raw: &RawConfig,
    cfg: &Config,
    resume: bool,
    overwrite: bool,
    only: &[String],
) -> crate::Result<Outcome> {
    let started = Instant::now();
    if cfg.targets.is_empty() {
        crate::bail!("the config lists no [[target]]: nothing to run (see `tessera config default`)");
    }
    if let Some(n) = only.iter().find(|n| !cfg.targets.iter().any(|t| t.name.eq_ignore_ascii_case(n))) {
        let names: Vec<&str> = cfg.targets.iter().map(|t| t.name.as_str()).collect();
        crate::bail!("--target {n}: no such [[target]] in the config (targets: {})", names.join(", "));
    }
    let mut cfg = cfg.clone();
    if !only.is_empty() {
        cfg.targets.retain(|t| only.iter().any(|n| t.name.eq_ignore_ascii_case(n)));
    }
    let cfg = &cfg;
    // another campaign's products: refuse before anything runs, unless told what to do with them
    if !resume && !overwrite {
        world.on_root_then_broadcast(0, || -> Result<(), String> {
            for t in &cfg.targets {
                let tdir = cfg.run.output_dir.join(&t.name);
                let Ok(entries) = std::fs::read_dir(&tdir) else { continue };
                for e in entries.flatten() {
                    if e.path().join(super::manifest::FILE).is_file() {
                        return Err(format!(
                            "{} already holds the products of another run ({}). Use --resume to continue it, \
                             --overwrite to start clean, or another run.output_dir",
                            e.path().display(),
                            super::manifest::FILE
                        ));
                    }
                }
            }
            Ok(())
        })?;
    }
    super::preflight::campaign(world, cfg)?;
    let targets: Vec<TargetInputs> =
        world.on_root_then_broadcast(0, || read_targets(cfg, raw).map_err(|e| format!("{e:#}")))?;
    let tasks = queue(&targets, cfg);
    let size = world.size();
    let groups = match cfg.run.groups {
        Groups::Count(n) => {
            if n > size && world.rank() == 0 {
                tracing::warn!("run.groups = {n} is more than the {size} ranks: {size} groups of one rank");
            }
            n.min(size)
        }
        Groups::Auto => auto_groups(&tasks, size, cfg.run.mem_budget_mb),
    };
    let chain_group = assign(&tasks, groups);
    let (group, _, _) = group_of(world.rank(), size, groups);
    let out = cfg.run.output_dir.clone();
    world.on_root_then_broadcast(0, || -> crate::Result<()> {
        crate::io::remove_tree(&out.join(DIR).join("status"))?;
        crate::io::make_dir(&out.join(DIR).join("status"))?;
        tracing::info!(
            "[run] {} tasks ({} targets) on {groups} group(s) of the {size} ranks{}",
            tasks.len(),
            targets.len(),
            if resume { " (--resume)" } else { "" }
        );
        Ok(())
    })?;
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = (world.rank() == 0)
        .then(|| monitor(out.clone(), groups, tasks.len(), cfg.run.progress_interval_s, stop.clone()));

    // the group's tasks, in queue order
    let comm = world.split(group);
    let mine: Vec<&Task> = tasks.iter().filter(|t| chain_group[t.chain] == group).collect();
    let mut status = GroupStatus {
        group,
        ranks: comm.size(),
        tasks: mine.iter().map(|t| (format!("{}/{}", t.target, t.band), TaskStatus::Queued, 0.0)).collect(),
    };
    let leader = comm.rank() == 0;
    let write_status = |s: &GroupStatus| {
        if leader {
            let _ = crate::io::json::write_json(&status_path(&out, group), s);
        }
    };
    write_status(&status);
    let mut reports: Vec<(usize, TaskReport)> = vec![];
    // per chain: the reference bands that finished (band -> folder) and whether they reran now
    let mut finished: BTreeMap<(usize, String), (PathBuf, bool)> = BTreeMap::new();
    // tasks stopped after astrometry until their anchor reference band is anchored: (position in
    // `mine`, that band, wall seconds so far, whether a stage ran)
    let mut waiting: Vec<(usize, String, f64, bool)> = vec![];
    let mut k = 0;
    while k < mine.len() || !waiting.is_empty() {
        // a waiting task whose anchor reference band has finished (or will not run) goes first
        let ready = waiting.iter().position(|(j, rb, _, _)| {
            let chain = mine[*j].chain;
            finished.contains_key(&(chain, rb.clone())) || !mine[k..].iter().any(|t| t.chain == chain && &t.band == rb)
        });
        let (j, phase, wall0, ran0) = match ready {
            Some(i) => {
                let (j, _, w, r) = waiting.remove(i);
                (j, Phase::Rest, w, r)
            }
            None => {
                k += 1;
                (k - 1, Phase::All, 0.0, false)
            }
        };
        let task = mine[j];
        let t = targets.iter().find(|x| x.name == task.target).expect("a target of the queue");
        status.tasks[j].1 = TaskStatus::Running;
        write_status(&status);
        // the band tied to an anchor reference band later in its chain stops after astrometry and
        // waits for it (MIRI by default: F1000W gives the visit shifts, F770W is anchored)
        // (a config that does not resolve fails the task in run_task, with its error)
        let anchor_ref = match phase {
            Phase::Rest => None,
            _ => anchor_reference(raw, task)
                .ok()
                .flatten()
                .filter(|rb| mine[j + 1..].iter().any(|t| t.chain == task.chain && &t.band == rb)),
        };
        let phase = if anchor_ref.is_some() { Phase::Solve } else { phase };
        let t0 = Instant::now();
        // a task that waited resumes its own run: nothing upstream of anchor reruns
        let (res, ovw) = if phase == Phase::Rest { (true, false) } else { (resume, overwrite) };
        let result = run_task(&*comm, raw, cfg, t, task, &finished, res, ovw, phase);
        let wall_s = wall0 + t0.elapsed().as_secs_f64();
        if let (Some(rb), Ok((_, ran))) = (&anchor_ref, &result) {
            if leader {
                tracing::info!(
                    "[run] {}/{}: stopped after astrometry until {rb}, its anchor reference band, is anchored",
                    task.target,
                    task.band
                );
            }
            // its solutions (align, astrometry) serve the bands after it
            let dir = band_dir(cfg, &task.target, &task.band);
            finished.insert((task.chain, task.band.clone()), (dir, *ran));
            waiting.push((j, rb.clone(), wall_s, *ran));
            continue;
        }
        let (dir, mosaic) = (band_dir(cfg, &task.target, &task.band), mosaic_path(cfg, &task.target, &task.band));
        let rel = |p: &Path| p.strip_prefix(&out).unwrap_or(p).display().to_string();
        let mut report = TaskReport {
            task: format!("{}/{}", task.target, task.band),
            target: task.target.clone(),
            band: task.band.clone(),
            status: TaskStatus::Done,
            reason: None,
            wall_s,
            group,
            ranks: comm.size(),
            ran: true,
            products: vec![],
        };
        match result {
            Ok((outcome, ran)) => {
                finished.insert((task.chain, task.band.clone()), (dir.clone(), ran || ran0));
                report.ran = ran || ran0;
                report.products = vec![rel(&mosaic), format!("{}/", rel(&dir))];
                if outcome == Outcome::Partial {
                    report.status = TaskStatus::Partial;
                    report.reason = Some("some inputs skipped (see plan/plan.json)".into());
                }
            }
            Err(e) => {
                if leader {
                    tracing::error!("[run] {} failed (products kept in {}): {e:#}", report.task, dir.display());
                }
                report.status = TaskStatus::Failed;
                report.reason = Some(format!("{e:#}"));
                report.products = vec![format!("{}/", rel(&dir))];
            }
        }
        status.tasks[j] = (report.task.clone(), report.status, wall_s);
        write_status(&status);
        reports.push((task.index, report));
    }
    drop(comm);

    // everything to world rank 0: the group leaders' reports
    let leader_of_group = group_of(world.rank(), size, groups).1 == world.rank();
    let sent: Vec<(usize, TaskReport)> = if leader_of_group { reports } else { vec![] };
    let all = world.gather_values(0, &sent)?;
    let mut table: Vec<TaskReport> = vec![];
    if let Some(parts) = all {
        let mut v: Vec<(usize, TaskReport)> = parts.into_iter().flatten().collect();
        v.sort_by_key(|(i, _)| *i);
        table = v.into_iter().map(|(_, r)| r).collect();
        for t in &targets {
            for b in &t.missing {
                table.push(TaskReport {
                    task: format!("{}/{b}", t.name),
                    target: t.name.clone(),
                    band: b.clone(),
                    status: TaskStatus::Failed,
                    reason: Some(format!("target.bands lists {b}, but no input of target {} is in band {b}", t.name)),
                    wall_s: 0.0,
                    group: 0,
                    ranks: 0,
                    ran: false,
                    products: vec![],
                });
            }
        }
    }
    let table: Vec<TaskReport> = world.broadcast_value(0, (world.rank() == 0).then_some(&table))?;
    stop.store(true, Ordering::Relaxed);
    if let Some(w) = watcher {
        let _ = w.join();
    }

    // the release tree of each target
    let release = if cfg.release.enabled { super::release::run_targets(world, cfg, &table)? } else { vec![] };
    let failed = table.iter().filter(|r| r.status == TaskStatus::Failed).count()
        + release.iter().filter(|r| r.error.is_some()).count();
    let partial = table.iter().any(|r| r.status == TaskStatus::Partial) || targets.iter().any(|t| t.skipped > 0);
    let summary = Summary {
        tessera_version: crate::VERSION.to_string(),
        ranks: size,
        groups,
        wall_s: started.elapsed().as_secs_f64(),
        tasks: table,
        release,
    };
    world.on_root_then_broadcast(0, || -> crate::Result<()> {
        let p = out.join(DIR).join("summary.json");
        crate::io::json::write_json(&p, &summary)?;
        println!("{}", summary_table(&summary));
        println!("summary:     {}", p.display());
        if failed > 0 {
            tracing::warn!("[run] finished with {failed} failed task(s): see the table above");
        }
        Ok(())
    })?;
    Ok(if failed > 0 || partial { Outcome::Partial } else { Outcome::Clean })
}

/// Which part of a band's chain a task runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Every stage.
    All,
    /// Up to astrometry (`run.stop_after`): the band waits for its anchor reference band.
    Solve,
    /// The rest, resumed, once the anchor reference band is anchored.
    Rest,
}

/// The band that `task`'s band is tied to by `anchor`: the instrument's anchor reference band
/// (`anchor.reference_band_*`), when it is another band and will be anchored (its config lists
/// references); `None` when the band is the reference band, anchoring is off for either, or
/// `anchor.reference_band_mosaic` is set by hand. (A band is not tied to a reference band that is
/// not anchored itself: there would be nothing to carry over but the other band's level.)
fn anchor_reference(raw: &RawConfig, task: &Task) -> crate::Result<Option<String>> {
    let cfg = raw.for_task(&task.target, &task.band)?.resolve()?;
    let Some(inst) = Instrument::of_filter(&task.band) else { return Ok(None) };
    if !cfg.anchor.enabled || cfg.anchor.reference_band_mosaic.is_some() {
        return Ok(None);
    }
    let rb = super::anchor::reference_band(&cfg.anchor, inst).to_string();
    if rb == task.band {
        return Ok(None);
    }
    let rcfg = raw.for_task(&task.target, &rb)?.resolve()?;
    Ok((rcfg.anchor.enabled && !rcfg.anchor.references.is_empty()).then_some(rb))
}

/// One task on its group: its config (overrides resolved, the reference band's solutions, the
/// common grid), then the band's chain. Returns the outcome and whether any stage ran.
#[allow(clippy::too_many_arguments)]
fn run_task(
    comm: &dyn Comm,
    raw: &RawConfig,
    cfg: &Config,
    t: &TargetInputs,
    task: &Task,
    finished: &BTreeMap<(usize, String), (PathBuf, bool)>,
    resume: bool,
    overwrite: bool,
    phase: Phase,
) -> crate::Result<(Outcome, bool)> {
    let band = &task.band;
    let mut traw = raw.for_task(&task.target, band)?;
    let resolved = traw.resolve()?;
    if let Some(g) = t.grids.get(band) {
        if resolved.plan.grid.is_none() {
            traw.plan.grid = Some(g.clone());
        }
    }
    // the reference band's solutions, when it finished in this chain
    let refs = [resolved.align.reference_band.as_deref(), resolved.astrometry.reference_band.as_deref()]
        .map(|conf| reference_band_of(conf, band).filter(|r| r != band));
    let mut reference_reran = false;
    let leader = comm.rank() == 0;
    for (r, stage) in refs.iter().zip(["align", "astrometry"]) {
        let Some(r) = r else { continue };
        match finished.get(&(task.chain, r.clone())) {
            Some((dir, reran)) => {
                let (file, set) = if stage == "align" {
                    (dir.join(super::align::STAGE).join("align.json"), traw.align.shifts_file.is_empty())
                } else {
                    (
                        dir.join(super::astrometry::STAGE).join("astrometry.json"),
                        traw.astrometry.solution_file.is_empty(),
                    )
                };
                // rank 0 looks; every rank takes its answer
                let exists: bool = comm.on_root_then_broadcast(0, || Ok::<bool, String>(file.is_file()))?;
                if set && exists {
                    reference_reran |= *reran;
                    let f = file.display().to_string();
                    if stage == "align" {
                        traw.align.reference_band = r.clone();
                        traw.align.shifts_file = f;
                    } else {
                        traw.astrometry.reference_band = r.clone();
                        traw.astrometry.solution_file = f;
                    }
                    if leader {
                        tracing::info!("[run] {}/{band}: {stage} from the reference band {r}", task.target);
                    }
                }
            }
            None => {
                if leader {
                    tracing::warn!(
                        "[run] {}/{band}: the reference band {r} is not in the target or did not finish: {band} \
                         solves its own {stage}",
                        task.target
                    );
                }
            }
        }
    }
    // anchoring: a band other than its instrument's anchor reference band is tied to that band's
    // anchored mosaic (pjpipe's internal anchoring), when it finished in this chain
    if let Some(rb) = anchor_reference(raw, task)? {
        // a band that waits names the mosaic to come already, so that its config (and the anchor
        // stage's dependency hash) is the same in both halves of its run
        if finished.contains_key(&(task.chain, rb.clone())) || phase == Phase::Solve {
            let m = mosaic_path(cfg, &task.target, &rb);
            traw.anchor.reference_band_mosaic = std::path::absolute(&m).unwrap_or(m).display().to_string();
            if leader && phase != Phase::Solve {
                tracing::info!("[run] {}/{band}: anchor tied to {rb}'s anchored mosaic", task.target);
            }
        } else if leader {
            tracing::warn!(
                "[run] {}/{band}: the anchor reference band {rb} is not in the target or did not finish: {band} is \
                 not anchored",
                task.target
            );
        }
    }
    if phase == Phase::Solve {
        traw.run.stop_after = super::astrometry::STAGE.to_string();
    }
    for d in t.off_dirs.get(band).into_iter().flatten() {
        let d = d.display().to_string();
        if !traw.prep.off_inputs.contains(&d) {
            traw.prep.off_inputs.push(d);
        }
    }
    let mut c = traw.resolve()?;
    let dir = band_dir(cfg, &task.target, band);
    c.run.output_dir = dir.clone();
    let out = mosaic_path(cfg, &task.target, band);
    let (files, _) = &t.bands[band];
    // a band whose reference reran now takes the new solutions from the start
    let reference_reran = reference_reran && phase != Phase::Rest;
    let (resume_this, overwrite_this) = if resume && reference_reran { (false, true) } else { (resume, overwrite) };
    if leader {
        tracing::info!(
            "[run] {}/{band}: {} files -> {} ({} ranks{})",
            task.target,
            files.len(),
            out.display(),
            comm.size(),
            if resume && reference_reran { "; its reference band reran: starting clean" } else { "" }
        );
    }
    let outcome = super::mosaic::run(comm, &traw, &c, files, &out, t.catalog.as_deref(), resume_this, overwrite_this)?;
    // did any stage run now (or was everything kept)?
    let ran: bool = comm.on_root_then_broadcast(0, || -> Result<bool, String> {
        let m = super::manifest::Manifest::read(&dir).map_err(|e| e.to_string())?;
        Ok(m.is_none_or(|m| m.stages.iter().any(|e| !e.reused && e.status == super::manifest::Status::Done)))
    })?;
    Ok((outcome, ran))
}

/// The printed table of the summary.
pub fn summary_table(s: &Summary) -> String {
    let mut rows: Vec<[String; 6]> =
        vec![["task", "status", "wall s", "ranks", "products", "reason"].map(String::from)];
    for t in &s.tasks {
        let status = match t.status {
            TaskStatus::Done if !t.ran => "kept".to_string(),
            st => format!("{st:?}").to_ascii_lowercase(),
        };
        let mut reason = t.reason.clone().unwrap_or_default().replace('\n', " ");
        if reason.len() > 100 {
            let cut = (0..=100).rev().find(|&i| reason.is_char_boundary(i)).unwrap_or(0);
            reason = format!("{}...", &reason[..cut]);
        }
        rows.push([
            t.task.clone(),
            status,
            format!("{:.1}", t.wall_s),
            t.ranks.to_string(),
            t.products.first().cloned().unwrap_or_default(),
            reason,
        ]);
    }
    for r in &s.release {
        rows.push([
            format!("{} release", r.target),
            if r.error.is_some() { "failed".into() } else { "done".into() },
            format!("{:.1}", r.wall_s),
            "1".into(),
            r.dir.clone(),
            r.error.clone().unwrap_or_default(),
        ]);
    }
    let widths: Vec<usize> = (0..6).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    let mut text = format!(
        "campaign: {} tasks on {} group(s) of {} ranks in {:.1} s\n",
        s.tasks.len(),
        s.groups,
        s.ranks,
        s.wall_s
    );
    for r in rows {
        let line: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        text.push_str(line.join("  ").trim_end());
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(index: usize, chain: usize, bytes: u64) -> Task {
        Task { index, target: "t".into(), band: "F300M".into(), bytes, chain }
    }

    #[test]
    fn chains_go_largest_first_to_the_least_loaded_group() {
        // chains of 10, 30, 20 and 5 bytes (the first of two tasks): 30 -> g0, 20 -> g1, 10 -> g1, 5 -> g0
        let tasks = vec![task(0, 0, 6), task(1, 0, 4), task(2, 1, 30), task(3, 2, 20), task(4, 3, 5)];
        assert_eq!(assign(&tasks, 2), vec![1, 0, 1, 0]);
        assert_eq!(assign(&tasks, 1), vec![0, 0, 0, 0]);
        // more groups than chains: each chain alone
        let g = assign(&tasks, 6);
        let mut sorted = g.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 4);
    }

    #[test]
    fn auto_groups_fit_the_largest_band_in_the_budget() {
        let mib = 1024 * 1024;
        // 4 chains; the largest task needs 300 MiB: 3 ranks of 200 MiB budget (100 MiB for inputs)
        let tasks = vec![task(0, 0, 300 * mib), task(1, 1, 50 * mib), task(2, 2, mib), task(3, 3, mib)];
        assert_eq!(auto_groups(&tasks, 12, 200), 4);
        assert_eq!(auto_groups(&tasks, 9, 200), 3);
        assert_eq!(auto_groups(&tasks, 2, 200), 1);
        // everything small: one group per chain, at most the ranks
        let small = vec![task(0, 0, 1), task(1, 1, 1), task(2, 2, 1)];
        assert_eq!(auto_groups(&small, 2, 4096), 2);
        assert_eq!(auto_groups(&small, 64, 4096), 3);
    }
}

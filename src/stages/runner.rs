//! The stage runner: one chain for `tessera mosaic` and `tessera run`, one stage at a time for the
//! per-stage commands (`tessera level ...`), with the manifest and `--resume`.
//!
//! Every stage runs from products alone. [`Band::load`] rebuilds what a stage needs from the
//! products of the stages before it: the exposure table from `plan/inventory.json` (the plan is
//! rebuilt for this run's rank count), the corrected copies of `prep`, the visit shifts of `align`,
//! the correction parts of `destripe`, `level` and `destripe_multi` (composed by
//! [`corrections::compose`](super::corrections::compose)) and the flags of `outlier`. No stage hands
//! another an in-memory value.
//!
//! Resuming: before anything runs, every stage's dependency hash is recomputed (its config sections,
//! the checksums of the products it reads and of the files outside the run it reads (references,
//! PSFs, a reference band's solutions and mosaic, the catalogue: [`external_inputs`]), for `plan`
//! the inputs' checksums) and compared with the
//! manifest, and the products of finished stages are checked against their checksums (by all ranks
//! in parallel). The chain reruns from the first stage that fails any check, and every stage after
//! it reruns too. `astrometry` rewrites the `-o` mosaic that `assemble` wrote, so when astrometry
//! reruns, assemble reruns first.
//!
//! Ranks agree on every decision: rank 0 decides and broadcasts.

use super::corrections::{compose, Corrections, OutlierFlags};
use super::manifest::{display_path, hash_files, hash_files_reusing, hash_json, FileSum, Manifest, StageEntry, Status};
use super::plan::{Inventory, PlanOutput};
use super::{Outcome, Provenance, Stage};
use crate::config::{Config, RawConfig};
use crate::dist::{Comm, CommExt};
use crate::error::Context;
use crate::plan::{CalMeta, Plan};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The stages `tessera mosaic` chains, in order: every stage but `release`.
pub const CHAIN: [Stage; 12] = {
    let mut c = [Stage::Plan; 12];
    let (mut i, mut j) = (0, 0);
    while j < Stage::ALL.len() {
        if !matches!(Stage::ALL[j], Stage::Release) {
            c[i] = Stage::ALL[j];
            i += 1;
        }
        j += 1;
    }
    c
};

/// What one invocation works on.
pub struct Invocation<'a> {
    pub comm: &'a dyn Comm,
    pub raw: &'a RawConfig,
    pub cfg: &'a Config,
    /// Cal files or folders, as given.
    pub inputs: &'a [PathBuf],
    /// The `-o` mosaic (per-stage commands may leave it to the manifest).
    pub output: Option<&'a Path>,
    /// The reference catalogue (`--catalog`, else `astrometry.catalog`).
    pub catalog: Option<&'a Path>,
}

/// How the invocation runs the stages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The whole chain (`mosaic`, `run`): refuse a folder holding another run's products unless
    /// `resume` (keep what is done and verified) or `overwrite` (start clean).
    Chain { resume: bool, overwrite: bool },
    /// One stage on the products already in `run.output_dir` (the per-stage commands).
    Only(Stage),
}

/// The band as a stage sees it, loaded from the products of the stages before it.
pub struct Band {
    /// The plan for this run's ranks (rebuilt from the aligned exposures when `align` has run).
    pub plan: Plan,
    /// Exposure metadata in plan order: `prep`'s corrected copies, `align`'s shifted WCSs.
    pub metas: Vec<CalMeta>,
    /// The plan and metadata before `align` (what `align` itself works on).
    pub plan_before_align: Plan,
    pub metas_before_align: Vec<CalMeta>,
    /// Off-source exposures of the band.
    pub offs: Vec<CalMeta>,
    pub skipped: Vec<(PathBuf, String)>,
    /// The corrections of the correcting stages upstream.
    pub corr: Corrections,
    /// The outlier flags (empty when `outlier` has not run or is upstream-skipped).
    pub flags: OutlierFlags,
}

impl Band {
    /// Load the band for `stage` from the products in `dir` of the stages `done` (finished, in
    /// chain order) before it.
    ///
    /// # Errors
    /// A missing or malformed product, naming it (on every rank).
    pub fn load(comm: &dyn Comm, cfg: &Config, dir: &Path, stage: Stage, done: &[Stage]) -> crate::Result<Band> {
        let before = |s: Stage| done.contains(&s) && s.order() < stage.order();
        let read = |s: Stage, file: &str| dir.join(s.name()).join(file);
        let inv: Inventory = comm.on_root_then_broadcast(0, || {
            crate::io::json::read_json(&read(Stage::Plan, super::plan::INVENTORY)).map_err(|e| e.to_string())
        })?;
        let PlanOutput { plan: plan0, metas: mut metas0, offs, skipped, .. } =
            super::plan::from_inventory(comm, cfg, &inv, comm.size())?;
        let n = metas0.len();
        if before(Stage::Prep) {
            let rep: super::prep::PrepReport = comm.on_root_then_broadcast(0, || {
                crate::io::json::read_json(&read(Stage::Prep, "prep.json")).map_err(|e| e.to_string())
            })?;
            crate::ensure!(
                rep.exposures.len() == n,
                "prep/prep.json lists {} exposures, the plan {n}",
                rep.exposures.len()
            );
            for (m, r) in metas0.iter_mut().zip(&rep.exposures) {
                if let Some(p) = &r.written {
                    m.path = p.clone();
                    m.dt_bgr_days = r.dt_bgr_days;
                }
            }
        }
        let (plan, metas) = if before(Stage::Align) {
            let f: super::align::AlignFile = comm.on_root_then_broadcast(0, || {
                crate::io::json::read_json(&read(Stage::Align, "align.json")).map_err(|e| e.to_string())
            })?;
            let m = super::align::apply(&plan0, &metas0, &f);
            let (p, _) = super::plan::build_plan_memo(&m, cfg, comm.size()).context("plan after align")?;
            (p, m)
        } else {
            (plan0.clone(), metas0.clone())
        };
        let mut parts = vec![];
        for s in [Stage::Destripe, Stage::Level, Stage::DestripeMulti] {
            if before(s) {
                let c: Corrections = comm.on_root_then_broadcast(0, || {
                    crate::io::json::read_json(&read(s, CORRECTIONS)).map_err(|e| e.to_string())
                })?;
                parts.push(c);
            }
        }
        let corr = compose(n, &parts);
        let flags = if before(Stage::Outlier) {
            let files: Vec<String> = metas.iter().map(CalMeta::file_name).collect();
            comm.on_root_then_broadcast(0, || -> Result<OutlierFlags, String> {
                let p = read(Stage::Outlier, "flags.json");
                let v: serde_json::Value = crate::io::json::read_json(&p).map_err(|e| e.to_string())?;
                OutlierFlags::from_report(&v, &files).map_err(|e| format!("{}: {e}", p.display()))
            })?
        } else {
            OutlierFlags { per_exposure: vec![vec![]; n] }
        };
        Ok(Band { plan, metas, plan_before_align: plan0, metas_before_align: metas0, offs, skipped, corr, flags })
    }
}

/// The file in which a correcting stage writes its part of the corrections.
pub const CORRECTIONS: &str = "corrections.json";

/// The config sections a stage's results depend on (besides the products it reads). Stages read the
/// plan's grid; `level` also samples on a lattice sized from the memory budget; `level` reads
/// `prep`'s Lyot switch; `outlier` drizzles single images with the drizzle settings.
fn config_sections(stage: Stage) -> &'static [&'static str] {
    match stage {
        Stage::Plan => &["plan", "prep.off_name", "prep.off_inputs"],
        Stage::Prep => &["plan", "prep"],
        Stage::Destripe => &["plan", "destripe"],
        Stage::Align => &["plan", "align"],
        Stage::Level => &["plan", "level", "prep", "run.mem_budget_mb"],
        Stage::DestripeMulti => &["plan", "destripe", "destripe_multi"],
        Stage::Outlier => &["plan", "outlier", "drizzle"],
        Stage::Drizzle => &["plan", "drizzle"],
        Stage::Assemble => &["plan", "assemble"],
        Stage::Astrometry => &["plan", "astrometry"],
        Stage::Anchor => &["anchor"],
        Stage::Psfmatch => &["plan", "psfmatch"],
        _ => &[],
    }
}

/// The value of a config section (`level`) or key (`run.mem_budget_mb`) as JSON.
fn config_value(raw: &RawConfig, path: &str) -> serde_json::Value {
    let all = serde_json::to_value(raw).expect("config serialises");
    path.split('.').fold(all, |v, k| v.get(k).cloned().unwrap_or(serde_json::Value::Null))
}

/// The files outside the run folder that a stage reads, with the stage: `align.shifts_file` (align),
/// `astrometry.solution_file` and the catalogue (astrometry), `anchor.references` and
/// `anchor.reference_band_mosaic` (anchor), `psfmatch.psf` (psfmatch).
fn external_inputs(cfg: &Config, catalog: Option<&Path>) -> Vec<(Stage, PathBuf)> {
    let mut v: Vec<(Stage, PathBuf)> = vec![];
    v.extend(cfg.align.shifts_file.iter().map(|p| (Stage::Align, p.clone())));
    v.extend(cfg.astrometry.solution_file.iter().map(|p| (Stage::Astrometry, p.clone())));
    v.extend(catalog.map(|p| (Stage::Astrometry, p.to_path_buf())));
    v.extend(cfg.anchor.references.iter().map(|p| (Stage::Anchor, p.clone())));
    v.extend(cfg.anchor.reference_band_mosaic.iter().map(|p| (Stage::Anchor, p.clone())));
    v.extend(cfg.psfmatch.psf.iter().map(|p| (Stage::Psfmatch, p.clone())));
    v
}

/// Whether the stage is turned off by the config or has nothing to do (the reason), or runs.
fn skip_reason(stage: Stage, cfg: &Config, band: &str, catalog: Option<&Path>) -> Option<String> {
    let off = |on: bool, key: &str| (!on).then(|| format!("{key}.enabled = false"));
    match stage {
        Stage::Prep => off(cfg.prep.enabled, "prep"),
        Stage::Destripe => off(cfg.destripe.enabled, "destripe"),
        Stage::Align => off(cfg.align.enabled, "align"),
        Stage::Level => off(cfg.level.enabled, "level"),
        Stage::DestripeMulti => off(cfg.destripe_multi.enabled, "destripe_multi"),
        Stage::Outlier => off(cfg.outlier.enabled, "outlier"),
        Stage::Astrometry => (!super::astrometry::wanted(cfg, band, catalog)).then(|| {
            "no reference catalogue (--catalog or astrometry.catalog) and no reference band's solution".into()
        }),
        Stage::Anchor => super::anchor::skip_reason(cfg, band),
        Stage::Psfmatch => {
            if cfg.psfmatch.targets.is_empty() {
                Some("no psfmatch.targets (--psf-target)".into())
            } else if !band.is_empty() && cfg.psfmatch.targets.iter().all(|t| t.name.eq_ignore_ascii_case(band)) {
                Some(format!("psfmatch.targets name only {band} itself"))
            } else {
                None
            }
        }
        _ => None,
    }
}

/// Run the invocation.
///
/// # Errors
/// A stage's error (the manifest then says `failed`), a refused output folder, missing upstream
/// products for a per-stage command. All ranks return the same error.
pub fn run(inv: &Invocation, mode: Mode) -> crate::Result<Outcome> {
    let Invocation { comm, raw, cfg, .. } = *inv;
    let dir = cfg.run.output_dir.clone();
    let root = comm.rank() == 0;
    let prov = Provenance::new(raw, comm);
    let started = Instant::now();
    if let Some(c) = inv.catalog {
        if !c.is_file() {
            crate::bail!("--catalog {}: no such file", c.display());
        }
    }

    // the manifest as found (for the inputs' checksums), then the old manifest and what to do about it
    let prior: Option<Manifest> = comm.on_root_then_broadcast(0, || -> Result<_, String> {
        Ok(Manifest::read(&dir).ok().flatten().filter(|_| matches!(mode, Mode::Chain { overwrite: true, .. })))
    })?;
    let given_catalog = inv.catalog.or(cfg.astrometry.catalog.as_deref());
    let old: Option<Manifest> = comm.on_root_then_broadcast(0, || -> crate::Result<Option<Manifest>> {
        let m = Manifest::read(&dir)?;
        let leftovers: Vec<&str> = CHAIN.iter().map(|s| s.name()).filter(|s| dir.join(s).is_dir()).collect();
        match mode {
            Mode::Chain { overwrite: true, .. } => {
                if m.is_some() || !leftovers.is_empty() {
                    tracing::warn!("[run] --overwrite: removing the products of the earlier run in {}", dir.display());
                    for s in CHAIN {
                        crate::io::remove_tree(&dir.join(s.name()))?;
                    }
                    crate::io::remove_file(&dir.join(super::manifest::FILE))?;
                }
                Ok(None)
            }
            Mode::Chain { resume: false, .. } if m.is_some() || !leftovers.is_empty() => crate::bail!(
                "{} already holds the products of another run ({}). Use --resume to continue that run, \
                 --overwrite to delete its products and start clean, or another run.output_dir",
                dir.display(),
                if m.is_some() { "manifest.json".to_string() } else { format!("folders {}", leftovers.join(", ")) }
            ),
            Mode::Chain { resume: true, .. } if m.is_none() && !leftovers.is_empty() => crate::bail!(
                "{} holds stage folders ({}) but no manifest.json: nothing can be verified to resume from. \
                 Use --overwrite to start clean",
                dir.display(),
                leftovers.join(", ")
            ),
            Mode::Only(s) if s != Stage::Plan && m.is_none() => crate::bail!(
                "{}: no manifest.json, so no upstream stage has run here: run `tessera plan` (and the stages \
                 after it) or `tessera mosaic` first",
                dir.display()
            ),
            _ => Ok(m),
        }
    })?;
    let output: Option<PathBuf> = match inv.output {
        Some(o) => Some(absolute(o)),
        None => old.as_ref().and_then(|m| m.mosaic.clone()),
    };
    // a per-stage command (`tessera psfmatch ...`) continues the run with its catalogue when it is
    // given none, so that astrometry upstream of it stays what it was
    let catalog: Option<&Path> = match (given_catalog, mode) {
        (None, Mode::Only(_)) => old.as_ref().and_then(|m| m.catalog.as_deref()),
        (c, _) => c,
    };

    // inputs and their checksums (all ranks), the unchanged ones (same stamp) taken from the last
    // manifest in the folder, also one that --overwrite has just removed
    let files: Vec<PathBuf> =
        comm.on_root_then_broadcast(0, || super::plan::input_files(inv.inputs, cfg).map_err(|e| format!("{e:#}")))?;
    let t = Instant::now();
    let known: Vec<&FileSum> = old.as_ref().or(prior.as_ref()).map(|m| m.inputs.iter().collect()).unwrap_or_default();
    let sums = hash_files_reusing(comm, &files, Path::new(""), &known)?;
    let mut checksum_s = t.elapsed().as_secs_f64();
    let inputs: Vec<FileSum> = files
        .iter()
        .zip(sums)
        .map(|(p, s)| s.ok_or_else(|| crate::err!("{}: cannot be read", p.display())))
        .collect::<crate::Result<_>>()?;
    if root {
        let gb = inputs.iter().map(|s| s.bytes).sum::<u64>() as f64 / 1e9;
        tracing::info!("[run] {} inputs ({gb:.2} GB) checksummed in {:.1} s", inputs.len(), t.elapsed().as_secs_f64());
    }
    let mut man = Manifest {
        tessera_version: prov.tessera_version.clone(),
        config_sha256: prov.config_sha256.clone(),
        config_toml: prov.config_toml.clone(),
        mosaic: output.clone(),
        catalog: catalog.map(Path::to_path_buf),
        inputs,
        stages: vec![],
        invocation_wall_s: 0.0,
        checksum_s: 0.0,
    };

    // the files outside the run that stages read (references, PSFs, solutions of a reference band,
    // the catalogue): their checksums enter the dependency hashes of the stages that read them, so a
    // changed file reruns its stage on --resume (all ranks; a missing file hashes as missing)
    let external_files: Vec<(Stage, PathBuf)> = external_inputs(cfg, catalog);
    let paths: Vec<PathBuf> = external_files.iter().map(|(_, p)| p.clone()).collect();
    let t = Instant::now();
    let ext_sums = hash_files(comm, &paths, Path::new(""))?;
    checksum_s += t.elapsed().as_secs_f64();
    let externals = |stage: Stage| -> Vec<serde_json::Value> {
        external_files
            .iter()
            .zip(&ext_sums)
            .filter(|((s, _), _)| *s == stage)
            .map(|((_, p), sum)| serde_json::json!([p, sum.as_ref().map(|s| &s.sha256)]))
            .collect()
    };

    // which recorded stages still hold: verify every product of every done stage at once
    let recorded: Vec<StageEntry> = old.as_ref().map(|m| m.stages.clone()).unwrap_or_default();
    let product_paths: Vec<PathBuf> = recorded
        .iter()
        .filter(|e| e.status == Status::Done)
        .flat_map(|e| e.products.iter().map(|p| resolve(&dir, &p.path)))
        .collect();
    let t = Instant::now();
    let known: Vec<&FileSum> =
        recorded.iter().filter(|e| e.status == Status::Done).flat_map(|e| e.products.iter()).collect();
    let current: Vec<Option<FileSum>> = hash_files_reusing(comm, &product_paths, &dir, &known)?;
    checksum_s += t.elapsed().as_secs_f64();
    if root && !product_paths.is_empty() {
        tracing::debug!(
            "[run] {} recorded products verified in {:.1} s",
            product_paths.len(),
            t.elapsed().as_secs_f64()
        );
    }
    let current_of = |path: &str| -> Option<&FileSum> {
        product_paths.iter().zip(&current).find(|(p, _)| display_path(p, &dir) == path).and_then(|(_, s)| s.as_ref())
    };
    // a product is checked against the last finished stage that wrote it
    let last_writer_sha = |path: &str| -> Option<String> {
        recorded
            .iter()
            .filter(|e| e.status == Status::Done)
            .flat_map(|e| e.products.iter())
            .rfind(|p| p.path == path)
            .map(|p| p.sha256.clone())
    };

    // the stamps of an entry's products as verified now, where the checksum is the recorded one: the
    // next invocation need not read them again (a product hashed just after it was written had none)
    let restamp = |e: &mut StageEntry| {
        for p in &mut e.products {
            if let Some(c) = current_of(&p.path).filter(|c| c.sha256 == p.sha256) {
                p.stamp.clone_from(&c.stamp);
            }
        }
    };

    // the dependency hash of `stage` given the entries before it in `entries`
    let depends = |stage: Stage, entries: &[StageEntry], inputs: &[FileSum]| -> String {
        let cfgs: serde_json::Map<String, serde_json::Value> =
            config_sections(stage).iter().map(|k| (k.to_string(), config_value(raw, k))).collect();
        let reads: Vec<serde_json::Value> = entries
            .iter()
            .filter(|e| stage.reads().iter().any(|r| r.name() == e.stage))
            .map(|e| {
                // the plan reports (plan/plan.json, align/plan.json) hold the owners of this run's
                // rank count; what later stages read from plan and align is the rest
                let read: Vec<(&String, &String)> = e
                    .products
                    .iter()
                    .filter(|p| !p.path.ends_with("plan.json"))
                    .map(|p| (&p.path, &p.sha256))
                    .collect();
                serde_json::json!({ "stage": e.stage, "status": e.status, "products": read })
            })
            .collect();
        let mut v = serde_json::json!({
            "stage": stage.name(),
            "tessera_version": crate::VERSION,
            "config": cfgs,
            "reads": reads,
        });
        let ext = externals(stage);
        if !ext.is_empty() {
            v["external"] = serde_json::json!(ext);
        }
        match stage {
            Stage::Plan => {
                v["inputs"] = serde_json::json!(inputs.iter().map(|s| (&s.path, &s.sha256)).collect::<Vec<_>>())
            }
            Stage::Assemble | Stage::Psfmatch => v["output"] = serde_json::json!(output),
            Stage::Astrometry => {
                v["output"] = serde_json::json!(output);
                v["catalog"] = serde_json::json!(catalog);
            }
            Stage::Anchor => v["output"] = serde_json::json!(output),
            _ => {}
        }
        hash_json(&v)
    };

    // decide: which stages to run
    let (todo, kept): (Vec<Stage>, Vec<StageEntry>) = comm.on_root_then_broadcast(0, || -> crate::Result<_> {
        let targets: Vec<Stage> = match mode {
            Mode::Only(s) => vec![s],
            Mode::Chain { .. } => {
                let stop = cfg.run.stop_after.as_deref().and_then(Stage::from_name);
                CHAIN.iter().copied().take_while(|s| stop.is_none_or(|x| s.order() <= x.order())).collect()
            }
        };
        let first_target = targets[0];
        let resume = matches!(mode, Mode::Chain { resume: true, .. }) || matches!(mode, Mode::Only(_));
        let mut kept: Vec<StageEntry> = vec![];
        let mut first_run: Option<(Stage, String)> = None;
        for s in CHAIN {
            let must_keep = matches!(mode, Mode::Only(_)) && s.order() < first_target.order();
            if s.order() >= first_target.order() && matches!(mode, Mode::Only(_)) {
                break;
            }
            let why = if !resume {
                Some("a new run".to_string())
            } else {
                match recorded.iter().find(|e| e.stage == s.name()) {
                    None => Some("not run yet".to_string()),
                    Some(e) if e.status == Status::Failed => Some("failed last time".into()),
                    Some(e) if e.status == Status::Running => Some("interrupted last time".into()),
                    Some(e) if e.depends_sha256 != depends(s, &kept, &man.inputs) => Some(format!(
                        "its configuration ({}) or the products it reads changed",
                        config_sections(s).join(", ")
                    )),
                    Some(e) => e.products.iter().find_map(|p| {
                        let want = last_writer_sha(&p.path).unwrap_or_default();
                        match current_of(&p.path) {
                            None => Some(format!("its product {} is missing", p.path)),
                            Some(c) if c.sha256 != want => {
                                Some(format!("its product {} changed since it was written (checksum)", p.path))
                            }
                            _ => None,
                        }
                    }),
                }
            };
            match why {
                None => {
                    let mut e = recorded.iter().find(|e| e.stage == s.name()).expect("found").clone();
                    e.reused = true;
                    restamp(&mut e);
                    kept.push(e);
                }
                Some(_) if must_keep && s != Stage::Plan && skip_reason(s, cfg, "", catalog).is_some() => {
                    // turned off in the config: nothing to have run
                    let why = skip_reason(s, cfg, "", catalog).expect("checked");
                    kept.push(StageEntry {
                        stage: s.name().to_string(),
                        status: Status::Skipped,
                        reason: Some(why),
                        depends_sha256: depends(s, &kept, &man.inputs),
                        wall_s: 0.0,
                        ranks: comm.size(),
                        threads_per_rank: rayon::current_num_threads(),
                        reused: false,
                        products: vec![],
                    });
                }
                Some(why) if must_keep => crate::bail!(
                    "the upstream stage `{}` is not usable in {} ({why}): run `tessera {}` first, or `tessera \
                     mosaic --resume`",
                    s.name(),
                    dir.display(),
                    s.name()
                ),
                Some(why) => {
                    first_run = Some((s, why));
                    break;
                }
            }
        }
        // astrometry rewrites assemble's mosaic: rerun assemble with it
        let astrometry_wrote =
            recorded.iter().any(|e| e.stage == Stage::Astrometry.name() && e.status != Status::Skipped);
        let anchor_wrote = recorded.iter().any(|e| e.stage == Stage::Anchor.name() && e.status != Status::Skipped);
        if let Some((Stage::Astrometry, why)) = &first_run {
            if (astrometry_wrote || anchor_wrote)
                && kept.last().is_some_and(|e| e.stage == "assemble")
                && targets.contains(&Stage::Assemble)
            {
                kept.pop();
                first_run = Some((Stage::Assemble, format!("astrometry reruns ({why}) and rewrites its mosaic")));
            }
        }
        // anchor rewrites the mosaic's SCI too: when it reruns after having written, the mosaic is
        // rebuilt first (assemble, and astrometry after it), so the reran anchor starts from it
        if let Some((Stage::Anchor, why)) = &first_run {
            if anchor_wrote && targets.contains(&Stage::Assemble) {
                let why = format!("anchor reruns ({why}) and rewrites its mosaic");
                while kept.last().is_some_and(|e| e.stage == "astrometry" || e.stage == "assemble") {
                    kept.pop();
                }
                first_run = Some((Stage::Assemble, why));
            }
        }
        let todo: Vec<Stage> = match (mode, &first_run) {
            (Mode::Only(s), _) => vec![s],
            (_, Some((f, _))) => targets.iter().copied().filter(|s| s.order() >= f.order()).collect(),
            (_, None) => vec![],
        };
        if matches!(mode, Mode::Chain { resume: true, .. }) {
            for e in &kept {
                tracing::info!("[{}] done in an earlier run, products verified: skipped (--resume)", e.stage);
            }
            if let Some((f, why)) = &first_run {
                tracing::info!("[run] resuming at {}: {why}", f.name());
            }
        }
        Ok((todo, kept))
    })?;
    // a per-stage command keeps the entries after its stage: `--resume` finds them out of date when
    // what they read has changed
    man.stages = match mode {
        Mode::Only(s) => {
            let mut all = kept.clone();
            all.extend(
                recorded.iter().filter(|e| Stage::from_name(&e.stage).is_some_and(|x| x.order() > s.order())).cloned(),
            );
            all.iter_mut().for_each(restamp);
            all
        }
        Mode::Chain { .. } => kept.clone(),
    };
    let mut outcome = Outcome::Clean;
    for stage in todo {
        let done: Vec<Stage> =
            man.stages.iter().filter(|e| e.status == Status::Done).filter_map(|e| Stage::from_name(&e.stage)).collect();
        let tl = Instant::now();
        let band = if stage == Stage::Plan { None } else { Some(Band::load(comm, cfg, &dir, stage, &done)?) };
        if root && band.is_some() {
            tracing::debug!("[{}] band loaded in {:.2} s", stage.name(), tl.elapsed().as_secs_f64());
        }
        let band_name = band.as_ref().map_or(String::new(), |b| b.plan.band.clone());
        let deps = depends(stage, &man.stages, &man.inputs);
        let mut entry = StageEntry {
            stage: stage.name().to_string(),
            status: Status::Running,
            reason: None,
            depends_sha256: deps,
            wall_s: 0.0,
            ranks: comm.size(),
            threads_per_rank: rayon::current_num_threads(),
            reused: false,
            products: vec![],
        };
        if let Some(why) = skip_reason(stage, cfg, &band_name, catalog) {
            if root && stage == Stage::Anchor {
                // a missing optional input (SPEC section 6): said as a warning
                tracing::warn!("[{}] skipped: {why}", stage.name());
            } else if root {
                tracing::info!("[{}] skipped: {why}", stage.name());
            }
            entry.status = Status::Skipped;
            entry.reason = Some(why);
            man.set(entry);
            if root {
                man.write(&dir)?;
            }
            continue;
        }
        // start clean: the stage's own folder goes (a killed run's partial files with it)
        comm.on_root_then_broadcast(0, || -> crate::Result<()> {
            if stage != Stage::Assemble {
                crate::io::remove_tree(&dir.join(stage.name()))?;
            }
            man.set(entry.clone());
            man.write(&dir)?;
            Ok(())
        })?;
        man.set(entry.clone());
        let t = Instant::now();
        let cpu0 = cpu_seconds();
        let ctx = Ctx { comm, inputs: inv.inputs, raw, cfg, prov: &prov, output: output.as_deref(), catalog };
        let result = run_stage(&ctx, stage, band.as_ref());
        entry.wall_s = t.elapsed().as_secs_f64();
        // issue 20 (SCALING.md): the CPU time each rank spent in the stage (TESSERA_LOG=info for all ranks)
        tracing::info!(
            "[{}] stage cpu {:.2} s, wall {:.2} s on this rank",
            stage.name(),
            cpu_seconds() - cpu0,
            entry.wall_s
        );
        let written = match result {
            Ok(w) => w,
            Err(e) => {
                entry.status = Status::Failed;
                entry.reason = Some(format!("{e:#}"));
                man.set(entry);
                if root {
                    let _ = man.write(&dir);
                }
                return Err(e.context(format!("stage {}", stage.name())));
            }
        };
        if written.partial {
            outcome = Outcome::Partial;
        }
        // products: everything in the stage's folder, and the mosaic for assemble and astrometry
        let mut paths: Vec<PathBuf> = comm
            .on_root_then_broadcast(0, || crate::io::list_files(&dir.join(stage.name())).map_err(|e| e.to_string()))?;
        if matches!(stage, Stage::Assemble)
            || (matches!(stage, Stage::Astrometry | Stage::Anchor) && written.rewrote_mosaic)
        {
            paths.extend(output.clone());
        }
        // products written beside the mosaic (psfmatch's `<stem>_at<target>.fits`)
        paths.extend(written.beside_mosaic.iter().cloned());
        let th = Instant::now();
        let sums = hash_files(comm, &paths, &dir)?;
        checksum_s += th.elapsed().as_secs_f64();
        entry.products = paths
            .iter()
            .zip(sums)
            .map(|(p, s)| {
                s.ok_or_else(|| crate::err!("{}: product vanished after stage {}", p.display(), stage.name()))
            })
            .collect::<crate::Result<_>>()?;
        entry.status = Status::Done;
        man.set(entry);
        man.invocation_wall_s = started.elapsed().as_secs_f64();
        man.checksum_s = checksum_s;
        if root {
            man.write(&dir)?;
        }
    }
    // the manifest of this invocation, also when every stage was kept
    man.invocation_wall_s = started.elapsed().as_secs_f64();
    man.checksum_s = checksum_s;
    if root {
        man.write(&dir)?;
    }
    // finished inputs that were skipped make the run partial, whether or not plan ran now
    let skipped_inputs = comm.on_root_then_broadcast(0, || -> Result<usize, String> {
        let p = dir.join("plan").join(super::plan::INVENTORY);
        if !p.is_file() {
            return Ok(0);
        }
        crate::io::json::read_json::<Inventory>(&p).map(|i| i.skipped.len()).map_err(|e| e.to_string())
    })?;
    if skipped_inputs > 0 {
        outcome = Outcome::Partial;
    }
    if let (true, Mode::Chain { .. }, Some(s)) = (root, mode, cfg.run.stop_after.as_deref()) {
        tracing::info!("[run] stopping after {s} (run.stop_after): its products are written; --resume continues");
    }
    if root && matches!(mode, Mode::Chain { .. }) && cfg.run.stop_after.is_none() {
        if let Some(o) = &output {
            println!("mosaic:      {}", o.display());
        }
        println!("manifest:    {}", dir.join(super::manifest::FILE).display());
    }
    Ok(outcome)
}

/// A path from the manifest: relative ones are below `dir`.
fn resolve(dir: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        dir.join(p)
    }
}

/// `p` made absolute against the working directory (not resolving links).
fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// What every stage gets besides the band.
pub struct Ctx<'a> {
    pub comm: &'a dyn Comm,
    /// The inputs as given (the plan stage reads them).
    pub inputs: &'a [PathBuf],
    pub raw: &'a RawConfig,
    pub cfg: &'a Config,
    pub prov: &'a Provenance,
    pub output: Option<&'a Path>,
    pub catalog: Option<&'a Path>,
}

/// What a stage reports back to the runner.
#[derive(Default)]
pub struct Written {
    /// Some items were skipped or failed and reported.
    pub partial: bool,
    /// `astrometry` rewrote the `-o` mosaic's WCS, or `anchor` its SCI.
    pub rewrote_mosaic: bool,
    /// Products written outside the stage's folder, beside the `-o` mosaic (checksummed with it).
    pub beside_mosaic: Vec<PathBuf>,
}

fn run_stage(ctx: &Ctx, stage: Stage, band: Option<&Band>) -> crate::Result<Written> {
    match (stage, band) {
        (Stage::Plan, _) => super::plan::stage(ctx),
        (Stage::Prep, Some(b)) => super::prep::stage(ctx, b),
        (Stage::Destripe, Some(b)) => super::destripe::stage(ctx, b),
        (Stage::Align, Some(b)) => super::align::stage(ctx, b),
        (Stage::Level, Some(b)) => super::level::stage(ctx, b),
        (Stage::DestripeMulti, Some(b)) => super::destripe_multi::stage(ctx, b),
        (Stage::Outlier, Some(b)) => super::outlier::stage(ctx, b),
        (Stage::Drizzle, Some(b)) => super::drizzle::stage(ctx, b),
        (Stage::Assemble, Some(b)) => super::assemble::stage(ctx, b),
        (Stage::Astrometry, Some(b)) => super::astrometry::stage(ctx, b),
        (Stage::Anchor, Some(b)) => super::anchor::stage(ctx, b),
        (Stage::Psfmatch, Some(b)) => super::psfmatch::stage(ctx, b),
        (s, _) => crate::bail!("stage {} is not part of the single-band chain", s.name()),
    }
}

// ---- issue 20 (scaling): CPU time of this process, all threads (user + system), for the stage log
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return f64::NAN;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + 1e-6 * t.tv_usec as f64;
    secs(ru.ru_utime) + secs(ru.ru_stime)
}

//! `tessera mosaic`: the single-band entry point, chaining `plan → prep → destripe → align → level →
//! destripe_multi → outlier → drizzle → assemble → astrometry` on the given cal files, alone or under
//! `mpirun`.
//!
//! Products under `run.output_dir`:
//! - `plan/plan.json`
//! - `prep/prep.json` and, for MIRI with off-source exposures, the background-subtracted copies
//! - `destripe/destripe.json`, `destripe/<band>.h5`: the stripe models (NIRCam)
//! - `destripe_multi/destripe_multi.json`, `destripe_multi/<band>.h5`: the residual stripe models
//! - `level/level.json`, `level/pairs.csv`: every pair and the solved offsets
//! - `outlier/flags.json`
//! - `drizzle/<band>.h5`, the band store written with collective MPI-IO
//! - the mosaic FITS at `-o`
//! - `align/align.json`, `align/plan.json` (the plan rebuilt from the aligned WCSs)
//! - with a catalogue: `astrometry/astrometry.json`, `astrometry/matches.csv`,
//!   `astrometry/*_tweakback.fits`, and the mosaic's WCS corrected

use super::outlier::OutlierFlags;
use super::pieces::Corrections;
use super::progress::Progress;
use super::{Outcome, Provenance};
use crate::config::{Config, RawConfig};
use crate::dist::{Comm, CommExt};
use anyhow::Context;
use std::path::{Path, PathBuf};

/// Run the band's stage chain and write the mosaic FITS `output`.
///
/// # Errors
/// Any stage error (all ranks return it).
pub fn run(
    comm: &dyn Comm,
    raw: &RawConfig,
    cfg: &Config,
    inputs: &[PathBuf],
    output: &Path,
    catalog: Option<&Path>,
) -> anyhow::Result<Outcome> {
    let origin = if catalog.is_some() { "--catalog" } else { "astrometry.catalog =" };
    let catalog = catalog.or(cfg.astrometry.catalog.as_deref());
    if let Some(c) = catalog {
        if !c.is_file() {
            anyhow::bail!("{origin} {}: no such file", c.display());
        }
    }
    let preflight = super::preflight::mosaic(comm, cfg, inputs, output, catalog)?;
    let planned = super::plan::run(comm, raw, cfg, inputs, comm.size())?;
    let mut plan = &planned.plan;
    let prov = Provenance::new(raw, comm);
    let root = comm.rank() == 0;
    let interval = cfg.run.progress_interval_s;
    // run.stop_after: true (and said once) when the chain ends after `stage`
    let stop = |stage: &str| {
        let hit = cfg.run.stop_after.as_deref() == Some(stage);
        if hit && root {
            tracing::info!("[mosaic] stopping after {stage} (run.stop_after): no mosaic written");
        }
        hit
    };

    // prep
    let prepped = if cfg.prep.enabled {
        super::prep::run(comm, plan, &planned.metas, &planned.offs, cfg)?.0
    } else {
        planned.metas.clone()
    };
    let mut metas = &prepped;
    if stop(super::prep::STAGE) {
        return Ok(Outcome::Clean);
    }

    // destripe (NIRCam; MIRI exposures are passed through with a note)
    let corr = if cfg.destripe.enabled {
        let t = std::time::Instant::now();
        let (c, report) = super::destripe::run(comm, plan, metas, cfg, &Corrections::none(metas.len()))?;
        if root {
            for note in &report.notes {
                tracing::warn!("[destripe] {note}");
            }
            let done = report.exposures.iter().filter(|e| e.status == "destriped").count();
            tracing::info!(
                "[destripe] {done} of {} exposures destriped; models in {} ({:.1} s)",
                metas.len(),
                cfg.run.output_dir.join(super::destripe::STAGE).display(),
                t.elapsed().as_secs_f64()
            );
        }
        c
    } else {
        Corrections::none(metas.len())
    };
    if stop(super::destripe::STAGE) {
        return Ok(Outcome::Clean);
    }

    // align: the visit shifts correct the exposure WCSs; the plan is rebuilt from the corrected
    // headers (a pure function, the same on every rank), so every later stage sees only them
    let aligned;
    if cfg.align.enabled {
        let t = std::time::Instant::now();
        let (m, report) = super::align::run(comm, plan, metas, cfg)?;
        let p =
            crate::plan::build_plan(&m, &cfg.plan, cfg.run.mem_budget_mb, comm.size()).context("plan after align")?;
        if comm.rank() == 0 {
            let solved = report.visits.iter().filter(|v| v.solved).count();
            let rms =
                (report.visits.iter().map(|v| v.shift_arcsec[0].powi(2) + v.shift_arcsec[1].powi(2)).sum::<f64>()
                    / report.visits.len().max(1) as f64)
                    .sqrt();
            super::plan::write_plan(&cfg.run.output_dir.join(super::align::STAGE).join("plan.json"), &p)?;
            tracing::info!(
                "[align] {solved} of {} visits aligned ({}), rms shift {:.1} mas; report in {} ({:.1} s)",
                report.visits.len(),
                report.method,
                1000.0 * rms,
                cfg.run.output_dir.join(super::align::STAGE).display(),
                t.elapsed().as_secs_f64()
            );
        }
        aligned = (p, m);
        plan = &aligned.0;
        metas = &aligned.1;
    }
    if stop(super::align::STAGE) {
        return Ok(Outcome::Clean);
    }

    // level
    let corr = if cfg.level.enabled {
        let t = std::time::Instant::now();
        let (c, report) = super::level::run(comm, plan, metas, cfg, &corr)?;
        if root {
            tracing::info!(
                "[level] band sky {:.4} MJy/sr subtracted; report in {} ({:.1} s)",
                report.band_sky_mjysr,
                cfg.run.output_dir.join(super::level::STAGE).display(),
                t.elapsed().as_secs_f64()
            );
        }
        c
    } else {
        corr
    };

    if stop(super::level::STAGE) {
        return Ok(Outcome::Clean);
    }

    // destripe_multi (NIRCam)
    let corr = if cfg.destripe_multi.enabled {
        let t = std::time::Instant::now();
        let (c, report) = super::destripe_multi::run(comm, plan, metas, cfg, &corr)?;
        if root {
            for note in &report.notes {
                tracing::warn!("[destripe_multi] {note}");
            }
            tracing::info!(
                "[destripe_multi] models in {} ({:.1} s)",
                cfg.run.output_dir.join(super::destripe_multi::STAGE).display(),
                t.elapsed().as_secs_f64()
            );
        }
        c
    } else {
        corr
    };

    if stop(super::destripe_multi::STAGE) {
        return Ok(Outcome::Clean);
    }

    // outlier
    let flags = if cfg.outlier.enabled {
        let t = std::time::Instant::now();
        let f = super::outlier::run(comm, plan, metas, cfg, &corr)?;
        if root {
            let path = cfg.run.output_dir.join("outlier").join("flags.json");
            crate::io::json::write_json(&path, &flags_report(&f, metas))?;
            let npix: usize = metas.iter().map(|m| m.shape[0] * m.shape[1]).sum();
            tracing::info!(
                "[outlier] {} pixels flagged ({:.3}% of {:.1} Mpix) in {:.1} s, written to {}",
                f.total(),
                100.0 * f.total() as f64 / npix as f64,
                npix as f64 / 1e6,
                t.elapsed().as_secs_f64(),
                path.display()
            );
        }
        f
    } else {
        OutlierFlags { per_exposure: vec![vec![]; metas.len()] }
    };
    if stop("outlier") {
        return Ok(Outcome::Clean);
    }

    // drizzle into the band store (collective), written under a temporary name, renamed when closed
    let store = cfg.run.output_dir.join("drizzle").join(format!("{}.h5", plan.band));
    let partial = store.with_extension("h5.partial");
    comm.on_root_then_broadcast(0, || {
        std::fs::create_dir_all(store.parent().expect("has parent")).map_err(|e| e.to_string())
    })?;
    let attrs = [
        ("tessera_version", prov.tessera_version.clone()),
        ("config_sha256", prov.config_sha256.clone()),
        ("config_toml", prov.config_toml.clone()),
        ("ranks", prov.ranks.to_string()),
        ("threads_per_rank", prov.threads_per_rank.to_string()),
        ("band", plan.band.clone()),
    ];
    let attr_refs: Vec<(&str, String)> = attrs.iter().map(|(k, v)| (*k, v.clone())).collect();
    let mut progress = Progress::new("drizzle", "chunks", plan.chunks.len(), interval, root);
    super::drizzle::run(comm, plan, metas, cfg, &flags, &corr, &partial, &attr_refs, &mut progress)?;
    progress.finish();
    comm.barrier();

    // assemble on rank 0
    comm.on_root_then_broadcast(0, || -> Result<(), String> {
        std::fs::rename(&partial, &store).map_err(|e| format!("{}: {e}", store.display()))?;
        let t = std::time::Instant::now();
        super::assemble::run(plan, metas, &store, output, cfg.assemble.row_block, &prov)
            .map_err(|e| format!("{e:#}"))?;
        tracing::info!(
            "[assemble] {} ({}x{}) in {:.1} s",
            output.display(),
            plan.grid.nx,
            plan.grid.ny,
            t.elapsed().as_secs_f64()
        );
        Ok(())
    })
    .context("assemble")?;

    // astrometry: the mosaic against the reference catalogue, tweakback to every exposure
    if super::astrometry::wanted(cfg, &plan.band, catalog) {
        let t = std::time::Instant::now();
        let r = super::astrometry::run(comm, plan, metas, cfg, output, catalog)?;
        if root {
            match &r.correction {
                Some(c) => tracing::info!(
                    "[astrometry] shift ({:.1}, {:.1}) mas E,N, rotation {:.5} deg ({}, {} matches); mosaic WCS \
                     updated, {} tweakback files in {} ({:.1} s)",
                    1e3 * c.shift_arcsec[0],
                    1e3 * c.shift_arcsec[1],
                    c.rotation_deg,
                    r.method,
                    r.steps.last().map_or(0, |s| s.n_matches),
                    r.tweakback.len(),
                    cfg.run.output_dir.join(super::astrometry::STAGE).display(),
                    t.elapsed().as_secs_f64()
                ),
                None => tracing::warn!("[astrometry] no solution: the mosaic and exposure WCSs are unchanged"),
            }
        }
    }
    if root {
        println!("mosaic:      {}", output.display());
        println!("band store:  {}", store.display());
        println!(
            "plan, flags: {}/plan/plan.json, {}/outlier/flags.json",
            cfg.run.output_dir.display(),
            cfg.run.output_dir.display()
        );
    }
    Ok(super::preflight::worst(planned.outcome, preflight))
}

/// The outlier flags as written to `outlier/flags.json`: file name, count and linear indices.
fn flags_report(f: &OutlierFlags, metas: &[crate::plan::CalMeta]) -> serde_json::Value {
    let rows: Vec<serde_json::Value> = f
        .per_exposure
        .iter()
        .zip(metas)
        .map(|(v, m)| {
            serde_json::json!({
                "file": m.file_name(),
                "nx": m.shape[1],
                "n_flagged": v.len(),
                "pixels": v,
            })
        })
        .collect();
    serde_json::json!({ "exposures": rows })
}

//! `tessera run config.toml`: every band of every `[[target]]` in the config, one after the other,
//! each through the single-band chain of `mosaic`, into `<output_dir>/<target>/<band>/`.
//!
//! A failing band is reported and kept for inspection; the campaign goes on (exit code 3).

use super::Outcome;
use crate::config::{Config, RawConfig};
use crate::dist::{Comm, CommExt};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Run the campaign.
///
/// # Errors
/// A config without targets, or unreadable inputs of a target.
pub fn run(comm: &dyn Comm, raw: &RawConfig, cfg: &Config) -> anyhow::Result<Outcome> {
    if cfg.targets.is_empty() {
        anyhow::bail!("the config lists no [[target]]: nothing to run (see `tessera config default`)");
    }
    let mut outcome = Outcome::Clean;
    let mut failed = vec![];
    for t in &cfg.targets {
        // group the target's files by band (rank 0 reads the headers)
        let bands: BTreeMap<String, Vec<PathBuf>> = comm.on_root_then_broadcast(0, || -> Result<_, String> {
            let (metas, skipped) =
                super::plan::read_inventory(&t.inputs).map_err(|e| format!("target {}: {e:#}", t.name))?;
            for (p, e) in &skipped {
                tracing::warn!("target {}: skipping {}: {e}", t.name, p.display());
            }
            let mut b: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
            for m in metas {
                b.entry(m.band()).or_default().push(m.path);
            }
            Ok(b)
        })?;
        for (band, files) in bands {
            if !t.bands.is_empty() && !t.bands.contains(&band) {
                continue;
            }
            let dir = cfg.run.output_dir.join(&t.name).join(&band);
            let mut c = cfg.clone();
            c.run.output_dir = dir.clone();
            let out = dir.join(format!("{}_{}_i2d.fits", t.name, band.to_ascii_lowercase()));
            if comm.rank() == 0 {
                tracing::info!("[run] target {} band {}: {} files -> {}", t.name, band, files.len(), out.display());
            }
            match super::mosaic::run(comm, raw, &c, &files, &out, t.catalog.as_deref()) {
                Ok(Outcome::Clean) => {}
                Ok(Outcome::Partial) => outcome = Outcome::Partial,
                Err(e) => {
                    if comm.rank() == 0 {
                        tracing::error!(
                            "target {} band {} failed (products kept in {}): {e:#}",
                            t.name,
                            band,
                            dir.display()
                        );
                    }
                    failed.push(format!("{}/{}", t.name, band));
                    outcome = Outcome::Partial;
                }
            }
        }
    }
    if comm.rank() == 0 && !failed.is_empty() {
        tracing::warn!("[run] finished with failed bands: {}", failed.join(", "));
    }
    Ok(outcome)
}

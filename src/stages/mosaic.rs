//! `tessera mosaic`: the single-band entry point that chains the stages for one band.
//!
//! It runs every stage this version implements, in SPEC order, on the given cal files and writes
//! their products under `run.output_dir`. Stages not yet implemented are named in a clear error
//! (exit code 1) rather than skipped silently, so nobody mistakes a plan for a mosaic.

use super::{Outcome, Stage};
use crate::config::{Config, RawConfig};
use crate::dist::Comm;
use std::path::{Path, PathBuf};

/// Run the band's stage chain.
///
/// # Errors
/// Any stage error; an error naming the stages this version lacks before `output` can be written.
pub fn run(
    comm: &dyn Comm,
    raw: &RawConfig,
    cfg: &Config,
    inputs: &[PathBuf],
    output: &Path,
    catalog: Option<&Path>,
) -> anyhow::Result<Outcome> {
    if let Some(c) = catalog {
        if !c.is_file() {
            anyhow::bail!("--catalog {}: no such file", c.display());
        }
    }
    let planned = super::plan::run(comm, raw, cfg, inputs, comm.size())?;
    if comm.rank() == 0 {
        print!("{}", super::plan::summary(&planned.plan));
    }
    let missing: Vec<&str> = Stage::ALL
        .iter()
        .filter(|s| matches!(s, Stage::Outlier | Stage::Drizzle | Stage::Assemble) && !s.implemented())
        .map(|s| s.name())
        .collect();
    if !missing.is_empty() {
        anyhow::bail!(
            "{} not written: tessera {} implements the plan stage only (plan in {}); stages {} are not implemented yet",
            output.display(),
            crate::VERSION,
            cfg.run.output_dir.join("plan").display(),
            missing.join(", ")
        );
    }
    Ok(planned.outcome)
}

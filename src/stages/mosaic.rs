//! `tessera mosaic`: the single-band chain `plan → prep → destripe → align → level →
//! destripe_multi → outlier → drizzle → assemble → astrometry` on the given cal files, alone or
//! under `mpirun`, through the stage runner (`stages::runner`): each stage reads the products of
//! the stages before it, the manifest records every stage, and `--resume` keeps what is done.
//!
//! Products under `run.output_dir`, one folder per stage (see ARCHITECTURE.md, "On-disk layout"),
//! `manifest.json`, and the mosaic FITS at `-o`.

use super::runner::{Invocation, Mode};
use super::Outcome;
use crate::config::{Config, RawConfig};
use crate::dist::Comm;
use std::path::{Path, PathBuf};

/// Run the band's stage chain and write the mosaic FITS `output`. `resume` keeps the stages that a
/// previous run in `run.output_dir` finished (verified by checksums); `overwrite` deletes such a
/// run's products first; with neither, a folder holding another run's products is refused.
///
/// # Errors
/// Any stage error (all ranks return it).
#[allow(clippy::too_many_arguments)]
pub fn run(
    comm: &dyn Comm,
    raw: &RawConfig,
    cfg: &Config,
    inputs: &[PathBuf],
    output: &Path,
    catalog: Option<&Path>,
    resume: bool,
    overwrite: bool,
) -> crate::Result<Outcome> {
    // refuse what would destroy data or fail late, before any work (issue 18)
    let preflight = super::preflight::mosaic(comm, cfg, inputs, output, catalog.or(cfg.astrometry.catalog.as_deref()))?;
    let inv = Invocation { comm, raw, cfg, inputs, output: Some(output), catalog };
    let outcome = super::runner::run(&inv, Mode::Chain { resume, overwrite })?;
    Ok(super::preflight::worst(outcome, preflight))
}

//! Stage drivers: each runs one step of the pipeline on a [`Comm`](crate::dist::Comm), reading and
//! writing products through `io` and calling pure `kernels`. The stage names here are the names used
//! in the CLI, the TOML sections, the HDF5 groups and the output folders.

pub mod align;
pub mod anchor;
pub mod assemble;
pub mod astrometry;
pub mod campaign;
pub mod corrections;
pub mod destripe;
pub mod destripe_multi;
pub mod drizzle;
pub mod level;
pub mod manifest;
pub mod mosaic;
pub mod outlier;
pub mod pieces;
pub mod plan;
pub mod preflight;
pub mod prep;
pub mod progress;
pub mod psfmatch;
pub mod release;
pub mod runner;
pub mod simulate;

use crate::config::RawConfig;
use crate::dist::{Comm, CommExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The pipeline stages in run order (SPEC section 3). One name everywhere: the CLI subcommand, the
/// `stages::<name>` driver, the TOML section, the HDF5 group, the output folder, the log prefix
/// and the manifest key. Each driver module has a `stage` function that `runner` calls with the
/// band loaded from the products of the stages it [reads](Stage::reads).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Plan,
    Prep,
    Destripe,
    Align,
    Level,
    DestripeMulti,
    Outlier,
    Drizzle,
    Assemble,
    Astrometry,
    Anchor,
    Psfmatch,
    Release,
}

impl Stage {
    /// All stages in run order.
    pub const ALL: [Stage; 13] = [
        Stage::Plan,
        Stage::Prep,
        Stage::Destripe,
        Stage::Align,
        Stage::Level,
        Stage::DestripeMulti,
        Stage::Outlier,
        Stage::Drizzle,
        Stage::Assemble,
        Stage::Astrometry,
        Stage::Anchor,
        Stage::Psfmatch,
        Stage::Release,
    ];
    /// The stage's name (CLI subcommand, TOML section, HDF5 group, output folder).
    pub fn name(self) -> &'static str {
        match self {
            Stage::Plan => "plan",
            Stage::Prep => "prep",
            Stage::Destripe => "destripe",
            Stage::Align => "align",
            Stage::Level => "level",
            Stage::DestripeMulti => "destripe_multi",
            Stage::Outlier => "outlier",
            Stage::Drizzle => "drizzle",
            Stage::Assemble => "assemble",
            Stage::Astrometry => "astrometry",
            Stage::Anchor => "anchor",
            Stage::Psfmatch => "psfmatch",
            Stage::Release => "release",
        }
    }

    /// The stage called `name`.
    pub fn from_name(name: &str) -> Option<Stage> {
        Stage::ALL.iter().copied().find(|s| s.name() == name)
    }

    /// Position in the run order.
    pub fn order(self) -> usize {
        Stage::ALL.iter().position(|&s| s == self).expect("listed")
    }

    /// The stages whose products this stage reads (their checksums enter its dependency hash).
    pub fn reads(self) -> &'static [Stage] {
        use Stage::*;
        match self {
            Plan => &[],
            Prep => &[Plan],
            Destripe | Align => &[Plan, Prep],
            Level => &[Plan, Prep, Destripe, Align],
            DestripeMulti => &[Plan, Prep, Destripe, Align, Level],
            Outlier => &[Plan, Prep, Destripe, Align, Level, DestripeMulti],
            Drizzle => &[Plan, Prep, Destripe, Align, Level, DestripeMulti, Outlier],
            Assemble => &[Plan, Prep, Align, Drizzle],
            Astrometry => &[Plan, Prep, Align, Outlier, Assemble],
            // anchor reads the band store's SCI (so a rerun never anchors twice) and the -o mosaic's WCS
            Anchor => &[Plan, Drizzle, Assemble, Astrometry],
            Psfmatch => &[Plan, Assemble, Astrometry, Anchor],
            Release => &[Plan, Assemble, Astrometry, Anchor, Psfmatch],
        }
    }
}

/// Per-exposure work done by the exposures' owners: `f(k)` for every exposure `k` of the plan this
/// rank owns and `wanted` selects (in plan order), then all-gathered so that every rank holds every
/// result (`None` where not wanted). An error on any rank is returned on every rank, naming the
/// stage, so no rank is left waiting in a later collective. Rank 0 prints a progress line about its
/// own share every `interval_s` seconds (owners hold balanced shares).
///
/// # Errors
/// The errors of `f` on any rank (joined), or a result that does not decode.
pub(crate) fn on_exposure_owners<T: Serialize + serde::de::DeserializeOwned>(
    comm: &dyn Comm,
    plan: &crate::plan::Plan,
    stage: &'static str,
    interval_s: f64,
    wanted: impl Fn(usize) -> bool,
    mut f: impl FnMut(usize) -> crate::Result<T>,
) -> crate::Result<Vec<Option<T>>> {
    let todo: Vec<usize> = plan.exposures_of(comm.rank()).map(|e| e.index).filter(|&k| wanted(k)).collect();
    let mut progress =
        progress::Progress::new(stage, "exposures (rank 0's share)", todo.len(), interval_s, comm.rank() == 0);
    let mut errors = vec![];
    let mut mine: Vec<(usize, T)> = vec![];
    for k in todo {
        match f(k) {
            Ok(v) => mine.push((k, v)),
            Err(e) => errors.push(format!("{e:#}")),
        }
        progress.add(1, 0.0);
    }
    // the ranks agree before anyone fails, then share the results
    let local = if errors.is_empty() { Ok(()) } else { Err(errors.join("; ")) };
    comm.agree(local).map_err(|e| crate::err!("{stage}: {e}"))?;
    let bytes = serde_json::to_vec(&mine).map_err(|e| crate::err!("{stage}: encoding the results: {e}"))?;
    let mut all: Vec<Option<T>> = (0..plan.exposures.len()).map(|_| None).collect();
    for (rank, part) in comm.all_gather_bytes(&bytes).iter().enumerate() {
        let got: Vec<(usize, T)> = serde_json::from_slice(part)
            .map_err(|e| crate::err!("{stage}: decoding the results of rank {rank}: {e}"))?;
        for (k, v) in got {
            all[k] = Some(v);
        }
    }
    Ok(all)
}

/// How a stage run ended (errors are `Err`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Everything processed.
    Clean,
    /// Finished, but some items failed or were skipped and were reported.
    Partial,
}

/// Provenance written with every product.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    pub tessera_version: String,
    /// SHA-256 of the resolved configuration TOML.
    pub config_sha256: String,
    pub config_toml: String,
    pub ranks: usize,
    pub threads_per_rank: usize,
    pub mpi_library: String,
}

impl Provenance {
    /// Provenance of this run.
    pub fn new(raw: &RawConfig, comm: &dyn Comm) -> Provenance {
        // `run.stop_after` says where an invocation stops, not how anything is computed: a run
        // stopped and resumed writes the provenance of the uninterrupted run
        let mut raw = raw.clone();
        raw.run.stop_after.clear();
        let config_toml = raw.to_toml();
        let config_sha256 = Sha256::digest(config_toml.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
        #[cfg(feature = "mpi")]
        let mpi_library = crate::dist::mpi::library_version();
        #[cfg(not(feature = "mpi"))]
        let mpi_library = String::from("none (serial build)");
        Provenance {
            tessera_version: crate::VERSION.to_string(),
            config_sha256,
            config_toml,
            ranks: comm.size(),
            threads_per_rank: rayon::current_num_threads(),
            mpi_library,
        }
    }

    /// FITS HISTORY lines.
    pub fn history(&self) -> Vec<String> {
        let first_line = self.mpi_library.lines().next().unwrap_or("").to_string();
        vec![
            format!("tessera {} ", self.tessera_version),
            format!("config sha256 {}", self.config_sha256),
            format!("ranks {} threads/rank {}", self.ranks, self.threads_per_rank),
            format!("MPI {}", first_line.chars().take(60).collect::<String>()),
        ]
    }
}

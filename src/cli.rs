//! The command line (the only module that imports `clap`). Subcommands carry the stage names used
//! everywhere else; `app` turns them into stage runs.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// tessera: MPI-parallel mosaicking of JWST imaging. Run alone or under `mpirun -n N`.
#[derive(Debug, Parser)]
#[command(name = "tessera", version, about, long_about = None)]
pub struct Cli {
    /// Configuration file (TOML). Defaults apply to every key not given.
    #[arg(long, short = 'c', global = true)]
    pub config: Option<PathBuf>,
    /// Override a config key, e.g. --set plan.chunk_px=1024 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE", global = true)]
    pub sets: Vec<String>,
    /// More log output (-v debug, -vv trace). TESSERA_LOG / RUST_LOG override.
    #[arg(long, short = 'v', action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only warnings and errors.
    #[arg(long, short = 'q', global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Simulate a JWST survey with a known truth (cal files in OUT, truth in OUT/truth).
    Simulate(SimulateArgs),
    /// Plan a band: exposure table, output grid, chunks and rank assignment (a dry run).
    Plan(PlanArgs),
    /// Mosaic one band from cal files or a directory.
    Mosaic(MosaicArgs),
    /// Run every band of every [[target]] of a configuration file (a campaign).
    Run {
        /// The campaign configuration (TOML).
        config_file: PathBuf,
        /// Keep what earlier runs finished (checked against each band's manifest), run the rest.
        #[arg(long, conflicts_with = "overwrite")]
        resume: bool,
        /// Delete the products of earlier runs in the bands' folders and start clean.
        #[arg(long)]
        overwrite: bool,
        /// Only this target of the file (repeatable; e.g. one target per task of a job array).
        #[arg(long = "target", value_name = "NAME")]
        targets: Vec<String>,
    },
    /// Build the release tree of a campaign's finished bands (see [release] in `config default`).
    Release {
        /// The campaign configuration (TOML).
        config_file: PathBuf,
        /// Only this target of the file (repeatable).
        #[arg(long = "target", value_name = "NAME")]
        targets: Vec<String>,
    },
    /// Stage prep alone, on the products in run.output_dir (MIRI off-source background, DQ masks).
    Prep(StageArgs),
    /// Stage destripe alone (NIRCam 1/f stripes of each exposure).
    Destripe(StageArgs),
    /// Stage align alone (one shift per visit).
    Align(StageArgs),
    /// Stage level alone (background level matching).
    Level(StageArgs),
    /// Stage destripe_multi alone (residual stripes against the other exposures).
    #[command(name = "destripe_multi")]
    DestripeMulti(StageArgs),
    /// Stage outlier alone (cosmic rays and other outliers).
    Outlier(StageArgs),
    /// Stage drizzle alone (the band store).
    Drizzle(StageArgs),
    /// Stage assemble alone (the mosaic FITS at -o from the band store).
    Assemble(StageArgs),
    /// Stage astrometry alone (the mosaic against a reference catalogue).
    Astrometry(StageArgs),
    /// Stage anchor alone (the mosaic's background level tied to wide-field reference images).
    Anchor(AnchorArgs),
    /// Stage psfmatch alone (the mosaic convolved to psfmatch.targets; beside the -o mosaic).
    Psfmatch(StageArgs),
    /// Print the commented default configuration, or check a configuration file.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Print the default configuration with a comment for every key.
    Default,
    /// Validate a configuration (the --config file, or FILE) without running anything.
    Check {
        /// The file to check (or use --config).
        file: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// nircam_sw | nircam_lw | miri  [config: simulate.instrument]
    #[arg(long)]
    pub instrument: Option<String>,
    /// JWST filter (default per instrument: F200W, F300M, F1000W)  [simulate.filter]
    #[arg(long)]
    pub filter: Option<String>,
    /// Mosaic tiles COLSxROWS, e.g. 2x2  [simulate.tiles]
    #[arg(long)]
    pub tiles: Option<String>,
    /// Dithers per tile  [simulate.dithers]
    #[arg(long)]
    pub dithers: Option<usize>,
    /// tiny | small | medium | large  [simulate.size]
    #[arg(long)]
    pub size: Option<String>,
    /// Random seed  [simulate.seed]
    #[arg(long)]
    pub seed: Option<u64>,
    /// Output directory for the cal files (truth and auxiliary inputs go in sub-folders).
    #[arg(long, short = 'o')]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Cal files, or directories holding *_cal.fits.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Plan for this many ranks instead of the running job's (dry runs for a cluster job).
    #[arg(long)]
    pub ranks: Option<usize>,
    /// Also write the plan as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct MosaicArgs {
    /// Cal files, or directories holding *_cal.fits.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// The mosaic FITS to write.
    #[arg(long, short = 'o')]
    pub output: PathBuf,
    /// Reference catalogue (CSV/ECSV/FITS with ra, dec in deg) for absolute astrometry.
    #[arg(long)]
    pub catalog: Option<PathBuf>,
    /// Skip background level matching, for comparison  [level.enabled = false]
    #[arg(long)]
    pub no_level: bool,
    /// Skip prep (MIRI Lyot separation and off-source background), for comparison  [prep.enabled = false]
    #[arg(long)]
    pub no_prep: bool,
    /// Skip relative alignment between visits, for comparison  [align.enabled = false]
    #[arg(long)]
    pub no_align: bool,
    /// Skip NIRCam 1/f destriping, for comparison  [destripe.enabled = destripe_multi.enabled = false]
    #[arg(long)]
    pub no_destripe: bool,
    /// Stop after this stage (its products written): plan, prep, destripe, align, level,
    /// destripe_multi, outlier, drizzle, assemble, astrometry or anchor  [run.stop_after]
    #[arg(long, value_name = "STAGE")]
    pub stop_after: Option<String>,
    /// Wide-field reference image for the anchor stage (FITS in MJy/sr; repeat in order of
    /// preference, e.g. IRAC1 then WISE1)  [anchor.references]
    #[arg(long = "anchor", value_name = "REF.fits")]
    pub anchors: Vec<PathBuf>,
    /// Continue the run in run.output_dir: skip every stage the manifest says is done whose
    /// configuration, inputs and products (checksums) are unchanged; rerun the rest.
    #[arg(long, conflicts_with = "overwrite")]
    pub resume: bool,
    /// Delete the products of an earlier run in run.output_dir and start clean.
    #[arg(long)]
    pub overwrite: bool,
    /// PSF image (FITS with PIXELSCL or PIXSCALE in arcsec) for psfmatch (repeatable)  [psfmatch.psf]
    #[arg(long = "psf", value_name = "PSF.fits")]
    pub psf: Vec<PathBuf>,
    /// Resolution to match the mosaic to: gaussNpNN (e.g. gauss0p90) or a band (e.g. F770W)
    /// (repeatable)  [psfmatch.targets]
    #[arg(long = "psf-target", value_name = "TARGET")]
    pub psf_target: Vec<String>,
}

/// The arguments of a per-stage command.
#[derive(Debug, Args)]
pub struct StageArgs {
    /// Cal files, or directories holding *_cal.fits (the same as for the stages before).
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// The mosaic FITS (assemble writes it, astrometry corrects it; default: the manifest's).
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
    /// Reference catalogue (CSV/ECSV/FITS with ra, dec in deg), for astrometry.
    #[arg(long)]
    pub catalog: Option<PathBuf>,
}

/// The arguments of `tessera anchor`.
#[derive(Debug, Args)]
pub struct AnchorArgs {
    #[command(flatten)]
    pub stage: StageArgs,
    /// Wide-field reference image (FITS in MJy/sr; repeat in order of preference)  [anchor.references]
    #[arg(long = "anchor", value_name = "REF.fits")]
    pub anchors: Vec<PathBuf>,
}

/// `anchor.references=[...]` for `--anchor` files, as a `--set` value.
fn anchor_set(files: &[PathBuf]) -> Option<String> {
    let q = |v: &str| format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""));
    (!files.is_empty()).then(|| {
        let list: Vec<String> = files.iter().map(|f| q(&f.to_string_lossy())).collect();
        format!("anchor.references=[{}]", list.join(", "))
    })
}

impl AnchorArgs {
    /// The `--set` overrides these arguments stand for.
    pub fn as_sets(&self) -> Vec<String> {
        anchor_set(&self.anchors).into_iter().collect()
    }
}

impl Command {
    /// The stage name and arguments of a per-stage command.
    pub fn stage_args(&self) -> Option<(&'static str, &StageArgs)> {
        Some(match self {
            Command::Prep(a) => ("prep", a),
            Command::Destripe(a) => ("destripe", a),
            Command::Align(a) => ("align", a),
            Command::Level(a) => ("level", a),
            Command::DestripeMulti(a) => ("destripe_multi", a),
            Command::Outlier(a) => ("outlier", a),
            Command::Drizzle(a) => ("drizzle", a),
            Command::Assemble(a) => ("assemble", a),
            Command::Astrometry(a) => ("astrometry", a),
            Command::Anchor(a) => ("anchor", &a.stage),
            Command::Psfmatch(a) => ("psfmatch", a),
            _ => return None,
        })
    }
}

impl MosaicArgs {
    /// The flags as `--set` overrides.
    pub fn as_sets(&self) -> Vec<String> {
        let mut sets = vec![];
        if self.no_level {
            sets.push("level.enabled=false".to_string());
        }
        if self.no_prep {
            sets.push("prep.enabled=false".to_string());
        }
        if self.no_align {
            sets.push("align.enabled=false".to_string());
        }
        if self.no_destripe {
            sets.push("destripe.enabled=false".to_string());
            sets.push("destripe_multi.enabled=false".to_string());
        }
        if let Some(stage) = &self.stop_after {
            sets.push(format!("run.stop_after={stage:?}"));
        }
        sets.extend(anchor_set(&self.anchors));
        let toml_list = |v: Vec<String>| {
            let q: Vec<String> =
                v.iter().map(|s| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))).collect();
            format!("[{}]", q.join(", "))
        };
        if !self.psf.is_empty() {
            sets.push(format!(
                "psfmatch.psf={}",
                toml_list(self.psf.iter().map(|p| p.display().to_string()).collect())
            ));
        }
        if !self.psf_target.is_empty() {
            sets.push(format!("psfmatch.targets={}", toml_list(self.psf_target.clone())));
        }
        sets
    }
}

impl SimulateArgs {
    /// The CLI flags as `--set` overrides of the `[simulate]` section (the CLI wins over the file).
    pub fn as_sets(&self) -> Vec<String> {
        let mut s = vec![];
        let q = |v: &str| format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""));
        if let Some(v) = &self.instrument {
            s.push(format!("simulate.instrument={}", q(v)));
        }
        if let Some(v) = &self.filter {
            s.push(format!("simulate.filter={}", q(v)));
        }
        if let Some(v) = &self.tiles {
            s.push(format!("simulate.tiles={}", q(v)));
        }
        if let Some(v) = self.dithers {
            s.push(format!("simulate.dithers={v}"));
        }
        if let Some(v) = &self.size {
            s.push(format!("simulate.size={}", q(v)));
        }
        if let Some(v) = self.seed {
            s.push(format!("simulate.seed={v}"));
        }
        s
    }
}

/// Parse the process arguments (exits with clap's usage error, code 2, on bad arguments).
pub fn parse() -> Cli {
    parse_from(std::env::args_os())
}

/// Parse `args` (the program name first) like [`parse`].
pub fn parse_from<I: IntoIterator<Item = std::ffi::OsString>>(args: I) -> Cli {
    let args: Vec<std::ffi::OsString> = args.into_iter().collect();
    let mut cli = Cli::parse_from(&args);
    cli.sets = every_set(&args);
    cli
}

/// Every `--set` value in command-line order, before and after the subcommand. clap keeps only
/// the deepest level's values of a global option (`tessera --set a mosaic --set b` would lose `a`),
/// so they are collected here, once clap has accepted the line.
fn every_set(args: &[std::ffi::OsString]) -> Vec<String> {
    let mut out = vec![];
    let mut it = args.iter().skip(1).map(|a| a.to_string_lossy());
    while let Some(a) = it.next() {
        if a == "--" {
            break;
        } else if a == "--set" {
            out.extend(it.next().map(|v| v.into_owned()));
        } else if let Some(v) = a.strip_prefix("--set=") {
            out.push(v.to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sets(line: &str) -> Vec<String> {
        parse_from(line.split_whitespace().map(std::ffi::OsString::from)).sets
    }

    #[test]
    fn every_set_counts_before_and_after_the_subcommand_in_order() {
        assert_eq!(sets("tessera --set a=1 plan d --set b=2"), ["a=1", "b=2"]);
        assert_eq!(sets("tessera --set a=1 plan d"), ["a=1"]);
        assert_eq!(sets("tessera plan --set=a=1 d --set b=2"), ["a=1", "b=2"]);
        assert_eq!(sets("tessera -c x.toml --set a=1 --set=b=2 mosaic d -o m.fits --set c=3"), ["a=1", "b=2", "c=3"]);
        assert!(sets("tessera plan d").is_empty());
    }
}

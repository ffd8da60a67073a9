//! The application edge: MPI start-up, logging, dispatch of CLI commands to stages, and exit codes.
//!
//! `anyhow` is used here and in `main` only; the error chain is printed once, by rank 0 (or by the
//! failing rank when ranks disagree). Exit codes: 0 clean, 1 fatal error, 2 usage error (clap),
//! 3 finished but some items (exposures, bands) failed and were reported.

use crate::cli::{Cli, Command, ConfigAction};
use crate::config::{self, Config, RawConfig, DEFAULT_TOML};
use crate::dist::CommExt;
use crate::dist::{Comm, SerialComm};
use crate::stages::runner::{Invocation, Mode};
use crate::stages::{self, Outcome, Stage};

/// Exit code: everything finished cleanly.
pub const EXIT_OK: u8 = 0;
/// Exit code: a fatal error stopped the run.
pub const EXIT_FATAL: u8 = 1;
/// Exit code: the run finished, but some items failed (see the report).
pub const EXIT_PARTIAL: u8 = 3;

/// The process's communicator: MPI when built with the `mpi` feature, otherwise one serial rank.
pub struct World {
    #[cfg(feature = "mpi")]
    mpi: Option<crate::dist::mpi::MpiWorld>,
    serial: SerialComm,
}

impl World {
    /// Initialise MPI (when available) and install the panic-abort hook.
    pub fn init() -> World {
        #[cfg(feature = "mpi")]
        let w = World { mpi: crate::dist::mpi::init(), serial: SerialComm };
        #[cfg(not(feature = "mpi"))]
        let w = World { serial: SerialComm };
        let c = w.comm();
        crate::dist::install_panic_abort(c.rank(), c.size());
        w
    }
    /// The communicator for the whole run.
    pub fn comm(&self) -> &dyn Comm {
        #[cfg(feature = "mpi")]
        if let Some(m) = &self.mpi {
            return m.comm();
        }
        &self.serial
    }
}

fn init_logging(cli: &Cli, comm: &dyn Comm) {
    use tracing_subscriber::EnvFilter;
    let level = if cli.quiet {
        "warn"
    } else {
        match cli.verbose {
            0 if comm.rank() == 0 => "info",
            0 => "warn",
            1 => "debug",
            _ => "trace",
        }
    };
    let filter = std::env::var("TESSERA_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| EnvFilter::new(format!("tessera={level},warn")));
    let prefix = if comm.size() > 1 { format!("[rank {}/{}] ", comm.rank(), comm.size()) } else { String::new() };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .event_format(RankFormat { prefix })
        .try_init();
}

struct RankFormat {
    prefix: String,
}

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for RankFormat
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let level = *event.metadata().level();
        let tag = match level {
            tracing::Level::ERROR => "error: ",
            tracing::Level::WARN => "warning: ",
            tracing::Level::INFO => "",
            tracing::Level::DEBUG => "debug: ",
            tracing::Level::TRACE => "trace: ",
        };
        write!(writer, "{}{}", self.prefix, tag)?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// Run the parsed command line on a communicator and return the process exit code.
pub fn main_with(cli: Cli, comm: &dyn Comm) -> u8 {
    init_logging(&cli, comm);
    match run(&cli, comm) {
        Ok(Outcome::Clean) => EXIT_OK,
        Ok(Outcome::Partial) => {
            if comm.size() > 1 && comm.rank() == 0 {
                // Open MPI's mpirun reports any non-zero exit as an aborted job; say it is not one
                eprintln!(
                    "tessera: finished on all {} ranks with some inputs or stages skipped (reported above): exit \
                     code 3. Any Open MPI notice that the job was \"aborted\" only reports this exit code.",
                    comm.size()
                );
            }
            EXIT_PARTIAL
        }
        Err(e) => {
            if comm.rank() == 0 || !e.to_string().starts_with("rank 0:") {
                eprintln!("tessera: error: {e:#}");
            }
            EXIT_FATAL
        }
    }
}

fn load_config(cli: &Cli, extra_sets: &[String]) -> anyhow::Result<(RawConfig, Config)> {
    let mut sets = cli.sets.clone();
    sets.extend_from_slice(extra_sets);
    let (raw, cfg) = config::load(cli.config.as_deref(), &sets)?;
    // per-target/per-band tables are resolved per task by `tessera run`; a single-band command
    // does not know its target, so it takes their defaults: say so rather than ignore them silently
    if let Some(doc) = &raw.doc {
        if config::overrides::check(doc, &config::overrides::target_names(doc)).unwrap_or(false) {
            tracing::warn!(
                "the config's per-target/per-band tables apply to `tessera run`; this command uses the defaults \
                 of those keys"
            );
        }
    }
    Ok((raw, cfg))
}

fn set_threads(cfg: &Config) -> anyhow::Result<()> {
    if cfg.run.threads > 0 {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let (n, warning) = config::thread_count(cfg.run.threads, cores);
        if let Some(w) = warning {
            tracing::warn!("{w}");
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .map_err(|e| anyhow::anyhow!("run.threads = {}: cannot start {n} worker threads: {e}", cfg.run.threads))?;
    }
    Ok(())
}

/// Dispatch a command.
///
/// # Errors
/// Any stage error, with its context chain.
pub fn run(cli: &Cli, comm: &dyn Comm) -> anyhow::Result<Outcome> {
    crate::fault::point("start", comm.rank());
    match &cli.command {
        Command::Config { action: ConfigAction::Default } => {
            if comm.rank() == 0 {
                print!("{DEFAULT_TOML}");
            }
            Ok(Outcome::Clean)
        }
        Command::Config { action: ConfigAction::Check { file } } => {
            let path = file.as_deref().or(cli.config.as_deref());
            let (_, cfg) = config::load(path, &cli.sets)?;
            if comm.rank() == 0 {
                let name = path.map(|p| p.display().to_string()).unwrap_or_else(|| "the defaults".into());
                println!(
                    "{name}: OK (output_dir {}, mem_budget_mb {})",
                    cfg.run.output_dir.display(),
                    cfg.run.mem_budget_mb
                );
            }
            Ok(Outcome::Clean)
        }
        Command::Simulate(args) => {
            let (raw, cfg) = load_config(cli, &args.as_sets())?;
            set_threads(&cfg)?;
            Ok(stages::simulate::run(comm, &raw, &cfg.simulate, &args.out)?)
        }
        Command::Plan(args) => {
            let (raw, cfg) = load_config(cli, &[])?;
            set_threads(&cfg)?;
            let nranks = args.ranks.unwrap_or(comm.size());
            if nranks == 0 {
                anyhow::bail!("--ranks must be at least 1");
            }
            // for this job's rank count, plan is the first stage of a run (manifest entry);
            // for another rank count, a dry run
            let (plan, outcome) = if nranks == comm.size() {
                let inv = Invocation { comm, raw: &raw, cfg: &cfg, inputs: &args.inputs, output: None, catalog: None };
                let outcome = stages::runner::run(&inv, Mode::Only(Stage::Plan))?;
                let f: stages::plan::PlanFile = comm.on_root_then_broadcast(0, || {
                    crate::io::json::read_json(&cfg.run.output_dir.join("plan").join("plan.json"))
                })?;
                (f.plan, outcome)
            } else {
                let out = stages::plan::run(comm, &raw, &cfg, &args.inputs, nranks)?;
                (out.plan, out.outcome)
            };
            if comm.rank() == 0 {
                print!("{}", stages::plan::summary(&plan));
                if let Some(p) = &args.json {
                    crate::io::json::write_json(p, &plan)?;
                    println!("plan written to {}", p.display());
                }
            }
            Ok(outcome)
        }
        Command::Run { config_file, resume, overwrite, targets } => {
            let (raw, cfg) = config::load(Some(config_file), &cli.sets)?;
            set_threads(&cfg)?;
            Ok(stages::campaign::run(comm, &raw, &cfg, *resume, *overwrite, targets)?)
        }
        Command::Release { config_file, targets } => {
            let (_, cfg) = config::load(Some(config_file), &cli.sets)?;
            set_threads(&cfg)?;
            Ok(stages::release::run(comm, &cfg, targets)?)
        }
        Command::Mosaic(args) => {
            let (raw, cfg) = load_config(cli, &args.as_sets())?;
            set_threads(&cfg)?;
            Ok(stages::mosaic::run(
                comm,
                &raw,
                &cfg,
                &args.inputs,
                &args.output,
                args.catalog.as_deref(),
                args.resume,
                args.overwrite,
            )?)
        }
        cmd => {
            let (name, args) = cmd.stage_args().expect("every other command is a stage");
            let stage = Stage::from_name(name).expect("the CLI names stages by their names");
            let extra = match cmd {
                Command::Anchor(a) => a.as_sets(),
                _ => vec![],
            };
            let (raw, cfg) = load_config(cli, &extra)?;
            set_threads(&cfg)?;
            let inv = Invocation {
                comm,
                raw: &raw,
                cfg: &cfg,
                inputs: &args.inputs,
                output: args.output.as_deref(),
                catalog: args.catalog.as_deref(),
            };
            Ok(stages::runner::run(&inv, Mode::Only(stage))?)
        }
    }
}

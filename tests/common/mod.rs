//! Shared helpers for the integration tests: running the binary (alone or under mpirun with a
//! timeout), and cached simulated surveys.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use tessera::config::RawConfig;
use tessera::dist::SerialComm;

/// The built binary.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tessera")
}

/// Run `tessera args...` in `cwd`.
pub fn tessera(cwd: &Path, args: &[&str]) -> Output {
    Command::new(bin()).args(args).current_dir(cwd).output().expect("tessera runs")
}

/// Run `mpirun -n n tessera args...` with a 300 s timeout (a deadlock fails the test).
pub fn mpirun(n: usize, cwd: &Path, args: &[&str]) -> Output {
    let mut c = Command::new("timeout");
    c.args(["300", "mpirun", "-n", &n.to_string(), "--oversubscribe", bin()]).args(args).current_dir(cwd);
    open_mpi_env(&mut c);
    let out = c.output().expect("mpirun runs");
    assert_ne!(out.status.code(), Some(124), "mpirun -n {n} {args:?} timed out (deadlock?)");
    out
}

/// The Open MPI settings every test run needs: root allowed (containers), oversubscription (more
/// ranks than the 2 cores), and shared memory plus TCP without single-copy (no CMA in containers).
pub fn open_mpi_env(c: &mut Command) {
    for (k, v) in [
        ("OMPI_ALLOW_RUN_AS_ROOT", "1"),
        ("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1"),
        ("OMPI_MCA_rmaps_base_oversubscribe", "1"),
        ("OMPI_MCA_btl_vader_single_copy_mechanism", "none"),
        ("OMPI_MCA_btl", "self,vader,tcp"),
        ("OMPI_MCA_pml", "ob1"),
    ] {
        c.env(k, v);
    }
}

/// A folder for data kept for the whole test run (a survey simulated once and shared by several
/// tests): `<CARGO_TARGET_TMPDIR>/<name>`, emptied first, so that each run replaces the last run's
/// instead of leaving another temporary folder behind. `name` must be unique within the run.
pub fn run_dir(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("the test run's folder");
    d
}

/// Assert success and return stdout.
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A fresh temporary folder.
pub fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("tessera-test-").tempdir().expect("tempdir")
}

/// Simulate in-process (serial) with `--set`-style overrides of `[simulate]`.
pub fn simulate(out: &Path, sets: &[&str]) -> RawConfig {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    let (raw, cfg) = tessera::config::load(None, &sets).expect("config");
    tessera::stages::simulate::run(&SerialComm, &raw, &cfg.simulate, out).expect("simulate");
    raw
}

/// A survey simulated once per test run with the `--set` overrides `sets`, kept in `cell`.
pub fn cached(cell: &'static OnceLock<PathBuf>, sets: &[&str]) -> &'static Path {
    cell.get_or_init(|| {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        sets.hash(&mut h);
        let d = run_dir(&format!("cached-{:016x}", h.finish()));
        simulate(&d, sets);
        d
    })
}

/// The simulator's truth file of the survey in `dir`.
pub fn truth(dir: &Path) -> tessera::stages::simulate::Truth {
    tessera::io::json::read_json(&dir.join("truth/truth.json")).unwrap()
}

/// A cached tiny NIRCam LW survey (2x2 tiles x 4 dithers, 2 detectors: 32 files of 64x64).
pub fn tiny_lw() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    cached(&DIR, &["simulate.instrument=\"nircam_lw\"", "simulate.size=\"tiny\"", "simulate.seed=7"])
}

/// A cached small NIRCam LW survey with noise, 1x1 tile x 2 dithers (4 files of 256x256).
pub fn small_lw() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    cached(
        &DIR,
        &[
            "simulate.instrument=\"nircam_lw\"",
            "simulate.size=\"small\"",
            "simulate.tiles=\"1x1\"",
            "simulate.dithers=2",
            "simulate.seed=11",
        ],
    )
}

/// A cached tiny MIRI survey (1x2 tiles x 2 dithers + off exposures).
pub fn tiny_miri() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    cached(&DIR, &["simulate.instrument=\"miri\"", "simulate.tiles=\"1x2\"", "simulate.dithers=2", "simulate.seed=3"])
}

/// The `*_cal.fits` files directly in a folder, sorted.
pub fn cal_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with("_cal.fits"))
        .collect();
    v.sort();
    v
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

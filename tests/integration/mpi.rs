//! MPI runs of the binary (1 to 4 ranks, oversubscribed) give the same results as the in-process
//! serial run: the plan, and the simulated files.

use crate::common::{cal_files, mpirun, ok, tiny_lw, tmp};
use tessera::dist::SerialComm;
use tessera::plan::Plan;

#[test]
fn mpirun_plan_matches_the_serial_plan_for_1_to_4_ranks() {
    let dir = tiny_lw();
    let (raw, cfg) = tessera::config::load(None, &["plan.chunk_px=64".into()]).unwrap();
    for n in 1..=4 {
        let work = tmp();
        let json = work.path().join("plan.json");
        let out = mpirun(
            n,
            work.path(),
            &["--set", "plan.chunk_px=64", "plan", dir.to_str().unwrap(), "--json", json.to_str().unwrap()],
        );
        let stdout = ok(&out);
        assert!(stdout.contains(&format!("{n} ranks")), "{stdout}");
        let from_mpi: Plan = tessera::io::json::read_json(&json).unwrap();
        // the same plan computed in-process for n ranks
        let cfg_here = tessera::config::Config {
            run: tessera::config::RunConfig { output_dir: work.path().join("serial"), ..cfg.run.clone() },
            ..cfg.clone()
        };
        let serial = tessera::stages::plan::run(&SerialComm, &raw, &cfg_here, &[dir.to_path_buf()], n).unwrap().plan;
        assert_eq!(from_mpi, serial, "plan differs for {n} ranks");
        assert_eq!(from_mpi.ranks, n);
        assert!(from_mpi.chunks.len() >= 4);
        // the stage product is written too, with provenance naming the rank count
        let file: serde_json::Value =
            tessera::io::json::read_json(&work.path().join("tessera-out/plan/plan.json")).unwrap();
        assert_eq!(file["provenance"]["ranks"], n);
    }
}

#[test]
fn mpirun_simulate_writes_the_same_bytes_as_one_rank() {
    let (a, b) = (tmp(), tmp());
    let args = |d: &std::path::Path| {
        vec![
            "simulate".to_string(),
            "--instrument".into(),
            "nircam_sw".into(),
            "--tiles".into(),
            "1x1".into(),
            "--dithers".into(),
            "2".into(),
            "--size".into(),
            "tiny".into(),
            "--seed".into(),
            "9".into(),
            "--out".into(),
            d.display().to_string(),
        ]
    };
    let aa = args(a.path());
    let bb = args(b.path());
    ok(&mpirun(1, a.path(), &aa.iter().map(String::as_str).collect::<Vec<_>>()));
    ok(&mpirun(3, b.path(), &bb.iter().map(String::as_str).collect::<Vec<_>>()));
    let (fa, fb) = (cal_files(a.path()), cal_files(b.path()));
    assert_eq!(fa.len(), 16, "1 tile x 2 dithers x 8 SW detectors");
    for (x, y) in fa.iter().zip(&fb) {
        assert!(std::fs::read(x).unwrap() == std::fs::read(y).unwrap(), "{} differs", x.display());
    }
}

#[test]
fn a_panic_on_one_rank_aborts_the_job_instead_of_hanging() {
    let work = tmp();
    let out = std::process::Command::new("timeout")
        .args(["120", "mpirun", "-n", "2", "--oversubscribe", crate::common::bin(), "plan", "/nonexistent-dir"])
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("TESSERA_FAULT", "start@1:panic")
        .current_dir(work.path())
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(124), "hung instead of aborting");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    // the hook's own line, or Open MPI's report of the abort (under load Open MPI may kill the job
    // before it forwards the aborting rank's stderr)
    assert!(err.contains("rank 1 of 2 panicked") || err.contains("MPI_ABORT was invoked on rank 1"), "{err}");
}

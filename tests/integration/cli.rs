//! The command line end to end: config default/check, bad config keys, bad inputs, exit codes,
//! and `plan` on simulated files.

use crate::common::{ok, tessera, tiny_lw, tmp};

#[test]
fn config_default_is_valid_and_check_names_bad_keys() {
    let d = tmp();
    let out = tessera(d.path(), &["config", "default"]);
    let text = ok(&out);
    assert!(text.contains("[plan]") && text.contains("mem_budget_mb"));
    std::fs::write(d.path().join("default.toml"), &text).unwrap();
    let out = tessera(d.path(), &["config", "check", "default.toml"]);
    assert!(ok(&out).contains("default.toml: OK"));

    std::fs::write(d.path().join("bad.toml"), "[plan]\nchunk_px = 128\nmargin = 3\n").unwrap();
    let out = tessera(d.path(), &["config", "check", "bad.toml"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml") && err.contains("margin") && err.contains("line 3"), "{err}");

    let out = tessera(d.path(), &["--set", "run.mem_budget_mb=1", "config", "check"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("run.mem_budget_mb"));

    // usage errors are clap's exit code 2
    let out = tessera(d.path(), &["plan"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn plan_prints_the_plan_and_writes_it() {
    let d = tmp();
    let dir = tiny_lw();
    let out = tessera(d.path(), &["--set", "plan.chunk_px=64", "plan", dir.to_str().unwrap(), "--ranks", "3"]);
    let text = ok(&out);
    assert!(text.contains("band F300M (nircam_lw)"), "{text}");
    assert!(text.contains("32 files, 4 visits, 4 dither groups, 2 detectors"), "{text}");
    assert!(text.contains("rank 2:"), "{text}");
    assert!(d.path().join("tessera-out/plan/plan.json").is_file());
}

#[test]
fn bad_exposure_is_skipped_and_reported_with_exit_3() {
    let d = tmp();
    let dir = tiny_lw();
    let inputs = d.path().join("in");
    std::fs::create_dir(&inputs).unwrap();
    for f in crate::common::cal_files(dir).iter().take(4) {
        std::fs::copy(f, inputs.join(f.file_name().unwrap())).unwrap();
    }
    std::fs::write(inputs.join("jw00000000000_00000_00000_broken_cal.fits"), b"not a fits file").unwrap();
    let out = tessera(d.path(), &["plan", inputs.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("skipping") && err.contains("broken_cal.fits"), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("4 files"));
}

#[test]
fn missing_inputs_and_a_missing_catalog_fail_clearly() {
    let d = tmp();
    let out = tessera(d.path(), &["plan", "/no/such/dir"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/dir"));
    let empty = d.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = tessera(d.path(), &["plan", empty.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no *_cal.fits files found"));
    // a missing catalogue stops the mosaic before anything is written
    let out = tessera(d.path(), &["mosaic", tiny_lw().to_str().unwrap(), "-o", "m.fits", "--catalog", "nope.csv"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--catalog nope.csv: no such file"));
    assert!(!d.path().join("m.fits").exists() && !d.path().join("tessera-out").exists());
}

#[test]
fn simulate_cli_rejects_a_filter_of_another_instrument() {
    let d = tmp();
    let out = tessera(d.path(), &["simulate", "--instrument", "miri", "--filter", "F200W", "--out", "x"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("simulate.filter") && err.contains("nircam_sw"), "{err}");
    assert!(!d.path().join("x").exists(), "nothing written on a config error");
}

#[test]
fn stop_after_ends_the_chain_with_the_stage_products_and_no_mosaic() {
    let d = tmp();
    let input = tiny_lw().to_str().unwrap().to_string();
    let out = tessera(
        d.path(),
        &["--set", "run.output_dir=\"out\"", "mosaic", &input, "-o", "m.fits", "--stop-after", "destripe_multi"],
    );
    let log = ok(&out) + &String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("stopping after destripe_multi"), "{log}");
    for p in ["out/destripe/destripe.json", "out/level/level.json", "out/destripe_multi/destripe_multi.json"] {
        assert!(d.path().join(p).is_file(), "{p} missing");
    }
    assert!(!d.path().join("m.fits").exists(), "a mosaic was written");
    assert!(!d.path().join("out/outlier").exists(), "the outlier stage ran");

    let out = tessera(d.path(), &["mosaic", &input, "-o", "m.fits", "--stop-after", "drizle"]);
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("run.stop_after") && err.contains("drizle") && err.contains("destripe_multi"), "{err}");
    // and an even large-scale median filter is refused, naming the key
    let out =
        tessera(d.path(), &["--set", "destripe_multi.large_scale_filter_px=24", "mosaic", &input, "-o", "m.fits"]);
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("destripe_multi.large_scale_filter_px") && err.contains("24 is even"), "{err}");
    assert!(!d.path().join("m.fits").exists());
}

//! Independent checks with the JWST community's own libraries: simulated cal files open in
//! stdatamodels' ImageModel and carry a celestial TAN-SIP WCS that astropy reads without warnings
//! (scripts/crosscheck_cal.py). Needs the venv made by scripts/setup-python (scripts/test sets
//! TESSERA_PYTHON); without it the test fails and says how to get it.

use crate::common::{repo, tiny_lw, tiny_miri};
use std::process::Command;

pub fn python() -> String {
    if let Ok(p) = std::env::var("TESSERA_PYTHON") {
        return p;
    }
    let venv = repo().join(".venv/bin/python");
    assert!(venv.is_file(), "no Python venv: run scripts/test (or scripts/setup-python and set TESSERA_PYTHON)");
    venv.display().to_string()
}

fn crosscheck(dir: &std::path::Path) {
    let out =
        Command::new(python()).arg(repo().join("scripts/crosscheck_cal.py")).arg(dir).output().expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "crosscheck failed on {}:\n{stdout}\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("files OK"), "{stdout}");
}

#[test]
fn simulated_nircam_files_open_in_stdatamodels_and_astropy() {
    crosscheck(tiny_lw());
}

#[test]
fn simulated_miri_files_open_in_stdatamodels_and_astropy() {
    crosscheck(tiny_miri());
    crosscheck(&tiny_miri().join("off"));
}

/// tessera's absolute astrometry (align + astrometry) against the JWST pipeline's TweakRegStep
/// (relative, then absolute to the same reference catalogue, with tessera's matching parameters)
/// on the small NIRCam LW scene of tests/integration/align.rs, both scored against the
/// simulator's true WCSs by scripts/bench.d/astrometry.py (what `scripts/bench --astrometry`
/// tabulates). About a minute, most of it TweakRegStep.
#[test]
fn absolute_astrometry_is_no_worse_than_tweakreg() {
    let w = crate::common::tmp();
    let json = w.path().join("astrometry.json");
    let out = Command::new(python())
        .arg(repo().join("scripts/bench.d/astrometry.py"))
        .args(["--tessera", crate::common::bin(), "--scenes", "lw", "--tweakreg", "matched"])
        .arg("--work")
        .arg(w.path())
        .arg("--json")
        .arg(&json)
        .output()
        .expect("python runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "astrometry.py failed:\n{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let row = &v["scenes"][0];
    let rms = |k: &str| row[k]["rms_mas"].as_f64().unwrap_or_else(|| panic!("{k}: {}", row[k]));
    let (before, ours, theirs) = (rms("before"), rms("tessera"), rms("tweakreg_matched"));
    eprintln!(
        "absolute rms against the truth: before {before:.1} mas, tessera {ours:.2} mas, TweakRegStep {theirs:.2} mas"
    );
    // both really corrected the scene's 0.35" offset (TweakReg's gwcs equals the header WCS)
    assert!(row["tweakreg_matched"]["gwcs_vs_header_mas"].as_f64().unwrap() < 0.01);
    assert!(before > 200.0 && theirs < 0.1 * before, "TweakRegStep did not align: {theirs} mas");
    assert!(ours < 5.0, "tessera {ours} mas");
    assert!(ours <= theirs, "tessera {ours:.2} mas is worse than TweakRegStep's {theirs:.2} mas");
}

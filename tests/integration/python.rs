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

//! Checks made before any stage runs, so that a bad output path or catalogue stops or warns in the
//! first second instead of after hours of work: the `-o` mosaic is not an input (nor a file a later
//! run would read back as one), its folder and `run.output_dir` can be written, and the reference
//! catalogue can be read. Rank 0 checks and every rank takes its answer.
//!
//! The inputs themselves are checked in `plan` (`io::fits::verify_cal`), where a bad one is skipped.

use super::Outcome;
use crate::config::Config;
use crate::dist::{Comm, CommExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The worse of two outcomes.
pub fn worst(a: Outcome, b: Outcome) -> Outcome {
    if a == Outcome::Partial || b == Outcome::Partial {
        Outcome::Partial
    } else {
        Outcome::Clean
    }
}

/// Before `tessera mosaic`: refuse an `-o` that is an input or would be read back as one, or that
/// cannot be written, and an unwritable `run.output_dir`. A catalogue that cannot be used (unreadable,
/// empty, no RA/Dec columns) is a warning: astrometry will not run, and the outcome is
/// [`Outcome::Partial`] (exit code 3).
///
/// # Errors
/// On every rank, naming the path and what is wrong with it.
pub fn mosaic(
    comm: &dyn Comm,
    cfg: &Config,
    inputs: &[PathBuf],
    output: &Path,
    catalog: Option<&Path>,
) -> crate::Result<Outcome> {
    let partial = comm.on_root_then_broadcast(0, || -> Result<bool, String> {
        check_output(inputs, output, cfg)?;
        writable(&cfg.run.output_dir).map_err(|e| format!("run.output_dir = {}: {e}", cfg.run.output_dir.display()))?;
        Ok(match catalog {
            Some(c) => match catalog_problem(c) {
                Some(why) => {
                    tracing::warn!(
                        "[astrometry] reference catalogue {}: {why}; astrometry will not run (exit code 3)",
                        c.display()
                    );
                    true
                }
                None => false,
            },
            None => false,
        })
    })?;
    Ok(if partial { Outcome::Partial } else { Outcome::Clean })
}

/// Before `tessera run`: `run.output_dir` can be written.
///
/// # Errors
/// On every rank, naming the key and the path.
pub fn campaign(comm: &dyn Comm, cfg: &Config) -> crate::Result<()> {
    comm.on_root_then_broadcast(0, || {
        writable(&cfg.run.output_dir).map_err(|e| format!("run.output_dir = {}: {e}", cfg.run.output_dir.display()))
    })?;
    Ok(())
}

/// Why `catalog` cannot serve as the reference catalogue, or `None` when it can.
fn catalog_problem(catalog: &Path) -> Option<String> {
    match crate::io::catalog::read_radec(catalog) {
        Err(e) => Some(format!("cannot be used ({e})")),
        Ok(rows) if rows.is_empty() => Some("has no source with a valid RA and Dec".to_string()),
        Ok(_) => None,
    }
}

/// The `-o` checks: not a directory, not an input file (by identity, whatever the path), not a
/// `*_cal.fits` in a folder the inputs are read from, and its folder writable.
fn check_output(inputs: &[PathBuf], output: &Path, cfg: &Config) -> Result<(), String> {
    let shown = output.display();
    if output.is_dir() {
        return Err(format!("-o {shown} is a directory: give the mosaic's file name, e.g. {shown}/mosaic.fits"));
    }
    if output.file_name().is_none() {
        return Err(format!("-o {shown} has no file name"));
    }
    // the folders read for exposures: the inputs that are folders, their off/ folders, prep.off_inputs
    let mut dirs: Vec<PathBuf> = vec![];
    let mut files: Vec<PathBuf> = vec![];
    for p in inputs.iter().chain(&cfg.prep.off_inputs) {
        if p.is_dir() {
            dirs.push(p.clone());
            dirs.push(p.join("off"));
        } else {
            files.push(p.clone());
        }
    }
    for d in dirs.iter().filter(|d| d.is_dir()) {
        // a folder without cal files lists nothing here; plan reports it
        files.extend(crate::io::expand_cal_inputs(std::slice::from_ref(d)).unwrap_or_default());
    }
    if let Ok(out_meta) = std::fs::metadata(output) {
        for f in &files {
            if std::fs::metadata(f).is_ok_and(|m| m.dev() == out_meta.dev() && m.ino() == out_meta.ino()) {
                return Err(format!(
                    "-o {shown} is the input {}: writing the mosaic there would destroy it; choose another name",
                    f.display()
                ));
            }
        }
    }
    let name = output.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let out_dir = canonical_dir(output);
    if name.ends_with("_cal.fits") && !name.starts_with('.') {
        for d in dirs.iter().filter(|d| d.is_dir()) {
            if std::fs::canonicalize(d).ok() == out_dir {
                return Err(format!(
                    "-o {shown} is a *_cal.fits file in the input folder {}: a later run would read the mosaic \
                     back as an exposure; choose another name or folder",
                    d.display()
                ));
            }
        }
    }
    let dir = output.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    writable(dir).map_err(|e| format!("-o {shown}: {e}"))
}

/// The canonical folder `path` would be written in (its parent canonicalised), when it exists.
fn canonical_dir(path: &Path) -> Option<PathBuf> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::canonicalize(dir).ok()
}

/// Whether files can be created in `dir`, or, when it does not exist yet, in its nearest existing
/// ancestor (where it would be created): a probe file is created and removed. Nothing else is
/// written.
fn writable(dir: &Path) -> Result<(), String> {
    let mut d = dir.to_path_buf();
    while !d.exists() {
        match d.parent() {
            Some(p) if !p.as_os_str().is_empty() => d = p.to_path_buf(),
            _ => {
                d = PathBuf::from(".");
                break;
            }
        }
    }
    if !d.is_dir() {
        return Err(format!("{} is not a directory", d.display()));
    }
    let probe = d.join(format!(".tessera-write-probe.{}", std::process::id()));
    match std::fs::OpenOptions::new().write(true).create_new(true).open(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => Err(format!("cannot write in {}: {e}", d.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worst_is_partial_if_either_is() {
        assert_eq!(worst(Outcome::Clean, Outcome::Clean), Outcome::Clean);
        assert_eq!(worst(Outcome::Partial, Outcome::Clean), Outcome::Partial);
        assert_eq!(worst(Outcome::Clean, Outcome::Partial), Outcome::Partial);
    }

    #[test]
    fn writable_probes_the_nearest_existing_folder_and_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        writable(&d.path().join("not/yet/there")).unwrap();
        assert!(!d.path().join("not").exists(), "nothing created");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0, "the probe is removed");
        let f = d.path().join("file");
        std::fs::write(&f, b"x").unwrap();
        assert!(writable(&f.join("sub")).unwrap_err().contains("is not a directory"));
    }
}

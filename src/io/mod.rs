//! Input and output: JWST FITS files (`fits`), the parallel HDF5 band store (`hdf5`), JSON/CSV
//! products and atomic writes.
//!
//! Only this module imports `fitsio` (and, later, `hdf5`). Everything written goes to a temporary
//! name beside the target and is renamed when complete, so a crash never leaves a half-written
//! product under the final name.

pub mod archive;
pub mod catalog;
pub mod fits;
pub mod hdf5;
pub mod json;
pub mod plot;

use std::path::{Path, PathBuf};

/// A file-system error, naming the path.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    #[error("{path}: {err}")]
    Fs { path: PathBuf, err: std::io::Error },
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
    #[error("no *_cal.fits files found in {0}")]
    NoInputs(PathBuf),
}

impl IoError {
    pub(crate) fn fs(path: &Path, source: std::io::Error) -> IoError {
        IoError::Fs { path: path.to_path_buf(), err: source }
    }
}

/// The temporary name used while `path` is being written: `.<name>.tmp` beside it, the one
/// convention for every product (the same on every rank, so that a store written collectively has
/// one temporary name too). Hidden names are never listed as products.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

/// Move a completely written temporary file (from [`temp_path`]) to its final name.
///
/// # Errors
/// [`IoError::Fs`] naming the final path.
pub fn finish(tmp: &Path, path: &Path) -> Result<(), IoError> {
    std::fs::rename(tmp, path).map_err(|e| IoError::fs(path, e))
}

/// Write `path` atomically: `write` fills the temporary file, which is then renamed over `path`.
/// On error the temporary file is removed and `path` is untouched.
///
/// # Errors
/// Whatever `write` returns, or [`IoError::Fs`] for the rename.
pub fn write_atomic<E: From<IoError>>(path: &Path, write: impl FnOnce(&Path) -> Result<(), E>) -> Result<(), E> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| IoError::fs(dir, e))?;
    }
    let tmp = temp_path(path);
    let _ = std::fs::remove_file(&tmp);
    match write(&tmp) {
        Ok(()) => std::fs::rename(&tmp, path).map_err(|e| IoError::fs(path, e).into()),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Expand a list of inputs (files or directories) into a sorted list of `*_cal.fits` files.
/// Directories are searched non-recursively.
///
/// # Errors
/// [`IoError::Fs`] for an unreadable path, [`IoError::NoInputs`] when nothing is found.
pub fn expand_cal_inputs(inputs: &[PathBuf]) -> Result<Vec<PathBuf>, IoError> {
    let mut files = vec![];
    for p in inputs {
        let meta = std::fs::metadata(p).map_err(|e| IoError::fs(p, e))?;
        if meta.is_dir() {
            let mut found = vec![];
            for entry in std::fs::read_dir(p).map_err(|e| IoError::fs(p, e))? {
                let path = entry.map_err(|e| IoError::fs(p, e))?.path();
                let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                if name.ends_with("_cal.fits") && !name.starts_with('.') && path.is_file() {
                    found.push(path);
                }
            }
            if found.is_empty() {
                return Err(IoError::NoInputs(p.clone()));
            }
            files.extend(found);
        } else {
            files.push(p.clone());
        }
    }
    files.sort();
    files.dedup();
    Ok(files)
}

/// The size in bytes and the SHA-256 (lower-case hex) of a file, read in 1 MiB blocks.
///
/// # Errors
/// [`IoError::Fs`] naming the file.
pub fn sha256_file(path: &Path) -> Result<(u64, String), IoError> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| IoError::fs(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|e| IoError::fs(path, e))?;
        if n == 0 {
            break;
        }
        bytes += n as u64;
        h.update(&buf[..n]);
    }
    Ok((bytes, h.finalize().iter().map(|b| format!("{b:02x}")).collect()))
}

/// Every regular file below `dir` (recursively), sorted, without the temporary files of
/// [`write_atomic`] (names starting with `.`).
/// An absent `dir` has no files.
///
/// # Errors
/// [`IoError::Fs`] for an unreadable folder.
pub fn list_files(dir: &Path) -> Result<Vec<PathBuf>, IoError> {
    let mut out = vec![];
    if !dir.is_dir() {
        return Ok(out);
    }
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).map_err(|e| IoError::fs(&d, e))? {
            let path = entry.map_err(|e| IoError::fs(&d, e))?.path();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if name.starts_with('.') {
                continue;
            }
            if path.is_dir() {
                todo.push(path);
            } else if path.is_file() {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Remove the folder `dir` and everything in it, if it exists (a stage's own product folder, before
/// the stage runs again).
///
/// # Errors
/// [`IoError::Fs`] naming the folder.
pub fn remove_tree(dir: &Path) -> Result<(), IoError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(IoError::fs(dir, e)),
    }
}

/// Remove one file, if it exists.
///
/// # Errors
/// [`IoError::Fs`] naming the file.
pub fn remove_file(path: &Path) -> Result<(), IoError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(IoError::fs(path, e)),
    }
}

/// Create the folder `dir` and its parents (nothing when it exists).
///
/// # Errors
/// [`IoError::Fs`] naming the folder.
pub fn make_dir(dir: &Path) -> Result<(), IoError> {
    std::fs::create_dir_all(dir).map_err(|e| IoError::fs(dir, e))
}

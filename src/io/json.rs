//! JSON and CSV products (plans, truth tables, manifests), written atomically.

use super::{write_atomic, IoError};
use std::path::Path;

/// Write a value as pretty JSON, atomically.
///
/// # Errors
/// [`IoError`] naming the path.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), IoError> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| IoError::Format { path: path.to_path_buf(), message: e.to_string() })?;
    write_text(path, &(text + "\n"))
}

/// Read a JSON file.
///
/// # Errors
/// [`IoError`] naming the path and what is wrong.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, IoError> {
    let text = std::fs::read_to_string(path).map_err(|e| IoError::fs(path, e))?;
    serde_json::from_str(&text).map_err(|e| IoError::Format { path: path.to_path_buf(), message: e.to_string() })
}

/// Write text atomically.
///
/// # Errors
/// [`IoError`] naming the path.
pub fn write_text(path: &Path, text: &str) -> Result<(), IoError> {
    write_atomic(path, |tmp| std::fs::write(tmp, text).map_err(|e| IoError::fs(tmp, e)))
}

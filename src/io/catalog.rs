//! Reference catalogues for absolute astrometry: positions (RA, Dec in degrees) from a CSV file, an
//! ECSV file (astropy's text format: `#` header lines, then a space- or comma-separated table with a
//! header row), or the first table of a FITS file. Columns are found by name, case-insensitive:
//! `ra`/`ra_deg`/`raj2000`/`ra_icrs` and `dec`/`dec_deg`/`dej2000`/`dec_icrs`.
//!
//! What does not live here: matching (`kernels::matching`), projections (`geom`).

use super::IoError;
use std::path::Path;

const RA_NAMES: &[&str] = &["ra", "ra_deg", "raj2000", "ra_icrs", "alpha_j2000"];
const DEC_NAMES: &[&str] = &["dec", "dec_deg", "dej2000", "dec_icrs", "delta_j2000"];

/// Read `(ra_deg, dec_deg)` pairs; rows with a non-finite or out-of-range value are dropped.
///
/// # Errors
/// [`IoError`] naming the file: unreadable, no RA/Dec columns, unparsable values.
pub fn read_radec(path: &Path) -> Result<Vec<[f64; 2]>, IoError> {
    let fmt = |message: String| IoError::Format { path: path.to_path_buf(), message };
    let lower = path.to_string_lossy().to_ascii_lowercase();
    let (ra, dec) = if lower.ends_with(".fits") || lower.ends_with(".fit") || lower.ends_with(".fits.gz") {
        let [ra, dec] = super::fits::read_table_columns(path, [RA_NAMES, DEC_NAMES]).map_err(|e| fmt(e.to_string()))?;
        (ra, dec)
    } else {
        let text = std::fs::read_to_string(path).map_err(|e| IoError::fs(path, e))?;
        read_text(&text).map_err(fmt)?
    };
    Ok(ra
        .into_iter()
        .zip(dec)
        .filter(|(r, d)| r.is_finite() && d.is_finite() && (-90.0..=90.0).contains(d))
        .map(|(r, d)| [r.rem_euclid(360.0), d])
        .collect())
}

/// Parse CSV or ECSV text: RA and Dec columns.
fn read_text(text: &str) -> Result<(Vec<f64>, Vec<f64>), String> {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#'));
    let header = lines.next().ok_or("empty catalogue")?;
    let split = |l: &str| -> Vec<String> {
        if l.contains(',') {
            l.split(',').map(|s| s.trim().trim_matches('"').to_string()).collect()
        } else {
            l.split_whitespace().map(|s| s.trim_matches('"').to_string()).collect()
        }
    };
    let cols = split(header);
    let find = |names: &[&str]| cols.iter().position(|c| names.iter().any(|n| c.eq_ignore_ascii_case(n)));
    let ira = find(RA_NAMES)
        .ok_or_else(|| format!("no RA column (one of {}) in the header `{header}`", RA_NAMES.join(", ")))?;
    let idec = find(DEC_NAMES)
        .ok_or_else(|| format!("no Dec column (one of {}) in the header `{header}`", DEC_NAMES.join(", ")))?;
    let (mut ra, mut dec) = (vec![], vec![]);
    for (n, l) in lines.enumerate() {
        let f = split(l);
        let get = |i: usize| -> Result<f64, String> {
            f.get(i)
                .ok_or_else(|| format!("data row {}: too few columns", n + 1))?
                .parse::<f64>()
                .map_err(|e| format!("data row {}: {e}", n + 1))
        };
        ra.push(get(ira)?);
        dec.push(get(idec)?);
    }
    Ok((ra, dec))
}

#[cfg(test)]
mod tests {
    use super::read_text;

    #[test]
    fn csv_and_ecsv_parse() {
        let (r, d) = read_text("ra,dec\n10.5,-3.25\n11,4\n").unwrap();
        assert_eq!((r, d), (vec![10.5, 11.0], vec![-3.25, 4.0]));
        let ecsv = "# %ECSV 1.0\n# ---\n# datatype:\n# - {name: id, datatype: int64}\nid RA DEC\n1 10.5 -3.25\n";
        let (r, d) = read_text(ecsv).unwrap();
        assert_eq!((r, d), (vec![10.5], vec![-3.25]));
        assert!(read_text("x,y\n1,2\n").unwrap_err().contains("no RA column"));
    }
}

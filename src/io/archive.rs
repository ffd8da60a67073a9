//! Compressed archives: a `.tar.gz` of files (the release's diagnostic plots, as pjpipe tars and
//! gzips its `*_diagnostic_plots/` folders), written atomically like every other product.
//!
//! The tar stream is POSIX ustar written here (a 512-byte header per member, data padded to 512
//! bytes, two zero blocks at the end); every member has mode 0644, owner 0 and modification time 0,
//! so the same files give the same bytes. Compression is `flate2`'s gzip.

use super::{write_atomic, IoError};
use std::io::Write;
use std::path::{Path, PathBuf};

/// One ustar header block for a regular file `name` of `size` bytes.
fn header(name: &str, size: u64) -> Option<[u8; 512]> {
    let mut h = [0u8; 512];
    let bytes = name.as_bytes();
    // names up to 100 bytes, or split at a '/' into a prefix of up to 155 bytes and a name
    let (prefix, base) = if bytes.len() <= 100 {
        (&b""[..], bytes)
    } else {
        let cut = name[..name.len().min(156)].rfind('/')?;
        (&bytes[..cut], &bytes[cut + 1..])
    };
    if base.len() > 100 || prefix.len() > 155 {
        return None;
    }
    h[..base.len()].copy_from_slice(base);
    let octal = |h: &mut [u8; 512], at: usize, len: usize, v: u64| {
        let s = format!("{v:0w$o}", w = len - 1);
        h[at..at + len - 1].copy_from_slice(s.as_bytes());
    };
    octal(&mut h, 100, 8, 0o644);
    octal(&mut h, 108, 8, 0);
    octal(&mut h, 116, 8, 0);
    octal(&mut h, 124, 12, size);
    octal(&mut h, 136, 12, 0);
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[345..345 + prefix.len()].copy_from_slice(prefix);
    // the checksum is computed with its own field as spaces
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    Some(h)
}

/// Write `files` (member name in the archive, file on disk) as a gzip-compressed tar at `path`.
///
/// # Errors
/// [`IoError`] naming the archive or a member that cannot be read or named (over 255 bytes).
pub fn write_tar_gz(path: &Path, files: &[(String, PathBuf)]) -> Result<(), IoError> {
    write_atomic(path, |tmp| -> Result<(), IoError> {
        let out = std::fs::File::create(tmp).map_err(|e| IoError::fs(tmp, e))?;
        let mut gz = flate2::write::GzEncoder::new(std::io::BufWriter::new(out), flate2::Compression::default());
        let w = |gz: &mut flate2::write::GzEncoder<_>, b: &[u8]| gz.write_all(b).map_err(|e| IoError::fs(path, e));
        for (name, src) in files {
            let data = std::fs::read(src).map_err(|e| IoError::fs(src, e))?;
            let h = header(name, data.len() as u64).ok_or_else(|| IoError::Format {
                path: path.to_path_buf(),
                message: format!("member name `{name}` is too long for a tar archive"),
            })?;
            w(&mut gz, &h)?;
            w(&mut gz, &data)?;
            let pad = (512 - data.len() % 512) % 512;
            w(&mut gz, &vec![0u8; pad])?;
        }
        w(&mut gz, &[0u8; 1024])?;
        let buf = gz.finish().map_err(|e| IoError::fs(path, e))?;
        buf.into_inner().map_err(|e| IoError::fs(path, e.into_error()))?.sync_all().map_err(|e| IoError::fs(path, e))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_header_checksum_and_fields_follow_ustar() {
        let h = header("level/tiles.png", 1234).unwrap();
        assert_eq!(&h[..15], b"level/tiles.png");
        assert_eq!(&h[124..135], b"00000002322"); // 1234 in octal
        assert_eq!(&h[257..262], b"ustar");
        // the checksum: the byte sum with the checksum field as eight spaces (POSIX ustar)
        let mut blank = h;
        blank[148..156].copy_from_slice(b"        ");
        let sum: u64 = blank.iter().map(|&b| u64::from(b)).sum();
        let stored = u64::from_str_radix(std::str::from_utf8(&h[148..154]).unwrap(), 8).unwrap();
        assert_eq!(stored, sum);
        // long names split at a '/'
        let long = format!("{}/{}", "d".repeat(120), "f.png");
        let h = header(&long, 1).unwrap();
        assert_eq!(&h[..5], b"f.png");
        assert_eq!(&h[345..465], "d".repeat(120).as_bytes());
    }
}

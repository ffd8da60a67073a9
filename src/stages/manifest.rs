//! The run manifest, `<run.output_dir>/manifest.json`: what a run read, which stages finished, with
//! which configuration, and the checksum of every product. `--resume` trusts a stage only when its
//! entry is `done`, its dependency hash is unchanged and its products still have their checksums.
//!
//! Rank 0 writes the manifest atomically after every stage; checksums are computed by all ranks in
//! parallel ([`hash_files`]). The decisions made from it live in `stages::runner`.

use crate::dist::{Comm, CommExt};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The manifest's file name inside `run.output_dir`.
pub const FILE: &str = "manifest.json";

/// One file with its size and checksum. `path` is relative to `run.output_dir` for the stages' own
/// products, absolute for the `-o` mosaic and the inputs given as absolute paths.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSum {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
    /// The file's [`stamp`] when it was hashed, if it had then been left alone for [`SETTLED_S`]:
    /// a later invocation that finds the same stamp reuses `sha256` instead of reading the file
    /// again ([`hash_files_reusing`]). Absent for a file still settling (just written) and in
    /// manifests of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stamp: Option<String>,
}

/// Seconds a file must have been left alone (mtime and ctime) before its [`stamp`] is recorded:
/// a change within one tick of a coarse file-system clock (1 s on some, 2 s on FAT) cannot then
/// hide behind an unchanged stamp.
pub const SETTLED_S: f64 = 2.0;

/// What identifies a file's content without reading it, as `make` and `git` trust it: size, mtime
/// and ctime to the nanosecond, inode and device. ctime changes with every write and cannot be set
/// back by a user, so an edited file (even with its mtime restored) gets a new stamp. `None` where
/// the metadata cannot be read (or on a platform without these fields).
pub fn stamp(p: &Path) -> Option<String> {
    stamp_and_age(p).map(|(s, _)| s)
}

/// [`stamp`] and the seconds since the file's last change (mtime or ctime, whichever is later).
fn stamp_and_age(p: &Path) -> Option<(String, f64)> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(p).ok()?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok()?.as_secs_f64();
        let t = |s: i64, ns: i64| s as f64 + ns as f64 * 1e-9;
        let changed = t(m.mtime(), m.mtime_nsec()).max(t(m.ctime(), m.ctime_nsec()));
        let s = format!(
            "{}:{}.{:09}:{}.{:09}:{}:{}",
            m.len(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec(),
            m.ino(),
            m.dev()
        );
        Some((s, now - changed))
    }
    #[cfg(not(unix))]
    {
        let _ = p;
        None
    }
}

/// How a stage ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Started and not finished (the run was killed, or is still going).
    Running,
    Done,
    Failed,
    /// Not run, for `reason` (turned off in the config, nothing to do).
    Skipped,
}

/// A stage's entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageEntry {
    pub stage: String,
    pub status: Status,
    /// Why the stage was skipped, or how it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// SHA-256 of what the stage depends on: its config sections, its upstream products (their
    /// checksums), and for `plan` the inputs' checksums.
    pub depends_sha256: String,
    /// Wall time of the stage, seconds (of the run that produced it).
    pub wall_s: f64,
    pub ranks: usize,
    pub threads_per_rank: usize,
    /// True when `--resume` verified and kept this entry instead of running the stage again.
    #[serde(default)]
    pub reused: bool,
    pub products: Vec<FileSum>,
}

/// The whole manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub tessera_version: String,
    /// SHA-256 of `config_toml`.
    pub config_sha256: String,
    /// The resolved configuration of the last invocation.
    pub config_toml: String,
    /// The `-o` mosaic, absolute (none for a run that has not named one).
    #[serde(default)]
    pub mosaic: Option<PathBuf>,
    /// The reference catalogue of astrometry (`--catalog` or `astrometry.catalog`), as given; a
    /// per-stage command without one continues with it.
    #[serde(default)]
    pub catalog: Option<PathBuf>,
    /// Every input read (science and off-source cal files).
    pub inputs: Vec<FileSum>,
    /// The stages in chain order, as far as they ran.
    pub stages: Vec<StageEntry>,
    /// Wall time of the last invocation so far, seconds, and the part of it spent computing
    /// checksums (inputs, recorded products, new products).
    #[serde(default)]
    pub invocation_wall_s: f64,
    #[serde(default)]
    pub checksum_s: f64,
}

impl Manifest {
    /// The entry of `stage`, if any.
    pub fn stage(&self, stage: &str) -> Option<&StageEntry> {
        self.stages.iter().find(|e| e.stage == stage)
    }

    /// Put `entry` in place of the stage's old entry (or append it).
    pub fn set(&mut self, entry: StageEntry) {
        match self.stages.iter_mut().find(|e| e.stage == entry.stage) {
            Some(e) => *e = entry,
            None => self.stages.push(entry),
        }
    }

    /// Read `<dir>/manifest.json` if it exists.
    ///
    /// # Errors
    /// An unreadable or malformed manifest, naming it.
    pub fn read(dir: &Path) -> Result<Option<Manifest>, crate::io::IoError> {
        let p = dir.join(FILE);
        if !p.is_file() {
            return Ok(None);
        }
        crate::io::json::read_json(&p).map(Some)
    }

    /// Write `<dir>/manifest.json` atomically.
    ///
    /// # Errors
    /// A failed write, naming the file.
    pub fn write(&self, dir: &Path) -> Result<(), crate::io::IoError> {
        crate::io::json::write_json(&dir.join(FILE), self)
    }
}

/// SHA-256 (hex) of a JSON value's compact text.
pub fn hash_json(v: &serde_json::Value) -> String {
    Sha256::digest(v.to_string().as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// The path written into the manifest for `p`: relative to `base` when below it, else as given.
pub fn display_path(p: &Path, base: &Path) -> String {
    p.strip_prefix(base).unwrap_or(p).to_string_lossy().into_owned()
}

/// Checksums of `files` (paths as the ranks see them), computed by all ranks in parallel: the files
/// are dealt to the ranks by size (largest first, each to the least loaded rank, a deterministic
/// rule), each rank hashes its share with its threads, and every rank gets every result in the
/// order of `files`. A missing or unreadable file gives `None` (the caller decides what that means).
/// Collective.
///
/// # Errors
/// Only a failed exchange between ranks.
pub fn hash_files(comm: &dyn Comm, files: &[PathBuf], base: &Path) -> crate::Result<Vec<Option<FileSum>>> {
    let sizes: Vec<u64> = files.iter().map(|p| std::fs::metadata(p).map_or(0, |m| m.len())).collect();
    let owner = deal_by_size(&sizes, comm.size());
    let mine: Vec<usize> = (0..files.len()).filter(|&i| owner[i] == comm.rank()).collect();
    let sums: Vec<(usize, Option<FileSum>)> = mine
        .par_iter()
        .map(|&i| {
            // the stamp before and after reading: recorded only if the file did not change meanwhile
            // and had settled before
            let before = stamp_and_age(&files[i]);
            let s = crate::io::sha256_file(&files[i]).ok().map(|(bytes, sha256)| {
                let after = stamp(&files[i]);
                let stamp = match (before, after) {
                    (Some((b, age)), Some(a)) if a == b && age >= SETTLED_S => Some(a),
                    _ => None,
                };
                FileSum { path: display_path(&files[i], base), bytes, sha256, stamp }
            });
            (i, s)
        })
        .collect();
    let all = comm.all_gather_bytes(&serde_json::to_vec(&sums).expect("sums serialise"));
    let mut out: Vec<Option<FileSum>> = vec![None; files.len()];
    for (rank, part) in all.iter().enumerate() {
        let got: Vec<(usize, Option<FileSum>)> = serde_json::from_slice(part)
            .map_err(|e| crate::dist::DistError::Decode { rank, message: e.to_string() })?;
        for (i, s) in got {
            out[i] = s;
        }
    }
    Ok(out)
}

/// [`hash_files`], reusing the checksum of every file whose recorded sum in `known` (matched by
/// its manifest path) carries the stamp the file has now: rank 0 reads the stamps and decides,
/// so the ranks agree; the rest are hashed by all ranks in parallel. What `--resume` relies on
/// stays true: an edited file has a new stamp and is read again. Collective.
///
/// # Errors
/// Only a failed exchange between ranks.
pub fn hash_files_reusing(
    comm: &dyn Comm,
    files: &[PathBuf],
    base: &Path,
    known: &[&FileSum],
) -> crate::Result<Vec<Option<FileSum>>> {
    let reused: Vec<Option<FileSum>> = comm.on_root_then_broadcast(0, || -> Result<_, String> {
        let by_path: std::collections::HashMap<&str, &FileSum> =
            known.iter().filter(|k| k.stamp.is_some()).map(|k| (k.path.as_str(), *k)).collect();
        Ok(files
            .iter()
            .map(|f| {
                let k = by_path.get(display_path(f, base).as_str())?;
                (stamp(f).as_ref() == k.stamp.as_ref()).then(|| (*k).clone())
            })
            .collect())
    })?;
    let todo: Vec<PathBuf> = files.iter().zip(&reused).filter(|(_, r)| r.is_none()).map(|(f, _)| f.clone()).collect();
    let mut fresh = hash_files(comm, &todo, base)?.into_iter();
    Ok(reused.into_iter().map(|r| r.or_else(|| fresh.next().flatten())).collect())
}

/// Owner rank of each item of the given sizes: largest first, each to the least loaded rank (lowest
/// rank on ties).
fn deal_by_size(sizes: &[u64], ranks: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    order.sort_by(|&a, &b| sizes[b].cmp(&sizes[a]).then(a.cmp(&b)));
    let mut load = vec![0u64; ranks.max(1)];
    let mut owner = vec![0; sizes.len()];
    for i in order {
        let r = (0..load.len()).min_by_key(|&r| (load[r], r)).expect("at least one rank");
        owner[i] = r;
        load[r] += sizes[i].max(1);
    }
    owner
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_dealt_largest_first_to_the_least_loaded_rank() {
        // 10 -> r0, 7 -> r1, 5 -> r1 (7 < 10), 3 -> r0 (10 < 12), 1 -> r0 (13 > 12? no: r1 has 12) -> r1
        assert_eq!(deal_by_size(&[5, 10, 1, 7, 3], 2), vec![1, 0, 1, 1, 0]);
        assert_eq!(deal_by_size(&[4, 4, 4], 1), vec![0, 0, 0]);
        // more ranks than files
        assert_eq!(deal_by_size(&[1, 2], 4), vec![1, 0]);
    }

    #[test]
    fn checksums_match_an_independent_sha256_and_missing_files_are_none() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a.txt");
        std::fs::write(&a, b"abc").unwrap();
        let sums = hash_files(&crate::dist::SerialComm, &[a.clone(), d.path().join("nope")], d.path()).unwrap();
        let s = sums[0].as_ref().unwrap();
        // FIPS 180-2 test vector for "abc"
        assert_eq!(s.sha256, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!((s.bytes, s.path.as_str()), (3, "a.txt"));
        // just written: not settled, so no stamp to trust later
        assert_eq!(s.stamp, None);
        assert!(sums[1].is_none());
    }

    #[test]
    fn a_settled_files_checksum_is_reused_until_the_file_is_touched() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a.txt");
        std::fs::write(&a, b"abc").unwrap();
        std::thread::sleep(std::time::Duration::from_secs_f64(SETTLED_S + 0.2));
        let comm = crate::dist::SerialComm;
        let s = hash_files(&comm, std::slice::from_ref(&a), d.path()).unwrap()[0].clone().unwrap();
        assert_eq!(s.stamp, stamp(&a));
        assert!(s.stamp.is_some());
        // a recorded sum with the file's stamp is taken as it is (the file is not read: the fake
        // checksum comes back)
        let fake = FileSum { sha256: "recorded".into(), ..s.clone() };
        let got = hash_files_reusing(&comm, std::slice::from_ref(&a), d.path(), &[&fake]).unwrap();
        assert_eq!(got[0].as_ref().unwrap().sha256, "recorded");
        // another path, or no stamp: read
        let other = FileSum { path: "b.txt".into(), ..fake.clone() };
        let unstamped = FileSum { stamp: None, ..fake.clone() };
        for k in [&other, &unstamped] {
            let got = hash_files_reusing(&comm, std::slice::from_ref(&a), d.path(), &[k]).unwrap();
            assert_eq!(got[0].as_ref().unwrap().sha256, s.sha256);
        }
        // edited in place, same size, mtime set back: ctime moved, so the file is read again
        let mtime = std::fs::metadata(&a).unwrap().modified().unwrap();
        std::fs::write(&a, b"abd").unwrap();
        std::fs::File::options().write(true).open(&a).unwrap().set_modified(mtime).unwrap();
        assert_eq!(std::fs::metadata(&a).unwrap().modified().unwrap(), mtime);
        let got = hash_files_reusing(&comm, std::slice::from_ref(&a), d.path(), &[&fake]).unwrap();
        let want = crate::io::sha256_file(&a).unwrap().1;
        assert_eq!(got[0].as_ref().unwrap().sha256, want);
        assert_ne!(want, s.sha256);
        // a missing file stays missing
        let gone = d.path().join("gone");
        assert!(hash_files_reusing(&comm, &[gone], d.path(), &[&fake]).unwrap()[0].is_none());
    }
}

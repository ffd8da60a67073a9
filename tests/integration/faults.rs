//! Bad input and faults (issue 18), as a new user meets them: an `-o` that is an input, duplicate
//! exposures, an all-NaN exposure, `--set` anywhere on the line, an absurd `run.threads`, truncated
//! and hostile files, output paths that cannot be written, bracketed paths, a full disk, an unusable
//! catalogue, exit 3 under mpirun, and a seeded fault-injection run under `mpirun -n 2`.
//!
//! Each test checks the exit code, the message (the file, HDU, keyword or key, and what is wrong)
//! and the disk afterwards: inputs unmodified, nothing half-written under a final name, and a rerun
//! that succeeds.

use crate::common::{cal_files, mpirun, ok, tessera, tiny_lw, tmp};
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

/// The first `n` cal files of the tiny LW survey (2 dithers x 2 detectors of one tile for n = 4),
/// copied into `dir`.
fn inputs(dir: &Path, n: usize) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    cal_files(tiny_lw())
        .iter()
        .take(n)
        .map(|f| {
            let to = dir.join(f.file_name().unwrap());
            std::fs::copy(f, &to).unwrap();
            to
        })
        .collect()
}

/// Every file under `dir` (recursively) with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

fn err(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn log(out: &Output) -> String {
    format!("exit {:?}\nstdout:\n{}\nstderr:\n{}", out.status.code(), String::from_utf8_lossy(&out.stdout), err(out))
}

/// No raw cfitsio status, panic or serde message reached the user.
fn worded(out: &Output) {
    let e = err(out);
    for raw in ["FitsError {", "status: 1", "panicked", "invalid type: null"] {
        assert!(!e.contains(raw), "raw `{raw}` in the message:\n{e}");
    }
}

/// The skipped inputs of `<output_dir>/plan/plan.json`: (file name, reason).
fn skipped(plan_json: &Path) -> Vec<(String, String)> {
    let v: serde_json::Value = tessera::io::json::read_json(plan_json).unwrap();
    v["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let p = PathBuf::from(s[0].as_str().unwrap());
            (p.file_name().unwrap().to_string_lossy().into_owned(), s[1].as_str().unwrap().to_string())
        })
        .collect()
}

fn name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

#[test]
fn an_output_that_is_an_input_is_refused_before_any_work() {
    let w = tmp();
    let d = w.path().join("in");
    let files = inputs(&d, 4);
    let before = snapshot(&d);
    let dir = d.to_str().unwrap();
    // the input itself, by its own path and by another one
    let other_path = format!("{dir}/../in/{}", name(&files[1]));
    for o in [files[1].to_str().unwrap(), &other_path] {
        let out = tessera(w.path(), &["mosaic", dir, "-o", o]);
        assert_eq!(out.status.code(), Some(1), "{}", log(&out));
        let e = err(&out);
        assert!(e.contains("-o") && e.contains("is the input") && e.contains(&name(&files[1])), "{e}");
    }
    // a *_cal.fits beside the inputs would be read back as an exposure by the next run
    let out = tessera(w.path(), &["mosaic", dir, "-o", &format!("{dir}/mosaic_cal.fits")]);
    assert_eq!(out.status.code(), Some(1), "{}", log(&out));
    assert!(err(&out).contains("read the mosaic back as an exposure"), "{}", err(&out));
    // refused before any work: the inputs are untouched and nothing was written
    assert_eq!(snapshot(&d), before, "an input changed");
    assert!(!w.path().join("tessera-out").exists(), "a stage ran");
    // a rerun with a proper name succeeds
    ok(&tessera(w.path(), &["mosaic", dir, "-o", "m.fits"]));
    assert!(w.path().join("m.fits").is_file());
    assert_eq!(snapshot(&d), before);
}

#[test]
fn duplicate_exposures_are_dropped_naming_both_files_and_the_science_is_unchanged() {
    let w = tmp();
    let d = w.path().join("in");
    let files = inputs(&d, 4);
    let reference = w.path().join("ref");
    std::fs::create_dir(&reference).unwrap();
    ok(&tessera(&reference, &["mosaic", d.to_str().unwrap(), "-o", "m.fits"]));
    let sci_ref = tessera::io::fits::read_ext_f32(&reference.join("m.fits"), "SCI").unwrap();

    // one exposure copied under another name, and one file given a second time by another path
    let copy = d.join("jw09999001001_02101_00001_copy_cal.fits");
    std::fs::copy(&files[0], &copy).unwrap();
    let again = w.path().join("in/../in").join(name(&files[2]));
    let before = snapshot(&d);
    let out = tessera(w.path(), &["mosaic", d.to_str().unwrap(), again.to_str().unwrap(), "-o", "m.fits"]);
    assert_eq!(out.status.code(), Some(3), "{}", log(&out));
    let e = err(&out);
    worded(&out);
    assert!(e.contains(&name(&copy)) && e.contains(&name(&files[0])) && e.contains("same exposure"), "{e}");
    assert!(e.contains(&name(&files[2])) && e.contains("the same file as"), "{e}");
    let s = skipped(&w.path().join("tessera-out/plan/plan.json"));
    assert_eq!(s.len(), 2, "{s:?}");
    assert!(s.iter().all(|(_, why)| why.starts_with("duplicate input")), "{s:?}");
    // the mosaic is the one made without the duplicates, to the bit
    let sci = tessera::io::fits::read_ext_f32(&w.path().join("m.fits"), "SCI").unwrap();
    assert!(sci.iter().zip(&sci_ref).all(|(a, b)| a.to_bits() == b.to_bits()), "the duplicates changed the mosaic");
    assert_eq!(snapshot(&d), before, "an input changed");
}

#[test]
fn an_all_nan_exposure_is_skipped_and_reported_with_exit_3() {
    let w = tmp();
    let d = w.path().join("in");
    let files = inputs(&d, 4);
    let img = tessera::io::fits::read_cal(&files[3]).unwrap();
    let nan = img.sci.mapv(|_| f32::NAN);
    let staged = w.path().join("nan_cal.fits");
    tessera::io::fits::write_corrected_copy(&files[3], &staged, &nan, &img.dq, &[], &[]).unwrap();
    std::fs::rename(&staged, &files[3]).unwrap();
    let before = snapshot(&d);
    let out = tessera(w.path(), &["mosaic", d.to_str().unwrap(), "-o", "m.fits"]);
    assert_eq!(out.status.code(), Some(3), "{}", log(&out));
    worded(&out);
    let e = err(&out);
    assert!(e.contains(&name(&files[3])) && e.contains("SCI") && e.contains("no finite pixel"), "{e}");
    let s = skipped(&w.path().join("tessera-out/plan/plan.json"));
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].0, name(&files[3]));
    assert!(w.path().join("m.fits").is_file(), "the mosaic of the other exposures is written");
    assert_eq!(snapshot(&d), before);
}

#[test]
fn every_set_counts_wherever_it_stands() {
    let w = tmp();
    let d = w.path().join("in");
    inputs(&d, 4);
    let dir = d.to_str().unwrap();
    // a bad --set before the subcommand is refused even when another --set follows it
    for args in [
        vec!["--set", "garbage", "plan", dir, "--set", "plan.chunk_px=64"],
        vec!["--set", "garbage", "plan", dir],
        vec!["plan", dir, "--set=garbage"],
    ] {
        let out = tessera(w.path(), &args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", log(&out));
        assert!(err(&out).contains("--set garbage: expected key=value"), "{args:?}: {}", err(&out));
    }
    // both good ones apply, in order (the later wins for the same key)
    let out = tessera(
        w.path(),
        &[
            "--set",
            "plan.chunk_px=128",
            "--set=run.output_dir=\"o1\"",
            "plan",
            dir,
            "--set",
            "run.output_dir=\"o2\"",
            "--set",
            "plan.chunk_px=64",
        ],
    );
    ok(&out);
    assert!(!w.path().join("o1").exists());
    let v: serde_json::Value = tessera::io::json::read_json(&w.path().join("o2/plan/plan.json")).unwrap();
    assert_eq!(v["plan"]["chunk_px"], 64);
    assert!(v["provenance"]["config_toml"].as_str().unwrap().contains("chunk_px = 64"));
}

#[test]
fn an_absurd_thread_count_is_refused_and_a_large_one_lowered_with_a_warning() {
    let w = tmp();
    let out = tessera(w.path(), &["--set", "run.threads=100000", "config", "check"]);
    assert_eq!(out.status.code(), Some(1), "{}", log(&out));
    assert!(err(&out).contains("run.threads") && err(&out).contains("100000"), "{}", err(&out));
    let d = w.path().join("in");
    inputs(&d, 4);
    let cores = std::thread::available_parallelism().unwrap().get();
    let many = format!("run.threads={}", 4 * cores + 1);
    let out = tessera(w.path(), &["--set", &many, "plan", d.to_str().unwrap()]);
    ok(&out);
    let e = err(&out);
    assert!(e.contains("run.threads") && e.contains(&format!("using {}", 4 * cores)), "{e}");
}

/// Damage `file` in place with `f` (bytes in, bytes out).
fn damage(file: &Path, f: impl FnOnce(Vec<u8>) -> Vec<u8>) {
    let b = std::fs::read(file).unwrap();
    std::fs::write(file, f(b)).unwrap();
}

#[test]
fn truncated_and_hostile_files_are_skipped_in_plan_naming_file_and_keyword() {
    let w = tmp();
    let d = w.path().join("in");
    let files = inputs(&d, 4);
    let mut extra = vec![];
    // truncations: inside the SCI data, inside a later header, 100 bytes short of the end
    let sizes: Vec<usize> = files.iter().map(|f| std::fs::metadata(f).unwrap().len() as usize).collect();
    for (k, cut) in [(0usize, 2880 * 3 + 1000), (1, sizes[1] / 2 + 17), (2, sizes[2] - 100)] {
        let t = d.join(format!("jw0999900100{k}_02101_00001_trunc_cal.fits"));
        std::fs::copy(&files[k], &t).unwrap();
        damage(&t, |b| b[..cut].to_vec());
        extra.push(t);
    }
    // a hostile NAXIS1 = NAXIS2 = 200000 in the SCI header
    let hostile = d.join("jw09999001009_02101_00001_hostile_cal.fits");
    std::fs::copy(&files[3], &hostile).unwrap();
    damage(&hostile, |mut b| {
        for key in [&b"NAXIS1  ="[..], &b"NAXIS2  ="[..]] {
            let at = b.windows(key.len()).position(|x| x == key).unwrap();
            b[at + 10..at + 30].copy_from_slice(format!("{:>20}", 200000).as_bytes());
        }
        b
    });
    // not a FITS file at all
    let junk = d.join("jw09999001009_02101_00002_junk_cal.fits");
    std::fs::write(&junk, vec![7u8; 5000]).unwrap();
    let before = snapshot(&d);
    let out = tessera(w.path(), &["plan", d.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", log(&out));
    worded(&out);
    let e = err(&out);
    for t in &extra {
        let line = e.lines().find(|l| l.contains(&name(t))).unwrap_or_else(|| panic!("{} not named:\n{e}", name(t)));
        assert!(line.contains("truncated"), "{line}");
    }
    let line = e.lines().find(|l| l.contains(&name(&hostile))).unwrap();
    assert!(line.contains("NAXIS") && line.contains("200000") && line.contains("SCI"), "{line}");
    let line = e.lines().find(|l| l.contains(&name(&junk))).unwrap();
    assert!(line.contains("not a FITS file") && line.contains("cfitsio status"), "{line}");
    let s = skipped(&w.path().join("tessera-out/plan/plan.json"));
    assert_eq!(s.len(), 5, "{s:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("4 files"), "{}", log(&out));
    assert_eq!(snapshot(&d), before);
}

#[test]
fn a_gzipped_input_is_read_not_taken_for_truncated() {
    // cfitsio opens gzip files whole in memory: the length check must not compare the disk size
    let w = tmp();
    let d = w.path().join("in");
    let files = inputs(&d, 4);
    let gz = std::process::Command::new("gzip").arg("-c").arg(&files[0]).output().unwrap();
    assert!(gz.status.success());
    std::fs::write(&files[0], &gz.stdout).unwrap();
    let out = tessera(w.path(), &["plan", d.to_str().unwrap()]);
    assert!(ok(&out).contains("4 files"), "{}", log(&out));
    // and a gzip cut short is refused, naming the file
    std::fs::write(&files[0], &gz.stdout[..gz.stdout.len() / 2]).unwrap();
    let out = tessera(w.path(), &["plan", d.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", log(&out));
    worded(&out);
    assert!(err(&out).contains(&name(&files[0])), "{}", log(&out));
}

#[test]
fn bracketed_paths_work_and_bad_output_paths_are_refused_up_front() {
    let w = tmp();
    let d = w.path().join("in[1]");
    inputs(&d, 4);
    let dir = d.to_str().unwrap();
    // -o a directory: refused before any stage
    std::fs::create_dir(w.path().join("adir")).unwrap();
    let out = tessera(w.path(), &["mosaic", dir, "-o", "adir"]);
    assert_eq!(out.status.code(), Some(1), "{}", log(&out));
    assert!(err(&out).contains("-o adir is a directory"), "{}", err(&out));
    assert!(!w.path().join("tessera-out").exists(), "a stage ran");
    // -o under a path that is a file
    std::fs::write(w.path().join("afile"), b"x").unwrap();
    let out = tessera(w.path(), &["mosaic", dir, "-o", "afile/m.fits"]);
    assert_eq!(out.status.code(), Some(1), "{}", log(&out));
    assert!(err(&out).contains("afile") && err(&out).contains("not a directory"), "{}", err(&out));
    // brackets in the input folder and in the mosaic's name are plain characters
    let out = tessera(w.path(), &["mosaic", dir, "-o", "m[1].fits"]);
    ok(&out);
    let m = w.path().join("m[1].fits");
    let sci = tessera::io::fits::read_ext_f32(&m, "SCI").unwrap();
    assert!(sci.iter().any(|v| v.is_finite() && *v != 0.0));
    assert!(!w.path().join("m.fits").exists());
}

/// Mount a tmpfs of `size` (e.g. "64k") with `opts` at `dir`; false when this machine does not allow
/// it (not root, no mount namespace), and the caller skips with a note.
fn mount_tmpfs(dir: &Path, size: &str, opts: &str) -> bool {
    std::fs::create_dir_all(dir).unwrap();
    let o = format!("size={size}{opts}");
    std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &o, "tmpfs", dir.to_str().unwrap()])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn umount(dir: &Path) {
    let _ = std::process::Command::new("umount").arg(dir).output();
}

#[test]
fn a_read_only_or_full_output_file_system_is_named() {
    let w = tmp();
    let d = w.path().join("in");
    inputs(&d, 4);
    let dir = d.to_str().unwrap();
    let ro = w.path().join("ro");
    let full = w.path().join("full");
    if !mount_tmpfs(&ro, "1m", ",ro") {
        eprintln!("skipped: cannot mount a tmpfs here (needs root); the full-disk words are unit-tested in io");
        return;
    }
    let out = tessera(w.path(), &["mosaic", dir, "-o", "ro/m.fits"]);
    umount(&ro);
    assert_eq!(out.status.code(), Some(1), "{}", log(&out));
    let e = err(&out);
    assert!(e.contains("-o ro/m.fits") && e.contains("Read-only file system"), "{e}");
    assert!(!w.path().join("tessera-out").exists(), "a stage ran before the check");

    // a disk that fills while the mosaic is written (the stage products go elsewhere)
    assert!(mount_tmpfs(&full, "64k", ""));
    let out = tessera(w.path(), &["mosaic", dir, "-o", "full/m.fits"]);
    let left: Vec<_> = std::fs::read_dir(&full).unwrap().map(|e| e.unwrap().file_name()).collect();
    umount(&full);
    assert_eq!(out.status.code(), Some(1), "{}", log(&out));
    worded(&out);
    let e = err(&out);
    assert!(e.contains("no space left on device") && e.contains("full/m.fits"), "{e}");
    assert!(left.is_empty(), "left behind on the full disk: {left:?}");
    // a rerun where there is room succeeds, from what the failed run finished
    let out = tessera(w.path(), &["mosaic", dir, "-o", "m.fits", "--resume"]);
    assert!(err(&ok_out(out)).contains("done in an earlier run"));
}

/// Bytes under `dir`, recursively.
fn tree_bytes(dir: &Path) -> u64 {
    snapshot(dir).values().map(|b| b.len() as u64).sum()
}

/// The parallel HDF5 band store on a disk without room for it, under `mpirun -n 2`: every rank stops
/// with the folder named and exit 1 (no crash at exit, no store left behind), and once there is
/// room `--resume` picks up at drizzle.
#[test]
fn a_full_disk_under_the_band_store_is_named_and_resumed_under_mpirun() {
    let w = tmp();
    let d = w.path().join("in");
    inputs(&d, 4);
    let dir = d.to_str().unwrap();
    let full = w.path().join("full");
    if !mount_tmpfs(&full, "1m", "") {
        eprintln!("skipped: cannot mount a tmpfs here (needs root); the room check is unit-tested in io");
        return;
    }
    umount(&full);
    let staged = w.path().join("staged");
    let set_out = |p: &str| format!("run.output_dir=\"{p}\"");
    let out =
        mpirun(2, w.path(), &["mosaic", dir, "-o", "m.fits", "--stop-after", "outlier", "--set", &set_out("staged")]);
    ok(&out);
    // room for what the stages before drizzle wrote, plus a little: less than the store needs
    let used = tree_bytes(&staged);
    assert!(mount_tmpfs(&full, &format!("{}k", used / 1024 + 256), ""));
    let cp = std::process::Command::new("cp")
        .args(["-a", staged.to_str().unwrap(), "full/out"])
        .current_dir(w.path())
        .output()
        .unwrap();
    assert!(cp.status.success(), "{}", String::from_utf8_lossy(&cp.stderr));
    let out = mpirun(2, w.path(), &["mosaic", dir, "-o", "m.fits", "--resume", "--set", &set_out("full/out")]);
    let left: Vec<_> =
        std::fs::read_dir(full.join("out/drizzle")).map_or(vec![], |r| r.map(|e| e.unwrap().file_name()).collect());
    assert_eq!(out.status.code(), Some(1), "{}", log(&out));
    worded(&out);
    let e = err(&out);
    assert!(
        e.contains("no space left on device in") && e.contains("full/out/drizzle") && e.contains("MiB are free"),
        "{e}"
    );
    assert!(!e.contains("Segmentation") && !e.contains("signal"), "{e}");
    assert!(
        left.iter().all(|n| n.to_string_lossy().starts_with('.'))
            && !left.iter().any(|n| n.to_string_lossy().ends_with(".h5")),
        "{left:?}"
    );
    assert!(!w.path().join("m.fits").exists());
    // with room (the tmpfs grown in place), the rerun resumes at drizzle and finishes
    let grow =
        std::process::Command::new("mount").args(["-o", "remount,size=256m", full.to_str().unwrap()]).output().unwrap();
    assert!(grow.status.success(), "{}", String::from_utf8_lossy(&grow.stderr));
    let out = mpirun(2, w.path(), &["mosaic", dir, "-o", "m.fits", "--resume", "--set", &set_out("full/out")]);
    umount(&full);
    let e = err(&ok_out(out));
    assert!(e.contains("resuming at drizzle"), "{e}");
    assert!(w.path().join("m.fits").is_file());
}

/// `out`, after asserting that it succeeded.
fn ok_out(out: std::process::Output) -> std::process::Output {
    ok(&out);
    out
}

#[test]
fn an_unusable_catalog_skips_astrometry_with_exit_3() {
    let w = tmp();
    let d = w.path().join("in");
    inputs(&d, 4);
    for (file, text) in [("empty.csv", ""), ("nocols.csv", "x,y\n1,2\n")] {
        std::fs::write(w.path().join(file), text).unwrap();
        let out = tessera(w.path(), &["mosaic", d.to_str().unwrap(), "-o", "m.fits", "--catalog", file, "--overwrite"]);
        assert_eq!(out.status.code(), Some(3), "{file}: {}", log(&out));
        let e = err(&out);
        assert!(e.contains(file) && e.contains("astrometry will not run"), "{e}");
        assert!(w.path().join("m.fits").is_file(), "the mosaic is still written");
    }
}

#[test]
fn exit_3_under_mpirun_finishes_every_rank_without_mpi_abort() {
    let w = tmp();
    let d = w.path().join("in");
    inputs(&d, 4);
    std::fs::write(d.join("jw09999001009_02101_00002_junk_cal.fits"), b"not a fits file").unwrap();
    let out = mpirun(2, w.path(), &["plan", d.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", log(&out));
    let e = err(&out);
    assert!(!e.contains("MPI_ABORT") && !e.contains("panicked"), "{e}");
    assert!(e.contains("finished on all 2 ranks") && e.contains("exit code 3"), "{e}");
    assert!(w.path().join("tessera-out/plan/plan.json").is_file());
}

/// Seeded fault injection under `mpirun -n 2`: inputs carrying CHECKSUM/DATASUM are truncated,
/// zeroed or corrupted at random offsets; each run either finishes with the damaged file skipped
/// and reported (exit 3) or stops with a named error (exit 1), never panics, hangs or builds a
/// mosaic from a damaged file.
#[test]
fn seeded_fault_injection_under_mpirun_never_panics_hangs_or_uses_a_damaged_file() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(18);
    let w = tmp();
    let pristine = w.path().join("pristine");
    let files = inputs(&pristine, 6);
    for f in &files {
        tessera::io::fits::write_checksums(f).unwrap();
    }
    for case in 0..5 {
        let run = w.path().join(format!("case{case}"));
        let d = run.join("in");
        let copies = inputs(&d, 0);
        assert!(copies.is_empty());
        for f in &files {
            std::fs::copy(f, d.join(name(f))).unwrap();
        }
        let k = rng.random_range(0..files.len());
        let victim = d.join(name(&files[k]));
        let original = std::fs::read(&victim).unwrap();
        let mode = case % 3;
        let mut b = original.clone();
        match mode {
            0 => b.truncate(rng.random_range(1..original.len())),
            1 => {
                let at = rng.random_range(0..original.len());
                let end = (at + rng.random_range(1..4000)).min(original.len());
                b[at..end].iter_mut().for_each(|x| *x = 0);
            }
            _ => {
                for _ in 0..8 {
                    let at = rng.random_range(0..original.len());
                    b[at] ^= rng.random_range(1..=255u8);
                }
            }
        }
        let damaged = b != original;
        std::fs::write(&victim, &b).unwrap();
        let what = format!(
            "case {case}: {} of {} ({} bytes)",
            ["truncated", "zeroed", "corrupted"][mode],
            name(&victim),
            original.len()
        );
        let out = mpirun(2, &run, &["mosaic", d.to_str().unwrap(), "-o", "m.fits"]);
        let code = out.status.code();
        eprintln!("{what}: exit {code:?}");
        assert!(matches!(code, Some(0) | Some(1) | Some(3)), "{what}: {}", log(&out));
        worded(&out);
        match code {
            Some(3) => {
                let s = skipped(&run.join("tessera-out/plan/plan.json"));
                assert!(s.iter().any(|(n, _)| *n == name(&victim)), "{what}: skipped {s:?}\n{}", log(&out));
                assert!(run.join("m.fits").is_file(), "{what}");
            }
            Some(1) => {
                assert!(err(&out).contains("tessera: error:"), "{what}: {}", log(&out));
                assert!(!run.join("m.fits").exists(), "{what}: a mosaic after a fatal error");
            }
            _ => assert!(!damaged, "{what}: the damaged file was used silently\n{}", log(&out)),
        }
        // nothing half-written under a final name: no temporary file left beside the mosaic
        let strays: Vec<_> = std::fs::read_dir(&run)
            .unwrap()
            .map(|e| name(&e.unwrap().path()))
            .filter(|n| n.ends_with(".tmp") || n.ends_with(".partial"))
            .collect();
        assert!(strays.is_empty(), "{what}: {strays:?}");
    }
}

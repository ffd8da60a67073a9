//! The stage interface end to end: `--stop-after` then `--resume`, a rank killed during drizzle,
//! a changed config key, a product edited by hand, the per-stage commands chained by hand, and the
//! refusals (a folder holding another run, a missing upstream stage). Every mosaic is compared to the
//! bytes of an uninterrupted run in the same folder with the same arguments.

use crate::common::{mpirun, ok, tessera, tiny_lw, tiny_miri, tmp};
use std::path::Path;
use std::process::Output;
use tessera::stages::manifest::{Manifest, Status};

/// Run `tessera` (n = 0: without mpirun) in `work` on `scene` into `out/` and `m.fits`.
fn run(n: usize, work: &Path, scene: &Path, extra: &[&str]) -> Output {
    let dir = scene.to_str().unwrap();
    let cat = scene.join("aux/refcat.csv");
    let cat = cat.to_str().unwrap();
    // the `--set`s go before the subcommand, the flags after it
    let mut args: Vec<&str> = vec!["--set", "run.output_dir=\"out\""];
    let mut flags = vec![];
    let mut it = extra.iter();
    while let Some(&a) = it.next() {
        if a == "--set" {
            args.extend(["--set", it.next().expect("a value after --set")]);
        } else {
            flags.push(a);
        }
    }
    args.extend(["mosaic", dir, "-o", "m.fits", "--catalog", cat]);
    args.extend(flags);
    if n == 0 {
        tessera(work, &args)
    } else {
        mpirun(n, work, &args)
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn manifest(work: &Path) -> Manifest {
    Manifest::read(&work.join("out")).unwrap().expect("manifest.json written")
}

/// The stages the manifest says were reused (kept by --resume) and run.
fn reused_and_run(m: &Manifest) -> (Vec<String>, Vec<String>) {
    let done: Vec<_> = m.stages.iter().filter(|e| e.status == Status::Done).collect();
    (
        done.iter().filter(|e| e.reused).map(|e| e.stage.clone()).collect(),
        done.iter().filter(|e| !e.reused).map(|e| e.stage.clone()).collect(),
    )
}

const STOPS: [&str; 9] =
    ["plan", "prep", "destripe", "align", "level", "destripe_multi", "outlier", "drizzle", "assemble"];

/// For every stage: `--stop-after` it, then `--resume`, gives the uninterrupted run's mosaic to the
/// byte, and the resumed run reruns exactly the stages after the stop.
fn stop_and_resume_everywhere(n: usize, scene: &Path) {
    let w = tmp();
    ok(&run(n, w.path(), scene, &[]));
    let reference = std::fs::read(w.path().join("m.fits")).unwrap();
    let m = manifest(w.path());
    assert!(m.stages.iter().all(|e| e.status != Status::Running && e.status != Status::Failed), "{m:?}");
    assert_eq!(m.stages.len(), tessera::stages::runner::CHAIN.len(), "every stage has an entry");
    for (i, stop) in STOPS.iter().enumerate() {
        ok(&run(n, w.path(), scene, &["--overwrite", "--stop-after", stop]));
        let partial = manifest(w.path());
        assert_eq!(partial.stages.last().unwrap().stage, *stop, "the manifest ends at the stop");
        let o = run(n, w.path(), scene, &["--resume"]);
        ok(&o);
        assert!(
            std::fs::read(w.path().join("m.fits")).unwrap() == reference,
            "{n} ranks: --stop-after {stop} then --resume gives another mosaic"
        );
        let (reused, ran) = reused_and_run(&manifest(w.path()));
        let upto: Vec<&str> = STOPS[..=i].to_vec();
        // stages turned off for this scene (none here) would be `skipped`; every stage up to the
        // stop that did something is reused
        assert!(reused.iter().all(|s| upto.contains(&s.as_str())), "{stop}: reused {reused:?}");
        assert!(ran.iter().all(|s| !upto.contains(&s.as_str())), "{stop}: ran again {ran:?}");
        assert!(stderr(&o).contains(&format!("[{stop}] done in an earlier run")), "{}", stderr(&o));
    }
}

#[test]
fn stop_after_any_stage_then_resume_is_bit_identical_on_one_rank() {
    stop_and_resume_everywhere(0, tiny_lw());
}

#[test]
fn stop_after_any_stage_then_resume_is_bit_identical_on_two_ranks_with_prep_copies() {
    // MIRI: prep writes background-subtracted copies that the later stages read
    stop_and_resume_everywhere(2, tiny_miri());
}

#[test]
fn a_rank_killed_during_drizzle_resumes_from_drizzle_to_the_same_bytes() {
    let scene = tiny_lw();
    let w = tmp();
    ok(&run(2, w.path(), scene, &[]));
    let reference = std::fs::read(w.path().join("m.fits")).unwrap();
    // rank 1 kills itself (SIGKILL) after writing its first chunk
    let mut c = std::process::Command::new("timeout");
    let dir = scene.to_str().unwrap();
    let cat = scene.join("aux/refcat.csv");
    c.args(["300", "mpirun", "-n", "2", "--oversubscribe", crate::common::bin()])
        .args(["--set", "run.output_dir=\"out\"", "mosaic", dir, "-o", "m.fits", "--overwrite"])
        .args(["--catalog", cat.to_str().unwrap()])
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        .env("TESSERA_FAULT", "drizzle.chunk@1:kill")
        .current_dir(w.path());
    let killed = c.output().unwrap();
    assert_ne!(killed.status.code(), Some(124), "the killed job hung");
    assert!(!killed.status.success(), "the job survived the kill: {}", stderr(&killed));
    let m = manifest(w.path());
    assert_eq!(m.stage("drizzle").map(|e| e.status), Some(Status::Running), "{m:?}");
    assert!(m.stage("assemble").is_none());
    assert!(!w.path().join("out/drizzle/F300M.h5").exists(), "a half-written store under its final name");
    let o = run(2, w.path(), scene, &["--resume"]);
    ok(&o);
    assert!(stderr(&o).contains("resuming at drizzle: interrupted last time"), "{}", stderr(&o));
    assert!(std::fs::read(w.path().join("m.fits")).unwrap() == reference, "the resumed mosaic differs");
    let (reused, ran) = reused_and_run(&manifest(w.path()));
    assert_eq!(reused, ["plan", "prep", "destripe", "align", "level", "destripe_multi", "outlier"]);
    assert_eq!(ran, ["drizzle", "assemble", "astrometry"]);
}

#[test]
fn a_changed_key_reruns_its_stage_and_those_after_and_an_edited_product_is_not_reused() {
    let scene = tiny_lw();
    let w = tmp();
    ok(&run(0, w.path(), scene, &[]));
    // a level key: plan..align are kept, level onwards rerun
    let o = run(0, w.path(), scene, &["--resume", "--set", "level.sigma=2.5"]);
    ok(&o);
    let (reused, ran) = reused_and_run(&manifest(w.path()));
    assert_eq!(reused, ["plan", "prep", "destripe", "align"]);
    assert_eq!(ran, ["level", "destripe_multi", "outlier", "drizzle", "assemble", "astrometry"]);
    assert!(stderr(&o).contains("resuming at level: its configuration"), "{}", stderr(&o));
    // nothing changed: nothing reruns
    let o = run(0, w.path(), scene, &["--resume", "--set", "level.sigma=2.5"]);
    ok(&o);
    let (reused, ran) = reused_and_run(&manifest(w.path()));
    assert!(ran.is_empty() && reused.len() == 10, "{ran:?}");
    let reference = std::fs::read(w.path().join("m.fits")).unwrap();
    // an astrometry key: assemble reruns too (astrometry rewrites its mosaic)
    let o = run(0, w.path(), scene, &["--resume", "--set", "level.sigma=2.5", "--set", "astrometry.brightest=150"]);
    ok(&o);
    let (_, ran) = reused_and_run(&manifest(w.path()));
    assert_eq!(ran, ["assemble", "astrometry"], "{}", stderr(&o));
    // a product edited by hand: its stage reruns, named in the log, and the result is as before
    let pairs = w.path().join("out/level/pairs.csv");
    let mut text = std::fs::read_to_string(&pairs).unwrap();
    text.push_str("edited\n");
    std::fs::write(&pairs, text).unwrap();
    let o = run(0, w.path(), scene, &["--resume", "--set", "level.sigma=2.5", "--set", "astrometry.brightest=150"]);
    ok(&o);
    assert!(stderr(&o).contains("its product level/pairs.csv changed"), "{}", stderr(&o));
    let (_, ran) = reused_and_run(&manifest(w.path()));
    assert_eq!(ran[0], "level");
    let _ = reference;
}

#[test]
fn an_input_edited_in_place_with_its_mtime_restored_reruns_the_plan() {
    // the inputs' checksums are reused from the manifest while their stamps (size, mtime, ctime,
    // inode) are unchanged: an edit must still be seen, even one that keeps the size and sets the
    // mtime back
    let w = tmp();
    let scene = w.path().join("scene");
    std::fs::create_dir(&scene).unwrap();
    let mut cals: Vec<_> = std::fs::read_dir(tiny_lw())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with("_cal.fits"))
        .collect();
    cals.sort();
    for c in &cals {
        std::fs::copy(c, scene.join(c.file_name().unwrap())).unwrap();
    }
    std::fs::create_dir(scene.join("aux")).unwrap();
    std::fs::copy(tiny_lw().join("aux/refcat.csv"), scene.join("aux/refcat.csv")).unwrap();
    // settled inputs get stamps
    std::thread::sleep(std::time::Duration::from_secs_f64(tessera::stages::manifest::SETTLED_S + 0.2));
    ok(&run(0, w.path(), &scene, &["--stop-after", "plan"]));
    let m = manifest(w.path());
    assert!(m.inputs.iter().all(|i| i.stamp.is_some()), "{:?}", m.inputs);
    // unchanged: the plan is kept
    ok(&run(0, w.path(), &scene, &["--stop-after", "plan", "--resume"]));
    let (reused, ran) = reused_and_run(&manifest(w.path()));
    assert_eq!((reused, ran), (vec!["plan".to_string()], vec![]));
    // one byte of the last input changed in place, its mtime restored
    let f = scene.join(cals.last().unwrap().file_name().unwrap());
    let mtime = std::fs::metadata(&f).unwrap().modified().unwrap();
    let mut bytes = std::fs::read(&f).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&f, &bytes).unwrap();
    std::fs::File::options().write(true).open(&f).unwrap().set_modified(mtime).unwrap();
    // (the edit breaks the file's checksums, so the plan may skip it: the exit status is not the point)
    let o = run(0, w.path(), &scene, &["--stop-after", "plan", "--resume"]);
    assert!(stderr(&o).contains("resuming at plan"), "{}", stderr(&o));
    let m = manifest(w.path());
    let rec = m.inputs.iter().find(|i| i.path.ends_with(&*f.file_name().unwrap().to_string_lossy())).unwrap();
    assert_eq!(rec.sha256, tessera::io::sha256_file(&f).unwrap().1, "the manifest has the edited file's checksum");
}

#[test]
fn per_stage_commands_chained_by_hand_give_the_mosaic_of_mosaic() {
    let scene = tiny_lw();
    let w = tmp();
    ok(&run(0, w.path(), scene, &[]));
    let reference = std::fs::read(w.path().join("m.fits")).unwrap();
    let m = manifest(w.path());
    std::fs::remove_dir_all(w.path().join("out")).unwrap();
    std::fs::remove_file(w.path().join("m.fits")).unwrap();
    let dir = scene.to_str().unwrap();
    let cat = scene.join("aux/refcat.csv");
    let cat = cat.to_str().unwrap();
    let set = ["--set", "run.output_dir=\"out\""];
    // a stage before its upstream: refused, naming what is missing
    let o = tessera(w.path(), &[&set[..], &["level", dir]].concat());
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no manifest.json") && stderr(&o).contains("tessera plan"), "{}", stderr(&o));
    ok(&tessera(w.path(), &[&set[..], &["plan", dir]].concat()));
    let o = tessera(w.path(), &[&set[..], &["level", dir]].concat());
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("upstream stage `prep`"), "{}", stderr(&o));
    for s in ["prep", "destripe", "align", "level", "destripe_multi", "outlier", "drizzle"] {
        ok(&tessera(w.path(), &[&set[..], &[s, dir]].concat()));
    }
    ok(&tessera(w.path(), &[&set[..], &["assemble", dir, "-o", "m.fits"]].concat()));
    ok(&tessera(w.path(), &[&set[..], &["astrometry", dir, "--catalog", cat]].concat()));
    assert!(std::fs::read(w.path().join("m.fits")).unwrap() == reference, "the mosaic by hand differs");
    // the same products, checksum for checksum
    let by_hand = manifest(w.path());
    for (a, b) in m.stages.iter().zip(&by_hand.stages) {
        let strip = |e: &tessera::stages::manifest::StageEntry| {
            e.products.iter().filter(|p| !p.path.ends_with("plan.json")).map(|p| p.sha256.clone()).collect::<Vec<_>>()
        };
        assert_eq!(strip(a), strip(b), "stage {}", a.stage);
    }
    // a later stage without --catalog continues with the run's catalogue: astrometry stays done
    // (not re-recorded as skipped), and the next per-stage command still finds it usable
    for s in ["anchor", "psfmatch", "anchor"] {
        ok(&tessera(w.path(), &[&set[..], &[s, dir]].concat()));
        let e = manifest(w.path()).stages.into_iter().find(|e| e.stage == "astrometry").unwrap();
        assert_eq!(e.status, tessera::stages::manifest::Status::Done, "after {s}: {e:?}");
    }
}

#[test]
fn a_folder_with_another_runs_products_is_refused_unless_resume_or_overwrite() {
    let scene = tiny_lw();
    let w = tmp();
    ok(&run(0, w.path(), scene, &["--stop-after", "plan"]));
    let before = std::fs::read(w.path().join("out/plan/plan.json")).unwrap();
    let o = run(0, w.path(), scene, &["--stop-after", "plan"]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("already holds the products of another run") && e.contains("--resume"), "{e}");
    assert_eq!(std::fs::read(w.path().join("out/plan/plan.json")).unwrap(), before, "refused, yet touched");
    ok(&run(0, w.path(), scene, &["--stop-after", "plan", "--overwrite"]));
}

#[test]
fn outlier_flags_reach_the_dq_of_the_crf_copies_and_the_tweakback_files() {
    let scene = tiny_lw();
    let w = tmp();
    ok(&run(0, w.path(), scene, &["--set", "outlier.write_crf=true"]));
    let flags: serde_json::Value =
        serde_json::from_slice(&std::fs::read(w.path().join("out/outlier/flags.json")).unwrap()).unwrap();
    let rows = flags["exposures"].as_array().unwrap();
    assert_eq!(rows.len(), 32);
    let total: u64 = rows.iter().map(|r| r["n_flagged"].as_u64().unwrap()).sum();
    assert!(total > 100, "the scene's cosmic rays give flags to carry ({total})");
    let bits = 1u32 | 16; // DO_NOT_USE | OUTLIER (JWST DQ bits 0 and 4)
    for r in rows {
        let file = r["file"].as_str().unwrap();
        let stem = file.strip_suffix("_cal.fits").unwrap();
        let cal = scene.join(file);
        let (ny, nx) = (64, r["nx"].as_u64().unwrap() as usize);
        let mut want = tessera::io::fits::read_region_dq(&cal, 0..ny, 0..nx).unwrap();
        for p in r["pixels"].as_array().unwrap() {
            let i = p.as_u64().unwrap() as usize;
            want[[i / nx, i % nx]] |= bits;
        }
        for f in [format!("out/outlier/{stem}_crf.fits"), format!("out/astrometry/{stem}_tweakback.fits")] {
            let got = tessera::io::fits::read_region_dq(&w.path().join(&f), 0..ny, 0..nx).unwrap();
            assert!(got == want, "{f}: DQ is not the cal file's with the flags OR-ed in");
        }
    }
}

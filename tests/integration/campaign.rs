//! Survey campaigns (issue 17) on 2 targets x 4 bands (NIRCam F300M and F335M, MIRI F770W and
//! F1000W), tiny 1x1-tile x 2-dither scenes: communicator groups give the same products as one group
//! and as one rank; a failed band is isolated and `--resume` reruns it and its dependents only;
//! per-band and per-instrument overrides take effect and mistyped keys are named; the common grid;
//! the release tree checked by `scripts/check_release.py` (astropy without warnings, checksums,
//! real PNGs); anchoring and PSF matching through a campaign on small filled-field scenes (the
//! internal ties wired to the reference bands' anchored mosaics, the release carrying the real
//! products, `--resume` rerunning a tie when its reference band's anchoring changes); and the Slurm and PBS job scripts run end to end through `srun`/`mpiexec`/`qstat`
//! stand-ins that hand the command to `mpirun`.

use crate::common::{bin, mpirun, ok, repo, simulate, tessera, tmp};
use crate::python::python;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use tessera::config::RawConfig;
use tessera::io::fits::{read_ext_f32, read_ext_u32, read_header};
use tessera::stages::campaign::{Summary, TaskStatus};
use tessera::stages::manifest::{Manifest, Status};

const BANDS: [(&str, &str); 4] =
    [("nircam_lw", "F300M"), ("nircam_lw", "F335M"), ("miri", "F770W"), ("miri", "F1000W")];

/// `<dir>/t<k>/<band>/`: the two targets, each band simulated with the target's seed (the same
/// visits and pointing errors in every band of a target, as one programme observes them).
fn inputs() -> &'static Path {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| {
        let d = crate::common::run_dir("campaign-inputs");
        for k in 1..=2 {
            for (inst, band) in BANDS {
                simulate(
                    &d.join(format!("t{k}")).join(band),
                    &[
                        &format!("simulate.instrument=\"{inst}\""),
                        &format!("simulate.filter=\"{band}\""),
                        "simulate.size=\"tiny\"",
                        "simulate.tiles=\"1x1\"",
                        "simulate.dithers=2",
                        &format!("simulate.seed={k}"),
                        &format!("simulate.target=\"ngc{k}\""),
                    ],
                );
            }
        }
        d
    })
}

/// A campaign file over `root`'s targets and `bands`, writing to `out`, with `extra` TOML first.
fn campaign(root: &Path, bands: &[&str], extra: &str) -> String {
    let mut t = format!("{extra}\n");
    for k in 1..=2 {
        let ins: Vec<String> =
            bands.iter().map(|b| format!("\"{}\"", root.join(format!("t{k}/{b}")).display())).collect();
        t += &format!(
            "[[target]]\nname = \"ngc{k}\"\ninputs = [{}]\ncatalog = \"{}\"\n",
            ins.join(", "),
            root.join(format!("t{k}/F300M/aux/refcat.csv")).display()
        );
    }
    t
}

fn summary(out: &Path) -> Summary {
    tessera::io::json::read_json(&out.join("campaign/summary.json")).unwrap()
}

fn status_of(s: &Summary, task: &str) -> (TaskStatus, bool) {
    let t = s.tasks.iter().find(|t| t.task == task).unwrap_or_else(|| panic!("{task} not in {s:?}"));
    (t.status, t.ran)
}

/// Every product that must not depend on groups or ranks, as bits: each mosaic's images and its
/// WCS (rewritten by astrometry), each tweakback file's SCI, DQ and WCS.
fn products(out: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut m = BTreeMap::new();
    let wcs_bits = |p: &Path, ext: &str| -> Vec<u8> {
        let h = read_header(p, ext).unwrap();
        let w = tessera::geom::TanSip::from_cards(&h).unwrap();
        format!("{:?}", w.to_cards()).into_bytes()
    };
    for k in 1..=2 {
        for (_, band) in BANDS {
            let dir = out.join(format!("ngc{k}/{band}"));
            let mosaic = dir.join(format!("ngc{k}_{}_i2d.fits", band.to_ascii_lowercase()));
            for e in ["SCI", "ERR", "WHT", "VAR_POISSON", "VAR_RNOISE", "VAR_FLAT"] {
                let a = read_ext_f32(&mosaic, e).unwrap();
                m.insert(format!("{band} {k} {e}"), a.iter().flat_map(|v| v.to_bits().to_le_bytes()).collect());
            }
            for e in ["CON", "DQ"] {
                let (_, v) = read_ext_u32(&mosaic, e).unwrap();
                m.insert(format!("{band} {k} {e}"), v.iter().flat_map(|v| v.to_le_bytes()).collect());
            }
            m.insert(format!("{band} {k} wcs"), wcs_bits(&mosaic, "SCI"));
            for f in tessera::io::list_files(&dir.join("astrometry")).unwrap() {
                let name = f.file_name().unwrap().to_string_lossy().into_owned();
                if name.ends_with("_tweakback.fits") {
                    let a = read_ext_f32(&f, "SCI").unwrap();
                    m.insert(format!("{name} SCI"), a.iter().flat_map(|v| v.to_bits().to_le_bytes()).collect());
                    let (_, dq) = read_ext_u32(&f, "DQ").unwrap();
                    m.insert(format!("{name} DQ"), dq.iter().flat_map(|v| v.to_le_bytes()).collect());
                    m.insert(format!("{name} wcs"), wcs_bits(&f, "SCI"));
                }
            }
        }
    }
    m
}

fn check_release(dirs: &[PathBuf]) {
    let out =
        Command::new(python()).arg(repo().join("scripts/check_release.py")).args(dirs).output().expect("python runs");
    assert!(
        out.status.success(),
        "check_release.py:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn groups_and_ranks_give_the_same_products_overrides_take_effect_and_the_release_checks() {
    let root = inputs();
    let extra = "[run]\noutput_dir = \"out\"\ngroups = GROUPS\nprogress_interval_s = 1.0\n[plan]\ncommon_grid = \"instrument\"\n\
                 [drizzle]\npixfrac = { F335M = 0.8 }\n[outlier]\nenabled = { miri = false }\n";
    let toml = |g: usize| campaign(root, &BANDS.map(|b| b.1), &extra.replace("GROUPS", &g.to_string()));
    // two groups of two ranks
    let w2 = tmp();
    std::fs::write(w2.path().join("c.toml"), toml(2)).unwrap();
    let o = mpirun(4, w2.path(), &["run", "c.toml"]);
    let stdout = ok(&o);
    // world rank 0's campaign progress line
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.lines().any(|l| l.contains("[run] campaign:") && l.contains("tasks done")), "{stderr}");
    let out2 = w2.path().join("out");
    let s = summary(&out2);
    assert_eq!((s.groups, s.ranks, s.tasks.len()), (2, 4, 8), "{stdout}");
    assert!(s.tasks.iter().all(|t| t.status == TaskStatus::Done && t.ranks == 2), "{stdout}");
    assert!(
        stdout.contains("campaign: 8 tasks on 2 group(s) of 4 ranks") && stdout.contains("ngc2/F1000W"),
        "{stdout}"
    );
    // the reference band of each instrument ran before the band that takes its solutions, in each target
    for k in 1..=2 {
        let pos = |b: &str| s.tasks.iter().position(|t| t.task == format!("ngc{k}/{b}")).unwrap();
        assert!(pos("F300M") < pos("F335M") && pos("F1000W") < pos("F770W"));
    }

    // the per-band override reached F335M alone, the per-instrument one the MIRI bands alone
    let manifest = |k: usize, band: &str| Manifest::read(&out2.join(format!("ngc{k}/{band}"))).unwrap().unwrap();
    let pixfrac = |band: &str| toml::from_str::<RawConfig>(&manifest(1, band).config_toml).unwrap().drizzle.pixfrac;
    assert_eq!((pixfrac("F335M"), pixfrac("F300M"), pixfrac("F770W")), (0.8, 1.0, 1.0));
    for k in 1..=2 {
        for (inst, band) in BANDS {
            let e = manifest(k, band).stages.into_iter().find(|e| e.stage == "outlier").unwrap();
            if inst == "miri" {
                assert_eq!(e.status, Status::Skipped, "{band}");
                assert_eq!(e.reason.as_deref(), Some("outlier.enabled = false"));
            } else {
                assert_eq!(e.status, Status::Done, "{band}");
            }
        }
    }
    // the common grid: the bands of one instrument share one grid, the instruments do not
    let grid = |k: usize, band: &str| {
        let p = out2.join(format!("ngc{k}/{band}/ngc{k}_{}_i2d.fits", band.to_ascii_lowercase()));
        let h = read_header(&p, "SCI").unwrap();
        ["NAXIS1", "NAXIS2", "CRVAL1", "CRVAL2", "CRPIX1", "CRPIX2"].map(|c| format!("{:?}", h[c]))
    };
    for k in 1..=2 {
        assert_eq!(grid(k, "F300M"), grid(k, "F335M"));
        assert_eq!(grid(k, "F770W"), grid(k, "F1000W"));
        assert_ne!(grid(k, "F300M")[..2], grid(k, "F770W")[..2]);
    }
    // the release tree: every FITS opens in astropy without warnings, checksums, PNGs of the mosaics
    let rel = out2.join("release/v1");
    check_release(&[rel.join("ngc1"), rel.join("ngc2")]);
    let m: tessera::stages::release::ReleaseManifest =
        tessera::io::json::read_json(&rel.join("ngc1/manifest.json")).unwrap();
    assert_eq!(m.bands.len(), 4);
    assert_eq!(m.composites.len(), 2, "one colour image per instrument on the common grid: {:?}", m.notes);
    assert!(m.bands.iter().filter(|b| b.band.starts_with("F3")).all(|b| b.tweakback == 4 && b.diagnostic_plots > 0));

    // one group of four ranks, and one rank: the same products to the bit
    let reference = products(&out2);
    assert!(reference.len() > 8 * 9);
    let w1 = tmp();
    std::fs::write(w1.path().join("c.toml"), toml(1)).unwrap();
    ok(&mpirun(4, w1.path(), &["run", "c.toml"]));
    assert_eq!(summary(&w1.path().join("out")).groups, 1);
    let one_group = products(&w1.path().join("out"));
    for (k, v) in &reference {
        assert!(one_group.get(k) == Some(v), "{k}: 2 groups differ from 1 group");
    }
    let ws = tmp();
    std::fs::write(ws.path().join("c.toml"), toml(2)).unwrap();
    ok(&tessera(ws.path(), &["run", "c.toml"]));
    assert_eq!(summary(&ws.path().join("out")).groups, 1, "2 groups of 1 rank: one");
    let serial = products(&ws.path().join("out"));
    assert_eq!(serial.len(), reference.len());
    for (k, v) in &reference {
        assert!(serial.get(k) == Some(v), "{k}: 4 ranks in 2 groups differ from 1 rank");
    }

    // what the anchor and psfmatch stages leave (issue 16), faked: an ANCHOR keyword in the F300M
    // mosaic, a PSF-matched copy beside it
    let f300 = out2.join("ngc1/F300M/ngc1_f300m_i2d.fits");
    let anchor = [tessera::io::fits::card_real("ANCHOR", 0.0123, "background offset, MJy/sr")];
    tessera::io::fits::copy_for_release(&f300, &f300, &[], &anchor, &[]).unwrap();
    let matched = out2.join("ngc1/F300M/ngc1_f300m_i2d_atF1000W.fits");
    tessera::io::fits::copy_for_release(&f300, &matched, &["VAR_RNOISE"], &[], &[]).unwrap();
    // compare_to: this release against the one-rank run's release (the same bits): zero differences;
    // remove_bloat drops the VAR_* extensions (those the PSF-matched copy still has)
    let set = format!("release.compare_to=\"{}\"", ws.path().join("out/release/v1").display());
    ok(&tessera(
        w2.path(),
        &["--set", &set, "--set", "release.version=\"v2\"", "--set", "release.remove_bloat=true", "release", "c.toml"],
    ));
    let m: tessera::stages::release::ReleaseManifest =
        tessera::io::json::read_json(&out2.join("release/v2/ngc1/manifest.json")).unwrap();
    let b300 = m.bands.iter().find(|b| b.band == "F300M").unwrap();
    assert!(b300.anchored && b300.psf_matched == ["F300M_psf_matched/ngc1_f300m_i2d_atF1000W.fits"], "{b300:?}");
    assert!(m.bands.iter().filter(|b| b.band != "F300M").all(|b| !b.anchored && b.psf_matched.is_empty()));
    for f in ["ngc1_f335m_i2d.fits", "F300M_psf_matched/ngc1_f300m_i2d_atF1000W.fits"] {
        let p = out2.join("release/v2/ngc1").join(f);
        assert!(read_ext_f32(&p, "SCI").is_ok() && read_ext_f32(&p, "ERR").is_ok(), "{f}");
        for e in tessera::stages::release::BLOAT {
            assert!(read_header(&p, e).is_err(), "{f}: {e} not removed");
        }
    }
    let csv = std::fs::read_to_string(out2.join("release/v2/ngc1/compare/compare.csv")).unwrap();
    assert_eq!(csv.lines().count(), 5, "{csv}");
    for line in csv.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        assert!(f[1].parse::<usize>().unwrap() > 1000, "{line}");
        assert_eq!((f[2].parse::<f64>().unwrap(), f[3].parse::<f64>().unwrap()), (0.0, 0.0), "{line}");
    }
    check_release(&[out2.join("release/v2/ngc1")]);
}

#[test]
fn a_failed_band_is_isolated_and_resume_reruns_it_and_what_depends_on_it() {
    // a copy of the inputs with one corrupted file: the reference band F300M of ngc2 gets a WCS ten
    // times too coarse (a damaged header that still reads)
    let w = tmp();
    let root = w.path().join("in");
    for k in 1..=2 {
        for (_, band) in BANDS {
            let (src, dst) = (inputs().join(format!("t{k}/{band}")), root.join(format!("t{k}/{band}")));
            for f in tessera::io::list_files(&src).unwrap() {
                let to = dst.join(f.strip_prefix(&src).unwrap());
                std::fs::create_dir_all(to.parent().unwrap()).unwrap();
                std::fs::copy(&f, &to).unwrap();
            }
        }
    }
    let victim = crate::common::cal_files(&root.join("t2/F300M"))[0].clone();
    let good = std::fs::read(&victim).unwrap();
    let meta = tessera::io::fits::read_cal_meta(&victim).unwrap();
    let mut bad = meta.wcs.clone();
    for r in &mut bad.cd {
        for v in r.iter_mut() {
            *v *= 10.0;
        }
    }
    tessera::io::fits::copy_with_wcs(&victim, &victim, &["SCI"], &bad.to_cards(), &[]).unwrap();
    std::fs::write(
        w.path().join("c.toml"),
        campaign(&root, &BANDS.map(|b| b.1), "[run]\noutput_dir = \"out\"\ngroups = 2\n"),
    )
    .unwrap();
    let o = mpirun(4, w.path(), &["run", "c.toml"]);
    assert_eq!(o.status.code(), Some(3), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let out = w.path().join("out");
    let s = summary(&out);
    let failed = s.tasks.iter().find(|t| t.task == "ngc2/F300M").unwrap();
    assert_eq!(failed.status, TaskStatus::Failed, "{stdout}");
    assert!(failed.reason.as_deref().unwrap().contains("pixel scale"), "{failed:?}");
    assert!(stdout.lines().any(|l| l.starts_with("ngc2/F300M") && l.contains("failed")), "{stdout}");
    for t in s.tasks.iter().filter(|t| t.task != "ngc2/F300M") {
        assert_eq!(t.status, TaskStatus::Done, "{}: {stdout}", t.task);
    }
    // kept for inspection: its manifest says where it stopped
    let m = Manifest::read(&out.join("ngc2/F300M")).unwrap().unwrap();
    assert!(m.stages.iter().any(|e| e.stage == "plan" && e.status == Status::Failed));
    // F335M solved its own alignment (its reference failed), with a warning
    let a: serde_json::Value = tessera::io::json::read_json(&out.join("ngc2/F335M/align/align.json")).unwrap();
    assert!(!a["method"].as_str().unwrap().starts_with("from "), "{a}");

    // fixed: --resume reruns ngc2/F300M and ngc2/F335M (which now takes its solutions), keeps the rest
    std::fs::write(&victim, good).unwrap();
    let o = mpirun(4, w.path(), &["run", "c.toml", "--resume"]);
    let stdout = ok(&o);
    let s = summary(&out);
    for t in &s.tasks {
        let rerun = t.task == "ngc2/F300M" || t.task == "ngc2/F335M";
        assert_eq!((t.status, t.ran), (TaskStatus::Done, rerun), "{}: {stdout}", t.task);
        if !rerun {
            let m = Manifest::read(&out.join(&t.task)).unwrap().unwrap();
            assert!(m.stages.iter().all(|e| e.reused || e.status == Status::Skipped), "{}", t.task);
        }
    }
    assert_eq!(status_of(&s, "ngc1/F300M"), (TaskStatus::Done, false));
    let a: serde_json::Value = tessera::io::json::read_json(&out.join("ngc2/F335M/align/align.json")).unwrap();
    assert!(a["method"].as_str().unwrap().starts_with("from "), "{a}");
}

#[test]
fn mistyped_bands_and_targets_are_named_and_a_listed_band_without_inputs_fails() {
    let w = tmp();
    let root = inputs();
    let check = |toml: &str, key: &str| {
        std::fs::write(w.path().join("bad.toml"), toml).unwrap();
        let o = tessera(w.path(), &["config", "check", "bad.toml"]);
        let e = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{e}");
        assert!(e.contains(key), "{key}: {e}");
    };
    check(&campaign(root, &["F770W"], "[level]\nsigma = { F7700W = 2.0 }\n"), "level.sigma.F7700W");
    check(&campaign(root, &["F770W"], "[level]\nsigma = { ngc3 = 2.0 }\n"), "level.sigma.ngc3");
    check(&campaign(root, &["F770W"], "[level]\nsigma = { miri = -2.0 }\n"), "level.sigma");
    check(&format!("{}bands = [\"F7700W\"]\n", campaign(root, &["F770W"], "")), "target[1].bands");
    // a real band the inputs do not have: reported as failed, not skipped in silence
    let toml = format!(
        "[run]\noutput_dir = \"out\"\n[[target]]\nname = \"ngc2\"\ninputs = [\"{}\"]\nbands = [\"F770W\", \"F2100W\"]\n",
        root.join("t2/F770W").display()
    );
    std::fs::write(w.path().join("c.toml"), &toml).unwrap();
    let o = tessera(w.path(), &["run", "c.toml"]);
    assert_eq!(o.status.code(), Some(3), "{}", String::from_utf8_lossy(&o.stderr));
    let s = summary(&w.path().join("out"));
    assert_eq!(status_of(&s, "ngc2/F770W").0, TaskStatus::Done);
    let f = s.tasks.iter().find(|t| t.task == "ngc2/F2100W").unwrap();
    assert_eq!(f.status, TaskStatus::Failed);
    assert!(f.reason.as_deref().unwrap().contains("no input"), "{f:?}");
}

/// A folder of stand-ins: `srun` and `mpiexec` hand the command to `mpirun` (with the job's rank
/// count), `qstat -f` reports the PBS job's memory.
/// One target (`ngc3`) in the four bands, scenes whose galaxy fills the field (so anchoring has
/// something to do; NIRCam small, MIRI medium: a small MIRI field of 28" holds too few IRAC4 pixels
/// of 1.2" for bins of 0.1 MJy/sr), each with its simulated references (`aux/irac1.fits`, ...) and PSF
/// (`aux/psf_<BAND>_os4.fits`).
fn filled_inputs() -> &'static Path {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| {
        let d = crate::common::run_dir("campaign-filled-inputs");
        for (inst, band) in BANDS {
            simulate(
                &d.join(band),
                &[
                    &format!("simulate.instrument=\"{inst}\""),
                    &format!("simulate.filter=\"{band}\""),
                    if inst == "miri" { "simulate.size=\"medium\"" } else { "simulate.size=\"small\"" },
                    "simulate.tiles=\"1x1\"",
                    "simulate.dithers=2",
                    "simulate.seed=3",
                    "simulate.target=\"ngc3\"",
                    "simulate.fill_field=true",
                    "simulate.saturate=false",
                    "simulate.miri_off_exposures=0",
                ],
            );
        }
        d
    })
}

/// The anchoring and PSF-matching of a campaign (issues 16 and 17): per-instrument references and
/// targets through overrides; F300M and F770W anchored to IRAC1 and IRAC4, F335M and F1000W tied to
/// them (F1000W, MIRI's alignment reference, runs before F770W: it stops after astrometry and waits);
/// the PSF-matched mosaics, F770W's regridded onto F1000W's mosaic; the release carrying the real
/// products; `--resume` keeping everything, and an anchoring that changes in F770W rerunning
/// F1000W's anchoring (the reference mosaic's checksum is in its dependency hash) and nothing
/// upstream of it.
#[test]
fn a_campaign_anchors_and_psf_matches_every_band_and_the_release_carries_them() {
    use tessera::stages::anchor::AnchorReport;
    let root = filled_inputs();
    let aux = |band: &str, f: &str| format!("\"{}\"", root.join(band).join("aux").join(f).display());
    let psfs: Vec<String> = BANDS.iter().map(|(_, b)| aux(b, &format!("psf_{b}_os4.fits"))).collect();
    let toml = format!(
        "[run]\noutput_dir = \"out\"\ngroups = 2\n\
         [anchor]\nauto_range = true\nreferences = {{ nircam = [{}, {}], miri = [{}, {}] }}\n\
         [psfmatch]\npsf = [{}]\ntargets = {{ nircam = [\"gauss0p90\"], miri = [\"F1000W\"] }}\nnoise_curve = false\n\
         [[target]]\nname = \"ngc3\"\ninputs = [{}]\ncatalog = \"{}\"\n",
        aux("F300M", "irac1.fits"),
        aux("F300M", "wise1.fits"),
        aux("F770W", "irac4.fits"),
        aux("F770W", "wise3.fits"),
        psfs.join(", "),
        BANDS.iter().map(|(_, b)| format!("\"{}\"", root.join(b).display())).collect::<Vec<_>>().join(", "),
        root.join("F300M/aux/refcat.csv").display()
    );
    let w = tmp();
    std::fs::write(w.path().join("c.toml"), &toml).unwrap();
    let o = mpirun(2, w.path(), &["run", "c.toml"]);
    let stdout = ok(&o);
    let stderr = String::from_utf8_lossy(&o.stderr);
    let out = w.path().join("out");
    let s = summary(&out);
    assert!(s.tasks.iter().all(|t| t.status == TaskStatus::Done), "{stdout}");
    assert!(
        stderr.contains("ngc3/F1000W: stopped after astrometry until F770W, its anchor reference band, is anchored"),
        "{stderr}"
    );
    let mosaic = |b: &str| out.join(format!("ngc3/{b}/ngc3_{}_i2d.fits", b.to_ascii_lowercase()));
    let report = |b: &str| -> AnchorReport {
        tessera::io::json::read_json(&out.join(format!("ngc3/{b}/anchor/anchor.json"))).unwrap()
    };
    let card = |p: &Path, k: &str| match read_header(p, "PRIMARY").unwrap().get(k) {
        Some(tessera::geom::CardValue::Real(v)) => *v,
        other => panic!("{} {k}: {other:?}", p.display()),
    };
    // the reference bands against their wide-field references, the others tied to them
    for (band, mode, reference) in [
        ("F300M", "external", "irac1"),
        ("F770W", "external", "irac4"),
        ("F335M", "internal", ""),
        ("F1000W", "internal", ""),
    ] {
        let r = report(band);
        assert_eq!(r.mode, mode, "{band}: {r:?}");
        if mode == "external" {
            assert_eq!(r.reference_name, reference);
        } else {
            let rb = if band == "F335M" { "F300M" } else { "F770W" };
            assert_eq!(r.reference, mosaic(rb), "{band}");
            assert_eq!(r.reference_band_offset_mjysr, Some(card(&mosaic(rb), "ANCHOR")), "{band}");
        }
        assert_eq!(card(&mosaic(band), "ANCHOR"), r.offset_mjysr, "{band}");
    }
    // the PSF-matched mosaics: NIRCam at 0.9", F770W at F1000W's PSF on F1000W's grid, F1000W not
    // matched to itself
    for b in ["F300M", "F335M"] {
        let p = out.join(format!("ngc3/{b}/ngc3_{}_i2d_atgauss0p90.fits", b.to_ascii_lowercase()));
        assert!((card(&p, "BMAJ") * 3600.0 - 0.9).abs() < 1e-9, "{}", p.display());
    }
    let pm: serde_json::Value = tessera::io::json::read_json(&out.join("ngc3/F770W/psfmatch/psfmatch.json")).unwrap();
    assert_eq!(pm["targets"][0]["regridded_onto"].as_str().map(PathBuf::from), Some(mosaic("F1000W")), "{pm}");
    let matched = out.join("ngc3/F770W/ngc3_f770w_i2d_atF1000W.fits");
    let dims = |p: &Path| {
        let h = read_header(p, "SCI").unwrap();
        ["NAXIS1", "NAXIS2", "CRVAL1", "CRVAL2"].map(|c| format!("{:?}", h[c]))
    };
    assert_eq!(dims(&matched), dims(&mosaic("F1000W")));
    let f1000 = Manifest::read(&out.join("ngc3/F1000W")).unwrap().unwrap();
    let st = |m: &Manifest, stage: &str| m.stages.iter().find(|e| e.stage == stage).unwrap().clone();
    assert_eq!(st(&f1000, "psfmatch").status, Status::Skipped);
    assert_eq!(st(&f1000, "psfmatch").reason.as_deref(), Some("psfmatch.targets name only F1000W itself"));
    // the release carries them: anchored mosaics, the PSF-matched copies, and checks out
    let rel = out.join("release/v1/ngc3");
    let m: tessera::stages::release::ReleaseManifest =
        tessera::io::json::read_json(&rel.join("manifest.json")).unwrap();
    assert_eq!(m.bands.len(), 4);
    for b in &m.bands {
        assert!(b.anchored, "{b:?}");
        assert_eq!(b.psf_matched.len(), usize::from(b.band != "F1000W"), "{b:?}");
    }
    check_release(std::slice::from_ref(&rel));

    // --resume on one rank: everything kept
    let again = tessera(w.path(), &["run", "c.toml", "--resume"]);
    let text = ok(&again);
    let s = summary(&out);
    assert!(
        s.tasks.iter().all(|t| t.status == TaskStatus::Done && !t.ran),
        "{text}\n{}",
        String::from_utf8_lossy(&again.stderr)
    );
    // F770W's anchoring changes (a per-band override): F770W reruns anchor and psfmatch, F1000W its
    // anchoring (with its mosaic rebuilt first: assemble and astrometry), NIRCam nothing
    let before = report("F1000W").offset_mjysr;
    let changed = toml.replace("auto_range = true\n", "auto_range = true\nbin_width_mjysr = { F770W = 0.2 }\n");
    assert_ne!(changed, toml);
    std::fs::write(w.path().join("c.toml"), changed).unwrap();
    let text = ok(&tessera(w.path(), &["run", "c.toml", "--resume"]));
    let s = summary(&out);
    for (band, ran) in [("F300M", false), ("F335M", false), ("F770W", true), ("F1000W", true)] {
        assert_eq!(status_of(&s, &format!("ngc3/{band}")), (TaskStatus::Done, ran), "{band}: {text}");
    }
    let f1000 = Manifest::read(&out.join("ngc3/F1000W")).unwrap().unwrap();
    for e in f1000.stages.iter().filter(|e| e.status == Status::Done) {
        let upstream =
            tessera::stages::Stage::from_name(&e.stage).unwrap().order() < tessera::stages::Stage::Assemble.order();
        assert_eq!(e.reused, upstream, "F1000W {}: reused {}", e.stage, e.reused);
    }
    assert_ne!(report("F1000W").offset_mjysr, before, "F1000W's tie moved with F770W's anchoring");
    assert_eq!(report("F1000W").reference_band_offset_mjysr, Some(card(&mosaic("F770W"), "ANCHOR")));
}

fn stand_ins(dir: &Path) -> PathBuf {
    let b = dir.join("standin");
    std::fs::create_dir_all(&b).unwrap();
    let write = |name: &str, text: &str| {
        let p = b.join(name);
        std::fs::write(&p, text).unwrap();
        Command::new("chmod").arg("+x").arg(&p).status().unwrap();
    };
    write("srun", "#!/bin/bash\nexec mpirun -n \"${SLURM_NTASKS:-1}\" --oversubscribe \"$@\"\n");
    write("mpiexec", "#!/bin/bash\nexec mpirun --oversubscribe \"$@\"\n");
    write("qstat", "#!/bin/bash\necho \"Job Id: $2\"\necho \"    Resource_List.mem = 2gb\"\n");
    b
}

fn job(dir: &Path, script: &str, args: &[&str], env: &[(&str, String)]) -> Output {
    let standin = stand_ins(dir);
    let path = format!(
        "{}:{}:{}",
        standin.display(),
        Path::new(bin()).parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut c = Command::new("timeout");
    c.args(["300", "bash", &repo().join("jobs").join(script).display().to_string()]).args(args).current_dir(dir);
    c.env("PATH", path).env("TESSERA", bin()).env("JOBS_DIR", repo().join("jobs"));
    crate::common::open_mpi_env(&mut c);
    for (k, v) in env {
        c.env(k, v);
    }
    let o = c.output().expect("the job script runs");
    assert_ne!(o.status.code(), Some(124), "{script} timed out");
    o
}

#[test]
fn slurm_and_pbs_scripts_run_end_to_end_through_stand_ins() {
    let root = inputs();
    let w = tmp();
    let d = w.path();
    // the MIRI bands of both targets (the fast ones)
    std::fs::write(d.join("c.toml"), campaign(root, &["F770W", "F1000W"], "[run]\noutput_dir = \"out\"\n")).unwrap();
    let slurm = |array_task: Option<&str>| -> Vec<(&'static str, String)> {
        let mut v: Vec<(&'static str, String)> = vec![
            ("SLURM_JOB_ID", "7".into()),
            ("SLURM_NTASKS", "2".into()),
            ("SLURM_CPUS_PER_TASK", "1".into()),
            ("SLURM_MEM_PER_CPU", "1024".into()),
        ];
        if let Some(i) = array_task {
            v.push(("SLURM_ARRAY_TASK_ID", i.into()));
        }
        v
    };
    let budget = |dir: &Path| {
        let m = Manifest::read(dir).unwrap().unwrap();
        let raw: RawConfig = toml::from_str(&m.config_toml).unwrap();
        (raw.run.mem_budget_mb, m.stages[0].ranks)
    };
    // one band
    let f770 = root.join("t1/F770W").display().to_string();
    ok(&job(d, "slurm-band.sh", &[&f770, "band/m.fits", "c.toml"], &slurm(None)));
    assert!(d.join("band/m.fits").is_file());
    assert_eq!(budget(&d.join("out")), (768, 2), "3/4 of 1024 MiB per CPU x 1 CPU, 2 tasks");
    std::fs::remove_dir_all(d.join("out")).unwrap();
    // the array task of the second target
    ok(&job(d, "slurm-array.sh", &["c.toml"], &slurm(Some("2"))));
    let s = summary(&d.join("out"));
    assert!(s.tasks.iter().all(|t| t.target == "ngc2" && t.status == TaskStatus::Done) && s.tasks.len() == 2, "{s:?}");
    assert!(d.join("out/release/v1/ngc2/manifest.json").is_file() && !d.join("out/ngc1").exists());
    // the campaign with two groups (resuming the array task's target)
    ok(&job(d, "slurm-campaign.sh", &["c.toml", "2"], &slurm(None)));
    let s = summary(&d.join("out"));
    assert_eq!((s.groups, s.tasks.len()), (2, 4));
    assert_eq!(status_of(&s, "ngc2/F770W"), (TaskStatus::Done, false), "kept from the array task");
    assert_eq!(status_of(&s, "ngc1/F770W"), (TaskStatus::Done, true));
    std::fs::remove_dir_all(d.join("out")).unwrap();

    // PBS: two processes in the node file, 2 GB for the job
    std::fs::write(d.join("nodes"), "node1\nnode1\n").unwrap();
    let pbs = |extra: &[(&'static str, String)]| -> Vec<(&'static str, String)> {
        let mut v: Vec<(&'static str, String)> = vec![
            ("PBS_JOBID", "8.server".into()),
            ("PBS_NODEFILE", d.join("nodes").display().to_string()),
            ("PBS_O_WORKDIR", d.display().to_string()),
            ("OMP_NUM_THREADS", "1".into()),
            ("CONFIG", "c.toml".into()),
            ("CAMPAIGN", "c.toml".into()),
        ];
        v.extend_from_slice(extra);
        v
    };
    ok(&job(d, "pbs-band.sh", &[], &pbs(&[("CALDIR", f770.clone()), ("MOSAIC", "pbs/m.fits".into())])));
    assert!(d.join("pbs/m.fits").is_file());
    assert_eq!(budget(&d.join("out")), (768, 2), "3/4 of 2 GB over 2 processes");
    std::fs::remove_dir_all(d.join("out")).unwrap();
    ok(&job(d, "pbs-array.sh", &[], &pbs(&[("PBS_ARRAY_INDEX", "1".into())])));
    let s = summary(&d.join("out"));
    assert!(s.tasks.iter().all(|t| t.target == "ngc1" && t.status == TaskStatus::Done) && s.tasks.len() == 2, "{s:?}");
    // groups "auto": tiny bands fit one rank each, so as many groups as ranks (2, under the 4 chains)
    ok(&job(d, "pbs-campaign.sh", &[], &pbs(&[])));
    let s = summary(&d.join("out"));
    assert_eq!((s.groups, s.tasks.len()), (2, 4));
    assert!(s.tasks.iter().all(|t| t.status == TaskStatus::Done));
}

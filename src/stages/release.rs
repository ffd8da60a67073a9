//! `release`: the release tree of each target, `<release.dir>/<release.version>/<target>/`
//! (by default `<run.output_dir>/release/<version>/<target>/`), after pjpipe's release and
//! regress_against_previous steps (`pjpipe-algorithms.md` section 13). It holds:
//!
//! - each finished band's mosaic `<target>_<band>_i2d.fits` (the anchored one when the `anchor` stage
//!   has replaced it: an `ANCHOR` keyword), its PSF-matched versions (`<stem>_at<target>.fits` beside
//!   the mosaic) in `<band>_psf_matched/`, and its tweakback files in `<band>_tweakback/`, every FITS
//!   with `RELEASE` and HISTORY provenance and fresh checksums; `release.remove_bloat` drops the
//!   VAR_POISSON, VAR_RNOISE and VAR_FLAT extensions;
//! - the band's diagnostic plots (every PNG of its stage folders) compressed in
//!   `<band>_diagnostic_plots.tar.gz`;
//! - quick-look PNGs: `<target>_<band>_i2d.png`, an asinh stretch of each mosaic as the paper's
//!   Figure 9, and `<target>_<instrument>_rgb.png`, a three-colour composite of the bands of an
//!   instrument that share one grid (`plan.common_grid`);
//! - with `release.compare_to`, `compare/<stem>_diff.fits` (this release minus the previous one) per
//!   band on the same grid and `compare/compare.csv` (per band: pixels, median and rms difference);
//! - `manifest.json`: every file with its size and SHA-256, and the provenance of each band.
//!
//! The tree is written under a hidden temporary name and renamed when complete. Each target is
//! built by one rank (targets dealt round-robin over the world); nothing here is collective except
//! the final exchange of reports.

use super::campaign::{band_dir, mosaic_path, TaskReport, TaskStatus};
use super::Outcome;
use crate::config::{Config, Instrument};
use crate::dist::{Comm, CommExt};
use crate::io::fits::{card_text, Card};
use ndarray::Array2;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Instant;

/// The stage's name.
pub const STAGE: &str = "release";

/// The extensions `release.remove_bloat` drops.
pub const BLOAT: [&str; 3] = ["VAR_POISSON", "VAR_RNOISE", "VAR_FLAT"];

/// Quick-look PNGs are at most this many pixels on a side (larger mosaics are block-averaged).
pub const QUICKLOOK_MAX_PX: usize = 2048;

/// What the release of one target holds, or why it failed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TargetRelease {
    pub target: String,
    /// The release folder.
    pub dir: String,
    pub bands: Vec<String>,
    pub files: usize,
    pub wall_s: f64,
    #[serde(default)]
    pub error: Option<String>,
}

/// One file of the release manifest.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReleaseFile {
    /// Relative to the target's release folder.
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

/// The provenance of one band in the release.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReleaseBand {
    pub band: String,
    pub mosaic: String,
    /// The `anchor` stage's background offset is in the mosaic (`ANCHOR` keyword).
    pub anchored: bool,
    pub psf_matched: Vec<String>,
    pub tweakback: usize,
    pub diagnostic_plots: usize,
    /// The quick-look PNG, its size in pixels and the block size it was averaged over.
    pub quicklook: String,
    pub quicklook_px: [usize; 2],
    pub quicklook_block: usize,
    /// The config hash of the band's run (its manifest).
    pub config_sha256: String,
}

/// A row of the comparison with a previous release.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Comparison {
    pub band: String,
    /// Pixels finite in both.
    pub npix: usize,
    pub median_mjysr: f64,
    /// sqrt(mean(difference^2)).
    pub rms_mjysr: f64,
    /// Why there is no difference image (no previous mosaic, another grid).
    #[serde(default)]
    pub note: Option<String>,
}

/// `manifest.json` of a target's release.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReleaseManifest {
    pub tessera_version: String,
    pub release_version: String,
    pub target: String,
    pub remove_bloat: bool,
    pub bands: Vec<ReleaseBand>,
    /// Three-colour composites: (instrument, file, bands red green blue).
    pub composites: Vec<(String, String, [String; 3])>,
    pub notes: Vec<String>,
    #[serde(default)]
    pub compare_to: Option<String>,
    pub comparison: Vec<Comparison>,
    pub files: Vec<ReleaseFile>,
}

/// Build the release of every target with finished bands in `table` (rank `i % size` builds the
/// `i`-th target) and share the reports with every rank.
///
/// # Errors
/// A report that does not decode. A target whose release fails is reported in its `error`.
pub fn run_targets(world: &dyn Comm, cfg: &Config, table: &[TaskReport]) -> crate::Result<Vec<TargetRelease>> {
    let mut targets: Vec<(String, Vec<String>)> = vec![];
    for t in &cfg.targets {
        let bands: Vec<String> = table
            .iter()
            .filter(|r| r.target == t.name && matches!(r.status, TaskStatus::Done | TaskStatus::Partial))
            .map(|r| r.band.clone())
            .collect();
        if !bands.is_empty() {
            targets.push((t.name.clone(), bands));
        }
    }
    let mine: Vec<(usize, TargetRelease)> = targets
        .iter()
        .enumerate()
        .filter(|(i, _)| i % world.size() == world.rank())
        .map(|(i, (t, bands))| {
            let t0 = Instant::now();
            let dir = cfg.release.root(&cfg.run.output_dir).join(t);
            let r = build_target(cfg, t, bands);
            let (files, error) = match r {
                Ok(n) => (n, None),
                Err(e) => {
                    tracing::error!("[release] {t}: {e:#}");
                    (0, Some(format!("{e:#}")))
                }
            };
            if error.is_none() {
                tracing::info!("[release] {t}: {files} files in {}", dir.display());
            }
            let report = TargetRelease {
                target: t.clone(),
                dir: dir.display().to_string(),
                bands: bands.clone(),
                files,
                wall_s: t0.elapsed().as_secs_f64(),
                error,
            };
            (i, report)
        })
        .collect();
    let parts = world.gather_values(0, &mine)?;
    let all: Option<Vec<TargetRelease>> = parts.map(|p| {
        let mut v: Vec<(usize, TargetRelease)> = p.into_iter().flatten().collect();
        v.sort_by_key(|(i, _)| *i);
        v.into_iter().map(|(_, r)| r).collect()
    });
    Ok(world.broadcast_value(0, all.as_ref())?)
}

/// `tessera release config.toml`: the release of every band of the config's targets that a
/// campaign has finished (its manifest records `assemble` done and the mosaic exists).
///
/// # Errors
/// As [`run_targets`]; a config without targets.
pub fn run(world: &dyn Comm, cfg: &Config, only: &[String]) -> crate::Result<Outcome> {
    if cfg.targets.is_empty() {
        crate::bail!("the config lists no [[target]]: nothing to release");
    }
    let mut cfg = cfg.clone();
    if !only.is_empty() {
        cfg.targets.retain(|t| only.iter().any(|n| t.name.eq_ignore_ascii_case(n)));
    }
    let table: Vec<TaskReport> = world.on_root_then_broadcast(0, || -> Result<Vec<TaskReport>, String> {
        let mut v = vec![];
        for t in &cfg.targets {
            let Ok(entries) = std::fs::read_dir(cfg.run.output_dir.join(&t.name)) else { continue };
            let mut bands: Vec<String> =
                entries.flatten().filter_map(|e| e.file_name().to_str().map(str::to_string)).collect();
            bands.sort();
            for b in bands {
                let m = super::manifest::Manifest::read(&band_dir(&cfg, &t.name, &b)).map_err(|e| e.to_string())?;
                let done = m.is_some_and(|m| {
                    m.stages.iter().any(|e| e.stage == "assemble" && e.status == super::manifest::Status::Done)
                }) && mosaic_path(&cfg, &t.name, &b).is_file();
                v.push(TaskReport {
                    task: format!("{}/{b}", t.name),
                    target: t.name.clone(),
                    band: b.clone(),
                    status: if done { TaskStatus::Done } else { TaskStatus::Failed },
                    reason: None,
                    wall_s: 0.0,
                    group: 0,
                    ranks: 0,
                    ran: false,
                    products: vec![],
                });
            }
        }
        Ok(v)
    })?;
    let reports = run_targets(world, &cfg, &table)?;
    if reports.is_empty() {
        crate::bail!("no finished band under {}: run `tessera run` first", cfg.run.output_dir.display());
    }
    if world.rank() == 0 {
        for r in &reports {
            match &r.error {
                None => println!("release:     {} ({} files)", r.dir, r.files),
                Some(e) => println!("release:     {} FAILED: {e}", r.target),
            }
        }
    }
    Ok(if reports.iter().any(|r| r.error.is_some()) { Outcome::Partial } else { Outcome::Clean })
}

/// Build one target's release tree; returns the number of files in it.
fn build_target(cfg: &Config, target: &str, bands: &[String]) -> crate::Result<usize> {
    let root = cfg.release.root(&cfg.run.output_dir);
    let fin = root.join(target);
    let tmp = root.join(format!(".{target}.tmp"));
    crate::io::remove_tree(&tmp)?;
    crate::io::make_dir(&tmp)?;
    let version = &cfg.release.version;
    let history = vec![format!("tessera {} release {version} of target {target}", crate::VERSION)];
    let cards: Vec<Card> = vec![card_text("RELEASE", version, "tessera release version")];
    let drop: &[&str] = if cfg.release.remove_bloat { &BLOAT } else { &[] };
    let mut man = ReleaseManifest {
        tessera_version: crate::VERSION.to_string(),
        release_version: version.clone(),
        target: target.to_string(),
        remove_bloat: cfg.release.remove_bloat,
        bands: vec![],
        composites: vec![],
        notes: vec![],
        compare_to: cfg.release.compare_to.as_ref().map(|p| p.display().to_string()),
        comparison: vec![],
        files: vec![],
    };
    // per band: the SCI image and its WCS, for the composites and the comparison
    let mut images: Vec<(String, Array2<f32>, Vec<Card>)> = vec![];
    for band in bands {
        let dir = band_dir(cfg, target, band);
        let mosaic = mosaic_path(cfg, target, band);
        let name = mosaic.file_name().expect("a file name").to_string_lossy().into_owned();
        let primary = crate::io::fits::read_header(&mosaic, "PRIMARY")?;
        let sci_header = crate::io::fits::read_header(&mosaic, "SCI")?;
        let anchored = primary.contains_key("ANCHOR") || sci_header.contains_key("ANCHOR");
        crate::io::fits::copy_for_release(&mosaic, &tmp.join(&name), drop, &cards, &history)?;
        // PSF-matched versions beside the mosaic: <stem>_at<target>.fits
        let stem = name.trim_end_matches(".fits");
        let mut psf = vec![];
        for f in crate::io::list_files(&dir)? {
            let n = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if f.parent() == Some(dir.as_path()) && n.starts_with(&format!("{stem}_at")) && n.ends_with(".fits") {
                let sub = format!("{band}_psf_matched");
                crate::io::make_dir(&tmp.join(&sub))?;
                crate::io::fits::copy_for_release(&f, &tmp.join(&sub).join(&n), drop, &cards, &history)?;
                psf.push(format!("{sub}/{n}"));
            }
        }
        psf.sort();
        // tweakback files
        let mut tweakback = 0;
        let astro = dir.join(super::astrometry::STAGE);
        if astro.is_dir() {
            for f in crate::io::list_files(&astro)? {
                let n = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                if n.ends_with("_tweakback.fits") {
                    let sub = tmp.join(format!("{band}_tweakback"));
                    crate::io::make_dir(&sub)?;
                    crate::io::fits::copy_for_release(&f, &sub.join(&n), &[], &cards, &history)?;
                    tweakback += 1;
                }
            }
        }
        // diagnostic plots of every stage, compressed
        let mut plots: Vec<(String, PathBuf)> = vec![];
        for f in crate::io::list_files(&dir)? {
            if f.extension().is_some_and(|e| e == "png") {
                if let Ok(rel) = f.strip_prefix(&dir) {
                    if rel.components().count() > 1 {
                        plots.push((rel.display().to_string(), f.clone()));
                    }
                }
            }
        }
        plots.sort();
        if !plots.is_empty() {
            crate::io::archive::write_tar_gz(&tmp.join(format!("{band}_diagnostic_plots.tar.gz")), &plots)?;
        }
        // the quick look
        let sci = crate::io::fits::read_ext_f32(&mosaic, "SCI")?;
        let (px, block) = quicklook_grey(&sci);
        let ql = format!("{stem}.png");
        crate::io::plot::write_png(&tmp.join(&ql), px.ncols(), px.nrows(), 1, px.as_slice().expect("contiguous"))?;
        let config_sha256 = super::manifest::Manifest::read(&dir)?.map(|m| m.config_sha256).unwrap_or_default();
        man.bands.push(ReleaseBand {
            band: band.clone(),
            mosaic: name.clone(),
            anchored,
            psf_matched: psf,
            tweakback,
            diagnostic_plots: plots.len(),
            quicklook: ql,
            quicklook_px: [px.ncols(), px.nrows()],
            quicklook_block: block,
            config_sha256,
        });
        let wcs = crate::geom::TanSip::from_cards(&sci_header).map(|w| w.to_cards()).unwrap_or_default();
        images.push((band.clone(), sci, wcs));
    }
    // three-colour composites per instrument, of bands on one grid
    for fam in ["nircam", "miri"] {
        let mut of: Vec<&(String, Array2<f32>, Vec<Card>)> = images
            .iter()
            .filter(|(b, _, _)| Instrument::of_filter(b).is_some_and(|i| (i == Instrument::Miri) == (fam == "miri")))
            .collect();
        if of.len() < 2 {
            continue;
        }
        of.sort_by(|a, b| {
            let w = |x: &str| Instrument::filter_wavelength_um(x).unwrap_or(0.0);
            w(&a.0).total_cmp(&w(&b.0))
        });
        if of.iter().any(|x| x.1.dim() != of[0].1.dim() || x.2 != of[0].2) {
            man.notes.push(format!(
                "no {fam} colour image: its bands are on different grids (set plan.common_grid = \"instrument\")"
            ));
            continue;
        }
        // red = longest wavelength, blue = shortest, green = the middle band (or the mean of two)
        let (r, b) = (of[of.len() - 1], of[0]);
        let g: Array2<f32> = if of.len() >= 3 { of[of.len() / 2].1.clone() } else { (&r.1 + &b.1) * 0.5 };
        let gname = if of.len() >= 3 { of[of.len() / 2].0.clone() } else { format!("mean of {} and {}", b.0, r.0) };
        let chans = [quicklook_grey(&r.1).0, quicklook_grey(&g).0, quicklook_grey(&b.1).0];
        let (h, w) = chans[0].dim();
        let mut rgb = Vec::with_capacity(h * w * 3);
        for y in 0..h {
            for x in 0..w {
                rgb.extend(chans.iter().map(|c| c[[y, x]]));
            }
        }
        let file = format!("{target}_{fam}_rgb.png");
        crate::io::plot::write_png(&tmp.join(&file), w, h, 3, &rgb)?;
        man.composites.push((fam.to_string(), file, [r.0.clone(), gname, b.0.clone()]));
    }
    // the comparison with a previous release
    if let Some(prev) = &cfg.release.compare_to {
        let mut csv = String::from("band,npix,median_mjysr,rms_mjysr,note\n");
        for (band, sci, wcs) in &images {
            let name = mosaic_path(cfg, target, band).file_name().expect("a name").to_string_lossy().into_owned();
            let old = prev.join(target).join(&name);
            let mut row =
                Comparison { band: band.clone(), npix: 0, median_mjysr: f64::NAN, rms_mjysr: f64::NAN, note: None };
            if !old.is_file() {
                row.note = Some(format!("no {} in {}", name, prev.display()));
            } else {
                let o = crate::io::fits::read_ext_f32(&old, "SCI")?;
                let ow = crate::io::fits::read_header(&old, "SCI")?;
                let ow = crate::geom::TanSip::from_cards(&ow).map(|w| w.to_cards()).unwrap_or_default();
                if o.dim() != sci.dim() || &ow != wcs {
                    row.note = Some("the previous mosaic is on another grid: not compared".into());
                } else {
                    let diff = sci - &o;
                    let (n, med, rms) = diff_stats(&diff);
                    (row.npix, row.median_mjysr, row.rms_mjysr) = (n, med, rms);
                    crate::io::make_dir(&tmp.join("compare"))?;
                    let mut c = wcs.clone();
                    c.push(card_text("BUNIT", "MJy/sr", "this release minus the previous one"));
                    c.push(card_text("RELEASE", version, "tessera release version"));
                    c.push(card_text("PREVIOUS", &prev.display().to_string(), "the release compared to"));
                    let dname = format!("{}_diff.fits", name.trim_end_matches(".fits"));
                    crate::io::fits::write_image(&tmp.join("compare").join(&dname), &diff, &c, &[])?;
                }
            }
            let fmt = |v: f64| if v.is_finite() { format!("{v:.6e}") } else { String::new() };
            csv.push_str(&format!(
                "{},{},{},{},{}\n",
                row.band,
                row.npix,
                fmt(row.median_mjysr),
                fmt(row.rms_mjysr),
                row.note.clone().unwrap_or_default().replace(',', ";")
            ));
            if !row.median_mjysr.is_finite() {
                row.median_mjysr = 0.0;
                row.rms_mjysr = 0.0;
            }
            man.comparison.push(row);
        }
        crate::io::make_dir(&tmp.join("compare"))?;
        crate::io::json::write_text(&tmp.join("compare").join("compare.csv"), &csv)?;
    }
    // the manifest: every file with its checksum
    for f in crate::io::list_files(&tmp)? {
        let (bytes, sha256) = crate::io::sha256_file(&f)?;
        let path = f.strip_prefix(&tmp).unwrap_or(&f).display().to_string();
        man.files.push(ReleaseFile { path, bytes, sha256 });
    }
    man.files.sort_by(|a, b| a.path.cmp(&b.path));
    let n = man.files.len() + 1;
    crate::io::json::write_json(&tmp.join("manifest.json"), &man)?;
    crate::io::remove_tree(&fin)?;
    std::fs::rename(&tmp, &fin).map_err(|e| crate::err!("{}: renaming to {}: {e}", tmp.display(), fin.display()))?;
    Ok(n)
}

/// Pixels finite in `d`, their median and sqrt(mean(d^2)).
pub fn diff_stats(d: &Array2<f32>) -> (usize, f64, f64) {
    let mut v: Vec<f64> = d.iter().filter(|x| x.is_finite()).map(|&x| f64::from(x)).collect();
    if v.is_empty() {
        return (0, f64::NAN, f64::NAN);
    }
    let rms = (v.iter().map(|x| x * x).sum::<f64>() / v.len() as f64).sqrt();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let med = if n % 2 == 1 { v[n / 2] } else { 0.5 * (v[n / 2 - 1] + v[n / 2]) };
    (n, med, rms)
}

/// The asinh quick look of an image (`[y, x]`, row 0 at the bottom): block-averaged to at most
/// [`QUICKLOOK_MAX_PX`] on a side, scaled between its 0.5 and 99.5 percentiles and stretched as
/// asinh(x / 0.1) / asinh(1 / 0.1) (astropy's AsinhStretch), as 8-bit grey with the top row first;
/// non-finite pixels are black. Returns the pixels and the block size.
pub fn quicklook_grey(sci: &Array2<f32>) -> (Array2<u8>, usize) {
    let (ny, nx) = sci.dim();
    let block = ny.max(nx).div_ceil(QUICKLOOK_MAX_PX).max(1);
    let (h, w) = (ny.div_ceil(block), nx.div_ceil(block));
    let mut small = Array2::<f32>::from_elem((h, w), f32::NAN);
    for y in 0..h {
        for x in 0..w {
            let (mut s, mut n) = (0.0f64, 0usize);
            for yy in y * block..((y + 1) * block).min(ny) {
                for xx in x * block..((x + 1) * block).min(nx) {
                    let v = sci[[yy, xx]];
                    if v.is_finite() {
                        s += f64::from(v);
                        n += 1;
                    }
                }
            }
            if n > 0 {
                small[[y, x]] = (s / n as f64) as f32;
            }
        }
    }
    let mut vals: Vec<f32> = small.iter().copied().filter(|v| v.is_finite()).collect();
    let mut out = Array2::<u8>::zeros((h, w));
    if vals.is_empty() {
        return (out, block);
    }
    vals.sort_by(f32::total_cmp);
    let q = |p: f64| vals[((p * (vals.len() - 1) as f64).round() as usize).min(vals.len() - 1)];
    let (lo, hi) = (q(0.005), q(0.995));
    let span = if hi > lo { hi - lo } else { 1.0 };
    let a = 0.1f32;
    for y in 0..h {
        for x in 0..w {
            let v = small[[y, x]];
            if v.is_finite() {
                let t = ((v - lo) / span).clamp(0.0, 1.0);
                let s = (t / a).asinh() / (1.0 / a).asinh();
                out[[h - 1 - y, x]] = (255.0 * s).round() as u8;
            }
        }
    }
    (out, block)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quicklook_stretches_between_percentiles_with_asinh_and_flips_rows() {
        // a ramp 0..99 along x, one NaN: the 0.5/99.5 percentiles of 0..99 are ~0 and ~99
        let mut a = Array2::<f32>::from_shape_fn((4, 100), |(_, x)| x as f32);
        a[[0, 0]] = f32::NAN;
        let (px, block) = quicklook_grey(&a);
        assert_eq!((px.dim(), block), ((4, 100), 1));
        // NaN black, at the bottom row of the image = the last PNG row
        assert_eq!(px[[3, 0]], 0);
        assert_eq!(px[[0, 99]], 255);
        // the middle: asinh(0.5 / 0.1) / asinh(10) = 0.7737 -> 197 (hand-worked), within a level
        let mid = f32::from(px[[0, 50]]);
        let want = 255.0 * ((50.0f32 / 99.0) / 0.1).asinh() / 10f32.asinh();
        assert!((mid - want).abs() <= 2.0, "{mid} vs {want}");
        // a large image is block-averaged
        let big = Array2::<f32>::from_elem((10, 4100), 1.0);
        let (px, block) = quicklook_grey(&big);
        assert_eq!((block, px.dim()), (3, (4, 1367)));
    }

    #[test]
    fn diff_stats_by_hand() {
        let d = Array2::from_shape_vec((1, 5), vec![1.0f32, -1.0, 3.0, f32::NAN, 1.0]).unwrap();
        let (n, med, rms) = diff_stats(&d);
        assert_eq!(n, 4);
        assert_eq!(med, 1.0);
        assert!((rms - (12.0f64 / 4.0).sqrt()).abs() < 1e-12);
    }
}

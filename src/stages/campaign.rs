//! `tessera run config.toml`: every band of every `[[target]]` in the config, one after the other,
//! each through the single-band chain of `mosaic`, into `<output_dir>/<target>/<band>/`.
//!
//! Within a target, the reference band of each instrument (`[align] reference_band` and
//! `[astrometry] reference_band` when they name a band of it, else F300M for NIRCam and F1000W for
//! MIRI) runs first; the other bands of that instrument then take its visit shifts
//! (`align/align.json` as `align.shifts_file`) and its absolute solution
//! (`astrometry/astrometry.json` as `astrometry.solution_file`), as the issue and pjpipe's
//! align_mapping do: solved once, applied to every band of the same instrument and visits. When the
//! reference band is missing or fails, the other bands solve for themselves, with a warning.
//!
//! A failing band is reported and kept for inspection; the campaign goes on (exit code 3).

use super::Outcome;
use crate::config::{Config, Instrument, RawConfig};
use crate::dist::{Comm, CommExt};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// NIRCam's two channels observe the same visits at once, so they share one reference band.
fn family(band: &str) -> Option<&'static str> {
    match Instrument::of_filter(band)? {
        Instrument::Miri => Some("miri"),
        Instrument::NircamSw | Instrument::NircamLw => Some("nircam"),
    }
}

/// The reference band of `band`'s instrument: the configured one when it belongs to the same
/// instrument, else the instrument's default.
pub fn reference_band_of(configured: Option<&str>, band: &str) -> Option<String> {
    let fam = family(band)?;
    match configured {
        Some(b) if family(b) == Some(fam) => Some(b.to_string()),
        _ => {
            let default = if fam == "miri" { Instrument::Miri } else { Instrument::NircamLw };
            Some(super::align::default_reference_band(default).to_string())
        }
    }
}

/// The bands in run order: every reference band before the bands that use it, otherwise by name.
pub fn run_order(bands: &[String], cfg: &Config) -> Vec<String> {
    let is_ref = |b: &String| {
        reference_band_of(cfg.align.reference_band.as_deref(), b).as_ref() == Some(b)
            || reference_band_of(cfg.astrometry.reference_band.as_deref(), b).as_ref() == Some(b)
    };
    let mut order: Vec<String> = bands.iter().filter(|b| is_ref(b)).cloned().collect();
    order.extend(bands.iter().filter(|b| !is_ref(b)).cloned());
    order
}

/// The config of a non-reference band: the reference band's products (in `ref_dir`) as its align
/// shifts and astrometric solution, unless the config already names files of its own.
fn with_reference(c: &mut Config, align_ref: Option<(&str, &Path)>, astro_ref: Option<(&str, &Path)>) {
    if let Some((band, dir)) = align_ref {
        let f = dir.join(super::align::STAGE).join("align.json");
        if c.align.shifts_file.is_none() && f.is_file() {
            c.align.reference_band = Some(band.to_string());
            c.align.shifts_file = Some(f);
        }
    }
    if let Some((band, dir)) = astro_ref {
        let f = dir.join(super::astrometry::STAGE).join("astrometry.json");
        if c.astrometry.solution_file.is_none() && f.is_file() {
            c.astrometry.reference_band = Some(band.to_string());
            c.astrometry.solution_file = Some(f);
        }
    }
}

/// Run the campaign.
///
/// # Errors
/// A config without targets, or unreadable inputs of a target.
pub fn run(comm: &dyn Comm, raw: &RawConfig, cfg: &Config, resume: bool, overwrite: bool) -> crate::Result<Outcome> {
    if cfg.targets.is_empty() {
        crate::bail!("the config lists no [[target]]: nothing to run (see `tessera config default`)");
    }
    // another campaign's products: refuse before anything runs, unless told what to do with them
    if !resume && !overwrite {
        comm.on_root_then_broadcast(0, || -> Result<(), String> {
            for t in &cfg.targets {
                let tdir = cfg.run.output_dir.join(&t.name);
                let Ok(entries) = std::fs::read_dir(&tdir) else { continue };
                for e in entries.flatten() {
                    if e.path().join(super::manifest::FILE).is_file() {
                        return Err(format!(
                            "{} already holds the products of another run ({}). Use --resume to continue it, \
                             --overwrite to start clean, or another run.output_dir",
                            e.path().display(),
                            super::manifest::FILE
                        ));
                    }
                }
            }
            Ok(())
        })?;
    }
    super::preflight::campaign(comm, cfg)?;
    let mut outcome = Outcome::Clean;
    let mut failed = vec![];
    for t in &cfg.targets {
        // group the target's files by band (rank 0 reads the headers)
        // (a skipped input makes the campaign's outcome partial: the bands never see it)
        let (bands, n_skipped): (BTreeMap<String, Vec<PathBuf>>, usize) =
            comm.on_root_then_broadcast(0, || -> Result<_, String> {
                let (metas, skipped) =
                    super::plan::read_inventory(&t.inputs).map_err(|e| format!("target {}: {e:#}", t.name))?;
                for (p, e) in &skipped {
                    tracing::warn!("target {}: skipping {}: {e}", t.name, p.display());
                }
                let mut b: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
                for m in metas {
                    b.entry(m.band()).or_default().push(m.path);
                }
                Ok((b, skipped.len()))
            })?;
        if n_skipped > 0 {
            outcome = Outcome::Partial;
        }
        let names: Vec<String> = bands.keys().filter(|b| t.bands.is_empty() || t.bands.contains(b)).cloned().collect();
        // the reference bands that finished, by band name -> their output folder
        let mut done: BTreeMap<String, PathBuf> = BTreeMap::new();
        for band in run_order(&names, cfg) {
            let files = &bands[&band];
            let dir = cfg.run.output_dir.join(&t.name).join(&band);
            let mut c = cfg.clone();
            c.run.output_dir = dir.clone();
            let refs = [cfg.align.reference_band.as_deref(), cfg.astrometry.reference_band.as_deref()]
                .map(|conf| reference_band_of(conf, &band).filter(|r| *r != band));
            fn lookup<'a>(done: &'a BTreeMap<String, PathBuf>, r: &'a Option<String>) -> Option<(&'a str, &'a Path)> {
                r.as_ref().and_then(|r| done.get(r).map(|d| (r.as_str(), d.as_path())))
            }
            // rank 0 looks for the reference band's files; every rank takes its answer
            type Chosen = (Option<String>, Option<PathBuf>, Option<String>, Option<PathBuf>);
            let chosen: Chosen = comm.on_root_then_broadcast(0, || -> Result<Chosen, String> {
                let mut r = c.clone();
                with_reference(&mut r, lookup(&done, &refs[0]), lookup(&done, &refs[1]));
                Ok((
                    r.align.reference_band,
                    r.align.shifts_file,
                    r.astrometry.reference_band,
                    r.astrometry.solution_file,
                ))
            })?;
            (c.align.reference_band, c.align.shifts_file, c.astrometry.reference_band, c.astrometry.solution_file) =
                chosen;
            if comm.rank() == 0 {
                for (r, stage) in refs.iter().zip(["align", "astrometry"]) {
                    match r {
                        Some(r) if done.contains_key(r) => {
                            tracing::info!("[run] {} {band}: {stage} from the reference band {r}", t.name)
                        }
                        Some(r) => tracing::warn!(
                            "[run] {} {band}: the reference band {r} is not in the target or did not finish: \
                             {band} solves its own {stage}",
                            t.name
                        ),
                        None => {}
                    }
                }
            }
            let out = dir.join(format!("{}_{}_i2d.fits", t.name, band.to_ascii_lowercase()));
            if comm.rank() == 0 {
                tracing::info!("[run] target {} band {}: {} files -> {}", t.name, band, files.len(), out.display());
            }
            let result = super::mosaic::run(comm, raw, &c, files, &out, t.catalog.as_deref(), resume, overwrite);
            if result.is_ok() {
                done.insert(band.clone(), dir.clone());
            }
            match result {
                Ok(Outcome::Clean) => {}
                Ok(Outcome::Partial) => outcome = Outcome::Partial,
                Err(e) => {
                    if comm.rank() == 0 {
                        tracing::error!(
                            "target {} band {} failed (products kept in {}): {e:#}",
                            t.name,
                            band,
                            dir.display()
                        );
                    }
                    failed.push(format!("{}/{}", t.name, band));
                    outcome = Outcome::Partial;
                }
            }
        }
    }
    if comm.rank() == 0 && !failed.is_empty() {
        tracing::warn!("[run] finished with failed bands: {}", failed.join(", "));
    }
    Ok(outcome)
}

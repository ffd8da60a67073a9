//! Configuration: the raw layer that mirrors the TOML file, the resolved layer the stages use, and
//! the commented default file printed by `tessera config default`.
//!
//! The raw layer ([`RawConfig`]) rejects unknown keys (`deny_unknown_fields`) and holds every default
//! in one place (its `Default` impls). [`RawConfig::resolve`] checks cross-field rules and units and
//! names the TOML key path of anything wrong. `--set section.key=value` edits the TOML document before
//! deserialisation, so it goes through exactly the same checks. One `[section]` per stage, named as
//! the stage is named everywhere else (CLI, HDF5 group, output folder).
//!
//! Nothing here reads exposures or talks to MPI.

mod anchor;
pub mod overrides;
mod raw;
mod resolved;

pub use anchor::{AnchorConfig, RawAnchor};
pub use raw::{
    RawAlign, RawAssemble, RawAstrometry, RawConfig, RawDrizzle, RawGrid, RawGroups, RawLevel, RawOutlier, RawPlan,
    RawPrep, RawRelease, RawRun, RawSimulate, RawTarget, DEFAULT_TOML,
};
pub use resolved::thread_count;
pub use resolved::{
    AlignConfig, AssembleConfig, AstrometryConfig, CommonGrid, Config, DrizzleConfig, Groups, Instrument, LevelConfig,
    OutlierConfig, PlanConfig, PrepConfig, PsfTarget, PsfmatchConfig, ReleaseConfig, RunConfig, SimSize,
    SimulateConfig, Target, UserGrid, WeightType, MAX_THREADS,
};

use std::path::{Path, PathBuf};

/// A configuration error, naming the file and/or TOML key path.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {err}")]
    Read { path: PathBuf, err: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
    #[error("--set {arg}: {message}")]
    Set { arg: String, message: String },
}

/// Load a config: the file (if any), then the `--set key=value` overrides, then resolve.
///
/// # Errors
/// [`ConfigError`] naming the file, the `--set` argument or the key path.
pub fn load(path: Option<&Path>, sets: &[String]) -> Result<(RawConfig, Config), ConfigError> {
    let (text, name) = match path {
        Some(p) => (
            std::fs::read_to_string(p).map_err(|err| ConfigError::Read { path: p.to_path_buf(), err })?,
            p.display().to_string(),
        ),
        None => (String::new(), "<defaults>".to_string()),
    };
    let raw = RawConfig::from_toml_with_sets(&text, &name, sets)?;
    let cfg = raw.resolve()?;
    raw.check_tasks()?;
    Ok((raw, cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_file_parses_to_the_defaults() {
        let parsed: RawConfig = toml::from_str(DEFAULT_TOML).expect("DEFAULT_TOML parses");
        assert_eq!(parsed, RawConfig::default());
        parsed.resolve().expect("defaults resolve");
    }

    #[test]
    fn every_key_is_documented_in_the_default_file() {
        // every key of the serialised defaults must appear (possibly commented out) in DEFAULT_TOML,
        // each preceded by a comment line
        let value = toml::Value::try_from(RawConfig::default()).unwrap();
        let lines: Vec<&str> = DEFAULT_TOML.lines().collect();
        let mut keys = vec![];
        fn walk(prefix: &str, v: &toml::Value, out: &mut Vec<(String, String)>) {
            if let toml::Value::Table(t) = v {
                for (k, v) in t {
                    match v {
                        toml::Value::Table(_) => walk(k, v, out),
                        _ => out.push((prefix.to_string(), k.clone())),
                    }
                }
            }
        }
        walk("", &value, &mut keys);
        for key in ["ra_deg", "dec_deg", "nx", "ny", "pixscale_arcsec", "rotation_deg"] {
            keys.push(("plan.grid".into(), key.into())); // optional table, absent from the defaults
        }
        for key in ["name", "inputs", "bands", "catalog"] {
            keys.push(("target".into(), key.into())); // array of tables, absent from the defaults
        }
        assert!(keys.len() > 20);
        for (section, key) in keys {
            let pos = lines
                .iter()
                .position(|l| l.trim_start_matches("# ").starts_with(&format!("{key} =")))
                .unwrap_or_else(|| panic!("[{section}] {key} is not in DEFAULT_TOML"));
            assert!(lines[pos - 1].trim_start().starts_with('#'), "[{section}] {key} has no comment line");
        }
    }

    #[test]
    fn unknown_key_is_named() {
        let e = RawConfig::from_toml_with_sets("[plan]\nchunk_pix = 3\n", "x.toml", &[]).unwrap_err();
        let m = e.to_string();
        assert!(m.contains("x.toml") && m.contains("chunk_pix"), "{m}");
    }

    #[test]
    fn set_overrides_and_is_checked() {
        let raw =
            RawConfig::from_toml_with_sets("", "-", &["plan.chunk_px=512".into(), "simulate.seed=9".into()]).unwrap();
        assert_eq!(raw.plan.chunk_px, 512);
        assert_eq!(raw.simulate.seed, 9);
        let e = RawConfig::from_toml_with_sets("", "-", &["plan.nope=1".into()]).unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
        let e = RawConfig::from_toml_with_sets("", "-", &["plan.chunk_px".into()]).unwrap_err();
        assert!(e.to_string().contains("key=value"), "{e}");
        // a string value without quotes is accepted as a string
        let raw = RawConfig::from_toml_with_sets("", "-", &["simulate.instrument=miri".into()]).unwrap();
        assert_eq!(raw.simulate.instrument, "miri");
    }

    #[test]
    fn resolve_names_the_bad_key() {
        for (set, key) in [
            ("run.mem_budget_mb=0", "run.mem_budget_mb"),
            ("plan.pixscale_arcsec=-1.0", "plan.pixscale_arcsec"),
            ("simulate.instrument=\"nircam\"", "simulate.instrument"),
            ("simulate.tiles=\"2by2\"", "simulate.tiles"),
            ("simulate.size=\"huge\"", "simulate.size"),
            ("plan.max_fill_ratio=0.5", "plan.max_fill_ratio"),
            ("simulate.filter=\"F200W\"", "simulate.filter"),
            ("drizzle.pixfrac=0.0", "drizzle.pixfrac"),
            ("drizzle.weight_type=\"wht\"", "drizzle.weight_type"),
            ("outlier.maskpt=2.0", "outlier.maskpt"),
            ("assemble.row_block=0", "assemble.row_block"),
            ("run.groups=0", "run.groups"),
            ("run.groups=\"many\"", "run.groups"),
            ("plan.common_grid=\"band\"", "plan.common_grid"),
            ("release.version=\"\"", "release.version"),
        ] {
            let raw = RawConfig::from_toml_with_sets("", "-", &[set.into()]).unwrap();
            let e = raw.resolve().unwrap_err().to_string();
            assert!(e.contains(key), "{set}: {e}");
        }
    }

    #[test]
    fn psfmatch_needs_the_variance_planes() {
        let off = "drizzle.variance_planes=false".to_string();
        let raw = RawConfig::from_toml_with_sets("", "-", std::slice::from_ref(&off)).unwrap();
        assert!(!raw.resolve().unwrap().drizzle.variance_planes);
        let raw = RawConfig::from_toml_with_sets("", "-", &[off, "psfmatch.targets=[\"gauss0p90\"]".into()]).unwrap();
        let e = raw.resolve().unwrap_err().to_string();
        assert!(e.contains("drizzle.variance_planes") && e.contains("ERR"), "{e}");
    }
}

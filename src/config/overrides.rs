//! Per-target and per-band overrides: any config value may be a table keyed by target name, band,
//! `nircam_short`/`nircam_long` or `nircam`/`miri`, resolved for one (target, band) in that order of
//! priority, as pjpipe resolves its parameters (`pjpipe-algorithms.md` section 14): `sigma = { F770W
//! = 2.5, miri = 2.8 }` gives 2.5 in F770W, 2.8 in the other MIRI bands and the default elsewhere.
//! Resolution recurses, so an entry may itself be such a table (`{ ngc0628 = { miri = 2 } }`).
//!
//! Which tables are override tables follows the schema: a table where the defaults hold a plain value
//! (or an array), or a table absent from the defaults whose keys are all selectors. Every key of an
//! override table must be a selector: a target of the file, a JWST imaging filter, or one of the
//! four instrument words; anything else (a mistyped band or target) is an error naming its key path.
//!
//! This works on the TOML document, before deserialisation; the raw layer then checks every value.

use super::resolved::Instrument;
use super::ConfigError;
use toml::{Table, Value};

/// The JWST imaging filters (NIRCam, including the pupil-wheel filters, and MIRI), upper case.
/// NIRCam: JWST User Documentation, "NIRCam Filters"; MIRI: "MIRI Filters and Dispersers".
pub const KNOWN_FILTERS: [&str; 38] = [
    "F070W", "F090W", "F115W", "F140M", "F150W", "F150W2", "F162M", "F164N", "F182M", "F187N", "F200W", "F210M",
    "F212N", "F250M", "F277W", "F300M", "F322W2", "F323N", "F335M", "F356W", "F360M", "F405N", "F410M", "F430M",
    "F444W", "F460M", "F466N", "F470N", "F480M", "F560W", "F770W", "F1000W", "F1130W", "F1280W", "F1500W", "F1800W",
    "F2100W", "F2550W",
];

/// Whether `band` (any case) is a JWST imaging filter.
pub fn is_known_filter(band: &str) -> bool {
    let b = band.to_ascii_uppercase();
    KNOWN_FILTERS.contains(&b.as_str())
}

/// What an override key selects, by priority (lower = stronger).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Selector {
    Target,
    Band,
    Channel,
    Instrument,
}

fn selector(key: &str, targets: &[String]) -> Option<Selector> {
    if targets.iter().any(|t| t.eq_ignore_ascii_case(key)) {
        Some(Selector::Target)
    } else if is_known_filter(key) {
        Some(Selector::Band)
    } else if matches!(key, "nircam_short" | "nircam_long") {
        Some(Selector::Channel)
    } else if matches!(key, "nircam" | "miri") {
        Some(Selector::Instrument)
    } else {
        None
    }
}

/// Whether `key` selects the task (`target`, `band`).
fn matches(key: &str, target: Option<&str>, band: Option<&str>, targets: &[String]) -> Option<Selector> {
    let s = selector(key, targets)?;
    let inst = band.and_then(Instrument::of_filter);
    let hit = match s {
        Selector::Target => target.is_some_and(|t| t.eq_ignore_ascii_case(key)),
        Selector::Band => band.is_some_and(|b| b.eq_ignore_ascii_case(key)),
        Selector::Channel => match key {
            "nircam_short" => inst == Some(Instrument::NircamSw),
            _ => inst == Some(Instrument::NircamLw),
        },
        Selector::Instrument => match key {
            "miri" => inst == Some(Instrument::Miri),
            _ => matches!(inst, Some(Instrument::NircamSw | Instrument::NircamLw)),
        },
    };
    hit.then_some(s)
}

/// The `[[target]]` names of the document.
pub fn target_names(doc: &Table) -> Vec<String> {
    doc.get("target")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|t| t.get("name")?.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

/// The defaults as a TOML tree: the schema that tells sections from values.
fn schema() -> Value {
    Value::try_from(super::RawConfig::default()).expect("the defaults serialise")
}

/// Whether `v` at a place whose default is `default` is an override table.
fn is_override(v: &Value, default: Option<&Value>, targets: &[String]) -> bool {
    let Value::Table(t) = v else { return false };
    match default {
        Some(Value::Table(_)) => false,
        Some(_) => true,
        None => !t.is_empty() && t.keys().all(|k| selector(k, targets).is_some()),
    }
}

/// Check every override table of the document: each key a selector, nested ones too. Returns
/// whether the document holds any override table.
///
/// # Errors
/// [`ConfigError::Invalid`] naming the key path of a key that is no target, band or instrument.
pub fn check(doc: &Table, targets: &[String]) -> Result<bool, ConfigError> {
    fn check_override(path: &str, t: &Table, targets: &[String]) -> Result<(), ConfigError> {
        for (k, v) in t {
            let p = format!("{path}.{k}");
            if selector(k, targets).is_none() {
                let known = if targets.is_empty() { "none".to_string() } else { targets.join(", ") };
                return Err(ConfigError::Invalid {
                    key: p,
                    message: format!(
                        "`{k}` is not a target of this file (targets: {known}), a JWST imaging band (e.g. \
                         F300M, F770W), nircam_short/nircam_long or nircam/miri"
                    ),
                });
            }
            if let Value::Table(inner) = v {
                check_override(&p, inner, targets)?;
            }
        }
        Ok(())
    }
    fn walk(path: &str, t: &Table, schema: Option<&Table>, targets: &[String]) -> Result<bool, ConfigError> {
        let mut any = false;
        for (k, v) in t {
            if path.is_empty() && k == "target" {
                continue;
            }
            let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
            let d = schema.and_then(|s| s.get(k));
            if is_override(v, d, targets) {
                check_override(&p, v.as_table().expect("a table"), targets)?;
                any = true;
            } else if let Value::Table(inner) = v {
                any |= walk(&p, inner, d.and_then(Value::as_table), targets)?;
            }
        }
        Ok(any)
    }
    let s = schema();
    walk("", doc, s.as_table(), targets)
}

/// The document with every override table replaced by its entry for (`target`, `band`), or
/// removed (the default applies) when no entry matches. `None` matches no selector of its kind.
pub fn resolve(doc: &Table, target: Option<&str>, band: Option<&str>) -> Table {
    let targets = target_names(doc);
    fn pick(v: &Value, target: Option<&str>, band: Option<&str>, targets: &[String]) -> Option<Value> {
        let Value::Table(t) = v else { return Some(v.clone()) };
        let best = t
            .iter()
            .filter_map(|(k, v)| matches(k, target, band, targets).map(|s| (s, k, v)))
            .min_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1)))?;
        // an entry that is itself keyed by selectors resolves again
        if best.2.as_table().is_some_and(|t| !t.is_empty() && t.keys().all(|k| selector(k, targets).is_some())) {
            pick(best.2, target, band, targets)
        } else {
            Some(best.2.clone())
        }
    }
    fn walk(
        t: &Table,
        schema: Option<&Table>,
        top: bool,
        ctx: (Option<&str>, Option<&str>),
        targets: &[String],
    ) -> Table {
        let mut out = Table::new();
        for (k, v) in t {
            if top && k == "target" {
                out.insert(k.clone(), v.clone());
                continue;
            }
            let d = schema.and_then(|s| s.get(k));
            if is_override(v, d, targets) {
                if let Some(x) = pick(v, ctx.0, ctx.1, targets) {
                    out.insert(k.clone(), x);
                }
            } else if let Value::Table(inner) = v {
                out.insert(k.clone(), Value::Table(walk(inner, d.and_then(Value::as_table), false, ctx, targets)));
            } else {
                out.insert(k.clone(), v.clone());
            }
        }
        out
    }
    let s = schema();
    walk(doc, s.as_table(), true, (target, band), &targets)
}

#[cfg(test)]
mod tests {
    use crate::config::RawConfig;

    const DOC: &str = r#"
[level]
sigma = { ngc0628 = 1.5, F770W = 2.5, miri = 2.8, nircam_long = 3.5 }
maxiters = { nircam = 4 }
[drizzle]
pixfrac = { ngc1365 = { F335M = 0.6, nircam = 0.8 } }
[[target]]
name = "ngc0628"
inputs = ["a"]
[[target]]
name = "ngc1365"
inputs = ["b"]
"#;

    #[test]
    fn overrides_resolve_in_priority_order() {
        let raw = RawConfig::from_toml_with_sets(DOC, "c.toml", &[]).unwrap();
        // campaign-wide: every override falls back to the default
        assert_eq!(raw.level.sigma, 3.0);
        assert_eq!(raw.level.maxiters, 10);
        let t = |target: &str, band: &str| raw.for_task(target, band).unwrap();
        // target beats band beats channel beats instrument (hand-worked from the table above)
        assert_eq!(t("ngc0628", "F770W").level.sigma, 1.5);
        assert_eq!(t("ngc1365", "F770W").level.sigma, 2.5);
        assert_eq!(t("ngc1365", "F1000W").level.sigma, 2.8);
        assert_eq!(t("ngc1365", "F300M").level.sigma, 3.5);
        assert_eq!(t("ngc1365", "F200W").level.sigma, 3.0);
        assert_eq!(t("ngc1365", "F200W").level.maxiters, 4);
        assert_eq!(t("ngc1365", "F1000W").level.maxiters, 10);
        // nested: target, then band or instrument
        assert_eq!(t("ngc1365", "F335M").drizzle.pixfrac, 0.6);
        assert_eq!(t("ngc1365", "F300M").drizzle.pixfrac, 0.8);
        assert_eq!(t("ngc1365", "F770W").drizzle.pixfrac, 1.0);
        assert_eq!(t("ngc0628", "F335M").drizzle.pixfrac, 1.0);
        // the task's config holds its own target only
        assert_eq!(t("ngc1365", "F335M").target.len(), 1);
        // --set reaches into override tables
        let raw = RawConfig::from_toml_with_sets(DOC, "c.toml", &["level.sigma.F1000W=2.0".into()]).unwrap();
        assert_eq!(raw.for_task("ngc1365", "F1000W").unwrap().level.sigma, 2.0);
    }

    #[test]
    fn a_mistyped_band_or_target_is_named() {
        for (bad, key) in [
            ("[level]\nsigma = { F7700W = 2.0 }\n", "level.sigma.F7700W"),
            ("[level]\nsigma = { ngc628 = 2.0 }\n", "level.sigma.ngc628"),
            ("[drizzle]\npixfrac = { ngc0628 = { F335 = 0.5 } }\n", "drizzle.pixfrac.ngc0628.F335"),
        ] {
            let text = format!("{bad}[[target]]\nname = \"ngc0628\"\ninputs = [\"a\"]\n");
            let e = RawConfig::from_toml_with_sets(&text, "c.toml", &[]).unwrap_err().to_string();
            assert!(e.contains(key), "{bad}: {e}");
        }
    }
}

//! The resolved configuration: checked, with units and fixed choices as types.

use super::raw::{RawConfig, RawGrid};
use super::ConfigError;
use serde::{Deserialize, Serialize};

/// The checked configuration the stages use.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub run: RunConfig,
    pub plan: PlanConfig,
    pub prep: PrepConfig,
    pub align: AlignConfig,
    pub destripe: DestripeConfig,
    pub level: LevelConfig,
    pub destripe_multi: DestripeMultiConfig,
    pub outlier: OutlierConfig,
    pub drizzle: DrizzleConfig,
    pub assemble: AssembleConfig,
    pub astrometry: AstrometryConfig,
    pub anchor: super::anchor::AnchorConfig,
    pub psfmatch: PsfmatchConfig,
    pub simulate: SimulateConfig,
    pub release: ReleaseConfig,
    pub targets: Vec<Target>,
}

/// The checked `[release]` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReleaseConfig {
    pub enabled: bool,
    /// `None` = `<run.output_dir>/release`.
    pub dir: Option<std::path::PathBuf>,
    pub version: String,
    pub remove_bloat: bool,
    pub compare_to: Option<std::path::PathBuf>,
}

impl ReleaseConfig {
    /// `<dir>/<version>`: where this release's target folders go.
    pub fn root(&self, output_dir: &std::path::Path) -> std::path::PathBuf {
        self.dir.clone().unwrap_or_else(|| output_dir.join("release")).join(&self.version)
    }
}

/// `run.groups`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Groups {
    /// This many groups (at most the number of ranks).
    Count(usize),
    /// From the bands' input sizes and the memory budget.
    Auto,
}

/// `plan.common_grid`: which bands of a target share one output grid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommonGrid {
    None,
    /// One grid for the NIRCam bands, one for the MIRI bands.
    Instrument,
    All,
}

/// The checked `[prep]` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrepConfig {
    pub enabled: bool,
    pub lyot_separate: bool,
    pub off_background: bool,
    /// Lower-cased.
    pub off_name: String,
    pub off_inputs: Vec<std::path::PathBuf>,
    pub off_sigma: f64,
}

/// The checked `[align]` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlignConfig {
    pub enabled: bool,
    /// Upper-case band; `None` = the instrument's default (F300M, F1000W).
    pub reference_band: Option<String>,
    pub shifts_file: Option<std::path::PathBuf>,
    /// `None` = from the band.
    pub fwhm_arcsec: Option<f64>,
    pub threshold_sigma: f64,
    pub brightest: usize,
    pub search_radius_arcsec: f64,
    pub tolerance_arcsec: f64,
    pub min_matches: usize,
}

/// The checked `[astrometry]` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AstrometryConfig {
    pub catalog: Option<std::path::PathBuf>,
    pub reference_band: Option<String>,
    pub solution_file: Option<std::path::PathBuf>,
    pub fwhm_arcsec: Option<f64>,
    pub threshold_sigma: f64,
    pub brightest: usize,
    pub search_radius_arcsec: f64,
    pub wide_tolerance_arcsec: f64,
    pub strict_tolerance_arcsec: f64,
    pub min_matches: usize,
}

/// The checked `[psfmatch]` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PsfmatchConfig {
    pub psf: Vec<std::path::PathBuf>,
    pub targets: Vec<PsfTarget>,
    pub chunk_rows: usize,
    pub noise_curve: bool,
    pub noise_max_fwhm_arcsec: f64,
    pub noise_region_px: usize,
}

/// A resolution to match to, with the name used in file names (`<stem>_at<name>.fits`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PsfTarget {
    pub name: String,
    /// `Some(FWHM arcsec)` for a Gaussian, `None` for a band (`name` is the band).
    pub gaussian_fwhm_arcsec: Option<f64>,
}

impl PsfTarget {
    /// Parse "gauss0p90" (Gaussian FWHM 0.90 arcsec; "gauss0.9" and "gauss1" too) or a band name
    /// ("F770W"; case-insensitive, stored upper case).
    ///
    /// # Errors
    /// Anything else, in words.
    pub fn parse(s: &str) -> Result<PsfTarget, String> {
        let t = s.trim();
        let lower = t.to_ascii_lowercase();
        if let Some(rest) = lower.strip_prefix("gauss") {
            let v: f64 =
                rest.replace('p', ".").parse().map_err(|_| format!("{t:?}: expected gaussNpNN, e.g. gauss0p90"))?;
            if !(v.is_finite() && v > 0.0) {
                return Err(format!("{t:?}: the Gaussian FWHM must be positive"));
            }
            return Ok(PsfTarget { name: lower, gaussian_fwhm_arcsec: Some(v) });
        }
        let up = t.to_ascii_uppercase();
        if up.len() >= 3 && up.starts_with('F') && up.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Ok(PsfTarget { name: up, gaussian_fwhm_arcsec: None });
        }
        Err(format!("{t:?}: expected gaussNpNN (e.g. gauss0p90) or a band name (e.g. F770W)"))
    }
}

/// The checked `[destripe]` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DestripeConfig {
    pub enabled: bool,
    pub filter_scales: Vec<usize>,
    pub cutoff_ratio: f64,
    pub sigma: f64,
    pub dilate_size: usize,
    pub min_mask_frac: f64,
    pub seed: u64,
    pub png: bool,
}

/// The checked `[destripe_multi]` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DestripeMultiConfig {
    pub enabled: bool,
    pub large_scale: bool,
    /// Odd, or 0 for the default (rows / 10, made odd).
    pub large_scale_filter_px: usize,
    /// Most pass-A iterations; 0 = automatic (1 for one orientation, 5 for several).
    pub max_iterations: usize,
    /// Stop iterating when every update's rms is below this, MJy/sr (> 0).
    pub convergence_mjysr: f64,
    /// `auto`, `iterate` or `joint`.
    pub method: String,
}

/// The checked `[level]` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LevelConfig {
    pub enabled: bool,
    pub sigma: f64,
    pub maxiters: u32,
    pub min_area_frac: f64,
    pub min_linear_frac: f64,
    pub rms_sig_limit: f64,
    pub subtract_sky: bool,
    /// Fit a plane per tile in the tiles step (`tile_fit = "plane"`) instead of a constant.
    pub tile_planes: bool,
    /// Keep the dithers step's resampled exposures for the tiles step (within the memory budget).
    pub share_pieces: bool,
}

/// The checked `[outlier]` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutlierConfig {
    pub enabled: bool,
    pub snr1: f32,
    pub snr2: f32,
    pub scale1: f32,
    pub scale2: f32,
    pub maskpt: f64,
    pub pixfrac: f64,
    /// Bicubic (true) or bilinear (false) blot.
    pub blot_bicubic: bool,
    /// Write `outlier/<stem>_crf.fits` copies with the flags in DQ.
    pub write_crf: bool,
    /// The minimum, not the mean, where two resampled exposures remain.
    pub low_coverage_min: bool,
}

/// How input pixels are weighted in drizzle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightType {
    /// Inverse of VAR_RNOISE per pixel (JWST's "ivm").
    Ivm,
    /// The exposure time (EFFEXPTM) for every pixel.
    Exptime,
}

/// The checked `[drizzle]` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DrizzleConfig {
    pub pixfrac: f64,
    pub weight_type: WeightType,
    /// Drizzle VAR_POISSON, VAR_RNOISE and VAR_FLAT and write them with ERR.
    pub variance_planes: bool,
}

/// The checked `[assemble]` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AssembleConfig {
    pub row_block: usize,
}

/// A campaign target.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Target {
    pub name: String,
    pub inputs: Vec<std::path::PathBuf>,
    pub bands: Vec<String>,
    pub catalog: Option<std::path::PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    pub output_dir: std::path::PathBuf,
    pub mem_budget_mb: u64,
    pub threads: usize,
    pub progress_interval_s: f64,
    /// A stage of [`STOPPABLE_STAGES`], or `None` to run all.
    pub stop_after: Option<String>,
    pub groups: Groups,
}

/// The stages `run.stop_after` may name, in chain order.
pub const STOPPABLE_STAGES: [&str; 11] = [
    "plan",
    "prep",
    "destripe",
    "align",
    "level",
    "destripe_multi",
    "outlier",
    "drizzle",
    "assemble",
    "astrometry",
    "anchor",
];

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlanConfig {
    /// 0 = native per instrument.
    pub pixscale_arcsec: f64,
    pub margin_px: usize,
    /// 0 = from the memory budget.
    pub chunk_px: usize,
    pub bytes_per_output_px: u64,
    pub max_fill_ratio: f64,
    pub max_output_mpix: f64,
    pub common_grid: CommonGrid,
    pub grid: Option<UserGrid>,
}

/// A user-given output grid.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UserGrid {
    pub ra_deg: f64,
    pub dec_deg: f64,
    pub nx: usize,
    pub ny: usize,
    pub pixscale_arcsec: f64,
    pub rotation_deg: f64,
}

/// JWST imagers tessera knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Instrument {
    NircamSw,
    NircamLw,
    Miri,
}

impl Instrument {
    /// Parse the CLI/TOML name.
    pub fn from_name(s: &str) -> Option<Instrument> {
        match s {
            "nircam_sw" => Some(Instrument::NircamSw),
            "nircam_lw" => Some(Instrument::NircamLw),
            "miri" => Some(Instrument::Miri),
            _ => None,
        }
    }
    /// The CLI/TOML name.
    pub fn name(self) -> &'static str {
        match self {
            Instrument::NircamSw => "nircam_sw",
            Instrument::NircamLw => "nircam_lw",
            Instrument::Miri => "miri",
        }
    }
    /// Native pixel scale in arcsec (PHANGS-JWST paper; pjpipe P9).
    pub fn native_pixscale_arcsec(self) -> f64 {
        match self {
            Instrument::NircamSw => 0.031,
            Instrument::NircamLw => 0.063,
            Instrument::Miri => 0.11,
        }
    }
    /// The filter used when none is given.
    pub fn default_filter(self) -> &'static str {
        match self {
            Instrument::NircamSw => "F200W",
            Instrument::NircamLw => "F300M",
            Instrument::Miri => "F1000W",
        }
    }
    /// Which instrument channel a filter name belongs to (NIRCam short = band number <= 212).
    pub fn of_filter(filter: &str) -> Option<Instrument> {
        let f = filter.to_ascii_uppercase();
        let digits: String = f.chars().skip(1).take_while(|c| c.is_ascii_digit()).collect();
        if !f.starts_with('F') || digits.is_empty() {
            return None;
        }
        let n: u32 = digits.parse().ok()?;
        match digits.len() {
            3 if n <= 212 => Some(Instrument::NircamSw),
            3 if n < 500 => Some(Instrument::NircamLw),
            3 | 4 if n >= 560 => Some(Instrument::Miri),
            _ => None,
        }
    }
    /// Central wavelength in micron from the filter name (F300M -> 3.0, F1000W -> 10.0).
    pub fn filter_wavelength_um(filter: &str) -> Option<f64> {
        let digits: String = filter.chars().skip(1).take_while(|c| c.is_ascii_digit()).collect();
        let n: f64 = digits.parse().ok()?;
        Some(n / 100.0)
    }
}

/// Simulated detector size preset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SimSize {
    Tiny,
    Small,
    Medium,
    Large,
}

impl SimSize {
    /// Parse the CLI/TOML name.
    pub fn from_name(s: &str) -> Option<SimSize> {
        match s {
            "tiny" => Some(SimSize::Tiny),
            "small" => Some(SimSize::Small),
            "medium" => Some(SimSize::Medium),
            "large" => Some(SimSize::Large),
            _ => None,
        }
    }
    /// Detector side in pixels for NIRCam (MIRI: rows; MIRI columns add 8 reference columns at `large`).
    pub fn detector_px(self) -> usize {
        match self {
            SimSize::Tiny => 64,
            SimSize::Small => 256,
            SimSize::Medium => 1024,
            SimSize::Large => 2048,
        }
    }
}

/// The checked `[simulate]` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SimulateConfig {
    pub instrument: Instrument,
    pub filter: String,
    pub tiles: (usize, usize),
    pub dithers: usize,
    /// Roll offsets of the repeated coverages, deg (1 to 4 distinct entries; `[0.0]` = one).
    pub rolls_deg: Vec<f64>,
    pub size: SimSize,
    pub seed: u64,
    pub target: String,
    pub noise: bool,
    pub cosmic_rays: bool,
    pub saturate: bool,
    pub cosmic_ray_rate: f64,
    pub stripe_rms_mjysr: f64,
    pub background_offset_mjysr: f64,
    pub tile_plane_mjysr: f64,
    pub lyot_offset_mjysr: f64,
    pub pointing_error_arcsec: f64,
    pub absolute_offset_arcsec: f64,
    pub absolute_rotation_deg: f64,
    pub miri_off_exposures: usize,
    pub catalog_completeness: f64,
    pub catalog_noise_arcsec: f64,
    pub truth_pixscale_factor: f64,
    pub fill_field: bool,
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.to_string(), message: message.into() }
}

fn positive(key: &str, v: f64) -> Result<f64, ConfigError> {
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(invalid(key, format!("must be a positive number, got {v}")))
    }
}

/// `simulate.rolls_deg`: 1 to 4 finite angles in [-180, 180], no two the same position angle.
fn check_rolls(rolls: &[f64]) -> Result<(), ConfigError> {
    let key = "simulate.rolls_deg";
    if rolls.is_empty() || rolls.len() > 4 {
        return Err(invalid(key, format!("needs 1 to 4 roll offsets, got {}", rolls.len())));
    }
    for (i, &r) in rolls.iter().enumerate() {
        if !(r.is_finite() && (-180.0..=180.0).contains(&r)) {
            return Err(invalid(key, format!("entry {i} must be an angle in [-180, 180] deg, got {r}")));
        }
        if let Some(j) =
            rolls[..i].iter().position(|&q| (q - r).rem_euclid(360.0).min((r - q).rem_euclid(360.0)) < 1e-6)
        {
            return Err(invalid(key, format!("entries {j} and {i} ({r} deg) are the same position angle")));
        }
    }
    Ok(())
}

/// The most `run.threads` a config may ask for: more than the cores of any node.
pub const MAX_THREADS: usize = 1024;

/// The rayon thread count for `run.threads = requested` on a rank with `available` cores: 0 means
/// all of them; more than 4x `available` (oversubscription that only adds switching) is lowered to
/// 4x `available`, with the warning to print.
pub fn thread_count(requested: usize, available: usize) -> (usize, Option<String>) {
    let available = available.max(1);
    match requested {
        0 => (available, None),
        n if n > 4 * available => (
            4 * available,
            Some(format!(
                "run.threads = {n} is more than 4x the {available} cores available to this rank: using {}",
                4 * available
            )),
        ),
        n => (n, None),
    }
}

fn non_negative(key: &str, v: f64) -> Result<f64, ConfigError> {
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(invalid(key, format!("must be zero or positive, got {v}")))
    }
}

impl RawConfig {
    /// Check cross-field rules and units.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the TOML key path.
    pub fn resolve(&self) -> Result<Config, ConfigError> {
        let r = &self.run;
        if r.mem_budget_mb < 64 {
            return Err(invalid("run.mem_budget_mb", format!("must be at least 64 MiB, got {}", r.mem_budget_mb)));
        }
        if r.output_dir.trim().is_empty() {
            return Err(invalid("run.output_dir", "must not be empty"));
        }
        if r.threads > MAX_THREADS {
            return Err(invalid(
                "run.threads",
                format!(
                    "{} threads per rank is more than any node has (limit {MAX_THREADS}; 0 = all cores)",
                    r.threads
                ),
            ));
        }
        let run = RunConfig {
            output_dir: r.output_dir.clone().into(),
            mem_budget_mb: r.mem_budget_mb,
            threads: r.threads,
            progress_interval_s: positive("run.progress_interval_s", r.progress_interval_s)?,
            stop_after: match r.stop_after.trim() {
                "" => None,
                s if STOPPABLE_STAGES.contains(&s) => Some(s.to_string()),
                s => {
                    return Err(invalid(
                        "run.stop_after",
                        format!("unknown stage {s:?}: one of {} (or empty)", STOPPABLE_STAGES.join(", ")),
                    ))
                }
            },
            groups: match &r.groups {
                super::raw::RawGroups::Count(n) if *n >= 1 => Groups::Count(*n as usize),
                super::raw::RawGroups::Word(w) if w == "auto" => Groups::Auto,
                other => {
                    let shown = match other {
                        super::raw::RawGroups::Count(n) => n.to_string(),
                        super::raw::RawGroups::Word(w) => format!("\"{w}\""),
                    };
                    return Err(invalid(
                        "run.groups",
                        format!("must be a number of groups (1 or more) or \"auto\", got {shown}"),
                    ));
                }
            },
        };

        let p = &self.plan;
        let pixscale_arcsec = non_negative("plan.pixscale_arcsec", p.pixscale_arcsec)?;
        if p.max_fill_ratio < 1.0 || !p.max_fill_ratio.is_finite() {
            return Err(invalid("plan.max_fill_ratio", format!("must be at least 1, got {}", p.max_fill_ratio)));
        }
        if p.chunk_px != 0 && p.chunk_px < 64 {
            return Err(invalid("plan.chunk_px", format!("must be 0 (automatic) or at least 64, got {}", p.chunk_px)));
        }
        if p.bytes_per_output_px == 0 {
            return Err(invalid("plan.bytes_per_output_px", "must be positive"));
        }
        let grid = p.grid.as_ref().map(resolve_grid).transpose()?;
        let plan = PlanConfig {
            pixscale_arcsec,
            margin_px: p.margin_px,
            chunk_px: p.chunk_px,
            bytes_per_output_px: p.bytes_per_output_px,
            max_fill_ratio: p.max_fill_ratio,
            max_output_mpix: positive("plan.max_output_mpix", p.max_output_mpix)?,
            common_grid: match p.common_grid.as_str() {
                "none" => CommonGrid::None,
                "instrument" => CommonGrid::Instrument,
                "all" => CommonGrid::All,
                other => {
                    return Err(invalid(
                        "plan.common_grid",
                        format!("use \"none\", \"instrument\" or \"all\", got \"{other}\""),
                    ))
                }
            },
            grid,
        };

        let s = &self.simulate;
        let instrument = Instrument::from_name(&s.instrument).ok_or_else(|| {
            invalid(
                "simulate.instrument",
                format!("unknown instrument `{}`: use nircam_sw, nircam_lw or miri", s.instrument),
            )
        })?;
        let filter =
            if s.filter.is_empty() { instrument.default_filter().to_string() } else { s.filter.to_ascii_uppercase() };
        match Instrument::of_filter(&filter) {
            Some(i) if i == instrument => {}
            Some(i) => {
                return Err(invalid(
                    "simulate.filter",
                    format!(
                        "filter {filter} belongs to {}, not to simulate.instrument = {}",
                        i.name(),
                        instrument.name()
                    ),
                ))
            }
            None => return Err(invalid("simulate.filter", format!("`{filter}` is not a JWST imaging filter name"))),
        }
        let tiles = parse_tiles(&s.tiles).ok_or_else(|| {
            invalid("simulate.tiles", format!("expected COLSxROWS like 2x2 (1 to 8 each), got `{}`", s.tiles))
        })?;
        if !(1..=8).contains(&s.dithers) {
            return Err(invalid("simulate.dithers", format!("must be 1 to 8, got {}", s.dithers)));
        }
        check_rolls(&s.rolls_deg)?;
        let size = SimSize::from_name(&s.size)
            .ok_or_else(|| invalid("simulate.size", format!("use tiny, small, medium or large, got `{}`", s.size)))?;
        let frac = |key: &str, v: f64| {
            if (0.0..=1.0).contains(&v) {
                Ok(v)
            } else {
                Err(invalid(key, format!("must be between 0 and 1, got {v}")))
            }
        };
        let default_neg = |v: f64, d: f64| if v < 0.0 { d } else { v };
        let simulate = SimulateConfig {
            instrument,
            filter,
            tiles,
            dithers: s.dithers,
            rolls_deg: s.rolls_deg.clone(),
            size,
            seed: s.seed,
            target: s.target.clone(),
            noise: s.noise,
            cosmic_rays: s.cosmic_rays,
            saturate: s.saturate,
            cosmic_ray_rate: non_negative("simulate.cosmic_ray_rate", s.cosmic_ray_rate)?,
            stripe_rms_mjysr: default_neg(
                s.stripe_rms_mjysr,
                match instrument {
                    Instrument::Miri => 0.0,
                    _ => 0.02,
                },
            ),
            background_offset_mjysr: default_neg(
                s.background_offset_mjysr,
                match instrument {
                    Instrument::Miri => 0.4,
                    _ => 0.02,
                },
            ),
            tile_plane_mjysr: non_negative("simulate.tile_plane_mjysr", s.tile_plane_mjysr)?,
            lyot_offset_mjysr: s.lyot_offset_mjysr,
            pointing_error_arcsec: non_negative("simulate.pointing_error_arcsec", s.pointing_error_arcsec)?,
            absolute_offset_arcsec: s.absolute_offset_arcsec,
            absolute_rotation_deg: s.absolute_rotation_deg,
            miri_off_exposures: s.miri_off_exposures,
            catalog_completeness: frac("simulate.catalog_completeness", s.catalog_completeness)?,
            catalog_noise_arcsec: non_negative("simulate.catalog_noise_arcsec", s.catalog_noise_arcsec)?,
            truth_pixscale_factor: positive("simulate.truth_pixscale_factor", s.truth_pixscale_factor)?,
            fill_field: s.fill_field,
        };
        let p = &self.prep;
        if p.off_name.trim().is_empty() {
            return Err(invalid("prep.off_name", "must not be empty (it would make every exposure an off exposure)"));
        }
        let prep = PrepConfig {
            enabled: p.enabled,
            lyot_separate: p.lyot_separate,
            off_background: p.off_background,
            off_name: p.off_name.trim().to_ascii_lowercase(),
            off_inputs: p.off_inputs.iter().map(std::path::PathBuf::from).collect(),
            off_sigma: positive("prep.off_sigma", p.off_sigma)?,
        };
        let ds = &self.destripe;
        if ds.filter_scales.is_empty() || ds.filter_scales.contains(&0) {
            return Err(invalid("destripe.filter_scales", "needs at least one scale, every scale > 0"));
        }
        if !(ds.cutoff_ratio > 0.0 && ds.cutoff_ratio <= 0.5) {
            return Err(invalid("destripe.cutoff_ratio", format!("must be in (0, 0.5], got {}", ds.cutoff_ratio)));
        }
        let destripe = DestripeConfig {
            enabled: ds.enabled,
            filter_scales: ds.filter_scales.clone(),
            cutoff_ratio: ds.cutoff_ratio,
            sigma: positive("destripe.sigma", ds.sigma)?,
            dilate_size: ds.dilate_size.max(1),
            min_mask_frac: frac("destripe.min_mask_frac", ds.min_mask_frac)?,
            seed: ds.seed,
            png: ds.png,
        };
        let l = &self.level;
        if l.maxiters == 0 {
            return Err(invalid("level.maxiters", "must be at least 1"));
        }
        let level = LevelConfig {
            enabled: l.enabled,
            sigma: positive("level.sigma", l.sigma)?,
            maxiters: l.maxiters,
            min_area_frac: frac("level.min_area_frac", l.min_area_frac)?,
            min_linear_frac: frac("level.min_linear_frac", l.min_linear_frac)?,
            rms_sig_limit: positive("level.rms_sig_limit", l.rms_sig_limit)?,
            subtract_sky: l.subtract_sky,
            share_pieces: l.share_pieces,
            tile_planes: match l.tile_fit.as_str() {
                "level" => false,
                "plane" => true,
                other => {
                    return Err(invalid("level.tile_fit", format!("must be \"level\" or \"plane\", got \"{other}\"")))
                }
            },
        };
        let o = &self.outlier;
        let pixfrac = |key: &str, v: f64| {
            if v > 0.0 && v <= 1.0 {
                Ok(v)
            } else {
                Err(invalid(key, format!("must be in (0, 1], got {v}")))
            }
        };
        let outlier = OutlierConfig {
            enabled: o.enabled,
            snr1: positive("outlier.snr1", o.snr1)? as f32,
            snr2: positive("outlier.snr2", o.snr2)? as f32,
            scale1: non_negative("outlier.scale1", o.scale1)? as f32,
            scale2: non_negative("outlier.scale2", o.scale2)? as f32,
            maskpt: frac("outlier.maskpt", o.maskpt)?,
            pixfrac: pixfrac("outlier.pixfrac", o.pixfrac)?,
            blot_bicubic: match o.blot_interp.as_str() {
                "bicubic" => true,
                "bilinear" => false,
                other => {
                    return Err(invalid(
                        "outlier.blot_interp",
                        format!("use \"bicubic\" or \"bilinear\", got `{other}`"),
                    ))
                }
            },
            write_crf: o.write_crf,
            low_coverage_min: o.low_coverage_min,
        };
        let d = &self.drizzle;
        let drizzle = DrizzleConfig {
            pixfrac: pixfrac("drizzle.pixfrac", d.pixfrac)?,
            weight_type: match d.weight_type.as_str() {
                "ivm" => WeightType::Ivm,
                "exptime" => WeightType::Exptime,
                other => {
                    return Err(invalid("drizzle.weight_type", format!("use \"ivm\" or \"exptime\", got `{other}`")))
                }
            },
            variance_planes: d.variance_planes,
        };
        if self.assemble.row_block == 0 {
            return Err(invalid("assemble.row_block", "must be positive"));
        }
        let assemble = AssembleConfig { row_block: self.assemble.row_block };
        let mut targets = vec![];
        for (i, t) in self.target.iter().enumerate() {
            if t.name.trim().is_empty() || t.name.contains('/') {
                return Err(invalid(
                    &format!("target[{i}].name"),
                    format!("must be a non-empty name without '/', got `{}`", t.name),
                ));
            }
            if t.inputs.is_empty() {
                return Err(invalid(&format!("target[{i}].inputs"), "lists no input files or directories"));
            }
            if let Some(j) = self.target[..i].iter().position(|o| o.name.eq_ignore_ascii_case(&t.name)) {
                return Err(invalid(&format!("target[{i}].name"), format!("`{}` is also target[{j}]", t.name)));
            }
            if let Some(b) = t.bands.iter().find(|b| !super::overrides::is_known_filter(b)) {
                return Err(invalid(
                    &format!("target[{i}].bands"),
                    format!("`{b}` is not a JWST imaging filter (NIRCam F070W..F480M, MIRI F560W..F2550W)"),
                ));
            }
            targets.push(Target {
                name: t.name.clone(),
                inputs: t.inputs.iter().map(Into::into).collect(),
                bands: t.bands.iter().map(|b| b.to_ascii_uppercase()).collect(),
                catalog: t.catalog.as_ref().map(Into::into),
            });
        }
        let a = &self.align;
        let opt_path = |v: &str| (!v.trim().is_empty()).then(|| std::path::PathBuf::from(v.trim()));
        let opt_band = |key: &str, v: &str| -> Result<Option<String>, ConfigError> {
            let b = v.trim().to_ascii_uppercase();
            if b.is_empty() {
                Ok(None)
            } else if Instrument::of_filter(&b).is_some() {
                Ok(Some(b))
            } else {
                Err(invalid(key, format!("`{v}` is not a JWST imaging filter")))
            }
        };
        let opt_fwhm =
            |key: &str, v: f64| -> Result<Option<f64>, ConfigError> { Ok((non_negative(key, v)? > 0.0).then_some(v)) };
        let at_least = |key: &str, v: usize, min: usize| {
            if v >= min {
                Ok(v)
            } else {
                Err(invalid(key, format!("must be at least {min}, got {v}")))
            }
        };
        let align = AlignConfig {
            enabled: a.enabled,
            reference_band: opt_band("align.reference_band", &a.reference_band)?,
            shifts_file: opt_path(&a.shifts_file),
            fwhm_arcsec: opt_fwhm("align.fwhm_arcsec", a.fwhm_arcsec)?,
            threshold_sigma: positive("align.threshold_sigma", a.threshold_sigma)?,
            brightest: at_least("align.brightest", a.brightest, 1)?,
            search_radius_arcsec: positive("align.search_radius_arcsec", a.search_radius_arcsec)?,
            tolerance_arcsec: positive("align.tolerance_arcsec", a.tolerance_arcsec)?,
            min_matches: at_least("align.min_matches", a.min_matches, 1)?,
        };
        let s = &self.astrometry;
        let astrometry = AstrometryConfig {
            catalog: opt_path(&s.catalog),
            reference_band: opt_band("astrometry.reference_band", &s.reference_band)?,
            solution_file: opt_path(&s.solution_file),
            fwhm_arcsec: opt_fwhm("astrometry.fwhm_arcsec", s.fwhm_arcsec)?,
            threshold_sigma: positive("astrometry.threshold_sigma", s.threshold_sigma)?,
            brightest: at_least("astrometry.brightest", s.brightest, 1)?,
            search_radius_arcsec: positive("astrometry.search_radius_arcsec", s.search_radius_arcsec)?,
            wide_tolerance_arcsec: positive("astrometry.wide_tolerance_arcsec", s.wide_tolerance_arcsec)?,
            strict_tolerance_arcsec: positive("astrometry.strict_tolerance_arcsec", s.strict_tolerance_arcsec)?,
            min_matches: at_least("astrometry.min_matches", s.min_matches, 2)?,
        };
        if align.tolerance_arcsec > align.search_radius_arcsec {
            return Err(invalid("align.tolerance_arcsec", "must not exceed align.search_radius_arcsec"));
        }
        if astrometry.wide_tolerance_arcsec > astrometry.search_radius_arcsec {
            return Err(invalid("astrometry.wide_tolerance_arcsec", "must not exceed astrometry.search_radius_arcsec"));
        }
        let pm = &self.psfmatch;
        let psfmatch = PsfmatchConfig {
            psf: pm.psf.iter().filter_map(|p| opt_path(p)).collect(),
            targets: pm
                .targets
                .iter()
                .map(|t| PsfTarget::parse(t).map_err(|m| invalid("psfmatch.targets", m)))
                .collect::<Result<_, _>>()?,
            chunk_rows: at_least("psfmatch.chunk_rows", pm.chunk_rows, 1)?,
            noise_curve: pm.noise_curve,
            noise_max_fwhm_arcsec: non_negative("psfmatch.noise_max_fwhm_arcsec", pm.noise_max_fwhm_arcsec)?,
            noise_region_px: at_least("psfmatch.noise_region_px", pm.noise_region_px, 16)?,
        };
        if !drizzle.variance_planes && !psfmatch.targets.is_empty() {
            return Err(invalid(
                "drizzle.variance_planes",
                "psfmatch convolves the mosaic's ERR: keep variance_planes = true, or give no psfmatch.targets",
            ));
        }
        let dm = &self.destripe_multi;
        if dm.large_scale_filter_px != 0 && dm.large_scale_filter_px % 2 == 0 {
            return Err(invalid(
                "destripe_multi.large_scale_filter_px",
                format!(
                    "{} is even: the median filter needs an odd length (or 0 for rows / 10)",
                    dm.large_scale_filter_px
                ),
            ));
        }
        if !(dm.convergence_mjysr.is_finite() && dm.convergence_mjysr > 0.0) {
            return Err(invalid(
                "destripe_multi.convergence_mjysr",
                format!("{} must be a finite number > 0 (MJy/sr)", dm.convergence_mjysr),
            ));
        }
        if !["auto", "iterate", "joint"].contains(&dm.method.as_str()) {
            return Err(invalid(
                "destripe_multi.method",
                format!("`{}` is not one of \"auto\", \"iterate\", \"joint\"", dm.method),
            ));
        }
        let destripe_multi = DestripeMultiConfig {
            method: dm.method.clone(),
            enabled: dm.enabled,
            large_scale: dm.large_scale,
            large_scale_filter_px: dm.large_scale_filter_px,
            max_iterations: dm.max_iterations,
            convergence_mjysr: dm.convergence_mjysr,
        };
        let rl = &self.release;
        let version = rl.version.trim();
        if version.is_empty() || version.contains('/') || version.starts_with('.') {
            return Err(invalid("release.version", format!("must be a folder name, got `{}`", rl.version)));
        }
        let release = ReleaseConfig {
            enabled: rl.enabled,
            dir: opt_path(&rl.dir),
            version: version.to_string(),
            remove_bloat: rl.remove_bloat,
            compare_to: opt_path(&rl.compare_to),
        };
        Ok(Config {
            run,
            plan,
            prep,
            destripe,
            align,
            level,
            destripe_multi,
            outlier,
            drizzle,
            assemble,
            astrometry,
            anchor: self.anchor.resolve()?,
            psfmatch,
            simulate,
            release,
            targets,
        })
    }

    /// Resolve the config of every task the file can make (each target with each band its
    /// `bands` list, its override tables or the instruments name), so that a bad value in an override
    /// table is found before anything runs.
    ///
    /// # Errors
    /// [`ConfigError`] naming the key, the target and the band.
    pub fn check_tasks(&self) -> Result<(), ConfigError> {
        let mut bands: Vec<String> = ["F200W", "F300M", "F1000W"].map(String::from).to_vec();
        if let Some(doc) = &self.doc {
            fn keys(v: &toml::Value, out: &mut Vec<String>) {
                if let toml::Value::Table(t) = v {
                    for (k, v) in t {
                        if super::overrides::is_known_filter(k) {
                            out.push(k.to_ascii_uppercase());
                        }
                        keys(v, out);
                    }
                }
            }
            keys(&toml::Value::Table(doc.clone()), &mut bands);
        }
        for t in &self.target {
            let mut mine = bands.clone();
            mine.extend(t.bands.iter().map(|b| b.to_ascii_uppercase()));
            mine.sort();
            mine.dedup();
            for b in &mine {
                let task = self.for_task(&t.name, b)?;
                task.resolve().map_err(|e| match e {
                    ConfigError::Invalid { key, message } => {
                        ConfigError::Invalid { key, message: format!("{message} (target {}, band {b})", t.name) }
                    }
                    e => e,
                })?;
            }
        }
        Ok(())
    }
}

fn resolve_grid(g: &RawGrid) -> Result<UserGrid, ConfigError> {
    if !(-90.0..=90.0).contains(&g.dec_deg) {
        return Err(invalid("plan.grid.dec_deg", format!("must be within [-90, 90], got {}", g.dec_deg)));
    }
    if g.nx == 0 || g.ny == 0 {
        return Err(invalid("plan.grid.nx", "nx and ny must be positive"));
    }
    Ok(UserGrid {
        ra_deg: g.ra_deg.rem_euclid(360.0),
        dec_deg: g.dec_deg,
        nx: g.nx,
        ny: g.ny,
        pixscale_arcsec: positive("plan.grid.pixscale_arcsec", g.pixscale_arcsec)?,
        rotation_deg: g.rotation_deg,
    })
}

/// Parse "2x2" into (columns, rows), each 1 to 8.
pub fn parse_tiles(s: &str) -> Option<(usize, usize)> {
    let (a, b) = s.trim().to_ascii_lowercase().split_once('x').map(|(a, b)| (a.to_string(), b.to_string()))?;
    let (a, b): (usize, usize) = (a.parse().ok()?, b.parse().ok()?);
    ((1..=8).contains(&a) && (1..=8).contains(&b)).then_some((a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_map_to_channels() {
        assert_eq!(Instrument::of_filter("F200W"), Some(Instrument::NircamSw));
        assert_eq!(Instrument::of_filter("F212N"), Some(Instrument::NircamSw));
        assert_eq!(Instrument::of_filter("F300M"), Some(Instrument::NircamLw));
        assert_eq!(Instrument::of_filter("F444W"), Some(Instrument::NircamLw));
        assert_eq!(Instrument::of_filter("F770W"), Some(Instrument::Miri));
        assert_eq!(Instrument::of_filter("F2100W"), Some(Instrument::Miri));
        assert_eq!(Instrument::filter_wavelength_um("F770W"), Some(7.7));
        assert_eq!(Instrument::of_filter("F1000W"), Some(Instrument::Miri));
        assert_eq!(Instrument::of_filter("CLEAR"), None);
        assert_eq!(parse_tiles("2x3"), Some((2, 3)));
        assert_eq!(parse_tiles("0x3"), None);
    }

    #[test]
    fn thread_count_keeps_sane_values_and_lowers_oversubscription() {
        assert_eq!(thread_count(0, 8), (8, None));
        assert_eq!(thread_count(3, 8), (3, None));
        assert_eq!(thread_count(32, 8), (32, None));
        let (n, w) = thread_count(33, 8);
        assert_eq!(n, 32);
        assert!(w.unwrap().contains("run.threads = 33"));
        let mut raw = crate::config::RawConfig::default();
        raw.run.threads = MAX_THREADS + 1;
        let e = raw.resolve().unwrap_err().to_string();
        assert!(e.contains("run.threads") && e.contains("1025"), "{e}");
    }
}

//! The `[anchor]` section: raw (TOML mirror with defaults) and resolved (checked) forms of the
//! settings of the `anchor` stage, which ties a mosaic's background level to a wide-field reference
//! image (pjpipe `anchoring`, PHANGS-JWST paper section 3.9). Kept in its own file; `raw` and
//! `resolved` hold one field each for it, and `DEFAULT_TOML` its commented defaults.

use super::ConfigError;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// `[anchor]` (pjpipe anchoring; defaults from pjpipe's PHANGS configuration).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAnchor {
    /// Run the stage (false = the mosaic keeps the level of the level-matching stage).
    pub enabled: bool,
    /// Wide-field reference images (FITS, image in the primary HDU, MJy/sr, celestial WCS) in order
    /// of preference, e.g. IRAC1 then WISE1 for NIRCam, IRAC4 then WISE3 for MIRI; the first that
    /// gives a fit is used. `tessera mosaic --anchor REF.fits` (repeatable) sets it for one run.
    pub references: Vec<String>,
    /// Resolution (Gaussian FWHM, arcsec) of a reference whose header has no BMAJ (deg); 0 = BMAJ is
    /// required.
    pub reference_fwhm_arcsec: f64,
    /// NIRCam band anchored to the references; the other NIRCam bands are tied to its anchored mosaic.
    pub reference_band_nircam: String,
    /// MIRI band anchored to the references; the other MIRI bands are tied to its anchored mosaic.
    pub reference_band_miri: String,
    /// For a band that is not its instrument's reference band: the reference band's anchored mosaic
    /// (its `-o` FITS after this stage), which the band is tied to at `internal_fwhm_arcsec`; empty
    /// = the stage is skipped for that band with a warning.
    pub reference_band_mosaic: String,
    /// Resolution of the internal tie between bands of one instrument, arcsec (F2100W's PSF FWHM, as
    /// pjpipe's internal_conv_band).
    pub internal_fwhm_arcsec: f64,
    /// Width of the bins of reference intensity, MJy/sr.
    pub bin_width_mjysr: f64,
    /// Range of reference intensity fitted, MJy/sr [low, high].
    pub range_mjysr: [f64; 2],
    /// The range for WISE3 references (file name containing "w3" or "wise3"), MJy/sr.
    pub range_wise3_mjysr: [f64; 2],
    /// Fit the faint half of the field instead: from the 1st percentile to the median of the
    /// reference intensities over the mosaic (for fields the galaxy fills, where the fixed range holds
    /// no pixels; the paper adjusted the range by hand per galaxy and band).
    pub auto_range: bool,
    /// Bins with fewer pixels than this are left out.
    pub min_bin_pixels: usize,
    /// Rejection threshold of the line fit through the bin medians, in residual standard deviations.
    pub clip_sigma: f64,
    /// Rejection rounds of the line fit.
    pub clip_iterations: usize,
    /// A reference must cover at least this fraction of the mosaic's pixels (else an error names it).
    pub min_coverage: f64,
    /// Mosaic pixels brighter than this (MJy/sr) are left out of the comparison with every
    /// reference pixel whose beam reaches them: saturated stars and cores, whose flux the mosaic
    /// misses and the reference has; 0 = none (pjpipe; on small fields the masked beams can leave
    /// too few bins).
    pub mask_above_mjysr: f64,
}

impl Default for RawAnchor {
    fn default() -> Self {
        RawAnchor {
            enabled: true,
            references: vec![],
            reference_fwhm_arcsec: 0.0,
            reference_band_nircam: "F300M".into(),
            reference_band_miri: "F770W".into(),
            reference_band_mosaic: String::new(),
            internal_fwhm_arcsec: 0.674,
            bin_width_mjysr: 0.1,
            range_mjysr: [0.25, 2.0],
            range_wise3_mjysr: [0.0, 0.8],
            auto_range: false,
            min_bin_pixels: 10,
            clip_sigma: 3.0,
            clip_iterations: 3,
            min_coverage: 0.9,
            mask_above_mjysr: 0.0,
        }
    }
}

/// The checked `[anchor]` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnchorConfig {
    pub enabled: bool,
    pub references: Vec<PathBuf>,
    /// `None` = BMAJ required.
    pub reference_fwhm_arcsec: Option<f64>,
    /// Upper case.
    pub reference_band_nircam: String,
    pub reference_band_miri: String,
    pub reference_band_mosaic: Option<PathBuf>,
    pub internal_fwhm_arcsec: f64,
    pub bin_width_mjysr: f64,
    pub range_mjysr: [f64; 2],
    pub range_wise3_mjysr: [f64; 2],
    pub auto_range: bool,
    pub min_bin_pixels: usize,
    pub clip_sigma: f64,
    pub clip_iterations: usize,
    pub min_coverage: f64,
    /// `None` = no mask.
    pub mask_above_mjysr: Option<f64>,
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.to_string(), message: message.into() }
}

impl RawAnchor {
    /// Check the section.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the `anchor.*` key.
    pub fn resolve(&self) -> Result<AnchorConfig, ConfigError> {
        let pos = |key: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(v)
            } else {
                Err(invalid(key, format!("must be a positive number, got {v}")))
            }
        };
        let range = |key: &str, r: [f64; 2]| {
            if r[0].is_finite() && r[1].is_finite() && r[1] > r[0] {
                Ok(r)
            } else {
                Err(invalid(key, format!("must be [low, high] with low < high, got {r:?}")))
            }
        };
        let band = |key: &str, v: &str| {
            let b = v.trim().to_ascii_uppercase();
            if super::Instrument::of_filter(&b).is_some() {
                Ok(b)
            } else {
                Err(invalid(key, format!("`{v}` is not a JWST imaging filter name")))
            }
        };
        if !(self.reference_fwhm_arcsec.is_finite() && self.reference_fwhm_arcsec >= 0.0) {
            return Err(invalid(
                "anchor.reference_fwhm_arcsec",
                format!("must be zero or positive, got {}", self.reference_fwhm_arcsec),
            ));
        }
        if !(self.min_coverage > 0.0 && self.min_coverage <= 1.0) {
            return Err(invalid("anchor.min_coverage", format!("must be in (0, 1], got {}", self.min_coverage)));
        }
        if self.references.iter().any(|r| r.trim().is_empty()) {
            return Err(invalid("anchor.references", "an empty file name"));
        }
        Ok(AnchorConfig {
            enabled: self.enabled,
            references: self.references.iter().map(|r| PathBuf::from(r.trim())).collect(),
            reference_fwhm_arcsec: (self.reference_fwhm_arcsec > 0.0).then_some(self.reference_fwhm_arcsec),
            reference_band_nircam: band("anchor.reference_band_nircam", &self.reference_band_nircam)?,
            reference_band_miri: band("anchor.reference_band_miri", &self.reference_band_miri)?,
            reference_band_mosaic: (!self.reference_band_mosaic.trim().is_empty())
                .then(|| PathBuf::from(self.reference_band_mosaic.trim())),
            internal_fwhm_arcsec: pos("anchor.internal_fwhm_arcsec", self.internal_fwhm_arcsec)?,
            bin_width_mjysr: pos("anchor.bin_width_mjysr", self.bin_width_mjysr)?,
            range_mjysr: range("anchor.range_mjysr", self.range_mjysr)?,
            range_wise3_mjysr: range("anchor.range_wise3_mjysr", self.range_wise3_mjysr)?,
            auto_range: self.auto_range,
            min_bin_pixels: self.min_bin_pixels.max(1),
            clip_sigma: pos("anchor.clip_sigma", self.clip_sigma)?,
            clip_iterations: self.clip_iterations,
            min_coverage: self.min_coverage,
            mask_above_mjysr: if self.mask_above_mjysr > 0.0 {
                Some(pos("anchor.mask_above_mjysr", self.mask_above_mjysr)?)
            } else if self.mask_above_mjysr == 0.0 {
                None
            } else {
                return Err(invalid(
                    "anchor.mask_above_mjysr",
                    format!("must be 0 or positive, got {}", self.mask_above_mjysr),
                ));
            },
        })
    }
}

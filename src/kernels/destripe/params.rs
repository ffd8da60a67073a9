//! Errors and parameters of the destriping kernels: [`DestripeError`], the amplifier layout
//! [`AmpLayout`], and the parameter structs of the source mask, the Butterworth filter, the
//! single-exposure and the multi-exposure methods, each with its defaults (the PHANGS settings) and
//! its checks.
//!
//! What does not live here: the config keys that fill them (`config`, the `destripe` stages) and
//! the methods themselves (the sibling files).

use std::ops::Range;

/// Invalid inputs or parameters of a destriping kernel.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum DestripeError {
    /// Two arrays that must have the same `[y, x]` shape do not.
    #[error("destripe: {what} has shape {got:?}, expected {expected:?}")]
    Shape {
        /// Which array.
        what: &'static str,
        /// Its shape `(ny, nx)`.
        got: (usize, usize),
        /// The shape of the data.
        expected: (usize, usize),
    },
    /// A parameter outside its allowed range.
    #[error("destripe: parameter {name} = {value} is invalid: {reason}")]
    Param {
        /// Parameter name (field of the parameter struct).
        name: &'static str,
        /// The rejected value.
        value: f64,
        /// What is allowed.
        reason: &'static str,
    },
}

pub(super) fn param_err(name: &'static str, value: f64, reason: &'static str) -> DestripeError {
    DestripeError::Param { name, value, reason }
}

pub(super) fn check_shape(
    what: &'static str,
    got: (usize, usize),
    expected: (usize, usize),
) -> Result<(), DestripeError> {
    if got == expected {
        Ok(())
    } else {
        Err(DestripeError::Shape { what, got, expected })
    }
}

/// How the detector's columns are split between amplifiers (readout channels).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AmpLayout {
    /// One amplifier reads whole rows (NIRCam subarrays, or quadrants switched off).
    WholeRows,
    /// Amplifiers of `width_px` columns each, from x = 0 (NIRCam full frame: 512, giving 4 amps of
    /// 2048 columns). A last, narrower amplifier takes any remainder.
    Columns {
        /// Columns per amplifier, > 0.
        width_px: usize,
    },
}

impl AmpLayout {
    /// NIRCam: four 512-column amplifiers on a full frame (`nx == 2048`), whole rows otherwise.
    pub fn nircam(nx: usize) -> Self {
        if nx == 2048 {
            AmpLayout::Columns { width_px: 512 }
        } else {
            AmpLayout::WholeRows
        }
    }

    /// Column ranges of the amplifiers of an image `nx` columns wide (one empty-free range per amp).
    pub fn ranges(&self, nx: usize) -> Vec<Range<usize>> {
        match *self {
            AmpLayout::WholeRows => std::iter::once(0..nx).collect(),
            AmpLayout::Columns { width_px } => {
                let w = width_px.max(1);
                (0..nx.div_ceil(w)).map(|k| k * w..((k + 1) * w).min(nx)).collect()
            }
        }
    }

    fn validate(&self) -> Result<(), DestripeError> {
        match *self {
            AmpLayout::Columns { width_px: 0 } => Err(param_err("amps.width_px", 0.0, "must be > 0")),
            _ => Ok(()),
        }
    }
}

/// Parameters of the photutils-style source mask (pjpipe `make_source_mask`, reference P3).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SourceMaskParams {
    /// Clipping threshold of the background statistics and detection threshold, in sigma. Default 3.
    pub nsigma: f64,
    /// Minimum number of 8-connected pixels above threshold for a detection. Default 3.
    pub npixels: usize,
    /// Side of the square dilation footprint, pixels (1 = no dilation). Default 11.
    pub dilate_size: usize,
    /// Clipping iterations of the background statistics; `None` = until convergence. Default 5.
    pub maxiters: Option<usize>,
}

impl Default for SourceMaskParams {
    fn default() -> Self {
        Self { nsigma: 3.0, npixels: 3, dilate_size: 11, maxiters: Some(5) }
    }
}

impl SourceMaskParams {
    pub(super) fn validate(&self) -> Result<(), DestripeError> {
        if !(self.nsigma.is_finite() && self.nsigma > 0.0) {
            return Err(param_err("nsigma", self.nsigma, "must be finite and > 0"));
        }
        Ok(())
    }
}

/// Butterworth high-pass filter (as `skimage.filters.butterworth(high_pass=True)`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ButterworthParams {
    /// Cutoff frequency as a fraction of the sampling frequency (cycles per pixel), in (0, 0.5].
    /// Default 0.005 (a scale of ~200 pixels).
    pub cutoff_ratio: f64,
    /// Filter order n, > 0. Default 2.
    pub order: f64,
    /// `true` (skimage's default, used by pjpipe): gain `1 / (1 + (fc/f)^(2n))`; `false`: the
    /// classic `1 / sqrt(1 + (fc/f)^(2n))`. Default `true`.
    pub squared: bool,
}

impl Default for ButterworthParams {
    fn default() -> Self {
        Self { cutoff_ratio: 0.005, order: 2.0, squared: true }
    }
}

impl ButterworthParams {
    /// Gain at radial frequency `f` (cycles per pixel).
    pub fn gain(&self, f: f64) -> f64 {
        if f <= 0.0 {
            return 0.0;
        }
        let q2n = (f / self.cutoff_ratio).powf(2.0 * self.order);
        let g = q2n / (1.0 + q2n);
        if !q2n.is_finite() {
            1.0
        } else if self.squared {
            g
        } else {
            g.sqrt()
        }
    }

    pub(super) fn validate(&self) -> Result<(), DestripeError> {
        if !(self.cutoff_ratio > 0.0 && self.cutoff_ratio <= 0.5) {
            return Err(param_err("butterworth.cutoff_ratio", self.cutoff_ratio, "must be in (0, 0.5]"));
        }
        if !(self.order.is_finite() && self.order > 0.0) {
            return Err(param_err("butterworth.order", self.order, "must be finite and > 0"));
        }
        Ok(())
    }
}

/// How the column pass turns the per-column medians into a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerticalMethod {
    /// pjpipe's default `row_median`: the centred column profile itself. Keeps the high-passed
    /// column profile of extended emission (an imprint of a big galaxy).
    RowMedian,
    /// pjpipe's `median_filter`: the column profile minus the cascade of median filters at
    /// `filter_scales`, so structure wider than the largest scale is kept. tessera's default.
    MedianFilter,
}

/// Parameters of the single-exposure destriping (pjpipe `single_tile_destripe` with the PHANGS
/// settings: `median_filter` horizontal method, `row_median` vertical method, `filter_diffuse`).
#[derive(Debug, Clone, PartialEq)]
pub struct SingleTileParams {
    /// Amplifier layout. Default four 512-column amps (NIRCam full frame).
    pub amps: AmpLayout,
    /// Width of the reference-pixel border on every side, pixels: excluded from all measurements
    /// and given a zero model. Default 4 (full frame); 0 for subarrays.
    pub ref_border_px: usize,
    /// Median-filter scales of the cascade, rows, applied in this order (each > 0; odd in practice).
    /// Default 3, 7, 15, 31, 63, 127, 255, 511 (PHANGS).
    pub filter_scales: Vec<usize>,
    /// An amp row with fewer than `min_mask_frac * amp width` unmasked pixels uses the full-row
    /// median instead. Default 0.2.
    pub min_mask_frac: f64,
    /// Source-mask and clipping threshold, sigma. Default 3.
    pub sigma: f64,
    /// Minimum pixels of a masked source. Default 3.
    pub npixels: usize,
    /// Dilation of the source mask, pixels. Default 7 (PHANGS; pjpipe's default is 11).
    pub dilate_size: usize,
    /// Clipping iterations of the column pass's source mask. Default 20. (The row pass uses 5.)
    pub max_iters: usize,
    /// Run the column pass first. Default true.
    pub vertical: bool,
    /// Model of the column pass. Default [`VerticalMethod::MedianFilter`].
    pub vertical_method: VerticalMethod,
    /// Measure stripes on the Butterworth high-passed, mirror-padded copy. Default true (PHANGS).
    pub filter_diffuse: bool,
    /// The high-pass filter of the diffuse filter.
    pub butterworth: ButterworthParams,
    /// Seed of the Gaussian fill of masked pixels before filtering.
    pub seed: u64,
}

impl Default for SingleTileParams {
    fn default() -> Self {
        Self {
            amps: AmpLayout::Columns { width_px: 512 },
            ref_border_px: 4,
            filter_scales: vec![3, 7, 15, 31, 63, 127, 255, 511],
            min_mask_frac: 0.2,
            sigma: 3.0,
            npixels: 3,
            dilate_size: 7,
            max_iters: 20,
            vertical: true,
            vertical_method: VerticalMethod::MedianFilter,
            filter_diffuse: true,
            butterworth: ButterworthParams::default(),
            seed: 0,
        }
    }
}

impl SingleTileParams {
    /// Defaults for a NIRCam subarray: whole-row amplifier, no reference border.
    pub fn subarray() -> Self {
        Self { amps: AmpLayout::WholeRows, ref_border_px: 0, ..Self::default() }
    }

    /// Check the parameters.
    ///
    /// # Errors
    /// [`DestripeError::Param`] for a zero filter scale or amp width, `min_mask_frac` outside
    /// `[0, 1]`, a non-positive `sigma` or an invalid Butterworth filter.
    pub fn validate(&self) -> Result<(), DestripeError> {
        self.amps.validate()?;
        if let Some(&z) = self.filter_scales.iter().find(|&&s| s == 0) {
            return Err(param_err("filter_scales", z as f64, "scales must be > 0"));
        }
        if !(0.0..=1.0).contains(&self.min_mask_frac) {
            return Err(param_err("min_mask_frac", self.min_mask_frac, "must be in [0, 1]"));
        }
        if !(self.sigma.is_finite() && self.sigma > 0.0) {
            return Err(param_err("sigma", self.sigma, "must be finite and > 0"));
        }
        self.butterworth.validate()
    }
}

/// Parameters of the per-exposure row pass of the multi-exposure destriping (pjpipe
/// `multi_tile_destripe`, pass A step 4).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MultiTileParams {
    /// Amplifier layout. Default four 512-column amps; pass B uses [`AmpLayout::WholeRows`].
    pub amps: AmpLayout,
    /// Amp rows with fewer than this fraction of unmasked pixels use the full-row value. Default 0.2.
    pub min_mask_frac: f64,
    /// Clipping and source-mask threshold, sigma. Default 3.
    pub sigma: f64,
    /// Minimum pixels of a masked source. Default 3.
    pub npixels: usize,
    /// Dilation of the source mask, pixels. Default 7.
    pub dilate_size: usize,
    /// Clipping iterations; `None` = until convergence. Default `None`.
    pub maxiters: Option<usize>,
    /// Also fit sigma-clipped column medians. Default false.
    pub vertical: bool,
}

impl Default for MultiTileParams {
    fn default() -> Self {
        Self {
            amps: AmpLayout::Columns { width_px: 512 },
            min_mask_frac: 0.2,
            sigma: 3.0,
            npixels: 3,
            dilate_size: 7,
            maxiters: None,
            vertical: false,
        }
    }
}

impl MultiTileParams {
    /// Check the parameters.
    ///
    /// # Errors
    /// [`DestripeError::Param`] for a zero amp width, `min_mask_frac` outside `[0, 1]` or a
    /// non-positive `sigma`.
    pub fn validate(&self) -> Result<(), DestripeError> {
        self.amps.validate()?;
        if !(0.0..=1.0).contains(&self.min_mask_frac) {
            return Err(param_err("min_mask_frac", self.min_mask_frac, "must be in [0, 1]"));
        }
        if !(self.sigma.is_finite() && self.sigma > 0.0) {
            return Err(param_err("sigma", self.sigma, "must be finite and > 0"));
        }
        Ok(())
    }

    pub(super) fn mask_params(&self) -> SourceMaskParams {
        SourceMaskParams {
            nsigma: self.sigma,
            npixels: self.npixels,
            dilate_size: self.dilate_size,
            maxiters: self.maxiters,
        }
    }
}

//! Pure numerical kernels. They take ndarray views and small parameter structs and return values;
//! they never see MPI, files or the config, and log nothing above `debug`.
//!
//! - `scene`: the simulator's truth sky (analytic Gaussian components) and its rendering into any
//!   pixel grid, PSF-convolved and pixel-integrated.
//! - `destripe`: NIRCam 1/f destriping (pjpipe single- and multi-tile): source masks, the
//!   Butterworth high-pass, per-amplifier median-filter cascades, the factored `StripeModel`.
//! - `detector`: what a detector adds (1/f stripes, cosmic rays, noise, DQ) and the JWST DQ bits.
//! - `drizzle`: the drizzle square kernel (Fruchter & Hook 2002) into per-chunk accumulators.
//! - `outlier`: JWST's outlier test: weight thresholds, median stack, blot interpolation, flags.
//! - `sources`: point-source detection (sigma-clipped mesh background, DAOFIND-style kernel,
//!   Gaussian-fit centroids, sharpness/roundness/extent filters) for the astrometry stages.
//! - `matching`: catalogue matching (2-D voting histogram with a false-alarm test, iterative
//!   clipped matching) and `shift`/`rshift` fits.
//! - `background`: the per-pixel clipped combination of MIRI off-source exposures.
//! - `level`: background level matching: mergeable sigma-clipped pair statistics, pair rejection,
//!   the weighted least-squares offsets (pjpipe level_match, solved directly).
//! - `psfmatch`: Aniano et al. (2011) matching kernels, their W-/D metrics and safe FWHMs, the
//!   NaN-aware FFT convolution of row bands with halos, and the noise-versus-resolution curve.
//! - `stats`: the exact sigma-clipped statistics (astropy's `sigma_clipped_stats`, in the variants
//!   level, destripe and sources need) and numpy-convention medians, shared by the kernels above.
//! - `gaussian`: the sampled Gaussian kernel and NaN-aware separable smoothing.
//! - `anchor`: anchoring numerics: block means, bilinear resampling, medians in bins of reference
//!   intensity, the 3-sigma-clipped line fit (PHANGS-JWST paper section 3.9).

pub mod anchor;
pub mod background;
pub mod destripe;
pub mod detector;
pub mod drizzle;
pub mod gaussian;
pub mod level;
pub mod matching;
pub mod outlier;
pub mod psfmatch;
pub mod scene;
pub mod sources;
pub mod stats;
#[cfg(test)]
mod test_rng;

pub use detector::dq;

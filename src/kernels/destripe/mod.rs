//! NIRCam 1/f destriping kernels, after pjpipe's `single_tile_destripe` and `multi_tile_destripe`
//! (PHANGS-JWST, Williams et al. 2024, section 3.2; Boquien's median-filter method): the
//! photutils-style source mask, the squared Butterworth high-pass of a mirror-padded copy ("diffuse
//! filter", via FFT), the median filter cascade on per-amplifier row profiles with the full-row
//! fallback for rows more than 80% masked, the column pass, and the pure parts of the
//! multi-exposure pass (per-amplifier sigma-clipped row medians of an exposure-minus-average
//! difference, the stripe direction from the exposures' rotation angles, the large-scale median
//! filter across the stripes). The astropy-style sigma-clipped statistics they rest on live in
//! [`crate::kernels::stats`] (the in-place variant, [`sigma_clipped_stats_select`]).
//!
//! Every function returns the *stripe model* (same shape as the input, MJy/sr); the caller
//! subtracts it, restores the original zeros and NaNs and may store it. All images are `[y, x]`;
//! stripes run along x (detector rows), amplifiers split x. Internally everything is f64.
//! Randomness (the Gaussian fill of the diffuse filter) comes from a counter-based generator keyed
//! by a caller seed and the pixel index, so results do not depend on the thread count: each `par_`
//! function is bit-identical to its serial twin.
//!
//! The parts, one file each (their public items are re-exported here, so callers write
//! `kernels::destripe::X`):
//! - `params`: [`DestripeError`], [`AmpLayout`] and the parameter structs.
//! - `model`: [`StripeModel`], the factored model the methods return and the stages store.
//! - `filters`: 1-D helpers (scipy's `median_filter` and `uniform_filter1d` in reflect mode,
//!   `numpy.interp`-style NaN filling) and the counter-based Gaussian deviates.
//! - `mask`: the source mask (reference P3) and the two-sided mask.
//! - `diffuse`: the Butterworth high-pass and the diffuse filter.
//! - `single`: the single-exposure method.
//! - `multi`: the pieces of the multi-exposure method.
//! - `joint`: the joint least-squares solve of every exposure's row and column stripes (the
//!   alternative to iterating the multi-exposure pass, for fields seen at several orientations).
//!
//! What does not live here: flat-fielding the measurement copy (the caller passes a flat-fielded
//! image if it wants pjpipe's "measure on flat, subtract from rate"), DQ decoding (the caller passes
//! a bad-pixel mask), reprojection, blotting and building the average image (`geom`, `drizzle`,
//! the `destripe_multi` stage), restoring zeros/NaNs and writing products, and the non-default
//! pjpipe methods (`remstripe`, `smooth`, `pca`).

mod diffuse;
mod filters;
mod joint;
mod mask;
mod model;
mod multi;
mod params;
mod single;
#[cfg(test)]
pub(crate) mod test_scene;

#[cfg(doc)]
use super::stats::sigma_clipped_stats_select;
pub use diffuse::{butterworth_highpass, diffuse_filter, highpass_mirror_padded, DiffuseParams};
#[cfg(test)]
pub(crate) use filters::gauss;
pub use filters::{interpolate_nans, median_filter_1d};
pub use joint::{
    sigma_from_histogram, solve as joint_solve, JointObs, JointParams, JointSummary, JointSystem, JOINT_OBS_BYTES,
};
pub use mask::{par_source_mask, source_mask};
pub use model::StripeModel;
pub use multi::{
    broadcast_rows, default_large_scale_filter_px, large_scale_mask, large_scale_smooth, multi_tile_model,
    par_multi_tile_model, par_multi_tile_model_preferring, row_profile, stripe_direction, StripeDirection,
};
pub use params::{
    AmpLayout, ButterworthParams, DestripeError, MultiTileParams, SingleTileParams, SourceMaskParams, VerticalMethod,
};
pub use single::{par_single_tile_model, single_tile_model};

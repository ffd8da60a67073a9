//! Background level matching kernels for the `level` stage (PHANGS-JWST paper, Williams et al. 2024,
//! section 3; pjpipe `level_match`, see `reference/pjpipe-algorithms.md` section 7): the statistics of
//! the pixel-by-pixel differences of every overlapping pair of images on a common grid, the pair
//! rejection rules, and the weighted least-squares solve for one offset (or one plane) per image.
//!
//! The parts, one file each, all pure, deterministic functions of ndarray views, slices and small
//! parameter structs (their public items are re-exported here, so callers write
//! `kernels::level::X`):
//! - `hist`: [`ValueRange`], [`HistSpec`] and [`ClipHistogram`]: a *mergeable* astropy-style
//!   sigma-clipped statistic (median centre, standard deviation spread) of the difference values of
//!   one pair, driven by [`sigma_clipped_stats_binned`].
//! - [`sigma_clipped_stats`], [`ClipParams`], [`ClippedStats`]: the same statistic computed exactly
//!   from a slice, for the non-distributed uses (the sky of a tile, local subtraction); they live in
//!   [`crate::kernels::stats`], shared with the destriping and source-finding kernels, and are
//!   re-exported here.
//! - `reject`: [`IndexExtent`], [`PairMeasure`] and [`reject_pairs`]: pjpipe's three pair
//!   rejection rules.
//! - `solve`: [`solve_offsets`]: the weighted least squares (weights `1/rms^2`, solved directly
//!   with a Cholesky factorisation per connected component, tessera's departure from pjpipe's
//!   Jacobi iteration), with one gauge per connected component and the components reported so the
//!   caller can warn about disconnected groups.
//! - `planes`: [`PlaneSums`] and [`PlaneFit`]: the optional plane (offset and two slopes) of a
//!   pair's differences, as a clipped least-squares fit whose sums are exact fixed-point integers,
//!   hence also independent of the decomposition; and [`solve_planes_gls`], the generalised least
//!   squares of the planes per image (each pair weighted by its plane fit's 3x3 information), on
//!   the connected components and gauges of `solve`.
//! - `reference`: [`order_by_time`] (reference tile closest in time to the MIRI backgrounds) and
//!   [`lowest_sky`] (the band constant: the lowest sigma-clipped sky among the tile groups).
//!
//! This file holds the error type shared by the parts, [`LevelError`].
//!
//! Sign convention everywhere: the statistic of pair `(i, j)` describes `image_i - image_j`, and the
//! solved offsets `o` satisfy `o_i - o_j ~ delta_ij`, so `image_k - o_k` are the matched images.
//!
//! What does not live here: resampling the images onto the common grid and masking bad pixels (the
//! caller passes views where unusable pixels are NaN), deciding which images form pairs or groups,
//! the MPI reductions (the caller sums [`ClipHistogram::counts_mut`] and [`PlaneSums::to_words`]
//! and reduces the extremes with min/max), warnings, and applying the offsets to the data.

mod hist;
mod planes;
mod reference;
mod reject;
mod solve;

pub use super::stats::{sigma_clipped_stats, ClipParams, ClippedStats};
pub use hist::{sigma_clipped_stats_binned, ClipHistogram, ClipPass, ClipStep, HistParams, HistSpec, ValueRange};
pub use planes::{solve_planes_gls, PairPlane, Plane, PlaneFit, PlaneFitParams, PlaneSolution, PlaneSums, PLANE_WORDS};
pub use reference::{lowest_sky, order_by_time};
pub use reject::{linear_extent_ok, reject_pairs, weight_from_rms, IndexExtent, PairMeasure, PairStatus, RejectParams};
pub use solve::{connected_components, solve_offsets, Components, Gauge, OffsetSolution, PairOffset};

/// Errors of the level-matching kernels.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum LevelError {
    /// A histogram binning with a non-finite origin, a non-positive or non-finite bin width, or no bins.
    #[error("invalid histogram binning: lo {lo}, width {width}, nbins {nbins}")]
    Binning {
        /// Lower edge of the first bin.
        lo: f64,
        /// Bin width.
        width: f64,
        /// Number of bins.
        nbins: usize,
    },
    /// A pair names an image index outside `0..n_images`.
    #[error("pair {pair} names image {index}, but there are {n_images} images")]
    ImageIndex {
        /// Position of the pair in the input slice.
        pair: usize,
        /// The offending image index.
        index: usize,
        /// Number of images.
        n_images: usize,
    },
    /// A pair joins an image to itself.
    #[error("pair {pair} joins image {index} to itself")]
    SelfPair {
        /// Position of the pair in the input slice.
        pair: usize,
        /// The image index.
        index: usize,
    },
    /// A pair weight that is not finite and positive.
    #[error("pair {pair} has weight {weight}; weights must be finite and > 0")]
    Weight {
        /// Position of the pair in the input slice.
        pair: usize,
        /// The rejected weight.
        weight: f64,
    },
    /// A pair statistic (offset or plane coefficient) that is not finite.
    #[error("pair {pair} has a non-finite difference")]
    Delta {
        /// Position of the pair in the input slice.
        pair: usize,
    },
    /// A reference image index outside `0..n_images`.
    #[error("reference image {index} out of range ({n_images} images)")]
    Reference {
        /// The offending index.
        index: usize,
        /// Number of images.
        n_images: usize,
    },
    /// The plane system of a connected group of images is singular (neither Cholesky nor LU solves it).
    #[error("the plane system of a connected group of {images} images is singular")]
    Singular {
        /// Images in the group.
        images: usize,
    },
    /// The start of a plane fit needs a finite level median and clipped rms.
    #[error("plane fit start needs a finite median and rms, got median {median}, rms {rms}")]
    PlaneStart {
        /// The level median given.
        median: f64,
        /// The level rms given.
        rms: f64,
    },
}

//! Pure numerical kernels. They take ndarray views and small parameter structs and return values;
//! they never see MPI, files or the config, and log nothing above `debug`.
//!
//! - `scene`: the simulator's truth sky (analytic Gaussian components) and its rendering into any
//!   pixel grid, PSF-convolved and pixel-integrated.
//! - `detector`: what a detector adds (1/f stripes, cosmic rays, noise, DQ) and the JWST DQ bits.
//! - `drizzle`: the drizzle square kernel (Fruchter & Hook 2002) into per-chunk accumulators.
//! - `outlier`: JWST's outlier test: weight thresholds, median stack, blot interpolation, flags.

pub mod detector;
pub mod drizzle;
pub mod outlier;
pub mod scene;

pub use detector::dq;

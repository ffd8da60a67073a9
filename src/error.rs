//! The library's one error type, folding the typed errors of each layer.
//!
//! Each layer (config, geom, io, plan, dist, stages) has its own `thiserror` enum carrying structured
//! fields (path, HDU, keyword, config key). They are folded here into [`Error`], which is
//! non-exhaustive so that later stages can add variants. `anyhow` is used only in `app` and `main`.

/// Any error the tessera library can return.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Wcs(#[from] crate::geom::WcsError),
    #[error(transparent)]
    Fits(#[from] crate::io::fits::FitsError),
    #[error(transparent)]
    Io(#[from] crate::io::IoError),
    #[error(transparent)]
    Plan(#[from] crate::plan::PlanError),
    #[error(transparent)]
    Dist(#[from] crate::dist::DistError),
}

/// Result with the library's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

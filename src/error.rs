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
    #[error(transparent)]
    Store(#[from] crate::io::hdf5::StoreError),
    #[error(transparent)]
    Destripe(#[from] crate::kernels::destripe::DestripeError),
    #[error(transparent)]
    Level(#[from] crate::kernels::level::LevelError),
    /// Values exchanged between ranks (or held for them) that do not encode or decode: a bug.
    #[error("data exchanged between ranks: {0}")]
    Exchange(#[from] serde_json::Error),
    /// A stage's own finding (a refused folder, a missing upstream stage, an inconsistent product).
    #[error("{0}")]
    Msg(String),
    /// What was being done when `source` happened (the message shows both, so the chain is printed
    /// once whether or not the printer follows `source()`).
    #[error("{context}: {inner}")]
    Context { context: String, inner: Box<Error> },
}

impl Error {
    /// An error with this message.
    pub fn msg(m: impl std::fmt::Display) -> Error {
        Error::Msg(m.to_string())
    }

    /// This error with what was being done around it.
    pub fn context(self, c: impl std::fmt::Display) -> Error {
        Error::Context { context: c.to_string(), inner: Box::new(self) }
    }
}

/// `.context(...)` and `.with_context(|| ...)` on any result whose error folds into [`Error`].
pub trait Context<T> {
    /// Say what was being done.
    ///
    /// # Errors
    /// The error, wrapped.
    fn context(self, c: impl std::fmt::Display) -> Result<T>;
    /// Say what was being done (computed only on error).
    ///
    /// # Errors
    /// The error, wrapped.
    fn with_context<C: std::fmt::Display>(self, c: impl FnOnce() -> C) -> Result<T>;
}

impl<T, E: Into<Error>> Context<T> for std::result::Result<T, E> {
    fn context(self, c: impl std::fmt::Display) -> Result<T> {
        self.map_err(|e| e.into().context(c))
    }
    fn with_context<C: std::fmt::Display>(self, c: impl FnOnce() -> C) -> Result<T> {
        self.map_err(|e| e.into().context(c()))
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, c: impl std::fmt::Display) -> Result<T> {
        self.ok_or_else(|| Error::Msg(c.to_string()))
    }
    fn with_context<C: std::fmt::Display>(self, c: impl FnOnce() -> C) -> Result<T> {
        self.ok_or_else(|| Error::Msg(c().to_string()))
    }
}

/// Return early with an [`Error::Msg`] made by `format!`.
#[macro_export]
macro_rules! bail {
    ($($t:tt)*) => {
        return Err($crate::Error::Msg(format!($($t)*)))
    };
}

/// Return early with an [`Error::Msg`] unless the condition holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($t:tt)*) => {
        // `if cond {} else` rather than `if !cond`: a negated float comparison at the call site
        // (`ensure!(a > b, ..)`) would read as `!(a > b)`
        if $cond {
        } else {
            return Err($crate::Error::Msg(format!($($t)*)));
        }
    };
}

/// An [`Error::Msg`] made by `format!`.
#[macro_export]
macro_rules! err {
    ($($t:tt)*) => {
        $crate::Error::Msg(format!($($t)*))
    };
}

/// Result with the library's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

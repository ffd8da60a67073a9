//! tessera: an MPI-parallel mosaicking pipeline for JWST imaging of nearby galaxies.
//!
//! All logic lives in this library; `src/main.rs` only parses the command line, starts MPI and calls
//! [`app::run`]. Modules follow the data flow (see `ARCHITECTURE.md`):
//! `config` → `geom` → `plan` → `kernels` → `io` → `dist` → `stages` → `app`.
//! Only `dist` imports `mpi`, only `io` imports `fitsio`, only `cli` imports `clap`.

pub mod app;
pub mod cli;
pub mod config;
pub mod dist;
pub mod error;
pub mod fault;
pub mod geom;
pub mod io;
pub mod kernels;
pub mod plan;
pub mod stages;

pub use error::{Error, Result};

/// The version written into every product's provenance.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

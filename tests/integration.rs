//! tessera's integration tests: one binary, topic modules, a `common` helper that builds synthetic
//! JWST-format inputs with a known truth. MPI tests launch `mpirun -n N` on the built binary with a
//! timeout that catches deadlocks.

mod common;

#[path = "integration/align.rs"]
mod align;
#[path = "integration/anchor.rs"]
mod anchor;
#[path = "integration/campaign.rs"]
mod campaign;
#[path = "integration/cli.rs"]
mod cli;
#[path = "integration/cosmic.rs"]
mod cosmic;
#[path = "integration/destripe.rs"]
mod destripe;
#[path = "integration/faults.rs"]
mod faults;
#[path = "integration/fits_io.rs"]
mod fits_io;
#[path = "integration/level.rs"]
mod level;
#[path = "integration/miri.rs"]
mod miri;
#[path = "integration/mosaic.rs"]
mod mosaic;
#[path = "integration/mpi.rs"]
mod mpi;
#[path = "integration/plan.rs"]
mod plan;
#[path = "integration/psfmatch.rs"]
mod psfmatch;
#[path = "integration/psfmatch_kernel.rs"]
mod psfmatch_kernel;
#[path = "integration/python.rs"]
mod python;
#[path = "integration/resume.rs"]
mod resume;
#[path = "integration/simulate.rs"]
mod simulate;
#[path = "integration/tidy.rs"]
mod tidy;

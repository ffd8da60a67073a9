//! Fault injection for the test suite: `TESSERA_FAULT=<point>@<rank>:<action>` makes rank `<rank>`
//! panic (`panic`) or kill itself with SIGKILL (`kill`) when it reaches the named point, so the tests
//! can check that a panic aborts the job instead of hanging it, and that a killed run resumes.
//!
//! Points: `start` (before any command runs) and `drizzle.chunk` (after a rank's first drizzled chunk
//! is written). Nothing here runs unless the variable names this rank and point, and only in builds
//! with the `fault-injection` cargo feature, which `cargo test` turns on (a dev-dependency of the
//! package on itself): binaries built with `cargo build` or `cargo install` ignore the variable.

/// Act on `TESSERA_FAULT` if it names this `point` and `rank` (a no-op without the
/// `fault-injection` feature).
pub fn point(point: &str, rank: usize) {
    #[cfg(feature = "fault-injection")]
    act(point, rank);
    #[cfg(not(feature = "fault-injection"))]
    let _ = (point, rank);
}

#[cfg(feature = "fault-injection")]
fn act(point: &str, rank: usize) {
    let Ok(spec) = std::env::var("TESSERA_FAULT") else { return };
    let Some((at, action)) = spec.split_once(':') else { return };
    let Some((name, r)) = at.split_once('@') else { return };
    if name != point || r.parse::<usize>().ok() != Some(rank) {
        return;
    }
    match action {
        "panic" => panic!("TESSERA_FAULT={spec}: injected panic"),
        "kill" => {
            eprintln!("TESSERA_FAULT={spec}: rank {rank} kills itself (SIGKILL)");
            // SAFETY: kill(2) on our own pid with a valid signal number has no memory effects.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        }
        _ => {}
    }
}

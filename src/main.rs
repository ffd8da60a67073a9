//! The `tessera` binary: parse the command line, start MPI, run, and turn the outcome into an exit
//! code. All logic is in the library (`tessera::app`).

fn main() -> std::process::ExitCode {
    let cli = tessera::cli::parse();
    let world = tessera::app::World::init();
    let code = tessera::app::main_with(cli, world.comm());
    std::process::ExitCode::from(code)
}

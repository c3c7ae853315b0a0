//! The `jobmill` command line. All logic lives in the library; this binary
//! parses arguments, wires the pieces together and turns errors into one
//! line on stderr and an exit status.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    let code = cli::main();
    ExitCode::from(code)
}

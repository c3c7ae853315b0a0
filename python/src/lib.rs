//! The Python extension module `jobmill._jobmill`: the `jobmill` command
//! (the root crate's CLI, compiled in), the queue behind `jobmill.Queue`,
//! the engine behind `jobmill.Pool` (`pool.rs`, with its journal) and the
//! shared Redis queue behind `jobmill.Pool(queue=...)` (`remote.rs`).

use pyo3::prelude::*;

// The `jobmill` binary's CLI, the same source: the package's `jobmill`
// command runs it in the Python process (see `cli_main`).
#[allow(dead_code, clippy::all)]
#[path = "../../src/cli/mod.rs"]
mod cli;

mod pool;
mod queue;
mod remote;
mod shared;

/// Runs the `jobmill` command line with `argv` (program name first) and
/// returns its exit status. The GIL is released for the whole run.
#[pyfunction]
fn cli_main(py: Python<'_>, argv: Vec<std::ffi::OsString>) -> u8 {
    py.allow_threads(move || cli::main_from(argv))
}

#[pymodule]
fn _jobmill(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(cli_main, m)?)?;
    m.add_class::<queue::QueueCore>()?;
    m.add("Empty", m.py().get_type::<queue::Empty>())?;
    m.add("Closed", m.py().get_type::<queue::Closed>())?;
    m.add_class::<pool::PoolCore>()?;
    m.add_class::<remote::RemoteCore>()?;
    Ok(())
}

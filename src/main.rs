//! The `jobmill` command line.
fn main() {
    // Hidden mode `jobmill __guardian <grace_ms>` (see jobmill::exec::guardian).
    jobmill::exec::guardian::dispatch_from_args();
}

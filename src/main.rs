//! The `jobmill` command line.
fn main() {}

//! The floor for any runner that starts a process per job: `-j` threads,
//! each running `COMMAND LINE` with a bare `std::process::Command::status()`
//! (posix_spawn) for every line of stdin, with no output capture, process
//! group, journal or supervision. `bench/run_vs_peers.sh` times it next to
//! jobmill and xargs, with the same command and argument, so the best any
//! tool can do on the machine is printed in the same run.
//!
//! `spawn_floor JOBS COMMAND [ARG...] < inputs`

use std::io::Read;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

fn main() {
    let mut args = std::env::args().skip(1);
    let jobs: usize = args
        .next()
        .and_then(|j| j.parse().ok())
        .expect("usage: spawn_floor JOBS COMMAND [ARG...]");
    let command: Vec<String> = args.collect();
    assert!(
        !command.is_empty(),
        "usage: spawn_floor JOBS COMMAND [ARG...]"
    );
    // Read up front: a floor, not a runner.
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .expect("read stdin");
    let lines: Vec<&str> = input.lines().collect();
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| {
                while let Some(line) = lines.get(next.fetch_add(1, Ordering::Relaxed)) {
                    Command::new(&command[0])
                        .args(&command[1..])
                        .arg(line)
                        .status()
                        .expect("spawn");
                }
            });
        }
    });
}

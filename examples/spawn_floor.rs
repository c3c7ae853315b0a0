//! std's floor for a runner that starts a process per job: `-j` threads,
//! each running `COMMAND LINE` with a bare `std::process::Command::status()`
//! (posix_spawn) for every line of stdin, with no output capture, process
//! group, journal or supervision. The reference floor of
//! `bench/run_vs_peers.sh` is the C loop `../shared/peers/spawn_floor.c`
//! (`posix_spawnp` + `waitpid`), which this loop trails by the cost of
//! std's `Command` (about 1.08× on the machine of issue 10); keep this one
//! to see what std itself costs.
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

//! Spawn throughput of [`jobmill::exec::Supervisor`] against bare std
//! `Command` loops, in the same run.
//!
//! `cargo run --release --example exec_bench -- [JOBS] [THREADS] [ROUNDS] [PROGRAM]`
//! (defaults: 2000 jobs, 2 threads, 3 rounds, `true`; PROGRAM is split on
//! spaces into the program and its arguments). Prints the median of
//! the rounds for each variant, in jobs per second. A fifth argument runs
//! only the variants whose name contains it (e.g. `jobmill`, for strace).
//! With `JOBMILL_BIN` set to the jobmill binary, a variant with the
//! guardian process is added.
//!
//! Last, it times one sweep of `/proc` for a supervisor's leftovers (what
//! an attempt whose end is suspect pays: an output pipe still held after
//! its group was killed, or a stop), as the median of 21.

use std::ffi::OsString;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jobmill::exec::{AttemptSpec, End, SpillBudget, Supervisor};

fn arg(i: usize, default: &str) -> String {
    std::env::args()
        .nth(i)
        .unwrap_or_else(|| default.to_owned())
}

/// One job of a variant, callable from any thread.
type Job = Arc<dyn Fn() + Send + Sync>;

/// Runs `jobs` calls of `one` spread over `threads` threads; returns the time.
fn timed(jobs: usize, threads: usize, one: Job) -> Duration {
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let one = Arc::clone(&one);
            let n = jobs / threads + usize::from(t < jobs % threads);
            std::thread::spawn(move || (0..n).for_each(|_| one()))
        })
        .collect();
    for h in handles {
        h.join().expect("bench thread");
    }
    start.elapsed()
}

fn main() {
    let jobs: usize = arg(1, "2000").parse().expect("JOBS");
    let threads: usize = arg(2, "2").parse().expect("THREADS");
    let rounds: usize = arg(3, "3").parse().expect("ROUNDS");
    let program = arg(4, "true");
    let only = arg(5, "");

    let sup = Arc::new(Supervisor::new(None, SpillBudget::new(64 << 20)).expect("supervisor"));
    let counted = Arc::clone(&sup);
    let words: Vec<String> = program.split_whitespace().map(str::to_owned).collect();
    let argv: Arc<[OsString]> = words.iter().map(OsString::from).collect();

    let w1 = words.clone();
    let w2 = words.clone();
    let guarded = std::env::var_os("JOBMILL_BIN").map(|bin| {
        let sup = Supervisor::new(Some(bin.as_ref()), SpillBudget::new(64 << 20))
            .expect("supervisor with guardian");
        (Arc::new(sup), Arc::clone(&argv))
    });
    let mut variants: Vec<(&str, Job)> = vec![
        (
            "Command::status() (inherit stdio)",
            Arc::new(move || {
                Command::new(&w1[0]).args(&w1[1..]).status().expect("spawn");
            }),
        ),
        (
            "Command::output() (piped, null stdin)",
            Arc::new(move || {
                Command::new(&w2[0])
                    .args(&w2[1..])
                    .stdin(Stdio::null())
                    .output()
                    .expect("spawn");
            }),
        ),
        (
            "jobmill Supervisor::run",
            Arc::new(move || {
                let a = sup.run(&AttemptSpec {
                    argv: &argv,
                    env: &[],
                    timeout: None,
                    grace: Duration::from_secs(2),
                    on_output: None,
                });
                assert!(matches!(a.end, End::Exited(_)), "{:?}", a.end);
            }),
        ),
    ];
    if let Some((sup, argv)) = guarded {
        variants.push((
            "jobmill Supervisor::run, with guardian",
            Arc::new(move || {
                let a = sup.run(&AttemptSpec {
                    argv: &argv,
                    env: &[],
                    timeout: None,
                    grace: Duration::from_secs(2),
                    on_output: None,
                });
                assert!(matches!(a.end, End::Exited(_)), "{:?}", a.end);
            }),
        ));
    }

    println!("{jobs} x `{program}` on {threads} threads, median of {rounds} rounds");
    let mut results = Vec::new();
    for (name, one) in variants.iter().filter(|(name, _)| name.contains(&only)) {
        let mut times: Vec<Duration> = (0..rounds)
            .map(|_| timed(jobs, threads, Arc::clone(one)))
            .collect();
        times.sort();
        let median = times[times.len() / 2];
        results.push((name, median));
    }
    let base = results[0].1.as_secs_f64();
    for (name, t) in results {
        println!(
            "{name:40} {:8.3} s  {:8.0} jobs/s  {:5.2}x time of Command::status()",
            t.as_secs_f64(),
            jobs as f64 / t.as_secs_f64(),
            t.as_secs_f64() / base
        );
    }

    println!(
        "attempts of Supervisor::run that swept /proc: {} (an output pipe still held 20 ms after the end, or stopped)",
        counted.sweeps()
    );
    let sweeper = Supervisor::new(None, SpillBudget::new(1)).expect("supervisor");
    let mut sweeps: Vec<Duration> = (0..21)
        .map(|_| {
            let t = Instant::now();
            sweeper.sweep_leftovers();
            t.elapsed()
        })
        .collect();
    sweeps.sort();
    let processes = std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .is_some_and(|n| n.parse::<u32>().is_ok())
                })
                .count()
        })
        .unwrap_or(0);
    println!(
        "one sweep of /proc for leftovers ({processes} processes): {:.3} ms (median of 21)",
        sweeps[sweeps.len() / 2].as_secs_f64() * 1e3
    );
}

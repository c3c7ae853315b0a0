//! `jobmill::Pool` on the engine, with real worker processes: what a
//! worker prints reaches the program's stdout and stderr, each line on the
//! stream it was written to, and results come back byte for byte (a
//! trailing newline is the result's own). This test binary is re-run as
//! the pool's workers (`pool_worker`) and as the program whose output the
//! test reads (`pool_output_driver`).

use std::process::Command;

use jobmill::pool::{self, AnyTask, Pool, Task};

/// Prints one line to each stream, and returns its input with a newline.
static SAY: Task<String, String> = Task::new("say", |s| {
    println!("out: {s}");
    eprintln!("err: {s}");
    format!("{s}\n")
});

const TASKS: &[&dyn AnyTask] = &[&SAY];

/// Not a test: the pool's worker processes run this (it serves and exits).
#[test]
fn pool_worker() {
    pool::init(TASKS);
}

/// Not a test: the program the test below runs and reads.
#[test]
fn pool_output_driver() {
    if std::env::var_os("POOL_OUTPUT_DRIVER").is_none() {
        return;
    }
    pool::init(TASKS);
    let pool = Pool::builder()
        .workers(1)
        // --nocapture: the test harness would keep the task's prints.
        .worker_args([
            "pool_worker",
            "--exact",
            "--test-threads=1",
            "--quiet",
            "--nocapture",
        ])
        .build()
        .unwrap();
    let got: Vec<String> = pool
        .map(&SAY, ["a".to_string(), "b".to_string()])
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(got, ["a\n", "b\n"], "results come back byte for byte");
}

#[test]
fn worker_lines_reach_the_programs_stdout_and_stderr_as_written_and_results_keep_their_bytes() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "pool_output_driver",
            "--exact",
            "--test-threads=1",
            "--nocapture",
        ])
        .env("POOL_OUTPUT_DRIVER", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for item in ["a", "b"] {
        assert!(stdout.contains(&format!("out: {item}\n")), "{stdout}");
        assert!(!stdout.contains(&format!("err: {item}")), "{stdout}");
        assert!(stderr.contains(&format!("err: {item}\n")), "{stderr}");
        assert!(!stderr.contains(&format!("out: {item}")), "{stderr}");
    }
}

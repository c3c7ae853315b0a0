//! Per-job cost of the journal writer, without processes.
//!
//! `cargo run --release --example journal_bench -- [JOBS] [SLOTS]`
//! (defaults: 20000 jobs, 2 slots). As in `jobmill run`, a reader thread
//! records each job as it is read, ahead of the slots through a bounded
//! channel (the run's queue), and each slot thread records an attempt's
//! start and its end (which returns once the end is in the completions
//! log: the durability gate). Prints wall time and the process's CPU time
//! per job.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use jobmill::events::{AttemptReport, AttemptStart, Observer, Resolution, Runner};
use jobmill::exec::{Attempt, Capture, End, SpillBudget};
use jobmill::job::NewJob;
use jobmill::journal::{create, RunRecord, WriterConfig};

fn cpu() -> Duration {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: getrusage fills the struct it is given.
    let ru = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr());
        ru.assume_init()
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn main() {
    let arg = |i: usize, d: u64| {
        std::env::args()
            .nth(i)
            .map_or(d, |s| s.parse().expect("number"))
    };
    let jobs = arg(1, 20000);
    let slots = arg(2, 2) as usize;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bench.sqlite");
    let record = RunRecord {
        run_id: "bench".into(),
        command: vec!["true".into()],
        options: serde_json::json!({}),
        cwd: std::env::current_dir().expect("cwd"),
    };
    let config = WriterConfig {
        output_cap: 1 << 20,
        sync_interval: Duration::from_millis(50),
    };
    let journal = Arc::new(create(&path, &record, config).expect("create"));
    let cpu0 = cpu();
    let start = Instant::now();
    let (tx, rx) = std::sync::mpsc::sync_channel::<u64>(1024);
    let rx = Arc::new(std::sync::Mutex::new(rx));
    let reader = {
        let j = Arc::clone(&journal);
        std::thread::spawn(move || {
            for seq in 1..=jobs {
                j.job_read(&NewJob::new(seq, seq.to_string()))
                    .expect("read");
                tx.send(seq).expect("send");
            }
        })
    };
    let threads: Vec<_> = (0..slots)
        .map(|s| {
            let j = Arc::clone(&journal);
            let rx = Arc::clone(&rx);
            std::thread::spawn(move || {
                let budget = SpillBudget::new(1 << 20);
                loop {
                    let next = rx.lock().expect("queue").recv();
                    let Ok(seq) = next else { break };
                    j.attempt_started(&AttemptStart {
                        seq,
                        attempt: 1,
                        slot: s + 1,
                        runner: Runner::default(),
                        at: SystemTime::now(),
                    })
                    .expect("start");
                    let mut a = Attempt {
                        started: SystemTime::now(),
                        duration: Duration::from_micros(500),
                        end: End::Exited(0),
                        timed_out: false,
                        terminated: false,
                        max_rss_kib: 1000,
                        memory: None,
                        stdout: Capture::new(budget.clone()),
                        stderr: Capture::new(budget.clone()),
                    };
                    let outcome = a.outcome();
                    j.attempt_finished(&mut AttemptReport {
                        seq,
                        attempt: 1,
                        slot: s + 1,
                        runner: Runner::default(),
                        outcome: &outcome,
                        resolution: &Resolution::Done,
                        stdout: &mut a.stdout,
                        stderr: &mut a.stderr,
                    })
                    .expect("finish");
                }
            })
        })
        .collect();
    reader.join().expect("reader");
    for t in threads {
        t.join().expect("slot");
    }
    journal.close("complete").expect("close");
    let wall = start.elapsed();
    let cpu = cpu() - cpu0;
    println!(
        "{jobs} jobs, {slots} slots: {:.1} µs wall/job, {:.1} µs CPU/job",
        wall.as_secs_f64() * 1e6 / jobs as f64,
        cpu.as_secs_f64() * 1e6 / jobs as f64
    );
}

//! The seed's experiment on jobmill's long-lived workers.
//!
//! Like `../shared/peers/seed_mp_queue.py`: a queue is filled with ITEMS
//! items of SIZE integers and closed, then WORKERS worker processes (this
//! binary, re-executed) drain it. A trial passes when every item was
//! processed exactly once (its sum checked) and the queue is drained. The
//! same two strategies, by the peer's names:
//!
//! - `nonblocking-until-empty`: `try_get` until it says Empty (or Closed),
//!   then leave;
//! - `sentinel-per-worker`: the peer's blocking loop, here without any
//!   sentinel: blocking `get` until Closed (closed and drained).
//!
//! Prints one line per strategy: `strategy=NAME passed=P/T seconds=S`.
//!
//! ```text
//! cargo run --release --example seed -- --trials 100
//! ```

use std::sync::Mutex;
use std::time::Instant;

use jobmill::job::{JobId, NewJob, RetryPolicy, WorkerId};
use jobmill::persistent::{self, Config, Observer, Outcome, OutcomeKind, Stop, Stream};
use jobmill::queue::memory::MemoryQueue;
use jobmill::queue::{Completion, Queue};
use jobmill::worker::{TryGetError, Worker};

const STRATEGIES: [&str; 2] = ["nonblocking-until-empty", "sentinel-per-worker"];
const STRATEGY_ENV: &str = "JOBMILL_SEED_STRATEGY";

/// The work on one item: the sum of its integers (u64, little-endian).
fn process(payload: &[u8]) -> u64 {
    payload
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .sum()
}

fn worker_main(strategy: &str) {
    let mut w = Worker::connect().unwrap_or_else(|e| panic!("seed worker: {e}"));
    match strategy {
        "nonblocking-until-empty" => loop {
            match w.try_get() {
                Ok(job) => {
                    let sum = process(&job.payload);
                    w.complete(job, &sum.to_le_bytes()).expect("complete");
                }
                Err(TryGetError::Empty) | Err(TryGetError::Closed) => break,
                Err(TryGetError::Worker(e)) => panic!("seed worker: {e}"),
            }
        },
        _ => {
            while let Some(job) = w.next_job().expect("get") {
                let sum = process(&job.payload);
                w.complete(job, &sum.to_le_bytes()).expect("complete");
            }
        }
    }
    w.close().expect("close");
}

#[derive(Default)]
struct Tally {
    /// Recorded completions: (job, result).
    done: Mutex<Vec<(JobId, Vec<u8>)>>,
    other: Mutex<Vec<String>>,
}

impl Observer for Tally {
    fn outcome(&self, o: Outcome) {
        match o.kind {
            OutcomeKind::Done {
                result,
                completion: Completion::Recorded,
            } => self.done.lock().unwrap().push((o.job.id, result.to_vec())),
            other => self
                .other
                .lock()
                .unwrap()
                .push(format!("{}: {other:?}", o.job.id)),
        }
    }

    fn output(&self, slot: usize, _: WorkerId, _: Stream, line: &[u8]) {
        eprintln!("[worker {slot}] {}", String::from_utf8_lossy(line));
    }
}

fn trial(items: usize, size: usize, workers: usize, strategy: &str) -> bool {
    let queue = MemoryQueue::new(items.max(1), RetryPolicy::default());
    let item: Vec<u8> = (0..size as u64).flat_map(|i| i.to_le_bytes()).collect();
    let expected = process(&item);
    let item = bytes::Bytes::from(item);
    for seq in 1..=items as u64 {
        queue
            .put(NewJob {
                seq,
                payload: item.clone(),
                attempts: 0,
                lost: 0,
                oom: 0,
            })
            .expect("put");
    }
    queue.close().expect("close");
    let exe = std::env::current_exe().expect("current_exe");
    let mut config = Config::new(vec![exe.into()], workers);
    config.env = vec![(STRATEGY_ENV.into(), strategy.into())];
    config.window = 2;
    let tally = Tally::default();
    if let Err(e) = persistent::run(&queue, &config, &tally, &Stop::new()) {
        eprintln!("trial failed: {e}");
        return false;
    }
    let done = tally.done.into_inner().unwrap();
    let mut ids: Vec<JobId> = done.iter().map(|(id, _)| *id).collect();
    ids.sort();
    ids.dedup();
    let counts = queue.counts().expect("counts");
    done.len() == items
        && ids.len() == items
        && done.iter().all(|(_, r)| r[..] == expected.to_le_bytes())
        && tally.other.into_inner().unwrap().is_empty()
        && counts.is_drained()
        && counts.done == items as u64
}

fn main() {
    if let Ok(strategy) = std::env::var(STRATEGY_ENV) {
        worker_main(&strategy);
        return;
    }
    let (mut items, mut size, mut workers, mut trials) = (8usize, 10_000usize, 4usize, 100usize);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let v: usize = args
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{flag} needs a number"));
        match flag.as_str() {
            "--items" => items = v,
            "--size" => size = v,
            "--workers" => workers = v,
            "--trials" => trials = v,
            other => panic!("unknown argument {other}"),
        }
    }
    for strategy in STRATEGIES {
        let t0 = Instant::now();
        let passed = (0..trials)
            .filter(|_| trial(items, size, workers, strategy))
            .count();
        println!(
            "strategy={strategy} passed={passed}/{trials} seconds={:.2}",
            t0.elapsed().as_secs_f64()
        );
    }
}

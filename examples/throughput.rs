//! Throughput through long-lived workers, from tiny jobs to large payloads.
//!
//! Pushes COUNT items of SIZE bytes through W persistent workers (this same
//! binary as the Rust worker, or python/jobmill_worker.py), each returning a
//! small result, like `../shared/peers/mp_queue_throughput.py`, and prints
//! the peer's line:
//!
//! ```text
//! cargo run --release --example throughput -- --worker rust --size 1048576 --count 20000
//! size=1048576 count=20000 workers=2 items_per_s=… mb_per_s=… seconds=… worker=rust
//! ```
//!
//! Like-for-like work: the Rust worker reads every byte of its item (a sum
//! of its 64-bit words, checked by the coordinator), so the bytes really
//! arrived; the Python worker takes the item's length, as the peer's
//! worker does. Items of 64 KiB and more travel through the workers'
//! shared-memory arenas (`docs/PAYLOADS.md`), smaller ones inline.
//!
//! The clock starts once every worker has completed its handshake (the peer
//! also starts its processes before its clock) and stops when the last
//! result is recorded.
//!
//! `--queue-only` measures the same producer and queue without workers:
//! W threads lease jobs in batches of half the window and complete them in
//! batches of 256, as the coordinator does (`queue-only items_per_s=…`),
//! the ceiling the queue and the producer leave to the coordinator.
//!
//! `--put-only` measures the producer alone: COUNT puts into a queue large
//! enough to hold them all, with nobody taking (`put-only items_per_s=…`).
//!
//! `--memcpy` instead measures this machine's memcpy at SIZE (copies of a
//! SIZE buffer into another, COUNT times) and prints `memcpy size=…
//! gb_per_s=…`, the ceiling to compare with.

use std::ffi::OsString;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use jobmill::job::{NewJob, RetryPolicy, WorkerId};
use jobmill::persistent::{
    self, Config, Observer, Outcome, OutcomeKind, Stop, Stream, WorkerEvent,
};
use jobmill::queue::memory::MemoryQueue;
use jobmill::queue::Queue;

struct Args {
    size: usize,
    count: u64,
    workers: usize,
    window: Option<usize>,
    worker: String,
    memcpy: bool,
    queue_only: bool,
    put_only: bool,
}

fn parse() -> Args {
    let mut a = Args {
        size: 16,
        count: 1_000_000,
        workers: 2,
        window: None,
        worker: "rust".into(),
        memcpy: false,
        queue_only: false,
        put_only: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--size" => a.size = val().parse().expect("--size"),
            "--count" => a.count = val().parse().expect("--count"),
            "--workers" => a.workers = val().parse().expect("--workers"),
            "--window" => a.window = Some(val().parse().expect("--window")),
            "--worker" => a.worker = val(),
            "--memcpy" => a.memcpy = true,
            "--queue-only" => a.queue_only = true,
            "--put-only" => a.put_only = true,
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

/// The sum of `data`'s little-endian 64-bit words (the tail bytes added
/// one by one): reads every byte, at memory speed.
fn word_sum(data: &[u8]) -> u64 {
    let mut acc = [0u64; 8];
    let mut chunks = data.chunks_exact(64);
    for c in &mut chunks {
        for (i, a) in acc.iter_mut().enumerate() {
            let w = u64::from_le_bytes(c[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
            *a = a.wrapping_add(w);
        }
    }
    let mut total = acc.iter().fold(0u64, |s, &a| s.wrapping_add(a));
    for &b in chunks.remainder() {
        total = total.wrapping_add(b as u64);
    }
    total
}

/// The Rust worker: complete each job with the sum of its payload's words
/// (reading the payload in place, in the arena for large items).
fn rust_worker() {
    let mut w = jobmill::worker::Worker::connect().expect("connect");
    while let Some(job) = w.next_job().expect("get") {
        let sum = word_sum(&job.payload).to_le_bytes();
        w.complete(job, &sum).expect("complete");
    }
    w.close().expect("close");
}

/// Copies a SIZE buffer COUNT times and prints the rate.
fn memcpy(size: usize, count: u64) {
    let src = vec![b'x'; size];
    let mut dst = vec![0u8; size];
    dst.copy_from_slice(&src); // touch the pages first
    let t0 = Instant::now();
    for _ in 0..count {
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&mut dst);
    }
    let dt = t0.elapsed().as_secs_f64();
    println!(
        "memcpy size={size} count={count} gb_per_s={:.1} seconds={dt:.2}",
        size as f64 * count as f64 / dt / 1e9
    );
}

/// The producer and the queue alone: `workers` threads lease and complete
/// in the coordinator's batch sizes.
fn queue_only(a: &Args) {
    let queue = MemoryQueue::new(64 << 10, RetryPolicy::default());
    let payload = bytes::Bytes::from(vec![b'x'; a.size]);
    let lease_batch = (a.window.unwrap_or(1024) / 2).max(1);
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for w in 0..a.workers {
            let queue = &queue;
            s.spawn(move || {
                let worker = WorkerId(w as u64 + 1);
                let mut leases = Vec::new();
                loop {
                    leases.clear();
                    match queue.try_get_many(worker, lease_batch, &mut leases) {
                        Ok(_) => {}
                        Err(jobmill::queue::TryGetError::Empty) => {
                            if let Ok(l) = queue.get(worker, Some(Duration::from_millis(50))) {
                                leases.push(l);
                            }
                        }
                        Err(_) => return,
                    }
                    for chunk in leases.chunks(256) {
                        queue.complete_many(chunk).expect("complete");
                    }
                }
            });
        }
        for i in 0..a.count {
            queue
                .put(NewJob {
                    seq: i + 1,
                    payload: payload.clone(),
                    attempts: 0,
                    lost: 0,
                    oom: 0,
                })
                .expect("put");
        }
        queue.close().expect("close");
    });
    let dt = t0.elapsed().as_secs_f64();
    println!(
        "queue-only size={} count={} workers={} items_per_s={:.0} seconds={dt:.2}",
        a.size,
        a.count,
        a.workers,
        a.count as f64 / dt
    );
}

const PYTHON_WORKER: &str = "import jobmill_worker\nfor job in jobmill_worker.jobs():\n    job.complete(b'%d' % len(job.payload))\n";

struct Counter {
    /// The result every job must return (the Rust worker's word sum), if
    /// checked.
    expect: Option<Vec<u8>>,
    wrong: AtomicU64,
    done: AtomicU64,
    bytes: AtomicU64,
    started: AtomicUsize,
    end: Mutex<Option<Instant>>,
    target: u64,
}

impl Observer for Counter {
    fn outcome(&self, o: Outcome) {
        if let OutcomeKind::Done { result, .. } = &o.kind {
            if self.expect.as_ref().is_some_and(|e| e[..] != result[..]) {
                self.wrong.fetch_add(1, Ordering::Relaxed);
            }
            self.bytes
                .fetch_add(o.job.payload.len() as u64, Ordering::Relaxed);
            if self.done.fetch_add(1, Ordering::Relaxed) + 1 == self.target {
                *self.end.lock().unwrap() = Some(Instant::now());
            }
        } else {
            eprintln!("unexpected outcome: {o:?}");
        }
    }

    fn worker(&self, event: WorkerEvent) {
        match event {
            WorkerEvent::Started { .. } => {
                self.started.fetch_add(1, Ordering::SeqCst);
            }
            WorkerEvent::Ended {
                lost: true, detail, ..
            } => eprintln!("{detail}"),
            _ => {}
        }
    }

    fn output(&self, slot: usize, _: WorkerId, _: Stream, line: &[u8]) {
        eprintln!("[worker {slot}] {}", String::from_utf8_lossy(line));
    }
}

fn main() {
    if std::env::var_os(jobmill::protocol::FD_ENV).is_some() {
        rust_worker();
        return;
    }
    let a = parse();
    if a.memcpy {
        memcpy(a.size, a.count);
        return;
    }
    if a.queue_only {
        queue_only(&a);
        return;
    }
    if a.put_only {
        let queue = MemoryQueue::new(a.count as usize + 1, RetryPolicy::default());
        let payload = bytes::Bytes::from(vec![b'x'; a.size]);
        let t0 = Instant::now();
        for i in 0..a.count {
            queue
                .put(NewJob {
                    seq: i + 1,
                    payload: payload.clone(),
                    attempts: 0,
                    lost: 0,
                    oom: 0,
                })
                .expect("put");
        }
        let dt = t0.elapsed().as_secs_f64();
        println!(
            "put-only size={} count={} items_per_s={:.0} seconds={dt:.2}",
            a.size,
            a.count,
            a.count as f64 / dt
        );
        return;
    }
    let (command, env): (Vec<OsString>, Vec<(OsString, OsString)>) = match a.worker.as_str() {
        "rust" => (
            vec![std::env::current_exe().expect("current_exe").into()],
            vec![],
        ),
        "python" => (
            vec!["python3".into(), "-c".into(), PYTHON_WORKER.into()],
            vec![(
                "PYTHONPATH".into(),
                concat!(env!("CARGO_MANIFEST_DIR"), "/python").into(),
            )],
        ),
        other => panic!("--worker must be rust or python, not {other}"),
    };
    let mut config = Config::new(command, a.workers);
    config.env = env;
    // A deep window for tiny jobs; for large ones the coordinator's
    // arena_inflight (8 MiB per worker by default) is the bound.
    config.window = a.window.unwrap_or(1024);
    let queue = MemoryQueue::new(64 << 10, RetryPolicy::default());
    let payload = bytes::Bytes::from(vec![b'x'; a.size]);
    let counter = Counter {
        expect: (a.worker == "rust").then(|| word_sum(&payload).to_le_bytes().to_vec()),
        wrong: AtomicU64::new(0),
        done: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        started: AtomicUsize::new(0),
        end: Mutex::new(None),
        target: a.count,
    };
    let stop = Stop::new();
    let start = std::thread::scope(|s| {
        let producer = s.spawn(|| {
            let deadline = Instant::now() + Duration::from_secs(60);
            while counter.started.load(Ordering::SeqCst) < a.workers {
                assert!(Instant::now() < deadline, "workers did not start");
                std::thread::sleep(Duration::from_millis(1));
            }
            let t0 = Instant::now();
            for i in 0..a.count {
                queue
                    .put(NewJob {
                        seq: i + 1,
                        payload: payload.clone(),
                        attempts: 0,
                        lost: 0,
                        oom: 0,
                    })
                    .expect("put");
            }
            queue.close().expect("close");
            t0
        });
        persistent::run(&queue, &config, &counter, &stop).expect("run");
        producer.join().expect("producer")
    });
    let end = counter.end.lock().unwrap().expect("all jobs done");
    let dt = (end - start).as_secs_f64();
    let done = counter.done.load(Ordering::Relaxed);
    assert_eq!(done, a.count, "every job done once");
    assert_eq!(counter.wrong.load(Ordering::Relaxed), 0, "wrong results");
    let bytes = counter.bytes.load(Ordering::Relaxed);
    println!(
        "size={} count={} workers={} items_per_s={:.0} mb_per_s={:.1} seconds={:.2} worker={}",
        a.size,
        a.count,
        a.workers,
        a.count as f64 / dt,
        bytes as f64 / dt / 1e6,
        dt,
        a.worker
    );
}

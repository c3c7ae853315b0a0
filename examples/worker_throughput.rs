//! Small-job throughput through long-lived workers.
//!
//! Pushes COUNT jobs of SIZE bytes through W persistent workers (this same
//! binary as the Rust worker, or python/jobmill_worker.py), each returning a
//! small result (the payload's length), like
//! `../shared/peers/mp_queue_throughput.py`, and prints the peer's line:
//!
//! ```text
//! cargo run --release --example worker_throughput -- --worker rust --size 16 --count 2000000
//! size=16 count=2000000 workers=2 items_per_s=… mb_per_s=… seconds=… worker=rust
//! ```
//!
//! The clock starts once every worker has completed its handshake (the peer
//! also starts its processes before its clock) and stops when the last
//! result is recorded.

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
    window: usize,
    worker: String,
}

fn parse() -> Args {
    let mut a = Args {
        size: 16,
        count: 1_000_000,
        workers: 2,
        window: 1024,
        worker: "rust".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--size" => a.size = val().parse().expect("--size"),
            "--count" => a.count = val().parse().expect("--count"),
            "--workers" => a.workers = val().parse().expect("--workers"),
            "--window" => a.window = val().parse().expect("--window"),
            "--worker" => a.worker = val(),
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

/// The Rust worker: complete each job with its payload's length.
fn rust_worker() {
    let mut w = jobmill::worker::Worker::connect().expect("connect");
    while let Some(job) = w.next_job().expect("get") {
        let len = (job.payload.len() as u64).to_le_bytes();
        w.complete(job, &len).expect("complete");
    }
    w.close().expect("close");
}

const PYTHON_WORKER: &str = "import jobmill_worker\nfor job in jobmill_worker.jobs():\n    job.complete(b'%d' % len(job.payload))\n";

struct Counter {
    done: AtomicU64,
    bytes: AtomicU64,
    started: AtomicUsize,
    end: Mutex<Option<Instant>>,
    target: u64,
}

impl Observer for Counter {
    fn outcome(&self, o: Outcome) {
        if let OutcomeKind::Done { .. } = o.kind {
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
    config.window = a.window;
    let queue = MemoryQueue::new(64 << 10, RetryPolicy::default());
    let counter = Counter {
        done: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        started: AtomicUsize::new(0),
        end: Mutex::new(None),
        target: a.count,
    };
    let payload = bytes::Bytes::from(vec![b'x'; a.size]);
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

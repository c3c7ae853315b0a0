//! `jobmill::Pool` with real worker processes: this test binary is re-run
//! as the pool's workers (the `pool_worker` test calls `pool::init`, which
//! serves and exits), and as a driver program for the Ctrl-C test.

mod common;

use std::cell::Cell;
use std::path::Path;
use std::process::{Command, Stdio};

use common::{pid_alive, read_pids, wait_exit, wait_until};
use jobmill::pool::{self, AnyTask, Codec, Pool, PoolBuilder, PoolError, Task};
use serde::{Deserialize, Serialize};

/// What the `BEHAVE` task does with an item.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Act {
    /// Return normally.
    Ok,
    /// Panic.
    Panic,
    /// `std::process::abort()`.
    Abort,
    /// Abort if the marker file can be created (so only once).
    AbortOnce(String),
    /// SIGKILL its own process.
    Kill,
    /// SIGKILL its own process if the marker file can be created.
    KillOnce(String),
    /// `std::process::exit(3)`.
    Exit,
    /// Run out of memory: limit the address space, then allocate past it.
    Oom,
    /// Wait until the file exists, then return.
    WaitFor(String),
    /// Append its pid and a newline to the file (in one write, atomic with
    /// O_APPEND), then sleep for an hour.
    Hang(String),
}

fn first_time(marker: &str) -> bool {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(marker)
        .is_ok()
}

fn kill_self() {
    let me = rustix::process::getpid();
    let _ = rustix::process::kill_process(me, rustix::process::Signal::KILL);
}

/// Returns the item's number and the worker's pid.
fn behave((x, act): (u64, Act)) -> (u64, u32) {
    match act {
        Act::Ok => {}
        Act::Panic => panic!("boom on item {x}"),
        Act::Abort => std::process::abort(),
        Act::AbortOnce(m) => {
            if first_time(&m) {
                std::process::abort()
            }
        }
        Act::Kill => kill_self(),
        Act::KillOnce(m) => {
            if first_time(&m) {
                kill_self()
            }
        }
        Act::Exit => std::process::exit(3),
        Act::Oom => {
            use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
            let limit = 512 << 20;
            let old = getrlimit(Resource::As);
            setrlimit(
                Resource::As,
                Rlimit {
                    current: Some(limit),
                    maximum: old.maximum,
                },
            )
            .unwrap();
            let v = vec![1u8; 2 * limit as usize];
            std::hint::black_box(&v);
        }
        Act::WaitFor(path) => {
            let deadline = std::time::Instant::now() + common::PATIENCE;
            while !Path::new(&path).exists() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
        Act::Hang(path) => {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(&path)
                .unwrap();
            // One write(2) of the whole line: `writeln!` writes the digits
            // and the newline separately, and two workers hanging at once
            // then interleave into one bogus pid ("12341235\n\n").
            f.write_all(format!("{}\n", std::process::id()).as_bytes())
                .unwrap();
            drop(f);
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
    (x, std::process::id())
}

static SQUARE: Task<u64, u64> = Task::new("square", |x| x * x);
static BEHAVE: Task<(u64, Act), (u64, u32)> = Task::new("behave", behave);
static JSON_KEYS: Task<serde_json::Value, usize> =
    Task::new("json_keys", |v| v.as_object().map_or(0, |o| o.len()));
static UNKNOWN: Task<u64, u64> = Task::new("unknown", |x| x);
static LEN: Task<Vec<u8>, usize> = Task::new("len", |v| v.len());
static ZEROS: Task<usize, Vec<u8>> = Task::new("zeros", |n| vec![0; n]);
static PICKY: Task<Picky, u64> = Task::new("picky", |p| p.0);

/// A value that refuses to be serialised when it is 3.
#[derive(Debug, Deserialize)]
struct Picky(u64);

impl Serialize for Picky {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 == 3 {
            return Err(serde::ser::Error::custom("3 is not welcome"));
        }
        s.serialize_u64(self.0)
    }
}

const TASKS: &[&dyn AnyTask] = &[&SQUARE, &BEHAVE, &JSON_KEYS, &LEN, &ZEROS, &PICKY];

/// Not a test: the pool's worker processes run this (it serves and exits).
#[test]
fn pool_worker() {
    pool::init(TASKS);
}

/// Not a test: the program the Ctrl-C test interrupts.
#[test]
fn pool_driver() {
    let Ok(dir) = std::env::var("POOL_TEST_DRIVER_DIR") else {
        return;
    };
    pool::init(TASKS);
    // Die of SIGINT as with the default disposition, even if the test
    // harness was started with SIGINT ignored (which children inherit).
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGINT]).unwrap();
    std::thread::spawn(move || {
        for sig in signals.forever() {
            let _ = signal_hook::low_level::emulate_default_handler(sig);
        }
    });
    let pool = builder().workers(2).window(1).build().unwrap();
    let file = format!("{dir}/pids");
    // More items than the workers can hold, so that each runs one.
    let items = (0..6).map(|x| (x, Act::Hang(file.clone())));
    for r in pool.map(&BEHAVE, items) {
        println!("{r:?}");
    }
}

fn builder() -> PoolBuilder {
    pool::init(TASKS);
    Pool::builder().workers(2).worker_args([
        "pool_worker",
        "--exact",
        "--test-threads=1",
        "--quiet",
    ])
}

fn acts(n: u64, special: impl Fn(u64) -> Option<Act>) -> impl Iterator<Item = (u64, Act)> {
    (0..n).map(move |x| (x, special(x).unwrap_or(Act::Ok)))
}

#[test]
fn map_returns_ten_thousand_results_in_input_order() {
    let pool = builder().window(16).build().unwrap();
    let got: Vec<u64> = pool
        .map(&SQUARE, 0..10_000u64)
        .collect::<Result<_, _>>()
        .unwrap();
    let want: Vec<u64> = (0..10_000u64).map(|x| x * x).collect();
    assert_eq!(got, want);
}

#[test]
fn map_unordered_yields_every_item_exactly_once() {
    let pool = builder().window(16).build().unwrap();
    let mut got: Vec<u64> = pool
        .map_unordered(&SQUARE, 0..10_000u64)
        .collect::<Result<_, _>>()
        .unwrap();
    got.sort_unstable();
    let want: Vec<u64> = (0..10_000u64).map(|x| x * x).collect();
    assert_eq!(got, want);
}

#[test]
fn map_of_an_empty_input_ends_at_once() {
    let pool = builder().build().unwrap();
    assert_eq!(pool.map(&SQUARE, Vec::<u64>::new()).count(), 0);
    assert_eq!(pool.map_unordered(&SQUARE, Vec::<u64>::new()).count(), 0);
}

#[test]
fn a_panicking_item_fails_alone_and_the_worker_goes_on() {
    let pool = builder().workers(1).build().unwrap();
    let results: Vec<_> = pool
        .map(&BEHAVE, acts(200, |x| (x == 7).then_some(Act::Panic)))
        .collect();
    assert_eq!(results.len(), 200);
    let mut pids = std::collections::HashSet::new();
    for (i, r) in results.iter().enumerate() {
        match r {
            Ok((x, pid)) => {
                assert_eq!(*x, i as u64);
                pids.insert(*pid);
            }
            Err(e) => {
                assert_eq!(i, 7, "only item 7 fails: {e}");
                match e {
                    PoolError::Panicked {
                        index: 7,
                        attempts: 1,
                        message,
                    } => {
                        assert!(message.contains("boom on item 7"), "{message}");
                        assert!(message.contains("tests/pool.rs"), "{message}");
                    }
                    other => panic!("expected a panic error, got {other:?}"),
                }
            }
        }
    }
    assert!(results[7].is_err());
    assert_eq!(
        pids.len(),
        1,
        "one worker ran every item: the panic did not kill it"
    );
}

#[test]
fn a_panicking_item_is_retried_per_the_policy() {
    let pool = builder().retries(2).build().unwrap();
    let results: Vec<_> = pool
        .map_unordered(&BEHAVE, acts(50, |x| (x == 3).then_some(Act::Panic)))
        .collect();
    let errors: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        matches!(
            errors[0],
            PoolError::Panicked {
                index: 3,
                attempts: 3,
                ..
            }
        ),
        "{:?}",
        errors[0]
    );
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 49);
}

#[test]
fn an_aborting_item_is_run_again_max_lost_times_then_fails_with_its_index() {
    let pool = builder().max_lost(2).build().unwrap();
    let results: Vec<_> = pool
        .map(&BEHAVE, acts(300, |x| (x == 100).then_some(Act::Abort)))
        .collect();
    assert_eq!(results.len(), 300);
    for (i, r) in results.iter().enumerate() {
        if i == 100 {
            match r {
                // Two losses forgiven, the third is its end.
                Err(PoolError::WorkerDied {
                    index: 100,
                    attempts: 3,
                    detail,
                }) => assert!(detail.contains("SIGABRT"), "{detail}"),
                other => panic!("expected the worker's death, got {other:?}"),
            }
        } else {
            assert_eq!(r.as_ref().unwrap().0, i as u64);
        }
    }
}

#[test]
fn an_item_whose_worker_aborts_once_is_lost_not_failed_and_succeeds_without_retries() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("aborted").display().to_string();
    let pool = builder().build().unwrap();
    let results: Vec<_> = pool
        .map(
            &BEHAVE,
            acts(100, |x| (x == 42).then(|| Act::AbortOnce(marker.clone()))),
        )
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(results.len(), 100);
    assert!(Path::new(&marker).exists(), "the item did abort once");
    assert!((0..100).all(|i| results[i].0 == i as u64));
}

#[test]
fn a_worker_killed_by_sigkill_is_replaced_and_every_item_completes() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("killed").display().to_string();
    let pool = builder().retries(1).build().unwrap();
    let mut got: Vec<(u64, u32)> = pool
        .map_unordered(
            &BEHAVE,
            acts(500, |x| (x == 250).then(|| Act::KillOnce(marker.clone()))),
        )
        .collect::<Result<_, _>>()
        .unwrap();
    got.sort_unstable();
    assert_eq!(got.len(), 500);
    assert!(got.iter().enumerate().all(|(i, (x, _))| *x == i as u64));
    assert!(Path::new(&marker).exists(), "a worker was killed");
    let pids: std::collections::HashSet<u32> = got.iter().map(|(_, p)| *p).collect();
    assert!(pids.len() >= 2, "{pids:?}");
    // The pool is gone: every worker, the killed one too, was reaped.
    drop(pool);
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "worker {pid} remains"
        );
    }
}

#[test]
fn a_sigkilled_item_without_retries_fails_naming_the_signal() {
    let pool = builder().build().unwrap();
    let results: Vec<_> = pool
        .map(&BEHAVE, acts(100, |x| (x == 60).then_some(Act::Kill)))
        .collect();
    assert_eq!(results.len(), 100);
    match &results[60] {
        Err(e @ PoolError::WorkerDied { index: 60, .. }) => {
            assert!(e.to_string().contains("SIGKILL"), "{e}");
            assert_eq!(e.index(), Some(60));
        }
        other => panic!("expected the worker's death, got {other:?}"),
    }
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 99);
}

#[test]
fn a_worker_that_exits_mid_item_fails_that_item_and_nothing_hangs() {
    let pool = builder().build().unwrap();
    let results: Vec<_> = pool
        .map(&BEHAVE, acts(100, |x| (x % 25 == 5).then_some(Act::Exit)))
        .collect();
    assert_eq!(results.len(), 100);
    for (i, r) in results.iter().enumerate() {
        if i % 25 == 5 {
            match r {
                Err(PoolError::WorkerDied { index, detail, .. }) => {
                    assert_eq!(*index, i as u64);
                    assert!(detail.contains("exited with code 3"), "{detail}");
                }
                other => panic!("item {i}: expected the worker's death, got {other:?}"),
            }
        } else {
            assert!(r.is_ok(), "item {i}: {r:?}");
        }
    }
}

#[test]
fn an_infinite_input_is_read_lazily_and_dropping_the_iterator_stops_cleanly() {
    let pool = builder().window(4).buffer(32).build().unwrap();
    let bound = pool.buffer() as u64;
    let read = Cell::new(0u64);
    let yielded = Cell::new(0u64);
    let input = (0u64..).inspect(|_| {
        read.set(read.get() + 1);
        assert!(
            read.get() <= yielded.get() + bound,
            "read {} items with {} yielded: more than {bound} ahead",
            read.get(),
            yielded.get()
        );
    });
    let mut pids = std::collections::HashSet::new();
    {
        let mut it = pool.map(&BEHAVE, input.map(|x| (x, Act::Ok)));
        for i in 0..2000u64 {
            let (x, pid) = it.next().unwrap().unwrap();
            assert_eq!(x, i);
            pids.insert(pid);
            yielded.set(yielded.get() + 1);
        }
    } // dropped mid-stream
    assert!(read.get() <= 2000 + bound);
    // Dropping reaped every worker: none is left, not even as a zombie.
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "worker {pid} remains"
        );
    }
}

#[test]
fn map_unordered_reads_at_most_the_buffer_ahead() {
    let pool = builder().window(2).buffer(16).build().unwrap();
    let bound = pool.buffer() as u64;
    let read = Cell::new(0u64);
    let yielded = Cell::new(0u64);
    let input = (0..3000u64).inspect(|_| {
        read.set(read.get() + 1);
        assert!(read.get() <= yielded.get() + bound);
    });
    let mut it = pool.map_unordered(&SQUARE, input);
    for _ in 0..3000 {
        it.next().unwrap().unwrap();
        yielded.set(yielded.get() + 1);
    }
    assert!(it.next().is_none());
}

#[test]
fn map_holds_the_input_back_while_the_first_item_runs() {
    let dir = tempfile::tempdir().unwrap();
    let release = dir.path().join("release").display().to_string();
    let pool = builder().window(2).buffer(16).build().unwrap();
    let bound = pool.buffer() as u64;
    let read = Cell::new(0u64);
    // Item 0 runs until the file exists; the file is made when the input
    // is asked for the last item that fits in the buffer.
    let input = (0..1000u64).map(|x| {
        read.set(read.get() + 1);
        if x == bound - 1 {
            std::fs::write(&release, b"").unwrap();
        }
        let act = if x == 0 {
            Act::WaitFor(release.clone())
        } else {
            Act::Ok
        };
        (x, act)
    });
    let mut it = pool.map(&BEHAVE, input);
    assert_eq!(it.next().unwrap().unwrap().0, 0);
    assert_eq!(
        read.get(),
        bound,
        "the buffer filled up, and no further, while item 0 ran"
    );
    let rest: Vec<u64> = it.map(|r| r.unwrap().0).collect();
    assert_eq!(rest, (1..1000).collect::<Vec<_>>());
}

#[test]
fn dropping_the_iterator_kills_and_reaps_workers_mid_item() {
    let dir = tempfile::tempdir().unwrap();
    let pids_file = dir.path().join("pids");
    let file = pids_file.display().to_string();
    let pool = builder().workers(2).window(1).build().unwrap();
    // More hanging items than the workers can hold, so that each runs one.
    let items = (0..8).map(|x| {
        let act = if x == 0 {
            Act::Ok
        } else {
            Act::Hang(file.clone())
        };
        (x, act)
    });
    let mut it = pool.map(&BEHAVE, items);
    assert_eq!(it.next().unwrap().unwrap().0, 0);
    wait_until("both workers hang in an item", || {
        read_pids(&pids_file).len() == 2
    });
    drop(it); // returns only once the hung workers are killed and reaped
    for pid in read_pids(&pids_file) {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "worker {pid} remains"
        );
    }
}

/// Kills the child if the test fails before it ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn ctrl_c_on_the_program_leaves_no_worker_behind() {
    let dir = tempfile::tempdir().unwrap();
    let pids_file = dir.path().join("pids");
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["pool_driver", "--exact", "--test-threads=1", "--nocapture"])
        .env("POOL_TEST_DRIVER_DIR", dir.path());
    let mut driver = KillOnDrop(common::spawn_in_own_group(&mut cmd));
    let driver = &mut driver.0;
    wait_until("both workers hang in an item", || {
        if let Some(status) = driver.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            let _ = driver.stderr.take().unwrap().read_to_string(&mut err);
            panic!("the driver ended first ({status:?}): {err}");
        }
        read_pids(&pids_file).len() == 2
    });
    // As the terminal does: SIGINT to the foreground process group.
    common::signal_group("INT", driver.id());
    let status = wait_exit(driver);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(2), "{status:?}");
    for pid in read_pids(&pids_file) {
        wait_until("the worker to be gone", || !pid_alive(pid));
    }
}

#[test]
fn the_json_codec_handles_self_describing_values() {
    let pool = builder().codec(Codec::Json).build().unwrap();
    let items = vec![
        serde_json::json!({"a": 1, "b": [2]}),
        serde_json::json!({}),
        serde_json::json!(7),
    ];
    let got: Vec<usize> = pool
        .map(&JSON_KEYS, items)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(got, vec![2, 0, 0]);
}

#[test]
fn a_task_not_given_to_init_is_a_setup_error() {
    let pool = builder().build().unwrap();
    let results: Vec<_> = pool.map(&UNKNOWN, 0..10u64).collect();
    assert_eq!(results.len(), 1);
    match &results[0] {
        Err(PoolError::Setup { detail }) => assert!(detail.contains("\"unknown\""), "{detail}"),
        other => panic!("expected a setup error, got {other:?}"),
    }
}

#[test]
fn workers_that_never_serve_end_the_map_with_errors_not_a_hang() {
    // `true` exits at once without speaking the protocol: every slot gives
    // up, the items read so far fail, and the iterator ends.
    let pool = builder()
        .program("true")
        .max_failed_starts(2)
        .build()
        .unwrap();
    let results: Vec<_> = pool.map(&SQUARE, 0..10_000u64).collect();
    assert!(!results.is_empty());
    assert!(results.len() < 10_000, "the input was not read to the end");
    for (i, r) in results.iter().enumerate().take(results.len() - 1) {
        match r {
            Err(PoolError::NotRun { index, detail }) => {
                assert_eq!(*index, i as u64);
                assert!(detail.contains("keep failing"), "{detail}");
            }
            other => panic!("item {i}: expected NotRun, got {other:?}"),
        }
    }
    assert!(
        matches!(results.last(), Some(Err(PoolError::Stopped { .. }))),
        "{:?}",
        results.last()
    );
}

#[test]
fn a_pool_worker_without_init_refuses_to_start_a_pool() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["pool_guard_probe", "--exact", "--nocapture"])
        .env(pool::WORKER_ENV, "square")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("guard: refused"), "{text}");
}

/// Not a test: run with `TASK_ENV` set by the test above.
#[test]
fn pool_guard_probe() {
    if std::env::var_os(pool::WORKER_ENV).is_none() {
        return;
    }
    match Pool::builder().build() {
        Err(PoolError::Setup { detail }) if detail.contains("pool worker") => {
            println!("guard: refused")
        }
        other => println!("guard: {other:?}"),
    }
}

#[test]
fn an_item_past_the_timeout_fails_and_its_worker_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pids").display().to_string();
    let pool = builder()
        .timeout(std::time::Duration::from_secs(2))
        .build()
        .unwrap();
    let results: Vec<_> = pool
        .map(
            &BEHAVE,
            acts(40, |x| (x == 5).then(|| Act::Hang(file.clone()))),
        )
        .collect();
    assert_eq!(results.len(), 40);
    match &results[5] {
        Err(PoolError::Timeout { index: 5, .. }) => {}
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 39);
    for pid in read_pids(Path::new(&file)) {
        assert!(!pid_alive(pid), "the hung worker {pid} was killed");
    }
}

#[test]
fn items_and_results_over_the_frame_limit_fail_alone() {
    let pool = builder().max_frame(4096).build().unwrap();
    let items = vec![vec![1u8; 10], vec![1u8; 10_000], vec![1u8; 20]];
    let got: Vec<_> = pool.map(&LEN, items).collect();
    assert_eq!(got[0], Ok(10));
    match &got[1] {
        Err(PoolError::Codec { index: 1, detail }) => {
            assert!(detail.contains("frame limit"), "{detail}")
        }
        other => panic!("expected a codec error, got {other:?}"),
    }
    assert_eq!(got[2], Ok(20));
    let got: Vec<_> = pool.map(&ZEROS, [5usize, 10_000, 7]).collect();
    assert_eq!(got[0].as_ref().map(Vec::len), Ok(5));
    match &got[1] {
        Err(PoolError::Codec { index: 1, detail }) => {
            assert!(detail.contains("frame limit"), "{detail}")
        }
        other => panic!("expected a codec error, got {other:?}"),
    }
    assert_eq!(got[2].as_ref().map(Vec::len), Ok(7));
}

#[test]
fn an_item_that_cannot_be_serialised_fails_alone() {
    let pool = builder().build().unwrap();
    let got: Vec<_> = pool.map(&PICKY, (0..6).map(Picky)).collect();
    assert_eq!(got.len(), 6);
    for (i, r) in got.iter().enumerate() {
        if i == 3 {
            match r {
                Err(PoolError::Codec { index: 3, detail }) => {
                    assert!(detail.contains("3 is not welcome"), "{detail}")
                }
                other => panic!("expected a codec error, got {other:?}"),
            }
        } else {
            assert_eq!(*r, Ok(i as u64));
        }
    }
    let mut got: Vec<_> = pool.map_unordered(&PICKY, (0..6).map(Picky)).collect();
    got.sort_by_key(|r| r.as_ref().map_or(3, |v| *v));
    assert!(matches!(got[3], Err(PoolError::Codec { index: 3, .. })));
    assert_eq!(got.iter().filter(|r| r.is_ok()).count(), 5);
}

#[test]
fn a_result_the_program_cannot_decode_is_an_error_for_that_item() {
    // bincode cannot decode a serde_json::Value (it needs deserialize_any):
    // every item fails with a codec error naming it, and nothing hangs.
    let pool = builder().build().unwrap();
    let got: Vec<_> = pool.map(&JSON_KEYS, vec![serde_json::json!({})]).collect();
    match &got[..] {
        [Err(PoolError::Codec { index: 0, detail })] => {
            assert!(detail.contains("decode"), "{detail}")
        }
        other => panic!("expected one codec error, got {other:?}"),
    }
}

#[test]
fn one_pool_serves_maps_from_several_threads_at_once() {
    let pool = builder().build().unwrap();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..3u64)
            .map(|t| {
                let pool = &pool;
                s.spawn(move || {
                    pool.map(&SQUARE, (0..500u64).map(move |x| x + t * 1000))
                        .collect::<Result<Vec<_>, _>>()
                        .unwrap()
                })
            })
            .collect();
        for (t, h) in handles.into_iter().enumerate() {
            let want: Vec<u64> = (0..500u64).map(|x| (x + t as u64 * 1000).pow(2)).collect();
            assert_eq!(h.join().unwrap(), want);
        }
    });
}

#[test]
fn an_item_that_runs_out_of_memory_fails_and_the_pool_goes_on() {
    let pool = builder().build().unwrap();
    let results: Vec<_> = pool
        .map(&BEHAVE, acts(50, |x| (x == 20).then_some(Act::Oom)))
        .collect();
    assert_eq!(results.len(), 50);
    match &results[20] {
        Err(PoolError::WorkerDied {
            index: 20, detail, ..
        }) => assert!(detail.contains("SIGABRT"), "{detail}"),
        other => panic!("expected the worker's death, got {other:?}"),
    }
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 49);
}

#[test]
fn workers_serve_the_next_map_and_are_reaped_with_the_pool() {
    let pool = builder().workers(2).build().unwrap();
    let pids_of = |pool: &Pool| -> std::collections::HashSet<u32> {
        pool.map(&BEHAVE, acts(200, |_| None))
            .map(|r| r.unwrap().1)
            .collect()
    };
    let mut pids = pids_of(&pool);
    // Another task in between, on the same workers.
    let squares: Vec<u64> = pool
        .map(&SQUARE, 0..100u64)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(squares[9], 81);
    pids.extend(pids_of(&pool));
    pids.extend(pids_of(&pool.clone()));
    assert!(pids.len() <= 2, "no new worker was started: {pids:?}");
    for &pid in &pids {
        assert!(pid_alive(pid), "worker {pid} waits for the next map");
    }
    drop(pool);
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "worker {pid} remains"
        );
    }
}

#[test]
fn a_map_dropped_midway_does_not_hand_its_workers_on() {
    let dir = tempfile::tempdir().unwrap();
    let pids_file = dir.path().join("pids");
    let file = pids_file.display().to_string();
    let pool = builder().workers(2).window(1).build().unwrap();
    let items = (0..8).map(|x| {
        let act = if x == 0 {
            Act::Ok
        } else {
            Act::Hang(file.clone())
        };
        (x, act)
    });
    let mut it = pool.map(&BEHAVE, items);
    it.next().unwrap().unwrap();
    wait_until("both workers hang in an item", || {
        read_pids(&pids_file).len() == 2
    });
    drop(it);
    // The next map runs at once, on new workers.
    let got: Vec<_> = pool.map(&BEHAVE, acts(10, |_| None)).collect();
    assert_eq!(got.len(), 10);
    let hung = read_pids(&pids_file);
    for r in got {
        assert!(!hung.contains(&r.unwrap().1));
    }
}

#[test]
fn after_every_worker_slot_gave_up_the_next_map_starts_afresh() {
    // One slot that gives up at its first death: an abort as the first
    // item stops the whole map.
    let pool = builder()
        .workers(1)
        .max_failed_starts(1)
        .max_lost(0)
        .build()
        .unwrap();
    let results: Vec<_> = pool
        .map(&BEHAVE, acts(5, |x| (x == 0).then_some(Act::Abort)))
        .collect();
    assert_eq!(
        results.len(),
        5,
        "one result per item, no Stopped: all were read"
    );
    assert!(
        matches!(results[0], Err(PoolError::WorkerDied { index: 0, .. })),
        "{:?}",
        results[0]
    );
    for (i, r) in results.iter().enumerate().skip(1) {
        match r {
            Err(PoolError::NotRun { index, detail }) => {
                assert_eq!(*index, i as u64);
                assert!(detail.contains("keep failing"), "{detail}");
            }
            other => panic!("item {i}: expected NotRun, got {other:?}"),
        }
    }
    // The pool is not dead: the next map runs on new workers.
    let got: Vec<u64> = pool
        .map(&SQUARE, 0..100u64)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(got[99], 99 * 99);
}

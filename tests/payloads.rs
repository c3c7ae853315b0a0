//! Large payloads through the workers' shared-memory arenas, both ways, with
//! real worker processes: the Rust worker library (this test binary re-run
//! as a fixture) and the Python one.

mod workers_common;

use std::collections::BTreeMap;

use jobmill::job::{FailReason, JobId, NewJob, RetryPolicy};
use jobmill::persistent::{self, Config, OutcomeKind, Stop, Summary, DEFAULT_ARENA_THRESHOLD};
use jobmill::queue::memory::MemoryQueue;
use jobmill::queue::{Disposition, Queue};
use jobmill::worker::Worker;
use workers_common::{fixture, python, Recorder};

const T: usize = DEFAULT_ARENA_THRESHOLD;

/// Not a test: the worker side, run when this binary is re-executed by the
/// coordinator with `JOBMILL_FIXTURE` set. Does nothing otherwise.
#[test]
fn fixture_worker() {
    let Ok(mode) = std::env::var("JOBMILL_FIXTURE") else {
        return;
    };
    let (mode, arg) = mode.split_once(':').unwrap_or((&mode, ""));
    let kill_from: usize = arg.parse().unwrap_or(usize::MAX);
    let mut w = Worker::connect().expect("connect");
    let mut kept = Vec::new();
    while let Some(job) = w.next_job().unwrap() {
        match mode {
            // Result = the payload itself.
            "echo" => {
                let p = job.payload.clone();
                w.complete(job, &p).unwrap();
            }
            // Result = every payload byte XOR 0x5a (as long as the payload);
            // SIGKILLs itself on the first attempt of a payload of at least
            // `arg` bytes.
            "mirror" => {
                if job.payload.len() >= kill_from && job.attempts == 1 {
                    let me = rustix::process::getpid();
                    rustix::process::kill_process(me, rustix::process::Signal::KILL).unwrap();
                }
                let out = mirror(&job.payload);
                w.complete(job, &out).unwrap();
            }
            // Keeps a clone of every payload past its answer (wrong).
            "keep" => {
                kept.push(job.payload.clone());
                w.complete(job, b"kept").unwrap();
            }
            other => panic!("unknown fixture mode {other}"),
        }
    }
    w.close().unwrap();
    std::process::exit(0);
}

fn mirror(p: &[u8]) -> Vec<u8> {
    p.iter().map(|b| b ^ 0x5a).collect()
}

/// FNV-1a, 64 bits: content is compared by hash.
fn hash(data: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &b in data {
        h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// A payload of `len` bytes that differs at every offset and per `seed`.
fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn put_all(q: &MemoryQueue, payloads: &[Vec<u8>]) -> Vec<JobId> {
    let ids = payloads
        .iter()
        .enumerate()
        .map(|(i, p)| q.put(NewJob::new(i as u64 + 1, p.clone())).unwrap())
        .collect();
    q.close().unwrap();
    ids
}

fn rust(mode: &str, workers: usize) -> Config {
    let (command, env) = fixture(mode);
    let mut c = Config::new(command, workers);
    c.env = env;
    c
}

fn py(script: &str, workers: usize) -> Config {
    let (command, env) = python(script);
    let mut c = Config::new(command, workers);
    c.env = env;
    c
}

/// Runs `payloads` through `config`, returning the recorder, the ids and the
/// summary, and asserting that the queue ends drained.
fn run(
    config: &Config,
    payloads: &[Vec<u8>],
    policy: RetryPolicy,
) -> (Recorder, Vec<JobId>, Summary) {
    let q = MemoryQueue::new(payloads.len().max(1), policy);
    let ids = put_all(&q, payloads);
    let rec = Recorder::default();
    let summary = persistent::run(&q, config, &rec, &Stop::new()).unwrap();
    assert!(q.counts().unwrap().is_drained());
    (rec, ids, summary)
}

/// Sizes around the threshold, repeated so that arena space is reused.
fn threshold_sizes() -> Vec<usize> {
    let base = [0, 10, T - 1, T, T + 1, 1 << 20, (3 << 20) + 7];
    base.iter().cycle().take(base.len() * 4).copied().collect()
}

fn above(sizes: &[usize]) -> u64 {
    sizes.iter().filter(|&&n| n >= T).count() as u64
}

#[test]
fn rust_payloads_below_at_and_above_the_threshold_arrive_intact_both_ways() {
    let sizes = threshold_sizes();
    let payloads: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| payload(n, i as u64))
        .collect();
    let mut c = rust("mirror", 2);
    c.window = 4;
    let (rec, ids, summary) = run(&c, &payloads, RetryPolicy::default());
    let done = rec.done();
    assert_eq!(done.len(), payloads.len());
    for (id, p) in ids.iter().zip(&payloads) {
        assert_eq!(
            hash(&done[id]),
            hash(&mirror(p)),
            "{id} of {} bytes",
            p.len()
        );
    }
    // Exactly the payloads at or above the threshold went through the
    // arena, both ways; every region was freed by an answer.
    assert_eq!(
        summary.arena_jobs,
        above(&sizes),
        "{summary:?} {:?}",
        rec.outcomes
            .lock()
            .unwrap()
            .iter()
            .map(|o| (
                o.job.id,
                o.job.attempts,
                o.worker,
                matches!(o.kind, OutcomeKind::Done { .. })
            ))
            .collect::<Vec<_>>()
    );
    assert_eq!(summary.arena_results, above(&sizes));
    assert_eq!(summary.arena_fallbacks, 0);
    assert_eq!(summary.arena_reclaimed, 0);
    assert_eq!(summary.arena_released, 0, "small regions stay mapped");
    assert_eq!(summary.lost, 0);
    let lines = rec.lines.lock().unwrap();
    assert!(
        !lines.iter().any(|(_, _, l)| l.contains("outlived")),
        "{lines:?}"
    );
}

#[test]
fn a_rust_worker_keeping_payload_views_past_their_answers_is_warned() {
    let payloads: Vec<Vec<u8>> = (0..3).map(|i| payload(T, i)).collect();
    let (rec, _, _) = run(&rust("keep", 1), &payloads, RetryPolicy::default());
    assert_eq!(rec.done().len(), 3);
    let lines = rec.lines.lock().unwrap();
    let warned: Vec<_> = lines
        .iter()
        .filter(|(_, _, l)| l.contains("payload view(s) outlived their jobs' answers"))
        .collect();
    assert_eq!(warned.len(), 1, "warned once: {lines:?}");
}

/// A Python worker that fails any job whose payload is not what the
/// threshold says (bytes below it, a read-only memoryview at or above it),
/// and answers the payload reversed.
const PY_REVERSE: &str = r#"
import jobmill_worker
T = 65536
for job in jobmill_worker.jobs():
    p = job.payload
    want = memoryview if len(p) >= T else bytes
    if not isinstance(p, want) or (want is memoryview and not p.readonly):
        job.fail("payload of %d bytes is a %s" % (len(p), type(p).__name__))
    else:
        job.complete(bytes(p)[::-1])
"#;

#[test]
fn python_payloads_below_at_and_above_the_threshold_arrive_intact_both_ways() {
    let sizes = threshold_sizes();
    let payloads: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| payload(n, 100 + i as u64))
        .collect();
    let mut c = py(PY_REVERSE, 2);
    c.window = 4;
    let (rec, ids, summary) = run(&c, &payloads, RetryPolicy::default());
    let done = rec.done();
    let failures: Vec<_> = rec
        .outcomes
        .lock()
        .unwrap()
        .iter()
        .filter(|o| matches!(o.kind, OutcomeKind::Failed { .. }))
        .map(|o| format!("{:?}", o.kind))
        .collect();
    assert!(failures.is_empty(), "{failures:?}");
    for (id, p) in ids.iter().zip(&payloads) {
        let mut want = p.clone();
        want.reverse();
        assert_eq!(hash(&done[id]), hash(&want), "{id} of {} bytes", p.len());
    }
    assert_eq!(summary.arena_jobs, above(&sizes));
    assert_eq!(summary.arena_results, above(&sizes));
    assert_eq!(summary.arena_reclaimed, 0);
}

/// Asserts the killed-worker story: the large job's first attempt was lost
/// with its worker and requeued with the attempt counted, a replacement
/// completed it, and the arena space it held was reclaimed.
fn assert_large_job_survived_the_kill(
    rec: &Recorder,
    ids: &[JobId],
    payloads: &[Vec<u8>],
    big: usize,
    summary: &Summary,
    expected: impl Fn(&[u8]) -> Vec<u8>,
) {
    let done = rec.done();
    assert_eq!(done.len(), payloads.len());
    for (id, p) in ids.iter().zip(payloads) {
        assert_eq!(hash(&done[id]), hash(&expected(p)), "{id}");
    }
    let outcomes = rec.outcomes.lock().unwrap();
    let big_id = ids[big];
    let lost: Vec<_> = outcomes
        .iter()
        .filter(|o| o.job.id == big_id)
        .filter_map(|o| match &o.kind {
            OutcomeKind::Failed {
                reason: FailReason::WorkerLost { .. },
                disposition,
            } => Some(disposition.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(lost, vec![Disposition::Requeued { attempts: 1 }]);
    let finished = outcomes
        .iter()
        .find(|o| o.job.id == big_id && matches!(o.kind, OutcomeKind::Done { .. }))
        .unwrap();
    assert_eq!(finished.job.attempts, 2, "the attempt was counted");
    assert_eq!(summary.lost, 1);
    assert!(summary.started >= 2, "a replacement was started");
    // The dead worker's arena held the large payload (and possibly the next
    // job's, sent in answer to a POLL); it was reclaimed with the arena, and
    // everything before it was freed by answers.
    let big_len = payloads[big].len() as u64;
    let after: u64 = payloads[big + 1..].iter().map(|p| p.len() as u64).sum();
    assert!(
        (big_len..=big_len + after).contains(&summary.arena_reclaimed),
        "reclaimed {} bytes",
        summary.arena_reclaimed
    );
}

fn kill_payloads() -> Vec<Vec<u8>> {
    vec![
        payload(100, 1),
        payload(T, 2),
        payload(8 << 20, 3),
        payload(200 << 10, 4),
    ]
}

#[test]
fn rust_worker_killed_holding_a_large_payload_has_it_requeued_and_its_arena_reclaimed() {
    let payloads = kill_payloads();
    // One worker, one job at a time: the large job is the only one it holds.
    let mut c = rust(&format!("mirror:{}", 8 << 20), 1);
    c.window = 1;
    let (rec, ids, summary) = run(&c, &payloads, RetryPolicy::with_retries(1));
    assert_large_job_survived_the_kill(&rec, &ids, &payloads, 2, &summary, mirror);
}

#[test]
fn python_worker_killed_holding_a_large_payload_has_it_requeued_and_its_arena_reclaimed() {
    let payloads = kill_payloads();
    let script = r#"
import os, signal, jobmill_worker
for job in jobmill_worker.jobs():
    if len(job.payload) >= 8 << 20 and job.attempt == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    job.complete(bytes(job.payload)[::-1])
"#;
    let mut c = py(script, 1);
    c.window = 1;
    let (rec, ids, summary) = run(&c, &payloads, RetryPolicy::with_retries(1));
    assert_large_job_survived_the_kill(&rec, &ids, &payloads, 2, &summary, |p| {
        p.iter().rev().copied().collect()
    });
}

/// A 1 MiB arena and a 4 MiB frame limit: 512 KiB goes through the arena,
/// 2 MiB falls back inline (both ways), 8 MiB fails with an error naming
/// both limits.
fn check_bigger_than_the_arena(config: &mut Config, expected: impl Fn(&[u8]) -> Vec<u8>) {
    config.arena = 1 << 20;
    config.max_frame = 4 << 20;
    let payloads = vec![
        payload(512 << 10, 1),
        payload(2 << 20, 2),
        payload(8 << 20, 3),
    ];
    let (rec, ids, summary) = run(config, &payloads, RetryPolicy::default());
    let done = rec.done();
    assert_eq!(done.len(), 2);
    for i in [0, 1] {
        assert_eq!(hash(&done[&ids[i]]), hash(&expected(&payloads[i])));
    }
    let outcomes = rec.outcomes.lock().unwrap();
    let failed = outcomes.iter().find(|o| o.job.id == ids[2]).unwrap();
    let OutcomeKind::Failed {
        reason: FailReason::Reported { message },
        ..
    } = &failed.kind
    else {
        panic!("{:?}", failed.kind)
    };
    assert!(
        message.contains("8388608 bytes exceeds both the worker arena's job area (1048576 bytes) and the frame limit (4194304 bytes)"),
        "{message}"
    );
    assert_eq!(summary.arena_jobs, 1);
    assert_eq!(summary.arena_results, 1);
    assert_eq!(summary.arena_fallbacks, 1);
    assert_eq!(summary.lost, 0);
}

#[test]
fn rust_item_bigger_than_the_arena_goes_inline_or_fails_with_both_limits_named() {
    check_bigger_than_the_arena(&mut rust("mirror", 1), mirror);
}

#[test]
fn python_item_bigger_than_the_arena_goes_inline_or_fails_with_both_limits_named() {
    let script = "import jobmill_worker\nfor job in jobmill_worker.jobs():\n    job.complete(bytes(job.payload)[::-1])\n";
    check_bigger_than_the_arena(&mut py(script, 1), |p| p.iter().rev().copied().collect());
}

#[test]
fn jobs_wait_for_room_in_a_full_arena_and_all_complete() {
    // Each payload takes over half the arena: one at a time fits, the
    // others wait (parked) although the window has room.
    let payloads: Vec<Vec<u8>> = (0..12).map(|i| payload(600 << 10, i)).collect();
    let mut c = rust("mirror", 2);
    c.arena = 1 << 20;
    c.window = 16;
    let (rec, ids, summary) = run(&c, &payloads, RetryPolicy::default());
    let done = rec.done();
    for (id, p) in ids.iter().zip(&payloads) {
        assert_eq!(hash(&done[id]), hash(&mirror(p)));
    }
    assert_eq!(summary.arena_jobs, 12);
    assert_eq!(summary.arena_results, 12);
    assert_eq!(summary.arena_fallbacks, 0);
}

#[test]
fn results_wait_for_room_in_a_full_result_area_and_all_arrive() {
    // 40 results of 300 KiB through a 1 MiB result area, window 16: the
    // worker must wait for the coordinator to consume earlier results.
    let payloads: Vec<Vec<u8>> = (0..40).map(|i| payload(300 << 10, 50 + i)).collect();
    let script =
        "import jobmill_worker\nfor job in jobmill_worker.jobs():\n    job.complete(job.payload)\n";
    for mut c in [rust("echo", 1), py(script, 1)] {
        c.arena = 1 << 20;
        let (rec, ids, summary) = run(&c, &payloads, RetryPolicy::default());
        let done: BTreeMap<_, _> = rec.done();
        for (id, p) in ids.iter().zip(&payloads) {
            assert_eq!(hash(&done[id]), hash(p));
        }
        assert_eq!(summary.arena_results, 40);
    }
}

#[test]
fn a_one_gib_item_round_trips_through_the_arena() {
    // 1 GiB that differs within every 1,000,003-byte block (so a shifted
    // region would not compare equal), built by doubling copies.
    let block = payload(1_000_003, 7);
    let len = 1usize << 30;
    let mut item = block.repeat(len / block.len() + 1);
    item.truncate(len);
    item[len - 1] ^= 0xff;
    let item = bytes::Bytes::from(item);
    let q = MemoryQueue::new(1, RetryPolicy::default());
    let id = q.put(NewJob::new(1, item.clone())).unwrap();
    q.close().unwrap();
    let rec = Recorder::default();
    let summary = persistent::run(&q, &rust("echo", 1), &rec, &Stop::new()).unwrap();
    let outcomes = rec.outcomes.lock().unwrap();
    let OutcomeKind::Done { result, .. } = &outcomes[0].kind else {
        panic!("{:?}", outcomes[0].kind)
    };
    assert_eq!(outcomes[0].job.id, id);
    assert_eq!(result.len(), len);
    assert!(result[..] == item[..], "the 1 GiB result differs");
    assert_eq!((summary.arena_jobs, summary.arena_results), (1, 1));
    // Both regions were given back beyond the first 256 MiB of their
    // areas: the worker does not keep 2 GiB of memory for the rest of its
    // life.
    assert_eq!(summary.arena_released, 2 * ((1 << 30) - (256 << 20)));
}

#[test]
fn cli_persistent_passes_large_lines_with_any_arena_size() {
    // Lines of 100 and 300 KB go through the arena by default, inline when
    // they are larger than a 64K arena, and inline with no arena at all.
    let input: Vec<String> = [10usize, 100_000, 300_000, 5]
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            (0..n)
                .map(|k| (b'a' + ((k * 7 + i) % 26) as u8) as char)
                .collect()
        })
        .collect();
    let stdin: String = input.iter().map(|l| format!("{l}\n")).collect();
    let want: Vec<String> = input.iter().map(|l| l.chars().rev().collect()).collect();
    let script = "import jobmill_worker\nfor job in jobmill_worker.jobs():\n    job.complete(bytes(job.payload)[::-1] + b'\\n')\n";
    for arena in ["2G", "64K", "0"] {
        let out = assert_cmd::Command::new(env!("CARGO_BIN_EXE_jobmill"))
            .env("PYTHONPATH", concat!(env!("CARGO_MANIFEST_DIR"), "/python"))
            .args([
                "run",
                "-k",
                "-j",
                "2",
                "--persistent",
                "--arena",
                arena,
                "--",
            ])
            .args(["python3", "-c", script])
            .write_stdin(stdin.clone())
            .assert()
            .code(0)
            .get_output()
            .clone();
        let got: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        assert!(got == want, "--arena {arena}: output differs");
    }
}

#[test]
fn python_worker_wraps_a_large_payload_with_numpy_without_copying() {
    let have_numpy = std::process::Command::new("python3")
        .args(["-c", "import numpy"])
        .status()
        .is_ok_and(|s| s.success());
    // scripts/test.sh installs numpy; without it this test must not pass.
    assert!(
        have_numpy,
        "numpy is not installed for python3 (scripts/test.sh installs it: \
         python3 -m pip install numpy)"
    );
    // The worker checks that the array is a read-only view of the payload
    // (not a copy), and answers with a numpy array (bytes-like result).
    let script = r#"
import numpy as np, jobmill_worker
for job in jobmill_worker.jobs():
    a = np.frombuffer(job.payload, dtype=np.uint8)
    if a.flags.owndata or a.flags.writeable or not isinstance(a.base, memoryview):
        job.fail("numpy copied the payload")
    else:
        job.complete(a[::-1].copy())
"#;
    let payloads: Vec<Vec<u8>> = (0..6).map(|i| payload((1 << 20) + i, i as u64)).collect();
    let (rec, ids, summary) = run(&py(script, 1), &payloads, RetryPolicy::default());
    let done = rec.done();
    assert_eq!(
        done.len(),
        payloads.len(),
        "{:?}",
        rec.outcomes.lock().unwrap()
    );
    for (id, p) in ids.iter().zip(&payloads) {
        let want: Vec<u8> = p.iter().rev().copied().collect();
        assert_eq!(hash(&done[id]), hash(&want));
    }
    assert_eq!(summary.arena_results, payloads.len() as u64);
}

#[test]
fn an_arena_result_outside_the_result_area_is_a_protocol_error_naming_it() {
    // A worker that answers its first job with a reference into the job
    // area (not its result area): killed as broken, the job retried by a
    // replacement that answers properly.
    let script = r#"
import struct, time, jobmill_worker
w = jobmill_worker.Worker()
job = w.get()
if job.attempt == 1:
    w._sock.sendall(struct.pack("<IBQBQQ", 25, 0x20, job.id, 1, 0, 16))
    time.sleep(120)  # killed by the coordinator
job.complete(b"ok")
w.close()
"#;
    let payloads = vec![payload(100, 1)];
    let (rec, ids, summary) = run(&py(script, 1), &payloads, RetryPolicy::with_retries(1));
    assert_eq!(rec.done()[&ids[0]], b"ok");
    let lost = rec.lost_details();
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert!(
        lost[0].contains("broke the protocol")
            && lost[0].contains(&format!("{} at 0+16, outside its result area", ids[0].0)),
        "{}",
        lost[0]
    );
    assert_eq!(summary.arena_results, 0);
    let outcomes = rec.outcomes.lock().unwrap();
    let done = outcomes
        .iter()
        .find(|o| matches!(o.kind, OutcomeKind::Done { .. }))
        .unwrap();
    assert_eq!(done.job.attempts, 2, "the broken attempt was counted");
}

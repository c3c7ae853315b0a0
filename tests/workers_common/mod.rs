//! Helpers shared by the persistent-worker tests: a recording observer, a
//! queue filler, and waiting on a condition with a deadline.

#![allow(dead_code)]

use std::ffi::OsString;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use jobmill::job::{JobId, NewJob, WorkerId};
use jobmill::persistent::{Observer, Outcome, OutcomeKind, Stream, WorkerEvent};
use jobmill::queue::{Completion, Queue};

/// Records everything a coordinator reports.
#[derive(Default)]
pub struct Recorder {
    pub outcomes: Mutex<Vec<Outcome>>,
    pub events: Mutex<Vec<WorkerEvent>>,
    pub lines: Mutex<Vec<(usize, Stream, String)>>,
    /// Worker processes spawned (handshake or not).
    pub spawned: Mutex<usize>,
}

impl Observer for Recorder {
    fn outcome(&self, outcome: Outcome) {
        self.outcomes.lock().unwrap().push(outcome);
    }

    fn spawned(&self, _slot: usize, _worker: WorkerId, _pid: u32) {
        *self.spawned.lock().unwrap() += 1;
    }

    fn worker(&self, event: WorkerEvent) {
        self.events.lock().unwrap().push(event);
    }

    fn output(&self, slot: usize, _worker: WorkerId, stream: Stream, line: &[u8]) {
        self.lines
            .lock()
            .unwrap()
            .push((slot, stream, String::from_utf8_lossy(line).into_owned()));
    }
}

impl Recorder {
    /// Results of recorded completions, by job id. Panics if a job was
    /// recorded done twice.
    pub fn done(&self) -> std::collections::BTreeMap<JobId, Vec<u8>> {
        let mut map = std::collections::BTreeMap::new();
        for o in self.outcomes.lock().unwrap().iter() {
            if let OutcomeKind::Done {
                result,
                completion: Completion::Recorded,
            } = &o.kind
            {
                let prev = map.insert(o.job.id, result.to_vec());
                assert!(prev.is_none(), "{} recorded done twice", o.job.id);
            }
        }
        map
    }

    /// Worker processes spawned.
    pub fn spawn_count(&self) -> usize {
        *self.spawned.lock().unwrap()
    }

    /// The `detail` of every lost-worker event.
    pub fn lost_details(&self) -> Vec<String> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                WorkerEvent::Ended {
                    lost: true, detail, ..
                } => Some(detail.clone()),
                _ => None,
            })
            .collect()
    }

    /// Number of Started events.
    pub fn started(&self) -> usize {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| matches!(e, WorkerEvent::Started { .. }))
            .count()
    }
}

/// Puts `payloads` on `queue` in order, returning their ids.
pub fn fill(queue: &dyn Queue, payloads: &[&[u8]]) -> Vec<JobId> {
    payloads
        .iter()
        .enumerate()
        .map(|(i, p)| queue.put(NewJob::new(i as u64 + 1, p.to_vec())).unwrap())
        .collect()
}

/// Polls `cond` until it holds, failing the test after 30 s.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The command that re-runs this test binary as a worker fixture in `mode`
/// (see `fixture_worker` in each test file).
pub fn fixture(mode: &str) -> (Vec<OsString>, Vec<(OsString, OsString)>) {
    let exe = std::env::current_exe().unwrap();
    (
        vec![
            exe.into(),
            "fixture_worker".into(),
            "--exact".into(),
            "--nocapture".into(),
            "--test-threads=1".into(),
        ],
        vec![("JOBMILL_FIXTURE".into(), mode.into())],
    )
}

/// `python3 -u python/jobmill_worker-based SCRIPT` with the library on the path.
pub fn python(script: &str) -> (Vec<OsString>, Vec<(OsString, OsString)>) {
    let root = env!("CARGO_MANIFEST_DIR");
    (
        vec!["python3".into(), "-u".into(), "-c".into(), script.into()],
        vec![("PYTHONPATH".into(), format!("{root}/python").into())],
    )
}

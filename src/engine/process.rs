//! The executor of a process per attempt: `-j` slots, each running one
//! attempt at a time through the [`Supervisor`].
//!
//! **Slots are lazy.** A slot costs nothing until it is used: the run starts
//! with one slot thread, and a slot thread that has just leased a job starts
//! another only when no other slot thread is waiting for work and fewer
//! than `-j` exist. So `-j 100000` with one input starts one thread, and
//! memory does not grow with `-j`, only with the jobs actually running at
//! once. If the system refuses another thread, the run goes on with the
//! slots it has (and says so once).
//!
//! **`{%}` is the lowest free slot** number, taken when an attempt starts
//! and given back when it ends, so a single job at `-j2` always gets slot 1,
//! and no two running jobs share one (GNU parallel's rule).
//!
//! Under `--line-buffer` and `-u` a slot prints its job's output as the
//! supervisor reads it (a [`LivePrinter`] behind the attempt's output
//! hook), instead of the engine printing it whole at the end.
//!
//! Each attempt sees `JOBMILL_SEQ`, `JOBMILL_SLOT` and `JOBMILL_ATTEMPT` in
//! its environment.
//!
//! **`--memfree`**: [`Executor::stop_youngest`] stops the attempt started
//! last (TERM to its process group, KILL after the grace); it ends as
//! [`AttemptEnd::Stopped`], so its job goes back to the queue without
//! counting an attempt. The supervisor does not expose an attempt's process
//! group, so it is found in `/proc`: the child of jobmill that leads its own
//! group and carries the attempt's `JOBMILL_SEQ` and `JOBMILL_ATTEMPT`.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::ffi::OsString;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::events::{Notice, SharedError};
use crate::exec::{AttemptSpec, OutputHook, Supervisor};
use crate::job::WorkerId;
use crate::outcome::AttemptEnd;
use crate::template::Template;

use super::output::LivePrinter;
use super::{Dispatch, Executor};

/// Stack of a slot thread: the supervisor reads output through a 64 KiB
/// stack buffer; the rest is headroom.
const SLOT_STACK: usize = 256 << 10;

/// Runs each attempt as a process of the rendered command template.
pub struct Processes {
    supervisor: Arc<Supervisor>,
    template: Template,
    slots: usize,
    timeout: Option<Duration>,
    grace: Duration,
    /// The attempts running now, by slot (for [`Executor::stop_youngest`]).
    attempts: Arc<Mutex<HashMap<usize, Running>>>,
}

/// An attempt running in a slot.
struct Running {
    seq: u64,
    attempt: u32,
    started: Instant,
    /// Set when `--memfree` stopped it.
    stopped: Arc<AtomicBool>,
}

impl Processes {
    /// An executor of `template` with at most `slots` attempts at once, each
    /// stopped after `timeout` (TERM, then KILL after `grace`).
    pub fn new(
        supervisor: Arc<Supervisor>,
        template: Template,
        slots: usize,
        timeout: Option<Duration>,
        grace: Duration,
    ) -> Processes {
        Processes {
            supervisor,
            template,
            slots: slots.max(1),
            timeout,
            grace,
            attempts: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

/// The process group led by the child of jobmill that runs attempt
/// `attempt` of job `seq`, found in `/proc`.
fn find_group(seq: u64, attempt: u32) -> Option<u32> {
    let me = std::process::id();
    let want_seq = format!("JOBMILL_SEQ={seq}");
    let want_attempt = format!("JOBMILL_ATTEMPT={attempt}");
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // After the command name in parentheses: state, ppid, pgrp.
        let mut rest = stat.rsplit_once(')').map(|(_, r)| r)?.split_whitespace();
        let ppid = rest.nth(1).and_then(|p| p.parse::<u32>().ok());
        let pgrp = rest.next().and_then(|p| p.parse::<u32>().ok());
        if ppid != Some(me) || pgrp != Some(pid) {
            continue;
        }
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let has = |want: &str| env.split(|&b| b == 0).any(|v| v == want.as_bytes());
        if has(&want_seq) && has(&want_attempt) {
            return Some(pid);
        }
    }
    None
}

/// The slot threads and slot numbers of one run.
struct Slots {
    /// Slot threads started.
    threads: AtomicUsize,
    /// Slot threads waiting for a lease.
    waiting: AtomicUsize,
    /// Slot numbers given back, lowest first, plus the next never used.
    free: Mutex<(BinaryHeap<Reverse<usize>>, usize)>,
    /// The system refused a thread once (reported once).
    refused: AtomicBool,
}

impl Slots {
    fn take(&self) -> usize {
        let mut f = self.free.lock().unwrap_or_else(|e| e.into_inner());
        match f.0.pop() {
            Some(Reverse(n)) => n,
            None => {
                f.1 += 1;
                f.1
            }
        }
    }

    fn give_back(&self, slot: usize) {
        let mut f = self.free.lock().unwrap_or_else(|e| e.into_inner());
        f.0.push(Reverse(slot));
    }
}

impl Executor for Processes {
    fn execute(&self, d: &Dispatch) -> Result<(), SharedError> {
        if let Some(notice) = self.supervisor.memory().and_then(|m| m.notice()) {
            d.notice(Notice::Info(notice));
        }
        let slots = Slots {
            threads: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            free: Mutex::new((BinaryHeap::new(), 0)),
            refused: AtomicBool::new(false),
        };
        thread::scope(|s| {
            self.grow(s, d, &slots);
        });
        Ok(())
    }

    fn kill(&self) {
        self.supervisor.terminate_all();
    }

    fn stop_youngest(&self) -> Option<u64> {
        use rustix::process::{kill_process_group, Pid, Signal};
        let (seq, attempt, stopped) = {
            let attempts = self.attempts.lock().unwrap_or_else(|e| e.into_inner());
            let r = attempts
                .values()
                .filter(|r| !r.stopped.load(Ordering::SeqCst))
                .max_by_key(|r| r.started)?;
            (r.seq, r.attempt, Arc::clone(&r.stopped))
        };
        let pid = find_group(seq, attempt)?;
        let group = Pid::from_raw(pid as i32)?;
        stopped.store(true, Ordering::SeqCst);
        let _ = kill_process_group(group, Signal::TERM);
        // KILL after the grace, if the same attempt still runs.
        let attempts = Arc::clone(&self.attempts);
        let grace = self.grace;
        let _ = thread::Builder::new()
            .name("jobmill-memfree".into())
            .spawn(move || {
                thread::sleep(grace);
                let still = attempts
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .values()
                    .any(|r| r.seq == seq && r.attempt == attempt);
                if still && find_group(seq, attempt) == Some(pid) {
                    let _ = kill_process_group(group, Signal::KILL);
                }
            });
        Some(seq)
    }
}

impl Processes {
    /// Starts one more slot thread if fewer than `-j` exist. Returns
    /// whether it did.
    fn grow<'scope>(
        &'scope self,
        s: &'scope thread::Scope<'scope, '_>,
        d: &'scope Dispatch,
        slots: &'scope Slots,
    ) -> bool {
        let n = slots.threads.fetch_add(1, Ordering::SeqCst);
        if n >= self.slots {
            slots.threads.fetch_sub(1, Ordering::SeqCst);
            return false;
        }
        let worker = WorkerId(n as u64 + 1);
        let spawned = thread::Builder::new()
            .name(format!("jobmill-slot-{}", n + 1))
            .stack_size(SLOT_STACK)
            .spawn_scoped(s, move || self.slot_loop(s, d, slots, worker));
        if let Err(e) = spawned {
            slots.threads.fetch_sub(1, Ordering::SeqCst);
            if !slots.refused.swap(true, Ordering::SeqCst) {
                d.notice(Notice::Info(format!(
                    "cannot start more than {n} slots ({e}); going on with those"
                )));
            }
            return false;
        }
        true
    }

    fn slot_loop<'scope>(
        &'scope self,
        s: &'scope thread::Scope<'scope, '_>,
        d: &'scope Dispatch,
        slots: &'scope Slots,
        worker: WorkerId,
    ) {
        let mut argv: Vec<OsString> = Vec::new();
        loop {
            slots.waiting.fetch_add(1, Ordering::SeqCst);
            let lease = d.lease(worker);
            let waiting = slots.waiting.fetch_sub(1, Ordering::SeqCst) - 1;
            let Some(lease) = lease else { return };
            if waiting == 0 {
                // Nobody else is ready for the next job: one more slot.
                self.grow(s, d, slots);
            }
            let slot = slots.take();
            let job = &lease.job;
            self.template.render(&job.payload, job.seq, slot, &mut argv);
            let env = [
                ("JOBMILL_SEQ", OsString::from(job.seq.to_string())),
                ("JOBMILL_SLOT", OsString::from(slot.to_string())),
                ("JOBMILL_ATTEMPT", OsString::from(job.attempts.to_string())),
            ];
            let live = d
                .live_output()
                .map(|mode| RefCell::new(LivePrinter::new(mode, d.tag(job, slot))));
            let print = |stderr: bool, bytes: &[u8]| {
                if let Some(Err(e)) = live.as_ref().map(|p| p.borrow_mut().chunk(stderr, bytes)) {
                    // A closed stdout stops the run (and this job) now.
                    d.output_failed(job.seq, &e);
                }
            };
            let spec = AttemptSpec {
                argv: &argv,
                env: &env,
                timeout: self.timeout,
                grace: self.grace,
                on_output: live.is_some().then_some(&print as OutputHook<'_>),
            };
            if !d.start(job, slot, None) {
                d.give_back(&lease);
                slots.give_back(slot);
                return;
            }
            let stopped = Arc::new(AtomicBool::new(false));
            self.attempts
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(
                    slot,
                    Running {
                        seq: job.seq,
                        attempt: job.attempts,
                        started: Instant::now(),
                        stopped: Arc::clone(&stopped),
                    },
                );
            let attempt = self.supervisor.run(&spec);
            d.check_guardian(&self.supervisor);
            if let Some(Err(e)) = live.map(|p| p.into_inner().finish()) {
                d.output_failed(job.seq, &e);
            }
            self.attempts
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&slot);
            slots.give_back(slot);
            let mut outcome = attempt.outcome();
            if stopped.load(Ordering::SeqCst) {
                // --memfree stopped it: not the job's fault.
                outcome.end = AttemptEnd::Stopped;
            }
            d.finish(&lease, slot, &outcome, attempt.stdout, attempt.stderr);
        }
    }
}

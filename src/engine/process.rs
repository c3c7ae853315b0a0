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
//! Each attempt sees `JOBMILL_SEQ`, `JOBMILL_SLOT` and `JOBMILL_ATTEMPT` in
//! its environment.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::ffi::OsString;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crate::events::{Notice, SharedError};
use crate::exec::{AttemptSpec, Supervisor};
use crate::job::WorkerId;
use crate::template::Template;

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
        }
    }
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
            let spec = AttemptSpec {
                argv: &argv,
                env: &env,
                timeout: self.timeout,
                grace: self.grace,
            };
            if !d.start(job, slot) {
                d.give_back(&lease);
                slots.give_back(slot);
                return;
            }
            let attempt = self.supervisor.run(&spec);
            slots.give_back(slot);
            let outcome = attempt.outcome();
            d.finish(&lease, slot, &outcome, attempt.stdout, attempt.stderr);
        }
    }
}

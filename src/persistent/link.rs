//! The state one worker's reader (its slot thread) and feeder share: the
//! jobs in flight, the window's bookkeeping, the writer.

use std::collections::VecDeque;
use std::os::unix::net::UnixStream;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use crate::queue::Lease;
use crate::sys::shm::{Arena, SharedPage};

use crate::arena::Extents;

/// One job sent to a worker and not yet resolved.
pub(super) struct InFlight {
    pub(super) lease: Lease,
    /// Its position among the jobs sent to this worker, from 0.
    pub(super) index: u64,
    pub(super) sent: Instant,
    /// Its payload's region of the arena (offset, allocated length), freed
    /// when the job is answered.
    pub(super) region: Option<(u64, u64)>,
}

/// State shared by a worker's reader (slot thread) and feeder.
pub(super) struct Flight {
    pub(super) inflight: VecDeque<InFlight>,
    /// When the current oldest in-flight job became the oldest.
    pub(super) head_since: Instant,
    /// Jobs sent so far.
    pub(super) sent: u64,
    /// The worker asked (POLL) and got nothing: send the next job even past
    /// the window.
    pub(super) want: bool,
    /// `sent` when a POLL was last answered with nothing because the window
    /// was full: another POLL with nothing sent since means the worker holds
    /// those jobs itself.
    pub(super) full_at: Option<u64>,
    /// The incarnation is over: the feeder must stop.
    pub(super) dead: bool,
    /// Jobs taken out of `inflight` whose outcomes are not yet
    /// reported: they still count against the window, so no job is sent in
    /// their place before observers (the journal) have seen them.
    pub(super) resolving: usize,
    /// Jobs the worker took, from LEAVING.
    pub(super) taken: Option<u64>,
    /// The arena's job area, when the worker was granted the arena.
    pub(super) alloc: Option<Extents>,
    /// Jobs leased for the worker that wait for room in its arena (sent
    /// first when room opens; released if the worker ends).
    pub(super) parked: VecDeque<Lease>,
}

/// The write side: held while leasing and writing, so that jobs leased for
/// the worker are written in lease order and before any POLL_END.
pub(super) struct Writer {
    pub(super) stream: UnixStream,
    pub(super) buf: Vec<u8>,
}

pub(super) struct Link {
    /// The worker's slot, from 1.
    pub(super) slot: usize,
    /// CLOSED was written.
    pub(super) closed_sent: AtomicBool,
    pub(super) flight: Mutex<Flight>,
    /// Signalled when room opens in the window or the arena, on POLL, and
    /// on death.
    pub(super) cond: Condvar,
    pub(super) writer: Mutex<Writer>,
    /// The worker's arena and state page, if it was granted the arena.
    pub(super) arena: Option<(Arc<Arena>, Arc<SharedPage>)>,
}

impl Link {
    pub(super) fn flight(&self) -> MutexGuard<'_, Flight> {
        self.flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn writer(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }
}

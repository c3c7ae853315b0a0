//! Reading a worker's channel: results, failures, batches, POLL, LEAVING
//! and heartbeats, and applying outcomes to the queue.

use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::job::{FailReason, WorkerId};
use crate::protocol::io::{FrameReader, ReadError};
use crate::protocol::{decode, BatchEntry, Decoded, Frame, Payload, RESULTS_CONSUMED_SLOT};
use crate::queue::{Lease, QueueError};

use super::link::Link;
use super::proc::{Ended, Proc};
use super::{Ctx, Outcome, OutcomeKind, StopLevel, TICK};
use crate::arena::{release_beyond_keep, ARENA_KEEP};

impl Ctx<'_> {
    /// Reads frames until the worker's channel ends or something goes wrong.
    pub(super) fn read_loop(
        &self,
        slot: usize,
        worker: WorkerId,
        reader: &mut FrameReader<UnixStream>,
        link: &Link,
        proc: &Proc,
        completed: &mut u64,
    ) -> Ended {
        let mut last_heard = Instant::now();
        let silence = self.config.heartbeat.map(|h| h * 4);
        let mut resolved = Vec::new();
        // The running job as last seen on the state page, and since when.
        let mut running = (0u64, Instant::now());
        let mut poll_every = TICK;
        if let Some(t) = self.config.timeout {
            poll_every = poll_every.min(t / 2);
        }
        if let Some(h) = self.config.heartbeat {
            poll_every = poll_every.min(h);
        }
        let _ = reader
            .get_ref()
            .set_read_timeout(Some(poll_every.max(Duration::from_millis(1))));
        loop {
            // Deadlines: the oldest job's timeout, and the heartbeat.
            let now = Instant::now();
            if let Some(timeout) = self.config.timeout {
                if let Some(id) = proc.running() {
                    // Exact: the worker says which job it runs.
                    if id != running.0 {
                        running = (id, now);
                    } else if id != 0 && now >= running.1 + timeout {
                        return Ended::Timeout;
                    }
                } else {
                    // The oldest unanswered job is taken to be running
                    // since the previous one was answered.
                    let f = link.flight();
                    if let Some(head) = f.inflight.front() {
                        if now >= head.sent.max(f.head_since) + timeout {
                            return Ended::Timeout;
                        }
                    }
                }
            }
            if let Some(silence) = silence {
                let holding = !link.flight().inflight.is_empty();
                if holding && now >= last_heard + silence {
                    return Ended::Silent;
                }
            }
            if self.stop.level() == StopLevel::Killing {
                return Ended::Killed;
            }
            let raw = match reader.read_frame() {
                Ok(Some(raw)) => raw,
                Ok(None) => {
                    return if link.closed_sent.load(Ordering::SeqCst) {
                        Ended::Closed
                    } else {
                        Ended::Eof
                    }
                }
                Err(e) if e.is_timeout() => continue,
                Err(e) => return read_error(e),
            };
            last_heard = Instant::now();
            let frame = match decode(&raw, self.config.max_frame) {
                Ok(Decoded::Frame { frame, .. }) => frame,
                Ok(Decoded::Incomplete { .. }) => unreachable!("whole frames only"),
                Err(e) => return Ended::Protocol(e.to_string()),
            };
            let step = match frame {
                Frame::Result(r) => {
                    self.take_results(link, [(r.id, Ok(r.payload))], &raw, &mut resolved)
                }
                Frame::Failure(f) => {
                    self.take_results(link, [(f.id, Err(f.message))], &raw, &mut resolved)
                }
                Frame::Batch(b) => self.take_results(
                    link,
                    b.iter().map(|e| match e {
                        BatchEntry::Result(r) => (r.id, Ok(r.payload)),
                        BatchEntry::Failure(f) => (f.id, Err(f.message)),
                    }),
                    &raw,
                    &mut resolved,
                ),
                Frame::Poll => {
                    if let Err(e) = self.answer_poll(worker, link) {
                        return e;
                    }
                    Ok(false)
                }
                Frame::Leaving { taken } => {
                    link.flight().taken = Some(taken);
                    Ok(false)
                }
                Frame::Heartbeat { .. } => Ok(false),
                other => Err(format!(
                    "sent {}, which only a coordinator sends",
                    other.name()
                )),
            };
            let refill = match step {
                Ok(refill) => refill,
                Err(detail) => return Ended::Protocol(detail),
            };
            let reported = self.report(slot, worker, proc, &mut resolved, completed);
            link.flight().resolving = 0;
            if let Err(e) = reported {
                return Ended::Queue(e);
            }
            // Only once the outcomes are reported (and so recorded by the
            // journal's observer) may the freed window be refilled: the
            // journal's durability gate counts on it.
            if refill {
                link.cond.notify_one();
            }
        }
    }

    /// Removes the named jobs from the in-flight list (a protocol error if
    /// one is not there), frees their payloads' arena regions, and queues
    /// their outcomes in `resolved`. Results in the arena are copied out,
    /// and their count published on the state page so that the worker can
    /// reuse the space. Returns whether the sender should be woken to
    /// refill the window or send parked jobs (after the outcomes are
    /// reported).
    pub(super) fn take_results<'r>(
        &self,
        link: &Link,
        entries: impl IntoIterator<Item = (u64, Result<Payload<'r>, &'r [u8]>)>,
        raw: &Bytes,
        resolved: &mut Vec<(Lease, Result<Bytes, String>)>,
    ) -> Result<bool, String> {
        // Copy arena results out first, without holding the lock.
        let mut arena_results = 0u64;
        let mut released = 0u64;
        let mut outcomes = Vec::new();
        for (id, outcome) in entries {
            let outcome = match outcome {
                Ok(Payload::Inline(bytes)) => Ok(raw.slice_ref(bytes)),
                Ok(Payload::Arena { offset, len }) => {
                    let Some((arena, _)) = &link.arena else {
                        return Err(format!(
                            "sent an arena result for job {id} without an arena"
                        ));
                    };
                    let area = self.config.arena as u64;
                    let inside = offset >= area
                        && offset.checked_add(len).is_some_and(|end| end <= 2 * area);
                    if !inside {
                        return Err(format!(
                            "sent a result for job {id} at {offset}+{len}, outside its result area"
                        ));
                    }
                    arena_results += 1;
                    let copied = match arena.copy_out(offset as usize, len as usize) {
                        Ok(v) => Bytes::from(v),
                        Err(e) => return Err(format!("result of job {id}: {e}")),
                    };
                    // Before the worker may reuse it (the count below).
                    released += release_beyond_keep(arena, area, ARENA_KEEP, offset, len);
                    Ok(copied)
                }
                Err(msg) => Err(String::from_utf8_lossy(msg).into_owned()),
            };
            outcomes.push((id, outcome));
        }
        if arena_results > 0 {
            if let Some((_, page)) = &link.arena {
                let consumed = page.load(RESULTS_CONSUMED_SLOT);
                page.store(RESULTS_CONSUMED_SLOT, consumed + arena_results);
            }
            self.summary_mut().arena_results += arena_results;
        }
        let mut f = link.flight();
        let before = f.inflight.len();
        let head = f.inflight.front().map(|h| h.index);
        let mut freed = false;
        for (id, outcome) in outcomes {
            let Some(pos) = f.inflight.iter().position(|x| x.lease.job.id.0 == id) else {
                return Err(format!(
                    "reported an outcome for job {id}, which it does not hold"
                ));
            };
            let held = f.inflight.remove(pos).expect("position is in range");
            if let (Some((off, n)), Some(alloc)) = (held.region, f.alloc.as_mut()) {
                // Before the allocator may hand the region out again.
                if let Some((arena, _)) = &link.arena {
                    released += release_beyond_keep(arena, 0, ARENA_KEEP, off, n);
                }
                alloc.free(off, n);
                freed = true;
            }
            f.resolving += 1;
            resolved.push((held.lease, outcome));
        }
        let unpark = freed && !f.parked.is_empty();
        if released > 0 {
            self.summary_mut().arena_released += released;
        }
        if f.inflight.front().map(|h| h.index) != head {
            f.head_since = Instant::now();
        }
        let window = self.config.window;
        let refill = (window / 2).max(1);
        let free_before = window.saturating_sub(before);
        let free_after = window.saturating_sub(f.inflight.len());
        // The feeder waits for the worker's POLL while the worker holds
        // jobs; once it holds none, the feeder waits on the queue instead.
        let emptied = before > 0 && f.inflight.is_empty();
        drop(f);
        Ok(unpark || free_before < refill && free_after >= refill || emptied || self.stopping())
    }

    /// Applies resolved outcomes to the queue and reports them. A failure
    /// a worker under `RLIMIT_AS` reports in words of an allocation failure
    /// (`MemoryError`…) is "likely over its memory limit".
    pub(super) fn report(
        &self,
        slot: usize,
        worker: WorkerId,
        proc: &Proc,
        resolved: &mut Vec<(Lease, Result<Bytes, String>)>,
        completed: &mut u64,
    ) -> Result<(), QueueError> {
        if resolved.is_empty() {
            return Ok(());
        }
        let mut done = 0;
        let mut failed = 0;
        // Completions in one call to the queue, failures one by one.
        // The leases move (no clone per job): results and failures apart.
        let mut leases = Vec::with_capacity(resolved.len());
        let mut results = Vec::with_capacity(resolved.len());
        let mut fails = Vec::new();
        for (lease, outcome) in resolved.drain(..) {
            match outcome {
                Ok(result) => {
                    leases.push(lease);
                    results.push(result);
                }
                Err(message) => fails.push((lease, Err::<Bytes, _>(message))),
            }
        }
        if !leases.is_empty() {
            // The results go to the queue too: a backend told to keep them
            // (a shared queue of signed pool tasks) stores them.
            let completions = self.queue.complete_many_results(
                &leases,
                &crate::queue::AttemptInfo::default(),
                &results,
            )?;
            for ((lease, result), completion) in leases.into_iter().zip(results).zip(completions) {
                done += 1;
                self.observer.outcome(Outcome {
                    slot,
                    worker,
                    job: lease.job,
                    kind: OutcomeKind::Done { result, completion },
                });
            }
        }
        for (lease, outcome) in fails {
            let Err(message) = outcome else { continue };
            failed += 1;
            let reason = match proc.rlimit_as() {
                Some(limit)
                    if crate::exec::memory::mentions_allocation_failure(message.as_bytes()) =>
                {
                    FailReason::MemoryLimit {
                        limit,
                        likely: true,
                    }
                }
                _ => FailReason::Reported { message },
            };
            let disposition = self.queue.fail(&lease, reason.clone())?;
            self.observer.outcome(Outcome {
                slot,
                worker,
                job: lease.job,
                kind: OutcomeKind::Failed {
                    reason,
                    disposition,
                },
            });
        }
        *completed += done + failed;
        let mut s = self.summary_mut();
        s.completed += done;
        s.reported_failures += failed;
        Ok(())
    }
}

pub(super) fn read_error(e: ReadError) -> Ended {
    match e {
        // A process killed with unread data in its socket resets the
        // connection: that is its end, like EOF.
        ReadError::Io(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ended::Eof,
        ReadError::Io(e) => Ended::Io(e.to_string()),
        other => Ended::Protocol(other.to_string()),
    }
}

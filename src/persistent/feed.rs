//! Feeding a worker: leasing jobs into its window (inline or through its
//! arena), the feeder thread, and answers to POLL.

use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::job::{FailReason, WorkerId};
use crate::protocol::{encode_empty, encode_job, encode_job_arena, job_body_len, kind};
use crate::queue::{GetError, Lease, QueueError, TryGetError};

use super::link::{InFlight, Link, Writer};
use super::proc::Ended;
use super::{Ctx, Outcome, OutcomeKind, StopLevel, TICK};

/// What leasing into a writer found.
pub(super) struct Filled {
    count: usize,
    closed: bool,
}
/// A job with its payload's arena region (offset, allocated length), if
/// it goes through the arena.
type Placed = (Lease, Option<(u64, u64)>);

/// How [`Ctx::place`] sorted a fill's jobs.
#[derive(Default)]
struct Placement {
    /// To send now, with their arena regions if any.
    ready: Vec<Placed>,
    /// To wait for room in the arena, in order.
    park: Vec<Lease>,
    /// Never sendable, with the reason.
    failed: Vec<(Lease, String)>,
    /// Arena-sized payloads larger than the job area, sent inline.
    fallbacks: u64,
}

impl Ctx<'_> {
    /// Leases up to `n` jobs and encodes them into the writer's buffer,
    /// registering them as in flight. Jobs parked for room in the arena go
    /// first, as many as fit now; more are leased only once none is left
    /// parked. The first new job that does not fit the arena now is parked,
    /// with every job leased after it (they keep their order).
    pub(super) fn fill(
        &self,
        worker: WorkerId,
        link: &Link,
        w: &mut Writer,
        n: usize,
        first: Option<Lease>,
    ) -> Result<Filled, QueueError> {
        let (unparked, parked_left) = self.unpark(link, n);
        let mut leases = Vec::new();
        leases.extend(first);
        let mut closed = false;
        if !parked_left && unparked.len() + leases.len() < n {
            let more = n - unparked.len() - leases.len();
            match self.queue.try_get_many(worker, more, &mut leases) {
                Ok(_) | Err(TryGetError::Empty) => {}
                Err(TryGetError::Closed) => closed = true,
                Err(TryGetError::Backend(e)) => return Err(e),
            }
        }
        let mut placed = self.place(link, unparked, leases, parked_left);
        if !placed.park.is_empty() {
            link.flight().parked.extend(placed.park);
        }
        let (sendable, arena_jobs) =
            self.encode_ready(worker, link, w, placed.ready, &mut placed.failed);
        self.fail_unsendable(worker, link, placed.failed)?;
        if arena_jobs + placed.fallbacks > 0 {
            let mut s = self.summary_mut();
            s.arena_jobs += arena_jobs;
            s.arena_fallbacks += placed.fallbacks;
        }
        let count = sendable.len();
        Self::register(link, sendable);
        Ok(Filled { count, closed })
    }

    /// How a payload travels: `Some(len)` through the arena, `None` inline
    /// (small, no arena, or a fallback: larger than the job area).
    fn via_arena(&self, link: &Link, lease: &Lease) -> Option<u64> {
        let len = lease.job.payload.len();
        let fits_area = len as u64 <= self.config.arena as u64;
        (link.arena.is_some() && len >= self.config.arena_threshold && fits_area)
            .then_some(len as u64)
    }

    /// Takes from the front of the parked jobs up to `n` that may go now
    /// (their arena regions allocated). Returns them, and whether jobs are
    /// still parked.
    fn unpark(&self, link: &Link, n: usize) -> (Vec<Placed>, bool) {
        let mut unparked = Vec::new();
        let mut f = link.flight();
        let f = &mut *f;
        while unparked.len() < n {
            let Some(front) = f.parked.front() else { break };
            let region = match self.via_arena(link, front) {
                None => None,
                Some(len) => match f.alloc.as_mut().and_then(|a| a.alloc(len)) {
                    Some(region) => Some(region),
                    None => break,
                },
            };
            let lease = f.parked.pop_front().expect("front exists");
            unparked.push((lease, region));
        }
        (unparked, !f.parked.is_empty())
    }

    /// Decides for each job (the unparked ones, then the new leases) how it
    /// goes: ready (inline, or with its arena region allocated), parked
    /// (waiting for room in the arena, or behind a parked job), or failed
    /// (too large for both the arena and a frame).
    fn place(
        &self,
        link: &Link,
        unparked: Vec<Placed>,
        leases: Vec<Lease>,
        parked_left: bool,
    ) -> Placement {
        let threshold = self.config.arena_threshold;
        let area = self.config.arena as u64;
        let mut p = Placement::default();
        let todo = unparked
            .into_iter()
            .map(|(lease, region)| (lease, region, true))
            .chain(leases.into_iter().map(|lease| (lease, None, false)));
        for (lease, region, was_parked) in todo {
            if region.is_some() {
                p.ready.push((lease, region));
                continue;
            }
            // A new job waits behind the parked ones, in order.
            if !was_parked && (parked_left || !p.park.is_empty()) {
                p.park.push(lease);
                continue;
            }
            let len = lease.job.payload.len() as u64;
            if link.arena.is_none() || lease.job.payload.len() < threshold {
                p.ready.push((lease, None));
            } else if len > area {
                // Never fits: inline if the frame limit allows.
                if job_body_len(lease.job.payload.len()) > self.config.max_frame {
                    let message = format!(
                        "payload of {len} bytes exceeds both the worker arena's job area \
                         ({area} bytes) and the frame limit ({} bytes)",
                        self.config.max_frame
                    );
                    p.failed.push((lease, message));
                } else {
                    p.fallbacks += 1;
                    p.ready.push((lease, None));
                }
            } else {
                let got = link.flight().alloc.as_mut().and_then(|a| a.alloc(len));
                match got {
                    Some(region) => p.ready.push((lease, Some(region))),
                    None => p.park.push(lease),
                }
            }
        }
        p
    }

    /// Encodes the ready jobs into the writer's buffer (copying arena
    /// payloads into their regions) and tells the observer they are sent.
    /// A job that cannot be encoded goes to `failed`. Returns the jobs
    /// encoded, and how many of them went through the arena.
    fn encode_ready(
        &self,
        worker: WorkerId,
        link: &Link,
        w: &mut Writer,
        ready: Vec<Placed>,
        failed: &mut Vec<(Lease, String)>,
    ) -> (Vec<Placed>, u64) {
        let mut sendable = Vec::with_capacity(ready.len());
        let mut arena_jobs = 0;
        for (lease, region) in ready {
            let j = &lease.job;
            let encoded = match (region, &link.arena) {
                (Some((off, alloc_len)), Some((arena, _))) => {
                    // The region is ours until the job is answered: nobody
                    // else writes it now.
                    match arena.write(off as usize, &j.payload) {
                        Ok(()) => {
                            encode_job_arena(
                                &mut w.buf,
                                j.id.0,
                                j.seq,
                                j.attempts,
                                off,
                                j.payload.len() as u64,
                            );
                            arena_jobs += 1;
                            Ok(())
                        }
                        Err(e) => {
                            if let Some(a) = link.flight().alloc.as_mut() {
                                a.free(off, alloc_len);
                            }
                            Err(format!(
                                "cannot copy the payload into the worker arena: {e}"
                            ))
                        }
                    }
                }
                _ => encode_job(
                    &mut w.buf,
                    j.id.0,
                    j.seq,
                    j.attempts,
                    &j.payload,
                    self.config.max_frame,
                )
                .map_err(|_| {
                    format!(
                        "payload of {} bytes exceeds the worker frame limit of {} bytes",
                        j.payload.len(),
                        self.config.max_frame
                    )
                }),
            };
            match encoded {
                Ok(()) => {
                    self.observer.sent(link.slot, worker, &lease.job);
                    sendable.push((lease, region));
                }
                Err(message) => failed.push((lease, message)),
            }
        }
        (sendable, arena_jobs)
    }

    /// Fails the jobs that cannot be sent to a worker at all, as if the
    /// worker had reported it.
    fn fail_unsendable(
        &self,
        worker: WorkerId,
        link: &Link,
        failed: Vec<(Lease, String)>,
    ) -> Result<(), QueueError> {
        for (lease, message) in failed {
            let reason = FailReason::Reported { message };
            let d = self.queue.fail(&lease, reason.clone())?;
            self.observer.outcome(Outcome {
                slot: link.slot,
                worker,
                job: lease.job.clone(),
                kind: OutcomeKind::Failed {
                    reason,
                    disposition: d,
                },
            });
        }
        Ok(())
    }

    /// Registers the encoded jobs as in flight, in order.
    fn register(link: &Link, sendable: Vec<Placed>) {
        if sendable.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut f = link.flight();
        if f.inflight.is_empty() {
            f.head_since = now;
        }
        for (lease, region) in sendable {
            let index = f.sent;
            f.sent += 1;
            f.inflight.push_back(InFlight {
                lease,
                index,
                sent: now,
                region,
            });
        }
        f.want = false;
    }

    /// Writes CLOSED once.
    pub(super) fn push_closed(link: &Link, w: &mut Writer) {
        if !link.closed_sent.swap(true, Ordering::SeqCst) {
            encode_empty(&mut w.buf, kind::CLOSED);
        }
    }

    pub(super) fn write_out(w: &mut Writer) -> bool {
        if w.buf.is_empty() {
            return true;
        }
        let ok = w.stream.write_all(&w.buf).is_ok();
        w.buf.clear();
        ok
    }

    /// The feeder thread: keeps the window full.
    pub(super) fn feed(&self, worker: WorkerId, link: &Link) -> Result<(), QueueError> {
        let window = self.config.window;
        let refill = (window / 2).max(1);
        loop {
            // Wait for room in the window, or a worker asking.
            let n = {
                let mut f = link.flight();
                loop {
                    if f.dead {
                        return Ok(());
                    }
                    match self.stop.level() {
                        StopLevel::Killing => return Ok(()),
                        StopLevel::Draining => {
                            if f.inflight.is_empty() {
                                drop(f);
                                let mut w = link.writer();
                                Self::push_closed(link, &mut w);
                                Self::write_out(&mut w);
                                return Ok(());
                            }
                        }
                        _ => {
                            let free = window.saturating_sub(f.inflight.len() + f.resolving);
                            if let Some(next) = f.parked.front() {
                                // Jobs wait for room in the arena: send them
                                // once the first fits (it always does when
                                // nothing is in flight), and never before the
                                // outcomes just taken are reported (the
                                // journal's gate).
                                let len = next.job.payload.len() as u64;
                                let fits = f.alloc.as_ref().is_none_or(|a| a.fits(len));
                                if (fits || f.inflight.is_empty()) && f.resolving == 0 {
                                    break free.max(1);
                                }
                            } else if free >= refill || f.want {
                                break free.max(1);
                            }
                        }
                    }
                    f = link
                        .cond
                        .wait_timeout(f, TICK)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            };
            let mut w = link.writer();
            // A POLL answered meanwhile may have filled the window.
            let n = {
                let f = link.flight();
                let free = window.saturating_sub(f.inflight.len());
                if f.parked.is_empty() && !f.want {
                    n.min(free)
                } else {
                    n
                }
            };
            if n == 0 {
                continue;
            }
            let filled = self.fill(worker, link, &mut w, n, None)?;
            if filled.closed {
                Self::push_closed(link, &mut w);
            }
            let closed = filled.closed;
            if filled.count == 0 && !closed && !link.flight().parked.is_empty() {
                // Still waiting for room in the arena.
                drop(w);
                continue;
            }
            if filled.count == 0 && !closed {
                drop(w);
                let sent_before = {
                    let f = link.flight();
                    if !f.inflight.is_empty() && !f.want {
                        // Nothing queued, and the worker still has jobs: it
                        // asks (POLL) when it runs out, and is answered at
                        // once with what is queued then. Meanwhile jobs
                        // gather in the queue for a larger batch; waiting on
                        // the queue instead would wake this thread (and make
                        // the producer pay a wake-up) for every job put.
                        drop(
                            link.cond
                                .wait_timeout(f, TICK)
                                .unwrap_or_else(|e| e.into_inner()),
                        );
                        continue;
                    }
                    f.sent
                };
                // Nothing queued and the worker idle: wait for a job,
                // outside the writer lock so that POLLs are answered
                // meanwhile.
                match self.queue.get(worker, Some(TICK)) {
                    Ok(lease) => {
                        let mut w = link.writer();
                        // A POLL answered while we waited may have filled
                        // the window, or sent jobs queued after this one:
                        // the job goes back to the front, so that the
                        // worker gets its jobs in queue order.
                        let full = {
                            let f = link.flight();
                            f.sent != sent_before
                                || f.parked.is_empty() && !f.want && f.inflight.len() >= window
                        };
                        if full {
                            self.queue.release(&lease)?;
                            continue;
                        }
                        let filled = self.fill(worker, link, &mut w, n, Some(lease))?;
                        if filled.closed {
                            Self::push_closed(link, &mut w);
                        }
                        if !Self::write_out(&mut w) {
                            return Ok(());
                        }
                    }
                    Err(GetError::Timeout) => {}
                    Err(GetError::Closed) => {
                        let mut w = link.writer();
                        Self::push_closed(link, &mut w);
                        Self::write_out(&mut w);
                        return Ok(());
                    }
                    Err(GetError::Backend(e)) => return Err(e),
                }
                continue;
            }
            if !Self::write_out(&mut w) || closed {
                return Ok(());
            }
        }
    }

    /// Answers a POLL: the jobs available now, up to the window, then
    /// POLL_END. With the window full, the first answer is empty: every job
    /// in flight was written before it (under the writer lock), so the jobs
    /// the feeder sent while the POLL was on its way reach the worker before
    /// POLL_END, and one more would wait behind them while another worker
    /// may be idle. A worker that asks again with nothing sent since holds
    /// those jobs itself (it takes several before answering): it gets one
    /// past the window (at least one if any is queued), so that it never
    /// waits for nothing.
    pub(super) fn answer_poll(&self, worker: WorkerId, link: &Link) -> Result<(), Ended> {
        let mut w = link.writer();
        let (n, empty_flight) = {
            let mut f = link.flight();
            let free = self.config.window.saturating_sub(f.inflight.len());
            let n = if free > 0 || f.full_at == Some(f.sent) {
                free.max(1)
            } else {
                f.full_at = Some(f.sent);
                0
            };
            (n, f.inflight.is_empty())
        };
        let mut got = 0;
        if self.stopping() {
            if empty_flight {
                Self::push_closed(link, &mut w);
            }
        } else if n > 0 {
            let filled = self
                .fill(worker, link, &mut w, n, None)
                .map_err(Ended::Queue)?;
            got = filled.count;
            if filled.closed {
                Self::push_closed(link, &mut w);
            }
        }
        encode_empty(&mut w.buf, kind::POLL_END);
        if got == 0 && n > 0 {
            link.flight().want = true;
            link.cond.notify_one();
        }
        // A failed write means the worker is gone or going; the read side
        // sees the end of the channel and decides what it was.
        Self::write_out(&mut w);
        Ok(())
    }
}

//! Relaying a worker's stdout and stderr to the observer, line by line,
//! within a budget.
//!
//! A worker may print freely, but not without bound: a program that is not
//! a worker (`yes`) or a worker stuck in a loop printing must not flood
//! jobmill's stderr, nor hold its memory. So:
//!
//! - a line longer than [`MAX_LINE`] is cut there, and the rest of it is
//!   dropped;
//! - each worker (both streams together) has a budget of
//!   [`Config::output_limit`](super::Config::output_limit) bytes per second,
//!   with bursts of as much; each line costs its length plus
//!   [`LINE_COST`] bytes (so that floods of tiny lines are bounded too).
//!   Lines over the budget are dropped, and the observer is told how many
//!   bytes were dropped with one [`WorkerEvent::OutputDropped`] when the
//!   worker's output ends, and while it goes on at most every
//!   [`NOTICE_EVERY`] (the first one that long after the first drop).
//!
//! The pipes are always read to their end, so a worker never blocks on a
//! full pipe because of the budget.

use std::io::Read;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::job::WorkerId;

use super::{Ctx, Stream, WorkerEvent};

/// The longest line relayed; the rest of a longer line is dropped.
pub(super) const MAX_LINE: usize = 64 << 10;

/// What each line costs in the budget on top of its bytes.
pub(super) const LINE_COST: u64 = 64;

/// How often a continuing flood is reported.
pub(super) const NOTICE_EVERY: Duration = Duration::from_secs(10);

/// One worker's output budget, shared by its two pipe threads.
pub(super) struct Gate {
    /// Bytes per second (and burst); 0: no limit.
    rate: u64,
    state: Mutex<GateState>,
}

struct GateState {
    tokens: u64,
    refilled: Instant,
    /// Bytes dropped since the last notice.
    dropped: u64,
    /// When the current episode of drops was last reported (or began).
    noticed: Instant,
    /// Pipes not yet read to their end.
    open: usize,
}

impl Gate {
    /// A budget of `rate` bytes per second for `pipes` pipes.
    pub(super) fn new(rate: usize, pipes: usize) -> Gate {
        let now = Instant::now();
        Gate {
            rate: rate as u64,
            state: Mutex::new(GateState {
                tokens: rate as u64,
                refilled: now,
                dropped: 0,
                noticed: now,
                open: pipes,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a line of `len` bytes may be relayed (spending its cost),
    /// and the bytes dropped to report now, if a report is due.
    fn admit(&self, len: usize) -> (bool, Option<u64>) {
        if self.rate == 0 {
            return (true, None);
        }
        let cost = len as u64 + LINE_COST;
        let mut s = self.state();
        let now = Instant::now();
        let elapsed = now.duration_since(s.refilled);
        let earned = (elapsed.as_nanos() * self.rate as u128 / 1_000_000_000) as u64;
        if earned > 0 {
            s.tokens = (s.tokens + earned).min(self.rate);
            s.refilled = now;
        }
        let admitted = s.tokens >= cost;
        if admitted {
            s.tokens -= cost;
        } else {
            if s.dropped == 0 {
                s.noticed = now;
            }
            s.dropped += len as u64 + 1;
        }
        let due = s.dropped > 0 && now.duration_since(s.noticed) >= NOTICE_EVERY;
        let report = due.then(|| {
            s.noticed = now;
            std::mem::take(&mut s.dropped)
        });
        (admitted, report)
    }

    /// Counts `n` bytes dropped outside the budget (the cut part of a long
    /// line, or a flood dropped in bulk).
    fn drop_bytes(&self, n: u64) {
        let mut s = self.state();
        if s.dropped == 0 {
            s.noticed = Instant::now();
        }
        s.dropped += n;
    }

    /// Whether the budget is spent: lines would be dropped now.
    fn spent(&self) -> bool {
        if self.rate == 0 {
            return false;
        }
        let s = self.state();
        let earned = (s.refilled.elapsed().as_nanos() * self.rate as u128 / 1_000_000_000) as u64;
        s.tokens + earned < LINE_COST
    }

    /// A pipe was read to its end: the bytes dropped and not yet reported
    /// if it was the last one.
    fn pipe_ended(&self) -> u64 {
        let mut s = self.state();
        s.open = s.open.saturating_sub(1);
        if s.open == 0 {
            std::mem::take(&mut s.dropped)
        } else {
            0
        }
    }
}

/// Where one pipe's lines go.
pub(super) struct Pipe<'g> {
    pub(super) slot: usize,
    pub(super) worker: WorkerId,
    pub(super) name: &'g str,
    pub(super) stream: Stream,
    pub(super) gate: &'g Gate,
}

impl Ctx<'_> {
    /// Reads one of a worker's output pipes to its end, relaying its lines
    /// within the worker's budget.
    pub(super) fn pipe_lines(&self, p: &Pipe<'_>, mut r: impl Read) {
        let mut buf = vec![0u8; 64 << 10];
        // The start of a line that continues in the next read.
        let mut line: Vec<u8> = Vec::new();
        // Inside a line cut at MAX_LINE: drop up to its newline.
        let mut cutting = false;
        loop {
            let n = match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            let mut chunk = &buf[..n];
            while let Some(i) = chunk.iter().position(|&b| b == b'\n') {
                let seg = &chunk[..i];
                chunk = &chunk[i + 1..];
                if cutting {
                    p.gate.drop_bytes(seg.len() as u64 + 1);
                    cutting = false;
                } else if line.is_empty() {
                    self.relay(p, seg);
                } else {
                    line.extend_from_slice(seg);
                    self.relay(p, &line);
                    line.clear();
                }
                if p.gate.spent() {
                    // A flood: drop the chunk's whole lines in one go.
                    if let Some(last) = chunk.iter().rposition(|&b| b == b'\n') {
                        p.gate.drop_bytes(last as u64 + 1);
                        chunk = &chunk[last + 1..];
                    }
                }
            }
            if cutting {
                p.gate.drop_bytes(chunk.len() as u64);
                continue;
            }
            line.extend_from_slice(chunk);
            if line.len() > MAX_LINE {
                p.gate.drop_bytes((line.len() - MAX_LINE) as u64);
                line.truncate(MAX_LINE);
                self.relay(p, &line);
                line.clear();
                cutting = true;
            }
        }
        if !line.is_empty() {
            self.relay(p, &line);
        }
        let dropped = p.gate.pipe_ended();
        if dropped > 0 {
            self.notice_dropped(p, dropped);
        }
    }

    fn relay(&self, p: &Pipe<'_>, line: &[u8]) {
        let (ok, report) = p.gate.admit(line.len());
        if let Some(dropped) = report {
            self.notice_dropped(p, dropped);
        }
        if ok {
            self.observer.output(p.slot, p.worker, p.stream, line);
        }
    }

    fn notice_dropped(&self, p: &Pipe<'_>, bytes: u64) {
        let detail = format!(
            "{}: {bytes} bytes of worker output dropped (over {} bytes/s, or lines over {} bytes)",
            p.name, self.config.output_limit, MAX_LINE
        );
        self.observer.worker(WorkerEvent::OutputDropped {
            slot: p.slot,
            worker: p.worker,
            bytes,
            detail,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_relays_a_burst_then_drops_and_reports_once() {
        let g = Gate::new(10_000, 1);
        let mut relayed = 0;
        let mut reports = Vec::new();
        for _ in 0..1000 {
            let (ok, report) = g.admit(100);
            relayed += ok as usize;
            reports.extend(report);
        }
        // 10,000 bytes of budget at 164 per line, plus what a slow test
        // machine earns meanwhile.
        assert!((60..200).contains(&relayed), "{relayed}");
        assert!(reports.is_empty(), "no report while the flood lasts");
        assert!(g.pipe_ended() > 0);
    }

    #[test]
    fn no_limit_relays_everything() {
        let g = Gate::new(0, 1);
        for _ in 0..10_000 {
            assert_eq!(g.admit(1 << 16), (true, None));
        }
        assert!(!g.spent());
    }
}

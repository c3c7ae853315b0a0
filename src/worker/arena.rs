//! The worker's share of the payload arena: the grant received in the
//! handshake, and the ring of regions its large results are written to.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::sys::shm::{Arena, SharedPage};

/// Alignment of results in the arena's result area.
const RESULT_ALIGN: u64 = 64;

/// The worker's result area: a ring of regions written in order and
/// consumed by the coordinator in the same order (it counts them on the
/// state page). Restarts at its beginning whenever it is empty, so a few
/// pages stay in use.
#[derive(Debug)]
pub(super) struct Ring {
    /// Offset of the area in the arena.
    pub(super) base: u64,
    pub(super) len: u64,
    /// Where the next region starts, relative to `base`.
    pub(super) head: u64,
    /// Regions written and not yet consumed, oldest first.
    pub(super) outstanding: VecDeque<(u64, u64)>,
    /// Regions known consumed.
    pub(super) seen: u64,
}

impl Ring {
    /// A region of `n` bytes (its offset in the arena), or `None` if there
    /// is no room until the coordinator has consumed more results.
    pub(super) fn alloc(&mut self, n: u64, consumed: u64) -> Option<u64> {
        while self.seen < consumed && self.outstanding.pop_front().is_some() {
            self.seen += 1;
        }
        let n = n.max(1).div_ceil(RESULT_ALIGN) * RESULT_ALIGN;
        if self.outstanding.is_empty() {
            self.head = 0;
        }
        // Regions never end exactly at the oldest one's start, so that a
        // full ring cannot look empty.
        let start = match self.outstanding.front() {
            None => (n <= self.len).then_some(0)?,
            Some(&(tail, _)) if self.head > tail => {
                if self.head + n <= self.len {
                    self.head
                } else if n < tail {
                    0
                } else {
                    return None;
                }
            }
            Some(&(tail, _)) => {
                if self.head + n < tail {
                    self.head
                } else {
                    return None;
                }
            }
        };
        self.outstanding.push_back((start, start + n));
        self.head = start + n;
        Some(self.base + start)
    }
}

/// The arena as granted by the coordinator.
#[derive(Debug)]
pub(super) struct ArenaGrant {
    pub(super) arena: Arc<Arena>,
    pub(super) page: Arc<SharedPage>,
    pub(super) threshold: usize,
    pub(super) jobs_len: u64,
    pub(super) results_len: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(len: u64) -> Ring {
        Ring {
            base: 1000,
            len,
            head: 0,
            outstanding: VecDeque::new(),
            seen: 0,
        }
    }

    #[test]
    fn the_result_ring_wraps_and_restarts_when_empty() {
        let mut r = ring(1024);
        assert_eq!(r.alloc(400, 0), Some(1000));
        assert_eq!(r.alloc(400, 0), Some(1000 + 448));
        assert_eq!(r.alloc(400, 0), None, "full");
        // The first is consumed: the next wraps to the start.
        assert_eq!(r.alloc(300, 1), Some(1000));
        // Ending exactly at the oldest region's start is refused.
        assert_eq!(r.alloc(128, 1), None);
        // Everything consumed: restart at the beginning.
        assert_eq!(r.alloc(1024, 3), Some(1000));
        assert_eq!(r.alloc(1025, 4), None, "larger than the area");
    }

    #[test]
    fn outstanding_result_regions_never_overlap() {
        let mut r = ring(10_000);
        let mut consumed = 0u64;
        let mut x = 12345u64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let n = x % 3000;
            if r.alloc(n, consumed).is_none() {
                // Nothing is ever too big for an empty ring.
                consumed = r.seen + r.outstanding.len() as u64;
                assert!(r.alloc(n, consumed).is_some());
            }
            if x % 3 == 0 {
                consumed = (consumed + 1).min(r.seen + r.outstanding.len() as u64);
            }
            let mut v: Vec<_> = r.outstanding.iter().copied().collect();
            v.sort();
            for w in v.windows(2) {
                assert!(w[0].1 <= w[1].0, "{:?} overlaps", w);
            }
            assert!(v.iter().all(|&(_, end)| end <= 10_000));
        }
    }
}

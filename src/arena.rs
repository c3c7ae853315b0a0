//! Regions of a shared-memory [`Arena`]: a first-fit allocator of extents,
//! and giving memory back after huge items.
//!
//! Two users share it: the long-lived-worker executor
//! ([`crate::persistent`]), which places job payloads in each worker's
//! arena, and the Python pool, which places the out-of-band buffers of its
//! tasks (numpy arrays) once in a pool-wide arena that every worker maps.

use crate::sys::shm::Arena;

/// How much of the start of each worker arena area stays in memory once
/// used: regions beyond it are given back to the system when they are
/// freed, so a worker that once handled a huge item does not keep its
/// memory.
pub const ARENA_KEEP: u64 = 256 << 20;

/// Alignment of job payloads in the arena (a page: numpy-friendly).
const ARENA_ALIGN: u64 = 4096;

/// First-fit allocator of the arena's job area: a sorted list of free
/// extents. It holds at most a window of allocations, so a linear scan is
/// cheap, and reusing the lowest addresses keeps the pages in use few and
/// warm.
#[derive(Debug)]
pub struct Extents {
    /// Free (offset, length) extents, sorted by offset, never adjacent.
    free: Vec<(u64, u64)>,
    /// Bytes allocated (rounded to the alignment) and not freed.
    in_use: u64,
    /// Allocations made and not freed.
    count: usize,
    /// Soft cap on `in_use` (for a worker's arena,
    /// [`crate::persistent::Config::arena_inflight`]).
    budget: u64,
}

impl Extents {
    /// An allocator of an area of `len` bytes, all free, whose allocations
    /// stay within `budget` bytes (though two are always allowed).
    pub fn new(len: u64, budget: u64) -> Extents {
        Extents {
            free: vec![(0, len)],
            in_use: 0,
            count: 0,
            budget,
        }
    }

    /// `n` rounded up to the alignment of allocations (at least one page).
    pub fn rounded(n: u64) -> u64 {
        n.max(1).div_ceil(ARENA_ALIGN) * ARENA_ALIGN
    }

    /// Whether `n` bytes could be allocated now, within the budget.
    pub fn fits(&self, n: u64) -> bool {
        let n = Self::rounded(n);
        let within = self.count < 2 || self.in_use + n <= self.budget;
        within && self.free.iter().any(|&(_, len)| len >= n)
    }

    /// Allocates `n` bytes: (offset, allocated length), if it
    /// [`fits`](Extents::fits).
    pub fn alloc(&mut self, n: u64) -> Option<(u64, u64)> {
        if !self.fits(n) {
            return None;
        }
        let n = Self::rounded(n);
        let i = self.free.iter().position(|&(_, len)| len >= n)?;
        let (off, len) = self.free[i];
        if len == n {
            self.free.remove(i);
        } else {
            self.free[i] = (off + n, len - n);
        }
        self.in_use += n;
        self.count += 1;
        Some((off, n))
    }

    /// Bytes allocated and not freed.
    pub fn in_use(&self) -> u64 {
        self.in_use
    }

    /// Gives back the allocation `off, n` (as [`alloc`](Extents::alloc)
    /// returned it).
    pub fn free(&mut self, off: u64, n: u64) {
        self.in_use -= n;
        self.count -= 1;
        let i = self.free.partition_point(|&(o, _)| o < off);
        let joins_prev = i > 0 && {
            let (po, pl) = self.free[i - 1];
            po + pl == off
        };
        let joins_next = i < self.free.len() && off + n == self.free[i].0;
        match (joins_prev, joins_next) {
            (true, true) => {
                let (_, nl) = self.free.remove(i);
                self.free[i - 1].1 += n + nl;
            }
            (true, false) => self.free[i - 1].1 += n,
            (false, true) => self.free[i] = (off, n + self.free[i].1),
            (false, false) => self.free.insert(i, (off, n)),
        }
    }
}

/// Gives back the memory of the part of a free region `offset, len` that
/// lies beyond `keep` bytes from its area's start `area_start` (for a
/// worker's arena, [`ARENA_KEEP`]).
/// Returns the bytes released.
pub fn release_beyond_keep(
    arena: &Arena,
    area_start: u64,
    keep: u64,
    offset: u64,
    len: u64,
) -> u64 {
    let keep_end = area_start + keep;
    let end = offset + len;
    if end <= keep_end {
        return 0;
    }
    let start = offset.max(keep_end);
    // Failing to punch a hole only costs memory.
    match arena.release(start as usize, (end - start) as usize) {
        Ok(()) => end - start,
        Err(_) => 0,
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freed_extents_coalesce_back_into_the_whole_area() {
        let mut a = Extents::new(1 << 20, u64::MAX);
        let x = a.alloc(5000).unwrap();
        let y = a.alloc(4096).unwrap();
        let z = a.alloc(1).unwrap();
        assert_eq!((x, y, z), ((0, 8192), (8192, 4096), (12288, 4096)));
        assert_eq!(a.in_use, 16384);
        a.free(y.0, y.1);
        // First fit reuses the lowest hole.
        assert_eq!(a.alloc(10).unwrap(), (8192, 4096));
        a.free(8192, 4096);
        a.free(x.0, x.1);
        a.free(z.0, z.1);
        assert_eq!(a.free, vec![(0, 1 << 20)]);
        assert_eq!((a.in_use, a.count), (0, 0));
        assert!(a.alloc((1 << 20) + 1).is_none());
        assert!(a.alloc(1 << 20).is_some());
    }

    #[test]
    fn the_in_flight_budget_always_allows_two_jobs() {
        let mut a = Extents::new(1 << 30, 1 << 20);
        assert!(a.alloc(64 << 20).is_some());
        assert!(a.alloc(64 << 20).is_some());
        assert!(!a.fits(4096), "over budget with two in flight");
        let mut b = Extents::new(1 << 30, 1 << 20);
        for _ in 0..4 {
            assert!(b.alloc(256 << 10).is_some());
        }
        assert!(b.alloc(1).is_none(), "the budget is full");
    }
}

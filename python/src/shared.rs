//! The pool's shared arena: out-of-band buffers placed once, read in place.
//!
//! A task whose pickle (protocol 5) has large out-of-band buffers (numpy
//! arrays, bytes, memoryviews; see `jobmill/_wire.py`) is laid out once, by
//! one copy from the caller's buffers (a memoryview assignment in the
//! caller, at memory speed), in a region of this arena: a sparse memory
//! file that the caller maps read-write and every worker of the pool
//! inherits and maps read-only (`$JOBMILL_PY_ARENA_FD`). The job itself then carries only the region's
//! place, so the payload is not copied again on its way (not into a Python
//! `bytes`, not into the engine's job, not into the worker's own arena),
//! and the worker unpickles arrays as read-only views of the region.
//!
//! A region belongs to its task until the caller has the task's final
//! outcome (a lost worker's task runs again from the same region); the
//! caller then gives it back with [`SharedArena::release`]. The regions
//! are allocated first fit ([`jobmill::arena::Extents`]), so the lowest
//! addresses, warm in memory, are reused; memory past the first
//! [`KEEP`] bytes is given back to the system when its region is released.
//!
//! How the caller copies depends on whether the region is *warm*: present
//! in the caller's own mapping. Into warm pages it copies through that
//! mapping, at memory speed (11 GB/s measured here for 64 MiB); into cold
//! ones with `pwrite(2)`, which fills new pages without first zeroing them
//! and without a page fault on each (2.6 GB/s, against 1.0 through the
//! mapping, and 2.4 for pages that exist but are not mapped yet). A
//! thread of the arena's own makes the caller's mapping present ahead of
//! the regions handed out (`MADV_POPULATE_WRITE`, [`prefault`]), without
//! the GIL, so that regions are warm by the time they are used again.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use jobmill::arena::{release_beyond_keep, Extents};
use jobmill::sys::shm::{prefault, Arena};

/// The environment variable naming the arena's descriptor in a worker.
pub const ARENA_FD_ENV: &str = "JOBMILL_PY_ARENA_FD";

/// How much of the start of the arena stays in memory once used: enough
/// for two 64 MiB items per worker of a two-worker pool with room to spare.
/// The rest is given back when its regions are released.
pub const KEEP: u64 = 512 << 20;

/// How far past the end of the latest region the caller's mapping is made
/// present, at least (and at least twice that region's length).
const AHEAD: u64 = 16 << 20;

/// What the prefault thread makes present per call.
const PREFAULT_STEP: u64 = 4 << 20;

/// A pool's shared arena and the allocator of its regions.
pub struct SharedArena {
    /// The memory file, mapped read-write here.
    arena: Arc<Arena>,
    /// Its regions in use.
    regions: Mutex<Regions>,
    /// The caller's mapping, made present ahead of use.
    ready: Arc<Ready>,
    /// The thread that does it, once the caller's mapping is known.
    prefaulter: Mutex<Option<JoinHandle<()>>>,
}

/// The state of the caller's mapping, shared with the prefault thread.
struct Ready {
    /// The end of the part of the caller's mapping made present (from its
    /// start; at most [`KEEP`]).
    present: AtomicU64,
    wanted: Mutex<Wanted>,
    cond: Condvar,
}

/// What the prefault thread is asked to do.
struct Wanted {
    /// Make the caller's mapping present up to here.
    upto: u64,
    /// The arena is going away.
    stop: bool,
}

impl Ready {
    fn lock(&self) -> std::sync::MutexGuard<'_, Wanted> {
        self.wanted.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The prefault thread: makes `addr..` present up to what is wanted,
    /// a step at a time. A failure (a kernel without the advice, a mapping
    /// gone) ends it: regions then stay cold, which costs speed only.
    fn run(&self, addr: usize) {
        loop {
            let (from, to) = {
                let mut w = self.lock();
                loop {
                    let from = self.present.load(Ordering::Acquire);
                    if w.stop {
                        return;
                    }
                    if from < w.upto {
                        break (from, w.upto.min(from + PREFAULT_STEP));
                    }
                    w = self.cond.wait(w).unwrap_or_else(|e| e.into_inner());
                }
            };
            if prefault(addr + from as usize, (to - from) as usize).is_err() {
                return;
            }
            self.present.store(to, Ordering::Release);
        }
    }
}
/// The allocator, and the regions it gave out by offset (so that a
/// region is given back once, and only one that was given out).
struct Regions {
    extents: Extents,
    given: HashMap<u64, u64>,
}

impl SharedArena {
    /// An arena of `len` bytes (sparse: only the pages used take memory).
    ///
    /// # Errors
    ///
    /// The operating system's error if the memory file cannot be created
    /// or mapped.
    pub fn create(len: usize) -> io::Result<SharedArena> {
        let arena = Arena::create("jobmill-pool-arena", len)?;
        let regions = Mutex::new(Regions {
            extents: Extents::new(len as u64, u64::MAX),
            given: HashMap::new(),
        });
        Ok(SharedArena {
            arena: Arc::new(arena),
            regions,
            ready: Arc::new(Ready {
                present: AtomicU64::new(0),
                wanted: Mutex::new(Wanted {
                    upto: 0,
                    stop: false,
                }),
                cond: Condvar::new(),
            }),
            prefaulter: Mutex::new(None),
        })
    }

    /// The caller has mapped the arena (read-write, whole) at `addr`: a
    /// thread starts making that mapping present ahead of the regions
    /// handed out. Once only; later calls are ignored.
    ///
    /// # Errors
    ///
    /// The operating system's error if the thread cannot be started.
    pub fn caller_mapped_at(&self, addr: usize) -> io::Result<()> {
        let mut slot = self.prefaulter.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            let ready = Arc::clone(&self.ready);
            *slot = Some(
                std::thread::Builder::new()
                    .name("jobmill-prefault".into())
                    .spawn(move || ready.run(addr))?,
            );
        }
        Ok(())
    }

    /// The memory file's descriptor (close-on-exec; the workers inherit it
    /// through [`jobmill::persistent::Config::inherit_fds`]).
    pub fn fd(&self) -> std::os::fd::RawFd {
        self.arena.fd()
    }

    /// The arena's length in bytes.
    pub fn size(&self) -> usize {
        self.arena.len()
    }

    /// A new region of `len` bytes for one task's payload: its offset and
    /// whether it is warm (see the module docs), or `None` if the arena has
    /// no room for it now. The caller fills it (through its own mapping of
    /// [`fd`](SharedArena::fd), or `pwrite(2)` when cold) before the task
    /// is submitted.
    pub fn alloc(&self, len: u64) -> Option<(u64, bool)> {
        let mut r = self.lock();
        let (off, alloc) = r.extents.alloc(len)?;
        r.given.insert(off, alloc);
        let end = off + alloc;
        let warm = end <= self.ready.present.load(Ordering::Acquire);
        let upto = KEEP.min(end + AHEAD.max(2 * alloc));
        let mut w = self.ready.lock();
        if upto > w.upto {
            w.upto = upto;
            self.ready.cond.notify_one();
        }
        Some((off, warm))
    }

    /// Gives back the region at `offset` that [`place`](SharedArena::place)
    /// returned, once its task has its final outcome. An offset not given
    /// out (or given back already) is ignored.
    pub fn release(&self, offset: u64) {
        let mut r = self.lock();
        if let Some(len) = r.given.remove(&offset) {
            release_beyond_keep(&self.arena, 0, KEEP, offset, len);
            r.extents.free(offset, len);
        }
    }

    /// Bytes in regions not given back.
    pub fn in_use(&self) -> u64 {
        self.lock().extents.in_use()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Regions> {
        self.regions.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for SharedArena {
    fn drop(&mut self) {
        self.ready.lock().stop = true;
        self.ready.cond.notify_one();
        let thread = self
            .prefaulter
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

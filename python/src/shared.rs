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
//! thread of the arena's own then makes the regions written with
//! `pwrite(2)` present in the caller's mapping (`MADV_POPULATE_WRITE`,
//! [`prefault`]), without the GIL, so that those are warm by the time they
//! are used again.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// The unit in which the caller's mapping is made present: one
/// `MADV_POPULATE_WRITE` call.
const CHUNK: u64 = 2 << 20;

/// A pool's shared arena and the allocator of its regions.
pub struct SharedArena {
    /// The memory file, mapped read-write here.
    arena: Arc<Arena>,
    /// Its regions in use.
    regions: Mutex<Regions>,
    /// The caller's mapping, made present for regions written with
    /// `pwrite(2)`.
    ready: Arc<Ready>,
    /// The thread that does it, once the caller's mapping is known.
    prefaulter: Mutex<Option<JoinHandle<()>>>,
}

/// The state of the caller's mapping, shared with the prefault thread, in
/// chunks of [`CHUNK`] bytes (the first [`KEEP`] bytes of the arena only:
/// past them, released regions are given back to the system).
struct Ready {
    /// Whether each chunk of the caller's mapping is present.
    present: Vec<AtomicBool>,
    wanted: Mutex<Wanted>,
    cond: Condvar,
}

/// What the prefault thread is asked to do.
struct Wanted {
    /// Chunks to make present, first first.
    todo: VecDeque<usize>,
    /// Whether each chunk is in `todo` (or being made present).
    queued: Vec<bool>,
    /// The arena is going away.
    stop: bool,
}

impl Ready {
    fn new() -> Ready {
        let chunks = (KEEP / CHUNK) as usize;
        Ready {
            present: (0..chunks).map(|_| AtomicBool::new(false)).collect(),
            wanted: Mutex::new(Wanted {
                todo: VecDeque::new(),
                queued: vec![false; chunks],
                stop: false,
            }),
            cond: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Wanted> {
        self.wanted.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many bytes from `off` on (at most `len`) are present.
    fn warm(&self, off: u64, len: u64) -> u64 {
        let mut chunk = off / CHUNK;
        while (chunk as usize) < self.present.len()
            && self.present[chunk as usize].load(Ordering::Acquire)
            && chunk * CHUNK < off + len
        {
            chunk += 1;
        }
        (chunk * CHUNK).saturating_sub(off).min(len)
    }

    /// Asks for the chunks of `from..to` (clamped to [`KEEP`]) that are
    /// neither present nor asked for.
    fn want(&self, w: &mut Wanted, from: u64, to: u64) {
        let to = to.min(KEEP);
        let mut chunk = from / CHUNK;
        while chunk * CHUNK < to {
            let c = chunk as usize;
            if !w.queued[c] && !self.present[c].load(Ordering::Acquire) {
                w.queued[c] = true;
                w.todo.push_back(c);
            }
            chunk += 1;
        }
    }

    /// The prefault thread: makes the chunks asked for present, in order.
    /// A failure (a kernel without the advice, a mapping gone) ends it:
    /// regions then stay cold, which costs speed only.
    fn run(&self, addr: usize) {
        loop {
            let chunk = {
                let mut w = self.lock();
                loop {
                    if w.stop {
                        return;
                    }
                    if let Some(c) = w.todo.pop_front() {
                        break c;
                    }
                    w = self.cond.wait(w).unwrap_or_else(|e| e.into_inner());
                }
            };
            let at = chunk * CHUNK as usize;
            if prefault(addr + at, CHUNK as usize).is_err() {
                return;
            }
            self.present[chunk].store(true, Ordering::Release);
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
            ready: Arc::new(Ready::new()),
            prefaulter: Mutex::new(None),
        })
    }

    /// The caller has mapped the arena (read-write, whole) at `addr`: a
    /// thread starts making that mapping present for the regions
    /// written with `pwrite(2)`. Once only; later calls are ignored.
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
    /// how many of its bytes, from its start, are warm (see the module
    /// docs), or `None` if the arena has no room for it now. The caller
    /// fills it (through its own mapping of [`fd`](SharedArena::fd) where
    /// warm, with `pwrite(2)` past that), then calls
    /// [`filled`](SharedArena::filled) if any of it was cold, before the
    /// task is submitted.
    pub fn alloc(&self, len: u64) -> Option<(u64, u64)> {
        let mut r = self.lock();
        let (off, alloc) = r.extents.alloc(len)?;
        r.given.insert(off, alloc);
        drop(r);
        Some((off, self.ready.warm(off, len)))
    }

    /// The caller has written the region at `offset`, partly with
    /// `pwrite(2)`: the prefault thread makes its pages present in the
    /// caller's mapping (they exist now, so only the mapping is filled in),
    /// for the region's next use. Not before: making present a page not
    /// written yet would zero it first, work that `pwrite(2)` spares.
    pub fn filled(&self, offset: u64) {
        let len = match self.lock().given.get(&offset) {
            Some(&len) => len,
            None => return,
        };
        let mut w = self.ready.lock();
        let before = w.todo.len();
        self.ready.want(&mut w, offset, offset + len);
        if w.todo.len() > before {
            self.ready.cond.notify_one();
        }
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

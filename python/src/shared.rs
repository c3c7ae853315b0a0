//! The pool's shared arena: out-of-band buffers placed once, read in place.
//!
//! A task whose pickle (protocol 5) has large out-of-band buffers (numpy
//! arrays, bytes, memoryviews; see `jobmill/_wire.py`) is laid out once, by
//! one copy from the caller's buffers, in a region of this arena: a sparse
//! memory file that every worker of the pool inherits and maps read-only
//! (`$JOBMILL_PY_ARENA_FD`). The job itself then carries only the region's
//! place, so the payload is not copied again on its way (not into a Python
//! `bytes`, not into the engine's job, not into the worker's own arena),
//! and the worker unpickles arrays as read-only views of the region.
//!
//! A region belongs to its task until the caller has the task's final
//! outcome (a lost worker's task runs again from the same region); the
//! caller then gives it back with [`SharedArena::release`]. The regions
//! are allocated first fit ([`jobmill::arena::Extents`]), so the lowest
//! addresses, warm in memory, are reused; memory past the first [`KEEP`]
//! bytes is given back to the system when its region is released.
//!
//! How a payload is copied in depends on whether its pages are *warm*
//! (present in this process's mapping of the arena):
//! - into warm pages, through the mapping with streaming (non-temporal)
//!   stores ([`Arena::write_streaming`]): a worker on the other CPU has
//!   just read those pages for an earlier task, and an ordinary copy would
//!   win every cache line back from it first (1 MiB took 400 µs that way
//!   here, 40 µs streamed);
//! - into cold ones with `pwrite(2)` ([`Arena::pwrite`]), which fills new
//!   pages without first zeroing them and without a page fault on each
//!   (2.6 GB/s here, against 1.0 through the mapping). A thread of the
//!   arena's own then makes those pages present in the mapping
//!   (`MADV_POPULATE_READ`, [`Arena::populate`]), so that they are warm by
//!   the time the region is used again.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use jobmill::arena::{release_beyond_keep, Extents};
use jobmill::sys::shm::Arena;

/// The environment variable naming the arena's descriptor in a worker.
pub const ARENA_FD_ENV: &str = "JOBMILL_PY_ARENA_FD";

/// How much of the start of the arena stays in memory once used: enough
/// for two 64 MiB items per worker of a two-worker pool with room to spare.
/// The rest is given back when its regions are released.
pub const KEEP: u64 = 512 << 20;

/// From this size on, a piece is copied by two threads.
const PARALLEL_COPY: usize = 4 << 20;

/// The unit in which the mapping is made present: one
/// `MADV_POPULATE_READ` call.
const CHUNK: u64 = 2 << 20;

/// A pool's shared arena and the allocator of its regions.
pub struct SharedArena {
    /// The memory file, mapped read-write here.
    arena: Arc<Arena>,
    /// Its regions in use.
    regions: Mutex<Regions>,
    /// Which pages of the mapping are present.
    ready: Arc<Ready>,
    /// The thread that makes pages present.
    populator: Option<JoinHandle<()>>,
}

/// The allocator, and the regions it gave out by offset (so that a
/// region is given back once, and only one that was given out).
struct Regions {
    extents: Extents,
    given: HashMap<u64, u64>,
}

/// The state of the mapping, shared with the populating thread, in chunks
/// of [`CHUNK`] bytes (the first [`KEEP`] bytes of the arena only: past
/// them, released regions are given back to the system).
struct Ready {
    /// Whether each chunk is present.
    present: Vec<AtomicBool>,
    wanted: Mutex<Wanted>,
    cond: Condvar,
}

/// What the populating thread is asked to do.
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
    fn want(&self, from: u64, to: u64) {
        let to = to.min(KEEP);
        let mut w = self.lock();
        let before = w.todo.len();
        let mut chunk = from / CHUNK;
        while chunk * CHUNK < to {
            let c = chunk as usize;
            if !w.queued[c] && !self.present[c].load(Ordering::Acquire) {
                w.queued[c] = true;
                w.todo.push_back(c);
            }
            chunk += 1;
        }
        if w.todo.len() > before {
            self.cond.notify_one();
        }
    }

    /// The populating thread: makes the chunks asked for present, in order.
    /// A failure (a kernel without the advice) ends it: regions then stay
    /// cold, which costs speed only.
    fn run(&self, arena: &Arena) {
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
            let len = (CHUNK as usize).min(arena.len().saturating_sub(at));
            if arena.populate(at, len).is_err() {
                return;
            }
            self.present[chunk].store(true, Ordering::Release);
        }
    }
}

impl SharedArena {
    /// An arena of `len` bytes (sparse: only the pages used take memory).
    ///
    /// # Errors
    ///
    /// The operating system's error if the memory file cannot be created
    /// or mapped, or the populating thread cannot be started.
    pub fn create(len: usize) -> io::Result<SharedArena> {
        let arena = Arc::new(Arena::create("jobmill-pool-arena", len)?);
        let ready = Arc::new(Ready::new());
        let populator = {
            let (arena, ready) = (Arc::clone(&arena), Arc::clone(&ready));
            std::thread::Builder::new()
                .name("jobmill-populate".into())
                .spawn(move || ready.run(&arena))?
        };
        Ok(SharedArena {
            arena,
            regions: Mutex::new(Regions {
                extents: Extents::new(len as u64, u64::MAX),
                given: HashMap::new(),
            }),
            ready,
            populator: Some(populator),
        })
    }

    /// The memory file's descriptor (close-on-exec; the workers inherit it
    /// through [`jobmill::persistent::Config::inherit_fds`]).
    pub fn fd(&self) -> std::os::fd::RawFd {
        self.arena.fd()
    }

    /// Lays out a payload of `total` bytes in a new region: `prefix` at its
    /// start and each `(offset, bytes)` of `parts` at that offset (bytes in
    /// between are left as they are: padding). Returns the region's
    /// offset, or `None` if the arena has no room for it now.
    ///
    /// # Errors
    ///
    /// `InvalidInput` if a part overlaps another or lies outside `total`;
    /// the operating system's error if a write fails. The region is given
    /// back on an error.
    pub fn place(
        &self,
        prefix: &[u8],
        parts: &[(u64, &[u8])],
        total: u64,
    ) -> io::Result<Option<u64>> {
        let mut end = prefix.len() as u64;
        for (at, bytes) in parts {
            let len = bytes.len() as u64;
            if *at < end || at.checked_add(len).is_none_or(|e| e > total) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "an out-of-band buffer of {len} bytes at {at} overlaps another \
                         or lies outside the payload of {total} bytes"
                    ),
                ));
            }
            end = at + len;
        }
        let (off, alloc) = {
            let mut r = self.lock();
            let Some((off, alloc)) = r.extents.alloc(total) else {
                return Ok(None);
            };
            r.given.insert(off, alloc);
            (off, alloc)
        };
        let warm = self.ready.warm(off, total);
        let pieces = std::iter::once((0, prefix)).chain(parts.iter().copied());
        let written = pieces.into_iter().try_for_each(|(at, bytes)| {
            let split = (warm.saturating_sub(at) as usize).min(bytes.len());
            let at = (off + at) as usize;
            self.stream(at, &bytes[..split])?;
            self.arena.pwrite(at + split, &bytes[split..])
        });
        if let Err(e) = written {
            self.release(off);
            return Err(io::Error::new(
                e.kind(),
                format!("cannot fill the shared region {off}+{alloc}: {e}"),
            ));
        }
        if warm < total {
            // Its cold pages exist now: make them present for next time.
            self.ready.want(off, off + alloc);
        }
        Ok(Some(off))
    }

    /// Streams `bytes` into warm pages at `at`: a large piece in two
    /// halves, one on a second thread, for the caller is what limits a map
    /// of large arrays (one core copies about 13 GB/s here).
    fn stream(&self, at: usize, bytes: &[u8]) -> io::Result<()> {
        if bytes.len() < PARALLEL_COPY {
            return self.arena.write_streaming(at, bytes);
        }
        let half = bytes.len() / 2 / 4096 * 4096;
        let (first, second) = bytes.split_at(half);
        std::thread::scope(|scope| {
            let other = scope.spawn(|| self.arena.write_streaming(at + half, second));
            let mine = self.arena.write_streaming(at, first);
            let other = other
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the copying thread panicked")));
            mine.and(other)
        })
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
        if let Some(thread) = self.populator.take() {
            let _ = thread.join();
        }
    }
}

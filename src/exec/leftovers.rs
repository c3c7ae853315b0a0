//! Watching finished attempts whose output pipes are still held, off the
//! slot threads.
//!
//! When a job's main process has exited and its group has had SIGKILL, a
//! pipe that is not at end of file is held by some other process: a group
//! member still dying, another slot's child between its spawn and its
//! `exec` (it holds a copy of every descriptor for that long), or a process
//! that left the group (`setsid`) — only the last is a leftover. Waiting on
//! the slot thread to tell them apart would cost wall time on a loaded
//! machine (the other slot's child may wait for a CPU), so the attempt
//! hands its pipes to one thread per supervisor and returns at once. That
//! thread gives each pipe up to [`SETTLE`] to reach its end of file (what
//! arrives meanwhile is discarded), and sweeps the attempt's marks if one
//! is still held then.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::event::{eventfd, poll, EventfdFlags, PollFd, PollFlags, Timespec};
use rustix::io::Errno;

/// How long a held pipe of a finished attempt is given to reach its end of
/// file before the attempt's marks are swept.
pub(crate) const SETTLE: Duration = Duration::from_millis(20);

/// The attempt sweep: kills the processes carrying `token` and `id`.
pub(crate) fn sweep_attempt(token_entry: &str, id: u64) {
    let id = format!("{}={id}", super::supervisor::ID_VAR);
    super::sweep::kill_marked(&[token_entry.as_bytes(), id.as_bytes()]);
}

/// One finished attempt whose pipes are still open.
struct Held {
    id: u64,
    pipes: Vec<OwnedFd>,
    until: Instant,
}

struct Shared {
    /// `JOBMILL_GUARD=<token>`.
    token_entry: String,
    queue: Mutex<Vec<Held>>,
    /// Wakes the thread: something queued, or shutting down.
    wake: OwnedFd,
    shutdown: AtomicBool,
    sweeps: AtomicU64,
}

/// The checker thread and its queue.
pub(crate) struct Leftovers {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Leftovers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leftovers").finish_non_exhaustive()
    }
}

impl Leftovers {
    /// Starts the checker for the processes marked `token_entry`
    /// (`JOBMILL_GUARD=<token>`).
    pub(crate) fn start(token_entry: String) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            token_entry,
            queue: Mutex::new(Vec::new()),
            wake: eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?,
            shutdown: AtomicBool::new(false),
            sweeps: AtomicU64::new(0),
        });
        let run = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("jobmill-leftovers".to_owned())
            .spawn(move || run.run())?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// Hands over the still-open pipes of finished attempt `id`.
    pub(crate) fn check(&self, id: u64, pipes: Vec<OwnedFd>) {
        let until = Instant::now() + SETTLE;
        self.shared
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Held { id, pipes, until });
        let _ = rustix::io::write(&self.shared.wake, &1u64.to_ne_bytes());
    }

    /// Sweeps attempt `id` now, on this thread (a stopped attempt).
    pub(crate) fn sweep_now(&self, id: u64) {
        self.shared.sweeps.fetch_add(1, Ordering::Relaxed);
        sweep_attempt(&self.shared.token_entry, id);
    }

    /// How many attempt sweeps ran.
    pub(crate) fn sweeps(&self) -> u64 {
        self.shared.sweeps.load(Ordering::Relaxed)
    }
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        let _ = rustix::io::write(&self.shared.wake, &1u64.to_ne_bytes());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Shared {
    fn run(&self) {
        let mut held: Vec<Held> = Vec::new();
        let mut scratch = [0u8; 4096];
        loop {
            held.append(&mut self.queue.lock().unwrap_or_else(PoisonError::into_inner));
            if self.shutdown.load(Ordering::Acquire) {
                // The supervisor's last sweep (for the token) follows.
                return;
            }
            let now = Instant::now();
            let mut i = 0;
            while i < held.len() {
                let h = &mut held[i];
                h.pipes.retain(|p| !at_eof(p, &mut scratch));
                if h.pipes.is_empty() {
                    held.swap_remove(i);
                } else if now >= h.until {
                    self.sweeps.fetch_add(1, Ordering::Relaxed);
                    sweep_attempt(&self.token_entry, h.id);
                    held.swap_remove(i);
                } else {
                    i += 1;
                }
            }
            let wait = held
                .iter()
                .map(|h| h.until.saturating_duration_since(now))
                .min()
                .and_then(|w| Timespec::try_from(w).ok());
            let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(1 + held.len() * 2);
            fds.push(PollFd::new(&self.wake, PollFlags::IN));
            for h in &held {
                fds.extend(h.pipes.iter().map(|p| PollFd::new(p, PollFlags::IN)));
            }
            match poll(&mut fds, wait.as_ref()) {
                Ok(_) | Err(Errno::INTR) => {}
                Err(_) => std::thread::sleep(SETTLE),
            }
            if !fds[0].revents().is_empty() {
                let mut counter = [0u8; 8];
                let _ = rustix::io::read(&self.wake, &mut counter);
            }
        }
    }
}

/// Whether `pipe` is at end of file (or broken); reads and discards what
/// is in it.
fn at_eof(pipe: &OwnedFd, scratch: &mut [u8]) -> bool {
    let mut fds = [PollFd::new(pipe, PollFlags::IN)];
    match poll(&mut fds, Some(&Timespec::default())) {
        Ok(0) => return false,
        Ok(_) => {}
        Err(_) => return true,
    }
    match rustix::io::read(pipe, &mut *scratch) {
        Ok(0) => true,
        Ok(_) => false,
        Err(Errno::INTR | Errno::AGAIN) => false,
        Err(_) => true,
    }
}

//! The one stop model of every front end: running → draining → killing.
//!
//! | event | level | cause recorded |
//! |---|---|---|
//! | first SIGINT, SIGHUP | draining: no new job starts; running ones finish | the signal (exit 130) |
//! | second SIGINT, SIGTERM | killing: TERM to every running job, KILL after the grace | the signal (exit 130) |
//! | `--halt soon` / `--halt now` | draining / killing | halt |
//! | stdout's reader went away | killing | output closed (exit 141) |
//! | an error (input, journal, backend, output) | draining | error (exit 255) |
//! | the queue's producer disappeared (`worker`) | draining | producer lost (exit 3) |
//! | a library front end's [`StopHandle`]: `drain()` / `kill()` | draining / killing | requested (exit 130) |
//!
//! The level only ever rises, and the first cause is kept: a run stopped by a
//! signal is recorded as interrupted and exits 130 even when every job still
//! running finishes during the drain. [`Control`] is the state; the signal
//! thread ([`SignalThread`]) is the only place signals are handled, and a
//! [`StopHandle`] (given in [`Options::stop`](super::Options::stop)) the only
//! way a library front end (`jobmill::Pool`, the Python bindings' pool) stops
//! a run from outside: one thread of the run waits on it.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;

use crate::events::StopCause;

/// How far a run has been asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Starting jobs as usual.
    Running = 0,
    /// Starting no new jobs; running ones finish.
    Draining = 1,
    /// Stopping the running jobs too.
    Killing = 2,
}

/// Shared stop state of a run.
#[derive(Debug, Default)]
pub struct Control {
    level: AtomicU8,
    cause: Mutex<StopCause>,
}

impl Control {
    /// The current level.
    pub fn level(&self) -> Level {
        level_of(self.level.load(Ordering::SeqCst))
    }

    /// Whether new jobs may start.
    pub fn may_start(&self) -> bool {
        self.level() == Level::Running
    }

    /// Raises the level to `to` for `cause` (kept only if it is the first
    /// cause). Returns true if this call raised the level.
    pub fn raise(&self, to: Level, cause: StopCause) -> bool {
        {
            let mut c = self.cause.lock().unwrap_or_else(|e| e.into_inner());
            if *c == StopCause::None {
                *c = cause;
            }
        }
        self.level.fetch_max(to as u8, Ordering::SeqCst) < to as u8
    }

    /// The first cause of a stop, or [`StopCause::None`].
    pub fn cause(&self) -> StopCause {
        *self.cause.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A stop asked from outside a run, by the library front end that started
/// it (see [`Options::stop`](super::Options::stop)): clone it, give one
/// clone to the run, keep the other. [`StopHandle::drain`] and
/// [`StopHandle::kill`] raise the run's level with the cause
/// [`StopCause::Requested`]; one thread of the run sleeps on the handle
/// until it is asked (no polling). A stop asked before the run starts
/// applies as soon as it does. Asking only ever raises the level.
#[derive(Debug, Clone, Default)]
pub struct StopHandle {
    shared: Arc<HandleShared>,
}

#[derive(Debug, Default)]
struct HandleShared {
    /// The level asked for, as a [`Level`]'s number (0: none).
    asked: Mutex<u8>,
    cond: Condvar,
}

impl StopHandle {
    /// A handle with nothing asked.
    pub fn new() -> StopHandle {
        StopHandle::default()
    }

    /// Start no new job; running ones finish (the level draining).
    pub fn drain(&self) {
        self.ask(Level::Draining);
    }

    /// Stop the running jobs too (the level killing): TERM, then KILL after
    /// the grace; long-lived workers are killed.
    pub fn kill(&self) {
        self.ask(Level::Killing);
    }

    /// The level asked for so far.
    pub fn asked(&self) -> Level {
        level_of(*self.lock())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, u8> {
        self.shared.asked.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn ask(&self, level: Level) {
        let mut a = self.lock();
        if (level as u8) > *a {
            *a = level as u8;
            drop(a);
            self.shared.cond.notify_all();
        }
    }

    /// Calls `stop` with each level asked for, as it is asked, until
    /// `done` is set (by [`StopHandle::wake`], which the run calls when it
    /// ends). Runs on a thread of the run.
    pub(super) fn watch(&self, done: &std::sync::atomic::AtomicBool, stop: impl Fn(Level)) {
        let mut seen = 0u8;
        let mut a = self.lock();
        loop {
            if done.load(Ordering::SeqCst) {
                return;
            }
            if *a > seen {
                seen = *a;
                drop(a);
                stop(level_of(seen));
                a = self.lock();
                continue;
            }
            a = self.shared.cond.wait(a).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Sets `done` and wakes the watcher of [`StopHandle::watch`] (under
    /// the lock, so the wake-up cannot be missed).
    pub(super) fn wake(&self, done: &std::sync::atomic::AtomicBool) {
        let a = self.lock();
        done.store(true, Ordering::SeqCst);
        drop(a);
        self.shared.cond.notify_all();
    }
}

fn level_of(n: u8) -> Level {
    match n {
        0 => Level::Running,
        1 => Level::Draining,
        _ => Level::Killing,
    }
}

/// What a signal asks for, given the current level: the first SIGINT and
/// every SIGHUP drain; a SIGINT while already stopping, and SIGTERM, kill.
pub fn level_for_signal(signal: i32, current: Level) -> Level {
    use signal_hook::consts::{SIGHUP, SIGINT};
    match signal {
        SIGINT if current == Level::Running => Level::Draining,
        SIGHUP => Level::Draining,
        _ => Level::Killing,
    }
}

/// The signal thread: SIGINT, SIGTERM and SIGHUP become stop requests.
pub struct SignalThread {
    handle: signal_hook::iterator::Handle,
    thread: Option<thread::JoinHandle<()>>,
}

impl SignalThread {
    /// Installs the handlers and starts the thread; `on_signal` is called
    /// for each signal received, on that thread.
    ///
    /// # Errors
    ///
    /// When the handlers cannot be installed or the thread not started.
    pub fn start(on_signal: impl Fn(i32) + Send + 'static) -> std::io::Result<SignalThread> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
        let handle = signals.handle();
        let thread = thread::Builder::new()
            .name("jobmill-signals".into())
            .spawn(move || {
                for sig in signals.forever() {
                    on_signal(sig);
                }
            })?;
        Ok(SignalThread {
            handle,
            thread: Some(thread),
        })
    }
}

impl Drop for SignalThread {
    fn drop(&mut self) {
        self.handle.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

    #[test]
    fn level_only_rises_and_reports_each_rise_once() {
        let c = Control::default();
        assert!(c.may_start());
        assert!(c.raise(Level::Draining, StopCause::Signal(SIGINT)));
        assert!(!c.raise(Level::Draining, StopCause::Halt));
        assert!(!c.may_start());
        assert!(c.raise(Level::Killing, StopCause::Signal(SIGTERM)));
        assert!(!c.raise(Level::Draining, StopCause::Error));
        assert_eq!(c.level(), Level::Killing);
    }

    #[test]
    fn the_first_cause_is_kept() {
        let c = Control::default();
        c.raise(Level::Draining, StopCause::Signal(SIGHUP));
        c.raise(Level::Killing, StopCause::OutputClosed);
        assert_eq!(c.cause(), StopCause::Signal(SIGHUP));
    }

    #[test]
    fn a_stop_handle_only_raises_its_level() {
        let h = StopHandle::new();
        assert_eq!(h.asked(), Level::Running);
        h.kill();
        h.drain();
        assert_eq!(h.clone().asked(), Level::Killing);
    }

    #[test]
    fn the_watcher_sees_each_rise_once_and_a_stop_asked_before_it_started() {
        use std::sync::atomic::AtomicBool;
        let h = StopHandle::new();
        h.drain();
        let done = AtomicBool::new(false);
        let seen = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            s.spawn(|| h.watch(&done, |l| seen.lock().unwrap().push(l)));
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while seen.lock().unwrap().is_empty() {
                assert!(std::time::Instant::now() < deadline, "no drain seen");
                std::thread::yield_now();
            }
            h.kill();
            h.kill();
            while seen.lock().unwrap().len() < 2 {
                assert!(std::time::Instant::now() < deadline, "no kill seen");
                std::thread::yield_now();
            }
            // Ends the watcher (the scope joins it).
            h.wake(&done);
        });
        assert_eq!(*seen.lock().unwrap(), vec![Level::Draining, Level::Killing]);
    }

    #[test]
    fn a_watcher_woken_with_nothing_asked_returns() {
        use std::sync::atomic::AtomicBool;
        let h = StopHandle::new();
        let done = AtomicBool::new(false);
        std::thread::scope(|s| {
            let w = s.spawn(|| h.watch(&done, |_| panic!("nothing was asked")));
            h.wake(&done);
            w.join().unwrap();
        });
    }

    #[test]
    fn sighup_drains_like_the_first_sigint_and_sigterm_kills() {
        assert_eq!(level_for_signal(SIGHUP, Level::Running), Level::Draining);
        assert_eq!(level_for_signal(SIGINT, Level::Running), Level::Draining);
        assert_eq!(level_for_signal(SIGINT, Level::Draining), Level::Killing);
        assert_eq!(level_for_signal(SIGTERM, Level::Running), Level::Killing);
        // A SIGHUP while draining asks for nothing more.
        assert_eq!(level_for_signal(SIGHUP, Level::Draining), Level::Draining);
    }
}

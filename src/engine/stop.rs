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
//!
//! The level only ever rises, and the first cause is kept: a run stopped by a
//! signal is recorded as interrupted and exits 130 even when every job still
//! running finishes during the drain. [`Control`] is the state; the signal
//! thread ([`SignalThread`]) is the only place signals are handled.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
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
        match self.level.load(Ordering::SeqCst) {
            0 => Level::Running,
            1 => Level::Draining,
            _ => Level::Killing,
        }
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
    fn sighup_drains_like_the_first_sigint_and_sigterm_kills() {
        assert_eq!(level_for_signal(SIGHUP, Level::Running), Level::Draining);
        assert_eq!(level_for_signal(SIGINT, Level::Running), Level::Draining);
        assert_eq!(level_for_signal(SIGINT, Level::Draining), Level::Killing);
        assert_eq!(level_for_signal(SIGTERM, Level::Running), Level::Killing);
        // A SIGHUP while draining asks for nothing more.
        assert_eq!(level_for_signal(SIGHUP, Level::Draining), Level::Draining);
    }
}

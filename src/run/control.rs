//! The stop state of a run, modelled once: running → draining → killing.
//!
//! - **Draining** (first Ctrl-C, SIGHUP, `--halt soon`, a journal failure, a
//!   broken stdout): no new job starts; running jobs finish.
//! - **Killing** (second Ctrl-C, SIGTERM, `--halt now`): running jobs get
//!   TERM, then KILL after the grace period.
//!
//! The level only ever rises. Each rise is reported once, to whoever caused it.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

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
    interrupted: AtomicBool,
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

    /// Raises the level to `to`. Returns true if this call raised it.
    pub fn raise(&self, to: Level) -> bool {
        self.level.fetch_max(to as u8, Ordering::SeqCst) < to as u8
    }

    /// Records that the run was stopped by a signal (exit status 130).
    pub fn set_interrupted(&self) {
        self.interrupted.store(true, Ordering::SeqCst);
    }

    /// Whether the run was stopped by a signal.
    pub fn interrupted(&self) -> bool {
        self.interrupted.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_only_rises_and_reports_each_rise_once() {
        let c = Control::default();
        assert!(c.may_start());
        assert!(c.raise(Level::Draining));
        assert!(!c.raise(Level::Draining));
        assert!(!c.may_start());
        assert!(c.raise(Level::Killing));
        assert!(!c.raise(Level::Draining));
        assert_eq!(c.level(), Level::Killing);
    }
}

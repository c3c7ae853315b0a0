//! `--progress`: a live bar on stderr with done, failed, running, rate and
//! ETA. Drawn only when stderr is a terminal.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The progress bar of a run (a no-op when disabled).
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A bar when `enabled` and stderr is a terminal; otherwise nothing.
    pub fn new(enabled: bool) -> Progress {
        if !enabled {
            return Progress { bar: None };
        }
        let target = ProgressDrawTarget::stderr_with_hz(8);
        if target.is_hidden() {
            return Progress { bar: None };
        }
        let bar = ProgressBar::with_draw_target(None, target);
        bar.set_style(
            ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] {pos}/{len} {msg} {per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.enable_steady_tick(Duration::from_millis(250));
        Progress { bar: Some(bar) }
    }

    /// The total number of jobs is known (the input ended).
    pub fn set_total(&self, total: u64) {
        if let Some(b) = &self.bar {
            b.set_length(total);
        }
    }

    /// Updates the counts after a job finished.
    pub fn update(&self, finished: u64, failed: u64, running: usize) {
        if let Some(b) = &self.bar {
            b.set_position(finished);
            b.set_message(format!("failed {failed} running {running}"));
        }
    }

    /// Prints a line above the bar (or plainly when there is none).
    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(b) => b.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

//! How the CLI shows a run: messages on stderr and the progress bar. The
//! library never prints; this observer renders its events.

use std::io::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use jobmill::events::{AttemptReport, AttemptStart, Notice, Observer, ObserverError, Resolution};

use super::progress::Progress;

/// Renders a run's notices on stderr (above the progress bar, if any) and
/// keeps the bar up to date.
pub struct Reporter {
    progress: Progress,
    running: AtomicUsize,
    finished: AtomicU64,
    failed: AtomicU64,
}

impl Reporter {
    /// A reporter, with a bar when `progress` and stderr is a terminal.
    pub fn new(progress: bool) -> Reporter {
        Reporter {
            progress: Progress::new(progress),
            running: AtomicUsize::new(0),
            finished: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }

    /// Prints a line on stderr, above the bar.
    pub fn line(&self, line: &str) {
        self.progress.println(line);
    }
}

impl Observer for Reporter {
    fn input_complete(&self, total: u64) -> Result<(), ObserverError> {
        self.progress.set_total(total);
        Ok(())
    }

    fn attempt_started(&self, _start: &AttemptStart) -> Result<(), ObserverError> {
        self.running.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn attempt_finished(&self, report: &mut AttemptReport<'_>) -> Result<(), ObserverError> {
        let running = self
            .running
            .fetch_sub(1, Ordering::Relaxed)
            .saturating_sub(1);
        match report.resolution {
            Resolution::Done => {
                self.finished.fetch_add(1, Ordering::Relaxed);
            }
            Resolution::Final(_) => {
                self.finished.fetch_add(1, Ordering::Relaxed);
                self.failed.fetch_add(1, Ordering::Relaxed);
            }
            Resolution::Requeued { .. } | Resolution::Interrupted => return Ok(()),
        }
        self.progress.update(
            self.finished.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            running,
        );
        Ok(())
    }

    fn notice(&self, notice: &Notice) {
        match notice {
            // A worker's own line, as it wrote it, tagged with its slot;
            // its stdout's lines too go to stderr (stdout carries results).
            Notice::WorkerOutput { .. } => self.progress.println(&notice.to_string()),
            _ => self.progress.println(&format!("jobmill: {notice}")),
        }
    }

    fn run_finished(&self, _summary: &jobmill::events::RunSummary) -> Result<(), ObserverError> {
        self.progress.finish();
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

//! Throttles consulted before each start, whatever the executor:
//! `--delay D`, `--memfree SIZE` and `--load N`, with GNU parallel's
//! meaning.
//!
//! - `--delay D`: two starts are at least D apart.
//! - `--memfree SIZE`: a job starts only while the system's
//!   `MemAvailable` is at least SIZE. Below half of SIZE, the engine's
//!   memory watcher stops the youngest attempt through
//!   [`Executor::stop_youngest`](super::Executor::stop_youngest) (as long as
//!   more than one runs); its job runs again later, uncounted.
//! - `--load N`: a job starts only while the system's load is below N. As
//!   in GNU parallel, the load is the number of processes running now (the
//!   runnable count of `/proc/loadavg`, jobmill's own reading thread not
//!   counted), not the one-minute average, which lags a minute behind the
//!   jobs started.
//!
//! [`Dispatch::lease`](super::Dispatch::lease) waits on the system
//! throttles before it takes a job, and on the delay once it holds one, so
//! every executor is throttled in this one place. A stop ends any wait.
//!
//! Memory and load are read through a [`SystemSource`]: [`ProcSource`]
//! reads `/proc`, and tests give their own, so that the throttles are tested
//! without filling the machine.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often a throttle that holds a start back looks again.
pub const POLL: Duration = Duration::from_millis(100);

/// Where the system's free memory and load come from.
pub trait SystemSource: Send + Sync {
    /// Bytes of memory available for new work (`MemAvailable`).
    ///
    /// # Errors
    ///
    /// The value cannot be read; the throttle then lets jobs start.
    fn mem_available(&self) -> io::Result<u64>;

    /// The load: processes running now.
    ///
    /// # Errors
    ///
    /// The value cannot be read; the throttle then lets jobs start.
    fn load(&self) -> io::Result<f64>;
}

/// The system as `/proc/meminfo` and `/proc/loadavg` describe it.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSource;

impl SystemSource for ProcSource {
    fn mem_available(&self) -> io::Result<u64> {
        parse_meminfo(&std::fs::read_to_string("/proc/meminfo")?)
    }

    fn load(&self) -> io::Result<f64> {
        parse_loadavg(&std::fs::read_to_string("/proc/loadavg")?)
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// `MemAvailable` of `/proc/meminfo`, in bytes.
fn parse_meminfo(text: &str) -> io::Result<u64> {
    let line = text
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))
        .ok_or_else(|| invalid("no MemAvailable in /proc/meminfo"))?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| invalid("MemAvailable in /proc/meminfo is not a number"))?;
    Ok(kib * 1024)
}

/// The runnable count of `/proc/loadavg` (`0.52 0.58 0.59 3/467 1234`),
/// less the reader itself.
fn parse_loadavg(text: &str) -> io::Result<f64> {
    let running: f64 = text
        .split_whitespace()
        .nth(3)
        .and_then(|f| f.split('/').next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| invalid("/proc/loadavg has no running count"))?;
    Ok((running - 1.0).max(0.0))
}

/// The throttles of one run.
pub struct Throttle {
    delay: Option<Duration>,
    memfree: Option<u64>,
    load: Option<f64>,
    source: Arc<dyn SystemSource>,
    /// When the last start was allowed (for `--delay`).
    last: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Throttle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttle")
            .field("delay", &self.delay)
            .field("memfree", &self.memfree)
            .field("load", &self.load)
            .finish_non_exhaustive()
    }
}

impl Throttle {
    /// Throttles reading the system through `source`. `None` everywhere
    /// throttles nothing.
    pub fn new(
        delay: Option<Duration>,
        memfree: Option<u64>,
        load: Option<f64>,
        source: Arc<dyn SystemSource>,
    ) -> Throttle {
        Throttle {
            delay: delay.filter(|d| !d.is_zero()),
            memfree,
            load,
            source,
            last: Mutex::new(None),
        }
    }

    /// Whether `--memfree` is set (the engine then watches for memory
    /// falling below half of it).
    pub fn watches_memory(&self) -> bool {
        self.memfree.is_some()
    }

    /// Whether any throttle is set.
    pub fn is_active(&self) -> bool {
        self.delay.is_some() || self.memfree.is_some() || self.load.is_some()
    }

    /// Whether the system lets a job start now: enough memory available
    /// and the load below the limit. A value that cannot be read does not
    /// hold a job back.
    pub fn system_allows(&self) -> bool {
        if let Some(min) = self.memfree {
            if matches!(self.source.mem_available(), Ok(m) if m < min) {
                return false;
            }
        }
        if let Some(max) = self.load {
            if matches!(self.source.load(), Ok(l) if l >= max) {
                return false;
            }
        }
        true
    }

    /// Whether available memory fell below half of `--memfree`: GNU
    /// parallel then kills the youngest job and runs it again later.
    pub fn memory_critical(&self) -> bool {
        self.memfree
            .is_some_and(|min| matches!(self.source.mem_available(), Ok(m) if m < min / 2))
    }

    /// Waits until the system allows a start. Returns false, at once, when
    /// `go_on` does (the run is stopping).
    pub fn wait_system(&self, go_on: &dyn Fn() -> bool) -> bool {
        if self.memfree.is_none() && self.load.is_none() {
            return true;
        }
        loop {
            if !go_on() {
                return false;
            }
            if self.system_allows() {
                return true;
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits until `--delay` after the previous start, and counts this one
    /// as started. Returns false when `go_on` does (the run is stopping);
    /// the start is then not counted.
    pub fn wait_delay(&self, go_on: &dyn Fn() -> bool) -> bool {
        let Some(delay) = self.delay else {
            return true;
        };
        // Held while waiting: the slots start one after another.
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(at) = *last {
            let due = at + delay;
            loop {
                if !go_on() {
                    return false;
                }
                let now = Instant::now();
                if now >= due {
                    break;
                }
                std::thread::sleep((due - now).min(POLL));
            }
        }
        *last = Some(Instant::now());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A system whose memory and load the test sets.
    #[derive(Default)]
    struct Fake {
        mem: AtomicU64,
        load: AtomicU64,
    }

    impl SystemSource for Fake {
        fn mem_available(&self) -> io::Result<u64> {
            Ok(self.mem.load(Ordering::SeqCst))
        }
        fn load(&self) -> io::Result<f64> {
            Ok(self.load.load(Ordering::SeqCst) as f64)
        }
    }

    struct Broken;

    impl SystemSource for Broken {
        fn mem_available(&self) -> io::Result<u64> {
            Err(invalid("no"))
        }
        fn load(&self) -> io::Result<f64> {
            Err(invalid("no"))
        }
    }

    #[test]
    fn memfree_holds_starts_below_size_and_is_critical_below_half() {
        let fake = Arc::new(Fake::default());
        let t = Throttle::new(None, Some(1000), None, fake.clone());
        fake.mem.store(1000, Ordering::SeqCst);
        assert!(t.system_allows());
        assert!(!t.memory_critical());
        fake.mem.store(999, Ordering::SeqCst);
        assert!(!t.system_allows());
        assert!(!t.memory_critical());
        fake.mem.store(499, Ordering::SeqCst);
        assert!(t.memory_critical());
    }

    #[test]
    fn load_holds_starts_at_or_above_the_limit() {
        let fake = Arc::new(Fake::default());
        let t = Throttle::new(None, None, Some(2.0), fake.clone());
        fake.load.store(1, Ordering::SeqCst);
        assert!(t.system_allows());
        fake.load.store(2, Ordering::SeqCst);
        assert!(!t.system_allows());
    }

    #[test]
    fn an_unreadable_system_holds_nothing_back() {
        let t = Throttle::new(None, Some(u64::MAX), Some(0.0), Arc::new(Broken));
        assert!(t.system_allows());
        assert!(!t.memory_critical());
    }

    #[test]
    fn wait_system_waits_until_memory_comes_back_and_ends_on_stop() {
        let fake = Arc::new(Fake::default());
        let t = Arc::new(Throttle::new(None, Some(100), None, fake.clone()));
        let waiter = {
            let t = Arc::clone(&t);
            std::thread::spawn(move || {
                let t0 = Instant::now();
                assert!(t.wait_system(&|| true));
                t0.elapsed()
            })
        };
        std::thread::sleep(Duration::from_millis(300));
        fake.mem.store(100, Ordering::SeqCst);
        let waited = waiter.join().unwrap();
        assert!(waited >= Duration::from_millis(250), "{waited:?}");
        fake.mem.store(0, Ordering::SeqCst);
        assert!(!t.wait_system(&|| false));
    }

    #[test]
    fn delay_spaces_the_starts() {
        let t = Throttle::new(
            Some(Duration::from_millis(150)),
            None,
            None,
            Arc::new(ProcSource),
        );
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(t.wait_delay(&|| true));
        }
        assert!(t0.elapsed() >= Duration::from_millis(300));
        assert!(!t.wait_delay(&|| false));
    }

    #[test]
    fn proc_files_parse() {
        let m = "MemTotal: 100 kB\nMemFree: 5 kB\nMemAvailable:    2048 kB\n";
        assert_eq!(parse_meminfo(m).unwrap(), 2048 * 1024);
        assert!(parse_meminfo("MemTotal: 1 kB\n").is_err());
        assert_eq!(parse_loadavg("0.52 0.58 0.59 3/467 1234\n").unwrap(), 2.0);
        assert!(ProcSource.mem_available().unwrap() > 0);
        assert!(ProcSource.load().unwrap() >= 0.0);
    }
}

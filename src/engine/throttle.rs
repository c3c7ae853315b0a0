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
//! - `--mem-per-job SIZE|auto`: a job starts only while the memory
//!   available covers the estimates of the jobs running plus this one (see
//!   [`MemPerJob`] and "Memory-aware starts" below).
//! - After an out-of-memory kill, fewer jobs run at once (see "After an OOM
//!   kill" below), with or without a memory option.
//!
//! Memory and load are read through a [`SystemSource`]: [`ProcSource`]
//! reads `/proc` (and the run's own memory cgroup, when it has a limit),
//! and tests give their own, so that the throttles are tested without
//! filling the machine.
//!
//! # Memory-aware starts (`--mem-per-job`)
//!
//! Every job is estimated to need E bytes: SIZE, or with `auto` the 95th
//! percentile (nearest rank) of the peak memory (`max_rss_kib`) of the
//! attempts that finished so far in this run, seeded with those of earlier
//! runs of the same command ([`Throttle::learn_peak`]). OOM-killed attempts
//! are not learned from (their peak is where they were stopped, not what
//! they needed). With `auto` and nothing learned yet, jobs start one at a
//! time until the first one finishes.
//!
//! With k of the run's jobs running (or admitted and about to start), a job
//! starts only when both hold:
//!
//! - `(k + 1) × E ≤ B`, where B is the memory available when none of the
//!   run's jobs ran (read at the first start, and again whenever the run's
//!   jobs have all ended): the jobs' estimates share what there was before
//!   they started, whether or not they have allocated it yet;
//! - `E ≤ A`, the memory available now: what others (or jobs above their
//!   estimate) took since is respected.
//!
//! A job always may start when none of the run's jobs runs, so an estimate
//! larger than the machine runs jobs one at a time rather than never. The
//! memory available is `MemAvailable`, or, when jobmill runs in a memory
//! cgroup with a limit (v1 or v2, the smallest over its ancestors; the
//! kernel's "unlimited" value counts as none), that limit less the
//! cgroup's usage (less its inactive file cache, which the kernel reclaims
//! before it OOM-kills), whichever is smaller. Admission is counted under
//! one lock, so slots starting together cannot overshoot. Only executors
//! that lease through [`Dispatch::lease`](super::Dispatch::lease) (a
//! process per job) are admitted this way; `--persistent` workers are not.
//!
//! # After an OOM kill
//!
//! When an attempt is killed out of memory ([`FailReason::OutOfMemory`]:
//! requeued under `--max-oom`), the run caps its jobs at once to one fewer
//! than were running when it died (at least one: in the end the job runs
//! alone). The cap rises by one again after twice the cap's number of
//! attempts have ended without another OOM kill, so a run that was unlucky
//! once recovers its width.
//!
//! [`FailReason::OutOfMemory`]: crate::job::FailReason::OutOfMemory

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::outcome::{AttemptEnd, Outcome};

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
    /// `MemAvailable`, or less when the run's memory cgroup (or one of its
    /// ancestors) has a limit nearer than that.
    fn mem_available(&self) -> io::Result<u64> {
        let system = parse_meminfo(&std::fs::read_to_string("/proc/meminfo")?)?;
        Ok(match cgroup_headroom() {
            Some(room) => system.min(room),
            None => system,
        })
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

/// Limits at or above this are the kernel's "no limit" (v1 writes
/// `PAGE_COUNTER_MAX` pages, 0x7FFFFFFFFFFFF000 on 4 KiB pages).
const UNLIMITED: u64 = 1 << 60;

/// How much more memory the cgroups of this process may use before their
/// limit: the smallest `limit - (usage - inactive file)` over the memory
/// cgroup of `/proc/self/cgroup` and its ancestors (v1 `memory` controller
/// or v2), or `None` when none has a limit or they cannot be read.
pub fn cgroup_headroom() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let (root, path, v2) = cgroup_of(&text)?;
    let mut dir = root.join(path.trim_start_matches('/'));
    if !dir.is_dir() {
        // In a cgroup namespace the path may not be visible: the mount's
        // root is then our cgroup.
        dir = root.clone();
    }
    let mut best: Option<u64> = None;
    loop {
        if let Some(room) = headroom_of(&dir, v2) {
            best = Some(best.map_or(room, |b| b.min(room)));
        }
        if dir == root || !dir.pop() || !dir.starts_with(&root) {
            break;
        }
    }
    best
}

/// The memory cgroup's mount, path and version from `/proc/self/cgroup`.
fn cgroup_of(text: &str) -> Option<(PathBuf, String, bool)> {
    let mut v2 = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        if controllers.split(',').any(|c| c == "memory") {
            let root = PathBuf::from("/sys/fs/cgroup/memory");
            if root.join("memory.limit_in_bytes").exists() {
                return Some((root, path.to_string(), false));
            }
        }
        if id == "0" && controllers.is_empty() {
            v2 = Some(path.to_string());
        }
    }
    let path = v2?;
    for root in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
        let root = PathBuf::from(root);
        if root.join("cgroup.controllers").exists() {
            return Some((root, path, true));
        }
    }
    None
}

/// `limit - (usage - inactive file)` of one cgroup directory, when it has
/// a limit.
fn headroom_of(dir: &Path, v2: bool) -> Option<u64> {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
    let (limit, usage, stat_key) = if v2 {
        let max = read("memory.max")?;
        let limit = match max.trim() {
            "max" => return None,
            n => n.parse::<u64>().ok()?,
        };
        (limit, read("memory.current")?, "inactive_file")
    } else {
        let limit = read("memory.limit_in_bytes")?.trim().parse::<u64>().ok()?;
        (limit, read("memory.usage_in_bytes")?, "total_inactive_file")
    };
    if limit >= UNLIMITED {
        return None;
    }
    let usage: u64 = usage.trim().parse().ok()?;
    let inactive = read("memory.stat")
        .and_then(|s| {
            s.lines().find_map(|l| {
                let (k, v) = l.split_once(' ')?;
                (k == stat_key).then(|| v.trim().parse::<u64>().ok())?
            })
        })
        .unwrap_or(0);
    Some(limit.saturating_sub(usage.saturating_sub(inactive)))
}

/// `--mem-per-job`: how much memory each job is expected to need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemPerJob {
    /// This many bytes.
    Size(u64),
    /// Learned from the peaks of the jobs that finished (see the module
    /// docs).
    Auto,
}

/// How many learned peaks `--mem-per-job auto` keeps (a sample of them
/// beyond that).
pub const MAX_PEAKS: usize = 4096;

/// The percentile of the learned peaks that `--mem-per-job auto` takes.
pub const AUTO_PERCENTILE: f64 = 0.95;

/// Starts counted for `--mem-per-job` and the OOM cap.
#[derive(Debug, Default)]
struct Starts {
    /// Admitted, not yet leased a job ([`Throttle::admit`]).
    pending: usize,
    /// Jobs started (by sequence number) and not yet ended.
    running: HashSet<u64>,
    /// Memory available when none of the run's jobs ran (B).
    baseline: Option<u64>,
    /// Peak memory of finished attempts, bytes, sorted: learned only
    /// under `--mem-per-job auto`, and at most [`MAX_PEAKS`] of them.
    peaks: Vec<u64>,
    /// Peaks learned so far (more than `peaks` holds once it is full).
    learned: u64,
    /// At most this many jobs at once, after an OOM kill.
    oom_cap: Option<usize>,
    /// Attempts ended since the cap last changed.
    since_cap: usize,
}

impl Starts {
    fn count(&self) -> usize {
        self.pending + self.running.len()
    }

    /// Learns one peak. Once [`MAX_PEAKS`] are held, one spread over the
    /// sorted range by a multiplicative hash of the count is dropped first,
    /// so memory and the cost of a learn stay bounded on runs of millions
    /// of jobs while the sample keeps following the run.
    fn learn(&mut self, bytes: u64) {
        if self.peaks.len() >= MAX_PEAKS {
            let i = (self.learned.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize
                % self.peaks.len();
            self.peaks.remove(i);
        }
        let at = self.peaks.partition_point(|p| *p < bytes);
        self.peaks.insert(at, bytes);
        self.learned += 1;
    }

    fn estimate(&self, mode: MemPerJob) -> Option<u64> {
        match mode {
            MemPerJob::Size(n) => Some(n),
            MemPerJob::Auto => percentile(&self.peaks, AUTO_PERCENTILE),
        }
    }
}

/// The `p` percentile (nearest rank) of sorted `values`.
fn percentile(values: &[u64], p: f64) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    let rank = (p * values.len() as f64).ceil() as usize;
    Some(values[rank.clamp(1, values.len()) - 1])
}

/// The throttles of one run.
pub struct Throttle {
    delay: Option<Duration>,
    memfree: Option<u64>,
    load: Option<f64>,
    mem_per_job: Option<MemPerJob>,
    source: Arc<dyn SystemSource>,
    /// When the last start was allowed (for `--delay`).
    last: Mutex<Option<Instant>>,
    /// Starts counted for `--mem-per-job` and the OOM cap.
    starts: Mutex<Starts>,
}

impl std::fmt::Debug for Throttle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttle")
            .field("delay", &self.delay)
            .field("memfree", &self.memfree)
            .field("load", &self.load)
            .field("mem_per_job", &self.mem_per_job)
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
            mem_per_job: None,
            source,
            last: Mutex::new(None),
            starts: Mutex::new(Starts::default()),
        }
    }

    /// The same throttles with `--mem-per-job`.
    pub fn with_mem_per_job(mut self, mem_per_job: Option<MemPerJob>) -> Throttle {
        self.mem_per_job = mem_per_job;
        self
    }

    /// `--mem-per-job`, as set.
    pub fn mem_per_job(&self) -> Option<MemPerJob> {
        self.mem_per_job
    }

    fn starts(&self) -> MutexGuard<'_, Starts> {
        self.starts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Learns one peak (bytes) for `--mem-per-job auto`: of an attempt
    /// that finished, or of an earlier run of the same command.
    pub fn learn_peak(&self, bytes: u64) {
        self.starts().learn(bytes);
    }

    /// The current estimate of one job's memory (`--mem-per-job`), if any.
    pub fn estimate(&self) -> Option<u64> {
        self.mem_per_job.and_then(|m| self.starts().estimate(m))
    }

    /// The cap on jobs at once set by OOM kills, if any.
    pub fn oom_cap(&self) -> Option<usize> {
        self.starts().oom_cap
    }

    /// Whether one more job may start now (see the module docs), given the
    /// run's jobs counted in `s`.
    fn admits(&self, s: &mut Starts) -> bool {
        let n = s.count();
        if s.oom_cap.is_some_and(|cap| n >= cap) {
            return false;
        }
        let Some(mode) = self.mem_per_job else {
            return true;
        };
        let available = self.source.mem_available().ok();
        if n == 0 {
            // Nothing of ours runs: what is available now is the budget,
            // and one job always may run.
            s.baseline = available;
            return true;
        }
        let Some(estimate) = s.estimate(mode) else {
            // `auto` with nothing learned: one at a time.
            return false;
        };
        let Some(available) = available else {
            return true;
        };
        let budget = s.baseline.unwrap_or(available);
        estimate.saturating_mul(n as u64 + 1) <= budget && estimate <= available
    }

    /// Waits until one more job may start under `--mem-per-job` and the
    /// OOM cap, and counts it as admitted: the caller then either
    /// [`Throttle::bind`]s it to the job it leased or gives it back with
    /// [`Throttle::unadmit`]. Returns false, at once, when `go_on` does
    /// (nothing is then counted).
    pub fn admit(&self, go_on: &dyn Fn() -> bool) -> bool {
        loop {
            if !go_on() {
                return false;
            }
            {
                let mut s = self.starts();
                if self.admits(&mut s) {
                    s.pending += 1;
                    return true;
                }
            }
            std::thread::sleep(POLL);
        }
    }

    /// An admitted start leased no job (or will not start it).
    pub fn unadmit(&self) {
        let mut s = self.starts();
        s.pending = s.pending.saturating_sub(1);
    }

    /// Job `seq`, bound by [`Throttle::bind`], was given back unrun.
    pub fn unbind(&self, seq: u64) {
        self.starts().running.remove(&seq);
    }

    /// An admitted start leased job `seq`, which is now running.
    pub fn bind(&self, seq: u64) {
        let mut s = self.starts();
        s.pending = s.pending.saturating_sub(1);
        s.running.insert(seq);
    }

    /// An attempt of job `seq` ended with `outcome`: it no longer counts
    /// as running; its peak is learned; an OOM kill lowers the cap on jobs
    /// at once (see the module docs). Attempts this throttle did not admit
    /// (long-lived workers) change nothing but the learning.
    pub fn ended(&self, seq: u64, outcome: &Outcome) {
        let mut s = self.starts();
        let counted = s.running.len() + s.pending;
        let ours = s.running.remove(&seq);
        let oom = matches!(&outcome.end, AttemptEnd::Failed(r) if r.is_oom());
        // A peak says what a job needs only when it ran to its end: not
        // when it was stopped, lost or killed for memory.
        let learn = match &outcome.end {
            AttemptEnd::Succeeded => true,
            AttemptEnd::Failed(r) => !r.is_oom() && !r.is_lost(),
            AttemptEnd::Stopped => false,
        };
        if oom {
            if ours {
                let cap = counted.saturating_sub(1).max(1);
                s.oom_cap = Some(s.oom_cap.map_or(cap, |c| c.min(cap)));
                s.since_cap = 0;
            }
            return;
        }
        // Only `auto` uses the peaks: other runs keep none.
        let auto = self.mem_per_job == Some(MemPerJob::Auto);
        if let Some(kib) = outcome.max_rss_kib.filter(|_| learn && auto) {
            s.learn(kib.saturating_mul(1024));
        }
        if let Some(cap) = s.oom_cap {
            s.since_cap += 1;
            if s.since_cap >= 2 * cap {
                s.oom_cap = Some(cap + 1);
                s.since_cap = 0;
            }
        }
    }

    /// Whether `--memfree` is set (the engine then watches for memory
    /// falling below half of it).
    pub fn watches_memory(&self) -> bool {
        self.memfree.is_some()
    }

    /// Whether any throttle is set. (The OOM cap needs none: a throttle
    /// with nothing set still counts starts and caps them after an OOM
    /// kill, so front ends that want that keep it.)
    pub fn is_active(&self) -> bool {
        self.delay.is_some()
            || self.memfree.is_some()
            || self.load.is_some()
            || self.mem_per_job.is_some()
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

    fn ended_ok(kib: u64) -> Outcome {
        Outcome {
            max_rss_kib: Some(kib),
            ..Outcome::unmeasured(AttemptEnd::Succeeded)
        }
    }

    /// Admits as many starts as the throttle allows without waiting.
    fn admit_all(t: &Throttle, first_seq: u64) -> usize {
        let mut n = 0;
        loop {
            let ok = {
                let mut s = t.starts();
                if t.admits(&mut s) {
                    s.pending += 1;
                    true
                } else {
                    false
                }
            };
            if !ok {
                return n;
            }
            t.bind(first_seq + n as u64);
            n += 1;
            if n > 100 {
                return n;
            }
        }
    }

    #[test]
    fn mem_per_job_size_admits_only_what_the_budget_covers() {
        let fake = Arc::new(Fake::default());
        fake.mem.store(1000, Ordering::SeqCst);
        let t = Throttle::new(None, None, None, fake.clone())
            .with_mem_per_job(Some(MemPerJob::Size(300)));
        assert_eq!(admit_all(&t, 1), 3, "3 × 300 ≤ 1000 < 4 × 300");
        // One ends: one more fits again, even though the jobs running have
        // taken memory meanwhile (the budget is what there was before).
        fake.mem.store(400, Ordering::SeqCst);
        t.ended(1, &ended_ok(1));
        assert_eq!(admit_all(&t, 10), 1);
        // Others took memory: no job starts while its estimate is not
        // available now.
        t.ended(2, &ended_ok(1));
        fake.mem.store(299, Ordering::SeqCst);
        assert_eq!(admit_all(&t, 20), 0);
    }

    #[test]
    fn a_job_always_may_start_alone_even_over_the_budget() {
        let fake = Arc::new(Fake::default());
        fake.mem.store(100, Ordering::SeqCst);
        let t = Throttle::new(None, None, None, fake.clone())
            .with_mem_per_job(Some(MemPerJob::Size(1000)));
        assert_eq!(admit_all(&t, 1), 1);
    }

    #[test]
    fn learned_peaks_stay_bounded_and_keep_their_percentile() {
        let mut s = Starts::default();
        // 100,000 peaks of 1..=100 MiB, in a scrambled order.
        for i in 0..100_000u64 {
            s.learn(((i * 7919) % 100 + 1) << 20);
        }
        assert_eq!(s.peaks.len(), MAX_PEAKS);
        assert!(s.peaks.windows(2).all(|w| w[0] <= w[1]), "kept sorted");
        let p95 = s.estimate(MemPerJob::Auto).unwrap() >> 20;
        assert!((93..=97).contains(&p95), "p95 of 1..=100 MiB: {p95}");
    }

    #[test]
    fn mem_per_job_auto_runs_one_at_a_time_until_it_learns_then_takes_the_p95() {
        let fake = Arc::new(Fake::default());
        fake.mem.store(10_000 * 1024, Ordering::SeqCst);
        let t =
            Throttle::new(None, None, None, fake.clone()).with_mem_per_job(Some(MemPerJob::Auto));
        assert_eq!(t.estimate(), None);
        assert_eq!(admit_all(&t, 1), 1, "nothing learned: one at a time");
        t.ended(1, &ended_ok(2000));
        assert_eq!(t.estimate(), Some(2000 * 1024));
        assert_eq!(admit_all(&t, 10), 5);
        // The 95th percentile (nearest rank) of 20 peaks is the 19th.
        for kib in 1..=19u64 {
            t.learn_peak(kib * 100 * 1024);
        }
        assert_eq!(t.estimate(), Some(1900 * 1024));
        // Stopped and OOM-killed attempts teach nothing.
        t.ended(
            99,
            &Outcome {
                max_rss_kib: Some(1 << 30),
                ..Outcome::unmeasured(AttemptEnd::Stopped)
            },
        );
        assert_eq!(t.estimate(), Some(1900 * 1024));
    }

    #[test]
    fn an_oom_kill_caps_the_jobs_below_what_ran_and_the_cap_recovers() {
        let t = Throttle::new(None, None, None, Arc::new(ProcSource));
        assert_eq!(admit_all(&t, 1), 101, "no cap before an OOM kill");
        let t = Throttle::new(None, None, None, Arc::new(ProcSource));
        for seq in 1..=4 {
            t.starts().pending += 1;
            t.bind(seq);
        }
        let oom = Outcome::unmeasured(AttemptEnd::Failed(crate::job::FailReason::OutOfMemory {
            likely: true,
        }));
        t.ended(4, &oom);
        assert_eq!(t.oom_cap(), Some(3), "one fewer than the 4 that ran");
        assert_eq!(admit_all(&t, 10), 0, "3 still run");
        t.ended(3, &oom);
        assert_eq!(t.oom_cap(), Some(2));
        t.ended(2, &oom);
        t.ended(1, &oom);
        assert_eq!(t.oom_cap(), Some(1), "down to running alone");
        assert_eq!(admit_all(&t, 20), 1);
        // Two attempts without an OOM kill raise it by one.
        t.ended(20, &ended_ok(1));
        t.ended(21, &ended_ok(1));
        assert_eq!(t.oom_cap(), Some(2));
    }

    #[test]
    fn cgroup_lines_and_limits_parse() {
        let v1 = "4:memory:/a/b\n0::/\n";
        if std::path::Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists() {
            let (root, path, v2) = cgroup_of(v1).unwrap();
            assert_eq!(
                (root.to_str().unwrap(), path.as_str(), v2),
                ("/sys/fs/cgroup/memory", "/a/b", false)
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let w = |f: &str, v: &str| std::fs::write(dir.path().join(f), v).unwrap();
        w("memory.limit_in_bytes", "9223372036854771712\n");
        w("memory.usage_in_bytes", "100\n");
        assert_eq!(
            headroom_of(dir.path(), false),
            None,
            "the kernel's unlimited is none"
        );
        w("memory.limit_in_bytes", "1000\n");
        w("memory.stat", "cache 5\ntotal_inactive_file 30\n");
        assert_eq!(headroom_of(dir.path(), false), Some(930));
        w("memory.max", "max\n");
        w("memory.current", "100\n");
        assert_eq!(headroom_of(dir.path(), true), None);
        w("memory.max", "500\n");
        w("memory.stat", "inactive_file 50\n");
        assert_eq!(headroom_of(dir.path(), true), Some(450));
        // Whatever this machine is, reading never fails loudly.
        let _ = cgroup_headroom();
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

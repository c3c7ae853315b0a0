//! Why an attempt died of memory, and how much it used.
//!
//! - **With a memory option** (`--mem-limit`, `--mem-per-job`: a
//!   [`MemoryOptions`] given to the supervisor) each attempt runs in a
//!   cgroup of its own ([`super::cgroup`]), joined before `exec` (a `fork`
//!   and `exec` of jobmill's own, [`crate::sys::spawn`]). An attempt that
//!   failed while its cgroup recorded an OOM kill died of memory: of its
//!   own `--mem-limit` when the cgroup's own limit was reached
//!   ([`FailReason::MemoryLimit`], not "likely"), else of the memory of
//!   the run or the machine ([`FailReason::OutOfMemory`], not "likely").
//!   Its peak memory is the whole tree's, from the cgroup.
//! - **Where no cgroup can be made** (not root, no memory controller, a v2
//!   cgroup that does not delegate `memory`), `--mem-limit` becomes an
//!   `RLIMIT_AS` of each process of the job (address space, not resident
//!   memory: a program that reserves much more than it touches needs a
//!   higher limit), said once in a notice. The job then only sees
//!   allocation failures, so the cause is inferred: an attempt that failed
//!   (a non-zero exit, or SIGABRT, SIGSEGV or SIGBUS, what runtimes do
//!   when an allocation fails) and whose last 8 KiB of stderr name an
//!   allocation failure (`MemoryError`, `Cannot allocate memory`,
//!   `out of memory`, `bad_alloc`, `memory allocation of`, `failed to
//!   allocate`, `allocation failed`) is "likely over its memory limit".
//!   A failure that says nothing of memory keeps its exit code or signal.
//! - **Always, without a cgroup**: an attempt killed by SIGKILL (not by
//!   jobmill) while the kernel's `oom_kill` counter (`/proc/vmstat`) rose
//!   is "likely out of memory". Reading the counter at every start would
//!   cost every job a system call, so the value at the start is a shared
//!   sample at most [`OOM_SAMPLE_AGE`] old (at most ten reads a second for
//!   the whole process, none while no job starts); the counter is read
//!   fresh only at the end of a SIGKILLed attempt. The trade-off: an OOM
//!   kill elsewhere in the 100 ms before the attempt started, or during it,
//!   makes a SIGKILL from another cause "likely out of memory".

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::cgroup::{Hierarchy, JobCgroup, Unavailable};
use crate::job::FailReason;

/// How old the shared sample of the kernel's OOM kill counter may be when
/// an attempt starts.
pub const OOM_SAMPLE_AGE: Duration = Duration::from_millis(100);

/// The environment variable that makes jobmill use `RLIMIT_AS` even where
/// it could make cgroups (for tests of that path): any non-empty value.
pub const NO_CGROUP_VAR: &str = "JOBMILL_MEMORY_NO_CGROUP";

/// The memory options of a run, as the supervisor applies them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryOptions {
    /// Each attempt's (each long-lived worker's) memory limit in bytes
    /// (`--mem-limit`); `None`: cgroups for measurement only.
    pub limit: Option<u64>,
}

/// How the supervisor applies [`MemoryOptions`]: the cgroup hierarchy, or
/// `RLIMIT_AS` where none can be used.
#[derive(Debug)]
pub struct MemoryControl {
    options: MemoryOptions,
    cgroups: Option<Hierarchy>,
    /// Why there are no cgroups, for the one notice.
    fallback: Option<String>,
}

impl MemoryControl {
    /// Decides how to apply `options` on this machine: jobmill's memory
    /// cgroup when job cgroups can be made there (probed by making and
    /// removing one), else `RLIMIT_AS`. Also removes job cgroups left by
    /// jobmill processes that were killed.
    pub fn new(options: MemoryOptions) -> MemoryControl {
        let forced = std::env::var_os(NO_CGROUP_VAR).is_some_and(|v| !v.is_empty());
        let probe = || -> Result<Hierarchy, Unavailable> {
            if forced {
                return Err(Unavailable(format!("{NO_CGROUP_VAR} is set")));
            }
            let h = Hierarchy::detect()?;
            h.prepare()?;
            h.remove_stale();
            h.create(None)
                .map_err(|e| Unavailable(format!("cannot create job cgroups: {e}")))?;
            Ok(h)
        };
        match probe() {
            Ok(h) => MemoryControl {
                options,
                cgroups: Some(h),
                fallback: None,
            },
            Err(why) => MemoryControl {
                options,
                cgroups: None,
                fallback: Some(why.0),
            },
        }
    }

    /// The options applied.
    pub fn options(&self) -> MemoryOptions {
        self.options
    }

    /// The hierarchy job cgroups are made in, if any.
    pub fn cgroups(&self) -> Option<&Hierarchy> {
        self.cgroups.as_ref()
    }

    /// The one notice to give when no cgroup can be made: what happens
    /// instead, and why.
    pub fn notice(&self) -> Option<String> {
        let why = self.fallback.as_ref()?;
        Some(match self.options.limit {
            Some(limit) => format!(
                "no job cgroups ({why}): --mem-limit {} MiB is enforced as RLIMIT_AS (address \
                 space) of each process; jobs over it see allocation failures, reported as \
                 \"likely over its memory limit\"; peak memory is the main process's",
                limit >> 20
            ),
            None => format!(
                "no job cgroups ({why}): peak memory is the main process's, and OOM kills \
                 are inferred from the kernel's counter (\"likely\")"
            ),
        })
    }

    /// What one attempt (or worker) gets: its cgroup, made now, or its
    /// `RLIMIT_AS`.
    ///
    /// # Errors
    ///
    /// The job cgroup cannot be made (the error names it).
    pub fn for_attempt(&self) -> std::io::Result<AttemptMemory> {
        match &self.cgroups {
            Some(h) => Ok(AttemptMemory::Cgroup(h.create(self.options.limit)?)),
            None => Ok(AttemptMemory::Rlimit(self.options.limit)),
        }
    }
}

/// The memory control of one attempt or worker.
#[derive(Debug)]
pub enum AttemptMemory {
    /// Its own cgroup (removed when dropped).
    Cgroup(JobCgroup),
    /// No cgroup: an `RLIMIT_AS` if a limit was asked for.
    Rlimit(Option<u64>),
}

impl AttemptMemory {
    /// What the child applies before `exec`.
    pub fn setup(&self) -> crate::sys::spawn::ChildSetup<'_> {
        match self {
            AttemptMemory::Cgroup(cg) => crate::sys::spawn::ChildSetup {
                cgroup_procs: cg.procs_fd(),
                rlimit_as: None,
            },
            AttemptMemory::Rlimit(limit) => crate::sys::spawn::ChildSetup {
                cgroup_procs: None,
                rlimit_as: *limit,
            },
        }
    }

    /// The cgroup, if any.
    pub fn cgroup(&self) -> Option<&JobCgroup> {
        match self {
            AttemptMemory::Cgroup(cg) => Some(cg),
            AttemptMemory::Rlimit(_) => None,
        }
    }

    /// Why a failed attempt (or a dead worker) failed, when memory is why;
    /// and the peak memory of its tree in KiB where the cgroup measured it.
    /// `killed_by`: the signal that killed the main process; `stderr_tail`:
    /// the end of its stderr (for the `RLIMIT_AS` inference).
    pub fn verdict(&self, killed_by: Option<i32>, stderr_tail: &[u8]) -> Verdict {
        match self {
            AttemptMemory::Cgroup(cg) => {
                let c = cg.counters();
                let reason = (c.oom_kills > 0).then(|| match cg.limit() {
                    Some(limit) if c.limit_hits > 0 => FailReason::MemoryLimit {
                        limit,
                        likely: false,
                    },
                    _ => FailReason::OutOfMemory { likely: false },
                });
                Verdict {
                    reason,
                    peak_kib: (c.peak_bytes > 0).then_some(c.peak_bytes / 1024),
                }
            }
            AttemptMemory::Rlimit(Some(limit)) => {
                let allocation_signal = matches!(
                    killed_by,
                    None | Some(libc::SIGABRT | libc::SIGSEGV | libc::SIGBUS)
                );
                let reason = (allocation_signal && mentions_allocation_failure(stderr_tail))
                    .then_some(FailReason::MemoryLimit {
                        limit: *limit,
                        likely: true,
                    });
                Verdict {
                    reason,
                    peak_kib: None,
                }
            }
            AttemptMemory::Rlimit(None) => Verdict::default(),
        }
    }
}

/// What memory says about a failed attempt.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    /// The cause, when memory is why it failed.
    pub reason: Option<FailReason>,
    /// Peak memory of the whole tree, KiB, when a cgroup measured it.
    pub peak_kib: Option<u64>,
}

/// How much of a failed job's stderr is searched for an allocation failure.
pub const STDERR_TAIL: usize = 8 << 10;

/// Whether `text` names an allocation failure (see the module docs).
pub fn mentions_allocation_failure(text: &[u8]) -> bool {
    const NEEDLES: [&str; 7] = [
        "memoryerror",
        "cannot allocate memory",
        "out of memory",
        "bad_alloc",
        "memory allocation of",
        "failed to allocate",
        "allocation failed",
    ];
    let lower = String::from_utf8_lossy(text).to_lowercase();
    NEEDLES.iter().any(|n| lower.contains(n))
}

/// The kernel's count of OOM kills since boot (`/proc/vmstat` `oom_kill`);
/// `None` where the kernel does not count them (before Linux 4.13).
pub fn kernel_oom_kills() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/vmstat").ok()?;
    super::cgroup::keyed(&text, "oom_kill")
}

/// The kernel's OOM kill count as of at most [`OOM_SAMPLE_AGE`] ago, from
/// the process-wide shared sample (read afresh when older).
pub fn recent_oom_kills() -> Option<u64> {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    /// Nanoseconds since `EPOCH` of the sample, plus one (0: none yet).
    static AT: AtomicU64 = AtomicU64::new(0);
    /// The sample, plus one (0: the kernel does not count).
    static VALUE: AtomicU64 = AtomicU64::new(0);
    let epoch = *EPOCH.get_or_init(Instant::now);
    let now = epoch.elapsed().as_nanos() as u64 + 1;
    let at = AT.load(Ordering::Acquire);
    if at != 0 && now.saturating_sub(at) <= OOM_SAMPLE_AGE.as_nanos() as u64 {
        return VALUE.load(Ordering::Acquire).checked_sub(1);
    }
    let value = kernel_oom_kills();
    VALUE.store(value.map_or(0, |v| v + 1), Ordering::Release);
    AT.store(now, Ordering::Release);
    value
}

/// "Likely out of memory": an attempt killed by SIGKILL (not by jobmill)
/// while the kernel's OOM kill count rose from `at_start` (see the module
/// documentation).
pub fn likely_oom(killed_by: Option<i32>, at_start: Option<u64>) -> Option<FailReason> {
    if killed_by != Some(libc::SIGKILL) {
        return None;
    }
    let (start, end) = (at_start?, kernel_oom_kills()?);
    (end > start).then_some(FailReason::OutOfMemory { likely: true })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_failures_of_common_runtimes_are_recognised() {
        for text in [
            "Traceback (most recent call last):\nMemoryError\n",
            "terminate called after throwing an instance of 'std::bad_alloc'",
            "memory allocation of 209715200 bytes failed\n",
            "fatal error: runtime: out of memory",
            "head: cannot allocate memory",
        ] {
            assert!(mentions_allocation_failure(text.as_bytes()), "{text}");
        }
        assert!(!mentions_allocation_failure(b"ValueError: bad input\n"));
    }

    #[test]
    fn rlimit_verdict_needs_a_failure_that_names_memory() {
        let m = AttemptMemory::Rlimit(Some(64 << 20));
        let v = m.verdict(None, b"MemoryError\n");
        assert_eq!(
            v.reason,
            Some(FailReason::MemoryLimit {
                limit: 64 << 20,
                likely: true
            })
        );
        assert_eq!(m.verdict(None, b"KeyError: 'x'\n").reason, None);
        // A SIGTERM is no allocation failure, whatever the job printed.
        assert_eq!(m.verdict(Some(libc::SIGTERM), b"MemoryError").reason, None);
        assert_eq!(
            AttemptMemory::Rlimit(None)
                .verdict(None, b"MemoryError")
                .reason,
            None
        );
    }

    #[test]
    fn likely_oom_needs_sigkill_and_a_rise() {
        let now = kernel_oom_kills();
        assert_eq!(likely_oom(Some(libc::SIGTERM), Some(0)), None);
        if let Some(now) = now {
            assert_eq!(likely_oom(Some(libc::SIGKILL), Some(now + 1_000_000)), None);
            if now > 0 {
                assert_eq!(
                    likely_oom(Some(libc::SIGKILL), Some(now - 1)),
                    Some(FailReason::OutOfMemory { likely: true })
                );
            }
        }
        assert_eq!(likely_oom(Some(libc::SIGKILL), None), None);
    }

    #[test]
    fn the_shared_oom_sample_matches_the_kernel() {
        assert_eq!(recent_oom_kills().is_some(), kernel_oom_kills().is_some());
    }
}

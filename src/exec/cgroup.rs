//! Memory cgroups of attempts: finding jobmill's own memory cgroup (v1
//! memory controller or v2 unified), making one child cgroup per attempt
//! (or per long-lived worker) under it, reading its counters and removing
//! it.
//!
//! - **Detection** reads `/proc/self/cgroup` and `/proc/self/mountinfo`:
//!   the v1 hierarchy whose mount carries the `memory` controller, else the
//!   v2 one when its `cgroup.controllers` lists `memory`. Job cgroups are
//!   made under jobmill's own cgroup (`jobmill-<pid>-<n>`), never elsewhere.
//!   On v2, jobmill's cgroup must delegate `memory` to its children
//!   (`cgroup.subtree_control`); jobmill tries to enable it, which the
//!   kernel refuses while jobmill's cgroup holds processes and is not the
//!   root ("no internal processes"): then jobmill falls back to
//!   `RLIMIT_AS` (run it in a delegated cgroup, e.g. `systemd-run --user
//!   --scope -p Delegate=yes`).
//! - **Limits.** The effective limit of a cgroup is the smallest over it and
//!   its ancestors (`memory.limit_in_bytes`, `memory.max`); the kernel's
//!   huge "unlimited" values (`max`, 9223372036854771712) mean no limit.
//!   On v2 a job's own limit also sets `memory.swap.max` to 0, so that a
//!   job over its limit is killed rather than swapped out; on v1 the limit
//!   is `memory.limit_in_bytes` alone (limiting memory+swap as well makes
//!   some kernels stop counting `failcnt`), so with swap a v1 job may swap
//!   beyond it.
//! - **Counters.** OOM kills of the job's processes: v1 `memory.oom_control`
//!   `oom_kill`, v2 `memory.events` `oom_kill`; whether the job's own limit
//!   was hit: v1 `memory.failcnt`, or `memory.max_usage_in_bytes` at the
//!   limit (some kernels leave `failcnt` at 0), v2 `memory.events` `max`
//!   (these count only
//!   this cgroup's own limit; a kill caused by an ancestor's limit leaves
//!   them at 0).
//! - **Peak memory of the whole tree.** v1's `max_usage_in_bytes` counts
//!   page cache, so jobmill samples resident anonymous memory instead:
//!   `memory.stat` `rss` (on kernels before 5.8, which count transparent
//!   huge pages apart, plus `rss_huge`); v2 reads `memory.peak` (Linux
//!   5.19+; the kernel's exact high-water mark of everything charged to the
//!   cgroup, page cache included) or else samples `memory.stat` `anon`.
//! - **Removal.** A job cgroup is removed when its handle is dropped: every
//!   process still in it gets SIGKILL, and `rmdir` is retried briefly while
//!   the kernel still calls it busy. Cgroups left by a jobmill that was
//!   killed (`kill -9`) are removed by the next jobmill started in the same
//!   cgroup ([`Hierarchy::remove_stale`]).

use std::fs;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The cgroup interface of a hierarchy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// cgroup v1 with the `memory` controller.
    V1,
    /// cgroup v2 (unified).
    V2,
}

/// Values at or above this are the kernel's "no limit" (v1 reports
/// 9223372036854771712, `PAGE_COUNTER_MAX` pages rounded).
const UNLIMITED_FROM: u64 = 1 << 62;

/// How long to keep retrying `rmdir` of a job cgroup that is still busy.
const REMOVE_FOR: Duration = Duration::from_secs(2);

/// The prefix of every cgroup jobmill makes.
const PREFIX: &str = "jobmill-";

/// jobmill's own memory cgroup, under which it makes job cgroups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    version: Version,
    /// Where the hierarchy is mounted.
    mount: PathBuf,
    /// jobmill's own cgroup directory (under `mount`).
    own: PathBuf,
}

/// Why no job cgroup can be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(pub String);

impl Hierarchy {
    /// jobmill's own memory cgroup, from `/proc/self/cgroup` and
    /// `/proc/self/mountinfo`.
    ///
    /// # Errors
    ///
    /// No memory controller is mounted or jobmill's cgroup is not found.
    pub fn detect() -> Result<Hierarchy, Unavailable> {
        let read = |p: &str| {
            fs::read_to_string(p).map_err(|e| Unavailable(format!("cannot read {p}: {e}")))
        };
        let h = Self::detect_from(&read("/proc/self/cgroup")?, &read("/proc/self/mountinfo")?)?;
        if h.version == Version::V2 {
            let controllers = fs::read_to_string(h.own.join("cgroup.controllers"))
                .map_err(|e| Unavailable(format!("cannot read {}: {e}", h.own.display())))?;
            if !controllers.split_whitespace().any(|c| c == "memory") {
                return Err(Unavailable(format!(
                    "the memory controller is not enabled for {}",
                    h.own.display()
                )));
            }
        }
        Ok(h)
    }

    /// As [`Hierarchy::detect`], from the texts of `/proc/self/cgroup` and
    /// `/proc/self/mountinfo`: the v1 `memory` hierarchy when mounted,
    /// else the v2 one.
    ///
    /// # Errors
    ///
    /// Neither is mounted, or the process is in neither.
    pub fn detect_from(cgroup: &str, mountinfo: &str) -> Result<Hierarchy, Unavailable> {
        // `hierarchy-id:controllers:path`
        let mut v1 = None;
        let mut v2 = None;
        for line in cgroup.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(id), Some(controllers), Some(path)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if controllers.split(',').any(|c| c == "memory") {
                v1 = Some(path.to_owned());
            } else if id == "0" && controllers.is_empty() {
                v2 = Some(path.to_owned());
            }
        }
        // `id parent dev root mountpoint options [optional...] - fstype source superoptions`
        let mut mount_v1 = None;
        let mut mount_v2 = None;
        for line in mountinfo.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let left: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            if left.len() < 5 || right.len() < 3 {
                continue;
            }
            let (root, point) = (left[3], unescape(left[4]));
            match right[0] {
                "cgroup" if right[2].split(',').any(|o| o == "memory") => {
                    mount_v1.get_or_insert((root.to_owned(), point));
                }
                "cgroup2" => {
                    mount_v2.get_or_insert((root.to_owned(), point));
                }
                _ => {}
            }
        }
        let (version, path, (root, point)) = match (v1, mount_v1, v2, mount_v2) {
            (Some(path), Some(mount), _, _) => (Version::V1, path, mount),
            (_, _, Some(path), Some(mount)) => (Version::V2, path, mount),
            _ => {
                return Err(Unavailable(
                    "no memory cgroup controller is mounted for this process".into(),
                ))
            }
        };
        // The path is relative to the mount's root when the mount shows
        // only part of the hierarchy (a cgroup namespace).
        let rel = path
            .strip_prefix(root.as_str())
            .filter(|_| root != "/")
            .unwrap_or(&path)
            .trim_start_matches('/');
        let mount = PathBuf::from(point);
        let own = if rel.is_empty() {
            mount.clone()
        } else {
            mount.join(rel)
        };
        Ok(Hierarchy {
            version,
            mount,
            own,
        })
    }

    /// A hierarchy at explicit paths (tests of the cgroupfs logic on plain
    /// files).
    pub fn at(version: Version, mount: PathBuf, own: PathBuf) -> Hierarchy {
        Hierarchy {
            version,
            mount,
            own,
        }
    }

    /// The interface version.
    pub fn version(&self) -> Version {
        self.version
    }

    /// jobmill's own cgroup directory.
    pub fn own(&self) -> &Path {
        &self.own
    }

    /// The smallest memory limit over jobmill's cgroup and its ancestors,
    /// in bytes; `None` when none is limited.
    pub fn effective_limit(&self) -> Option<u64> {
        effective_limit(self.version, &self.mount, &self.own)
    }

    /// Makes job cgroups possible: on v2, enables the `memory` controller
    /// for the children of jobmill's cgroup if it is not yet.
    ///
    /// # Errors
    ///
    /// The kernel refused (see the module documentation).
    pub fn prepare(&self) -> Result<(), Unavailable> {
        if self.version == Version::V1 {
            return Ok(());
        }
        let control = self.own.join("cgroup.subtree_control");
        let now = fs::read_to_string(&control)
            .map_err(|e| Unavailable(format!("cannot read {}: {e}", control.display())))?;
        if now.split_whitespace().any(|c| c == "memory") {
            return Ok(());
        }
        fs::write(&control, "+memory").map_err(|e| {
            Unavailable(format!(
                "cannot enable the memory controller in {}: {e} (run jobmill in a cgroup \
                 delegated to it, e.g. `systemd-run --user --scope -p Delegate=yes`)",
                control.display()
            ))
        })
    }

    /// Makes a job cgroup named `jobmill-<pid>-<n>` under jobmill's own,
    /// limited to `limit` bytes if given.
    ///
    /// # Errors
    ///
    /// The directory cannot be made, the limit cannot be set or
    /// `cgroup.procs` cannot be opened; the error names the cgroup.
    pub fn create(&self, limit: Option<u64>) -> io::Result<JobCgroup> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = self.own.join(format!("{PREFIX}{}-{n}", std::process::id()));
        let named = |e: io::Error, what: &str| {
            io::Error::new(
                e.kind(),
                format!("cgroup {}: cannot {what}: {e}", dir.display()),
            )
        };
        fs::create_dir(&dir).map_err(|e| named(e, "create it"))?;
        // From here the handle removes the directory, whatever fails next.
        let mut cg = JobCgroup {
            version: self.version,
            dir: dir.clone(),
            procs: None,
            limit,
            sampled_peak: AtomicU64::new(0),
            has_peak_file: false,
        };
        if let Some(limit) = limit {
            let mem = match self.version {
                Version::V1 => "memory.limit_in_bytes",
                Version::V2 => "memory.max",
            };
            fs::write(dir.join(mem), limit.to_string())
                .map_err(|e| named(e, &format!("set {mem}")))?;
            if self.version == Version::V2 {
                // No swapping around the limit, where swap is accounted.
                let _ = fs::write(dir.join("memory.swap.max"), "0");
            }
        }
        cg.has_peak_file = self.version == Version::V2 && dir.join("memory.peak").exists();
        let procs = fs::OpenOptions::new()
            .write(true)
            // Always there on cgroupfs; created on the plain files of tests.
            .create(true)
            .truncate(false)
            .open(dir.join("cgroup.procs"))
            .map_err(|e| named(e, "open cgroup.procs"))?;
        cg.procs = Some(OwnedFd::from(procs));
        Ok(cg)
    }

    /// Removes the job cgroups under jobmill's own left by jobmill
    /// processes that no longer exist (killed with `kill -9`), killing any
    /// process still in them. Returns how many were removed.
    pub fn remove_stale(&self) -> usize {
        let Ok(entries) = fs::read_dir(&self.own) else {
            return 0;
        };
        let mut removed = 0;
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(PREFIX)) else {
                continue;
            };
            let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            if Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
            if remove_dir(&e.path()).is_ok() {
                removed += 1;
            }
        }
        removed
    }
}

/// The smallest limit over `own` and its ancestors up to `mount`.
fn effective_limit(version: Version, mount: &Path, own: &Path) -> Option<u64> {
    let file = match version {
        Version::V1 => "memory.limit_in_bytes",
        Version::V2 => "memory.max",
    };
    own.ancestors()
        .take_while(|dir| dir.starts_with(mount))
        .filter_map(|dir| fs::read_to_string(dir.join(file)).ok())
        .filter_map(|text| parse_limit(&text))
        .min()
}

/// A limit file's value; `None` for "no limit" (`max`, or the kernel's huge
/// value) and for text that is no number.
pub fn parse_limit(text: &str) -> Option<u64> {
    let text = text.trim();
    if text == "max" {
        return None;
    }
    text.parse::<u64>().ok().filter(|&v| v < UNLIMITED_FROM)
}

/// The value of `key` in a flat-keyed file (`memory.stat`,
/// `memory.events`, `memory.oom_control`: `key value` lines).
pub fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Mount points in mountinfo escape spaces and a few other bytes as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            let oct = field.get(i + 1..i + 4).unwrap_or("");
            if let (3, Ok(v)) = (oct.len(), u8::from_str_radix(oct, 8)) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether the running kernel counts transparent huge pages apart from
/// `rss` in v1's `memory.stat` (before Linux 5.8).
fn thp_apart() -> bool {
    static APART: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *APART.get_or_init(|| {
        let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let mut nums = release
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse::<u32>().ok());
        let (major, minor) = (nums.next().unwrap_or(0), nums.next().unwrap_or(0));
        (major, minor) < (5, 8)
    })
}

/// What a job cgroup's counters say at the end of its attempt.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Processes of the cgroup killed by the OOM killer.
    pub oom_kills: u64,
    /// Times the cgroup's own limit was reached.
    pub limit_hits: u64,
    /// Peak memory of the whole tree in bytes (see the module
    /// documentation); 0 when nothing was measured.
    pub peak_bytes: u64,
}

/// One attempt's (or worker's) cgroup; removed on drop.
#[derive(Debug)]
pub struct JobCgroup {
    version: Version,
    dir: PathBuf,
    /// `cgroup.procs`, open for writing: the child joins through it.
    procs: Option<OwnedFd>,
    limit: Option<u64>,
    /// High-water mark of the sampled resident memory, bytes.
    sampled_peak: AtomicU64,
    /// v2 with `memory.peak`: no sampling needed.
    has_peak_file: bool,
}

impl JobCgroup {
    /// The cgroup's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cgroup's own limit, in bytes.
    pub fn limit(&self) -> Option<u64> {
        self.limit
    }

    /// `cgroup.procs`, open for writing: a child writes `0` to it to join.
    pub fn procs_fd(&self) -> Option<BorrowedFd<'_>> {
        self.procs.as_ref().map(|fd| fd.as_fd())
    }

    /// Whether [`JobCgroup::sample`] is needed for the peak (it is not when
    /// the kernel keeps `memory.peak`).
    pub fn needs_sampling(&self) -> bool {
        !self.has_peak_file
    }

    /// Reads the tree's resident memory now and keeps the high-water mark.
    pub fn sample(&self) {
        if self.has_peak_file {
            return;
        }
        let Ok(stat) = fs::read_to_string(self.dir.join("memory.stat")) else {
            return;
        };
        let now = match self.version {
            Version::V1 => {
                let rss = keyed(&stat, "rss").unwrap_or(0);
                if thp_apart() {
                    rss + keyed(&stat, "rss_huge").unwrap_or(0)
                } else {
                    rss
                }
            }
            Version::V2 => keyed(&stat, "anon").unwrap_or(0),
        };
        self.sampled_peak.fetch_max(now, Ordering::Relaxed);
    }

    /// The counters now (see [`Counters`]).
    pub fn counters(&self) -> Counters {
        let read = |f: &str| fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        let (oom_kills, limit_hits) = match self.version {
            // `failcnt` is not counted reliably by every kernel (6.18
            // leaves it at 0 when memory+swap is limited too); usage that
            // reached the limit says the same.
            Version::V1 => {
                let failcnt: u64 = read("memory.failcnt").trim().parse().unwrap_or(0);
                let reached = self.limit.is_some_and(|limit| {
                    read("memory.max_usage_in_bytes")
                        .trim()
                        .parse::<u64>()
                        .is_ok_and(|max| max >= limit)
                });
                (
                    keyed(&read("memory.oom_control"), "oom_kill").unwrap_or(0),
                    failcnt.max(u64::from(reached)),
                )
            }
            Version::V2 => {
                let events = read("memory.events");
                (
                    keyed(&events, "oom_kill").unwrap_or(0),
                    keyed(&events, "max").unwrap_or(0),
                )
            }
        };
        let kept = match self.version {
            Version::V2 => read("memory.peak").trim().parse::<u64>().ok(),
            Version::V1 => None,
        };
        let peak_bytes = kept.unwrap_or_else(|| self.sampled_peak.load(Ordering::Relaxed));
        Counters {
            oom_kills,
            limit_hits,
            peak_bytes,
        }
    }
}

impl Drop for JobCgroup {
    fn drop(&mut self) {
        self.procs = None;
        let _ = remove_dir(&self.dir);
    }
}

/// Removes a job cgroup: SIGKILL to every process still in it, `rmdir`
/// retried while busy, for at most [`REMOVE_FOR`].
fn remove_dir(dir: &Path) -> io::Result<()> {
    let deadline = Instant::now() + REMOVE_FOR;
    let mut pause = Duration::from_micros(200);
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => {}
        }
        // Busy: processes are still in it (dying, or left behind).
        if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
                if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
            }
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    //! The cgroupfs logic on plain files laid out like a cgroup v2 (and
    //! v1) hierarchy in a temporary directory; the real kernel paths are
    //! covered by `tests/cli_memory.rs`.
    use super::*;

    const MOUNTINFO_HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn v1_memory_controller_is_preferred_on_a_hybrid_layout() {
        let cgroup = "4:memory:/process_api/abc\n1:cpu:/\n0::/\n";
        let h = Hierarchy::detect_from(cgroup, MOUNTINFO_HYBRID).unwrap();
        assert_eq!(h.version(), Version::V1);
        assert_eq!(h.own(), Path::new("/sys/fs/cgroup/memory/process_api/abc"));
    }

    #[test]
    fn unified_only_layout_gives_v2_and_a_namespace_root_is_stripped() {
        let mountinfo = "30 23 0:26 /user.slice /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let h = Hierarchy::detect_from("0::/user.slice/job\n", mountinfo).unwrap();
        assert_eq!(h.version(), Version::V2);
        assert_eq!(h.own(), Path::new("/sys/fs/cgroup/job"));
        let err = Hierarchy::detect_from("1:cpu:/\n", MOUNTINFO_HYBRID).unwrap_err();
        assert!(err.0.contains("no memory cgroup"), "{err}");
    }

    #[test]
    fn mount_points_with_escaped_spaces_are_unescaped() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
    }

    #[test]
    fn limits_treat_max_and_the_kernels_huge_value_as_none() {
        assert_eq!(parse_limit("max\n"), None);
        assert_eq!(parse_limit("9223372036854771712\n"), None);
        assert_eq!(parse_limit("104857600\n"), Some(100 << 20));
        assert_eq!(parse_limit("junk"), None);
    }

    /// A fake v2 hierarchy: mount/parent/own, each with a `memory.max`.
    fn fake_v2(parent_max: &str, own_max: &str) -> (tempfile::TempDir, Hierarchy) {
        let tmp = tempfile::tempdir().unwrap();
        let mount = tmp.path().join("cg");
        let parent = mount.join("parent");
        let own = parent.join("own");
        fs::create_dir_all(&own).unwrap();
        fs::write(mount.join("cgroup.controllers"), "cpu memory\n").unwrap();
        fs::write(parent.join("memory.max"), parent_max).unwrap();
        fs::write(own.join("memory.max"), own_max).unwrap();
        fs::write(own.join("cgroup.subtree_control"), "").unwrap();
        (tmp, Hierarchy::at(Version::V2, mount, own))
    }

    #[test]
    fn v2_effective_limit_is_the_smallest_over_the_ancestors() {
        let (_t, h) = fake_v2("104857600\n", "max\n");
        assert_eq!(h.effective_limit(), Some(100 << 20));
        let (_t, h) = fake_v2("max\n", "max\n");
        assert_eq!(h.effective_limit(), None);
        let (_t, h) = fake_v2("209715200\n", "52428800\n");
        assert_eq!(h.effective_limit(), Some(50 << 20));
    }

    #[test]
    fn v2_prepare_enables_the_memory_controller_for_children() {
        let (_t, h) = fake_v2("max\n", "max\n");
        h.prepare().unwrap();
        let control = fs::read_to_string(h.own().join("cgroup.subtree_control")).unwrap();
        assert_eq!(control, "+memory");
    }

    #[test]
    fn v2_job_cgroup_gets_its_limit_no_swap_and_reads_events_and_peak() {
        let (_t, h) = fake_v2("max\n", "max\n");
        // On a plain directory the kernel's files do not appear by
        // themselves: the writes create them, and the reads find the files
        // a kernel would keep.
        let cg = h.create(Some(64 << 20)).unwrap();
        let dir = cg.dir().to_path_buf();
        assert!(dir
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with(&format!("jobmill-{}-", std::process::id())));
        assert_eq!(
            fs::read_to_string(dir.join("memory.max")).unwrap(),
            (64u64 << 20).to_string()
        );
        assert_eq!(
            fs::read_to_string(dir.join("memory.swap.max")).unwrap(),
            "0"
        );
        fs::write(
            dir.join("memory.events"),
            "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n",
        )
        .unwrap();
        fs::write(dir.join("memory.stat"), "anon 5000\nfile 99999\n").unwrap();
        cg.sample();
        assert_eq!(
            cg.counters(),
            Counters {
                oom_kills: 1,
                limit_hits: 12,
                peak_bytes: 5000
            }
        );
        // Where the kernel keeps `memory.peak`, it is the peak.
        fs::write(dir.join("memory.peak"), "7340032\n").unwrap();
        assert_eq!(cg.counters().peak_bytes, 7 << 20);
        // Files written by the test make the plain directory non-empty:
        // the handle's rmdir cannot succeed on it, so clean up by hand.
        std::mem::forget(cg);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn v1_limit_reached_counts_even_when_failcnt_stays_zero() {
        let tmp = tempfile::tempdir().unwrap();
        let mount = tmp.path().to_path_buf();
        let own = mount.join("own");
        fs::create_dir_all(&own).unwrap();
        fs::write(mount.join("memory.limit_in_bytes"), "9223372036854771712\n").unwrap();
        fs::write(own.join("memory.limit_in_bytes"), "209715200\n").unwrap();
        let h = Hierarchy::at(Version::V1, mount, own);
        assert_eq!(h.effective_limit(), Some(200 << 20));
        let cg = h.create(Some(64 << 20)).unwrap();
        let dir = cg.dir().to_path_buf();
        assert_eq!(
            fs::read_to_string(dir.join("memory.limit_in_bytes")).unwrap(),
            (64u64 << 20).to_string()
        );
        fs::write(
            dir.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
        )
        .unwrap();
        fs::write(dir.join("memory.failcnt"), "0\n").unwrap();
        fs::write(
            dir.join("memory.max_usage_in_bytes"),
            (64u64 << 20).to_string(),
        )
        .unwrap();
        fs::write(
            dir.join("memory.stat"),
            "cache 999999\nrss 4096\nrss_huge 0\n",
        )
        .unwrap();
        cg.sample();
        assert_eq!(
            cg.counters(),
            Counters {
                oom_kills: 1,
                limit_hits: 1,
                peak_bytes: 4096
            }
        );
        // Below the limit, with no failure counted: the limit was not hit.
        fs::write(dir.join("memory.max_usage_in_bytes"), "1000\n").unwrap();
        assert_eq!(cg.counters().limit_hits, 0);
        std::mem::forget(cg);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn keyed_files_are_read_by_exact_key() {
        let stat = "rss 100\nrss_huge 20\ntotal_rss 500\n";
        assert_eq!(keyed(stat, "rss"), Some(100));
        assert_eq!(keyed(stat, "rss_huge"), Some(20));
        assert_eq!(keyed(stat, "cache"), None);
        let oom = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(keyed(oom, "oom_kill"), Some(3));
    }
}

//! Process calls that no well-kept crate covers: `wait4` with resource usage.
//!
//! `rustix` waits for children but does not return their `rusage`, which
//! is where the peak resident set size of a finished job comes from.

use std::io;

/// What `wait4` reports about a reaped child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reaped {
    /// The raw wait status, to decode with
    /// [`std::os::unix::process::ExitStatusExt::from_raw`].
    pub status: i32,
    /// Peak resident set size of the child, in KiB (`ru_maxrss` on Linux).
    pub max_rss_kib: u64,
}

/// Blocks until the child `pid` has ended, reaps it and returns its status
/// and peak memory. Retries on `EINTR`.
///
/// # Errors
///
/// The OS error of `wait4`: `ECHILD` when `pid` is not an unreaped child
/// of this process (already reaped, or `SIGCHLD` is ignored).
pub fn wait4(pid: i32) -> io::Result<Reaped> {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: `rusage` is a plain C struct for which all-zero bytes are
        // a valid value.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `status` and `usage` are valid, writable and live for the
        // duration of the call; `wait4` writes only into them.
        let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if rc == pid {
            return Ok(Reaped {
                status,
                max_rss_kib: u64::try_from(usage.ru_maxrss).unwrap_or(0),
            });
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Reaps the child `pid` if it has ended (`WNOHANG`), with its status and
/// peak memory; `Ok(None)` while it runs. Retries on `EINTR`.
///
/// # Errors
///
/// As [`wait4`].
pub fn try_wait4(pid: i32) -> io::Result<Option<Reaped>> {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: `rusage` is a plain C struct for which all-zero bytes are
        // a valid value.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `status` and `usage` are valid, writable and live for the
        // duration of the call; `wait4` writes only into them.
        let rc = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if rc == pid {
            return Ok(Some(Reaped {
                status,
                max_rss_kib: u64::try_from(usage.ru_maxrss).unwrap_or(0),
            }));
        }
        if rc == 0 {
            return Ok(None);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Command, ExitStatus};

    #[test]
    #[allow(clippy::zombie_processes)] // reaped by `wait4` under test
    fn wait4_reports_exit_code_and_memory() {
        let child = Command::new("sh").args(["-c", "exit 7"]).spawn().unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        let reaped = wait4(pid).unwrap();
        assert_eq!(ExitStatus::from_raw(reaped.status).code(), Some(7));
        assert!(reaped.max_rss_kib > 0, "a shell uses some memory");
    }

    #[test]
    #[allow(clippy::zombie_processes)] // reaped by `try_wait4` under test
    fn try_wait4_is_none_while_the_child_runs_then_reaps_it() {
        let mut child = Command::new("sh")
            .args(["-c", "cat >/dev/null"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        assert_eq!(try_wait4(pid).unwrap(), None);
        drop(child.stdin.take());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let reaped = loop {
            if let Some(r) = try_wait4(pid).unwrap() {
                break r;
            }
            assert!(std::time::Instant::now() < deadline, "sh did not end");
            std::thread::yield_now();
        };
        assert_eq!(ExitStatus::from_raw(reaped.status).code(), Some(0));
        assert!(reaped.max_rss_kib > 0);
    }

    #[test]
    fn wait4_of_a_non_child_is_echild() {
        let err = wait4(1).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ECHILD));
    }
}

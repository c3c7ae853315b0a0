//! Finding processes by the marks jobmill puts in their environment, and
//! killing them.
//!
//! Every job carries `JOBMILL_GUARD=<token>` (one token per supervisor) and
//! `JOBMILL_GUARD_ID=<n>` (one number per attempt); its descendants inherit
//! both unless they clear their environment. A process that left the job's
//! process group (`setsid`, `setpgid`) escapes the group kill, but not a
//! search of `/proc/<pid>/environ` for these marks: the guardian searches
//! for the token when jobmill dies, and a finished attempt whose end looks
//! suspicious is swept for its token and number (see `super::supervisor`).
//!
//! `/proc/<pid>/environ` is the environment the process was started with
//! (what it passed to `execve`), so a process that changed its own
//! environment afterwards is still found; one that was started with a
//! cleared environment (`env -i`) is not. Processes of other users cannot
//! be read and are never touched. A zombie's environment reads as empty,
//! so dead processes are not found.

use std::collections::HashSet;
use std::fs::File;
use std::io::Read;

use rustix::process::{kill_process, kill_process_group, Pid, Signal};

/// A live process whose environment holds the marks searched for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Marked {
    pub pid: i32,
    /// Whether it leads its own process group (then the whole group is
    /// taken to be the job's: it was started by a process of the job).
    pub leader: bool,
}

/// The live processes (other than this one) whose environment holds every
/// entry of `needles` (each a whole `KEY=VALUE` entry).
pub(crate) fn marked(needles: &[&[u8]]) -> Vec<Marked> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    let me = std::process::id() as i32;
    let mut environ = Vec::with_capacity(4096);
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if pid <= 1 || pid == me {
            continue;
        }
        environ.clear();
        let read = File::open(format!("/proc/{pid}/environ"))
            .and_then(|mut f| f.read_to_end(&mut environ));
        if read.is_err() || environ.is_empty() {
            continue;
        }
        let all = needles
            .iter()
            .all(|needle| environ.split(|&b| b == 0).any(|v| v == *needle));
        if all {
            found.push(Marked {
                pid,
                leader: process_group_of(pid) == Some(pid),
            });
        }
    }
    found
}

/// The process group of `pid`, from `/proc/<pid>/stat` (the field after
/// the command name, which may hold spaces and parentheses).
pub(crate) fn process_group_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 1..];
    // State, parent, group.
    after_comm.split_whitespace().nth(2)?.parse().ok()
}

/// How many times [`kill_marked`] searches again for processes that a
/// marked process started while the previous search ran.
const MAX_ROUNDS: usize = 8;

/// Sends SIGKILL to every live process whose environment holds all of
/// `needles`, and to the process groups they lead; searches again until a
/// search finds no process it had not already killed (a process that
/// forked while it was searched), at most [`MAX_ROUNDS`] times. Returns
/// how many processes were found.
///
/// Known window, as for the guardian: a marked process that exits and
/// whose pid is reused between the search and the kill (microseconds)
/// would make the kill hit the new process.
pub(crate) fn kill_marked(needles: &[&[u8]]) -> usize {
    let mut killed: HashSet<i32> = HashSet::new();
    for _ in 0..MAX_ROUNDS {
        let found = marked(needles);
        let mut new = false;
        for m in found {
            new |= killed.insert(m.pid);
            let Some(pid) = Pid::from_raw(m.pid) else {
                continue;
            };
            if m.leader {
                let _ = kill_process_group(pid, Signal::KILL);
            }
            let _ = kill_process(pid, Signal::KILL);
        }
        if !new {
            break;
        }
    }
    killed.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_group_is_read_past_a_command_name_with_parentheses() {
        let me = std::process::id() as i32;
        let group = rustix::process::getpgrp().as_raw_nonzero().get();
        assert_eq!(process_group_of(me), Some(group));
    }

    #[test]
    fn marked_finds_only_processes_with_every_mark() {
        use std::process::Command;
        let token = format!("JOBMILL_TEST_MARK=sweep-{}", std::process::id());
        let mut both = Command::new("sleep")
            .arg("100")
            .env("JOBMILL_TEST_MARK", token.split_once('=').unwrap().1)
            .env("JOBMILL_TEST_ID", "1")
            .spawn()
            .unwrap();
        let mut other_id = Command::new("sleep")
            .arg("100")
            .env("JOBMILL_TEST_MARK", token.split_once('=').unwrap().1)
            .env("JOBMILL_TEST_ID", "2")
            .spawn()
            .unwrap();
        let needles: [&[u8]; 2] = [token.as_bytes(), b"JOBMILL_TEST_ID=1"];
        let found = marked(&needles);
        assert_eq!(
            found,
            vec![Marked {
                pid: both.id() as i32,
                leader: false
            }]
        );
        assert_eq!(kill_marked(&needles), 1);
        both.wait().unwrap();
        assert!(other_id.try_wait().unwrap().is_none(), "id 2 runs on");
        other_id.kill().unwrap();
        other_id.wait().unwrap();
    }
}

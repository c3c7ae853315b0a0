//! Starting a job's process with one `posix_spawnp` and nothing else.
//!
//! std's `Command` does the same system call, but around it, for every
//! job: it copies jobmill's whole environment into a map and rebuilds the
//! `envp` array from it (as soon as one variable is set, which jobmill
//! always does), opens `/dev/null`, and allocates the argument strings and
//! several vectors. [`Spawner`] builds the environment block once, keeps
//! one `/dev/null` descriptor open for all jobs, and reuses one scratch
//! buffer per thread for the per-job strings (arguments, per-job
//! variables) and pointer arrays, so that a spawn in steady state
//! allocates only what glibc's file actions allocate.
//!
//! What the child gets is exactly what jobmill's `Command` gave it:
//!
//! - its own process group (`POSIX_SPAWN_SETPGROUP`, group 0);
//! - stdin `/dev/null`, stdout and stderr the write ends of two new pipes
//!   (the read ends are returned; every descriptor is close-on-exec in
//!   jobmill, so concurrent spawns never inherit another job's pipes);
//! - `SIGPIPE` at its default action (`POSIX_SPAWN_SETSIGDEF`: the Rust
//!   runtime ignores it in jobmill, and ignored signals survive `exec`) and
//!   an empty signal mask (`POSIX_SPAWN_SETSIGMASK`); handled signals are
//!   reset by `exec` itself;
//! - the program looked up in jobmill's `PATH` (`posix_spawnp`; a name with
//!   a `/` is used as is), the arguments as bytes, unchanged;
//! - jobmill's environment as it was when the [`Spawner`] was made, with
//!   the per-spawn variables added or replacing those of the same name.
//!
//! A program that cannot be started (`ENOENT`, `EACCES`, `ENOEXEC`…) is an
//! error returned by `posix_spawnp` itself: glibc's child reports the
//! `exec` failure before the call returns.

use std::cell::RefCell;
use std::ffi::{c_char, OsStr, OsString};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{open, Mode, OFlags};
use rustix::io::fcntl_dupfd_cloexec;
use rustix::pipe::{pipe_with, PipeFlags};

/// A started child: its pid (also its process group id) and the read ends
/// of its stdout and stderr pipes. Reaping it is the caller's business.
#[derive(Debug)]
pub struct Spawned {
    /// The child's pid, which is also its process group id.
    pub pid: i32,
    /// The read end of its stdout pipe.
    pub stdout: OwnedFd,
    /// The read end of its stderr pipe.
    pub stderr: OwnedFd,
}

/// Starts job processes (see the module documentation). `Send + Sync`.
#[derive(Debug)]
pub struct Spawner {
    /// The environment block: `KEY=VALUE\0` entries back to back.
    env: Vec<u8>,
    /// Start and key length of each entry of `env`.
    entries: Vec<(usize, usize)>,
    /// `/dev/null`, read-only, close-on-exec, at a descriptor above 2.
    dev_null: OwnedFd,
}

/// Per-thread buffers reused by every spawn of the thread.
#[derive(Default)]
struct Scratch {
    /// Argument and per-spawn variable strings, NUL-terminated.
    strings: Vec<u8>,
    /// Offsets into `strings` of the arguments.
    args: Vec<usize>,
    /// Offsets into `strings` of the per-spawn variables, and key lengths.
    vars: Vec<(usize, usize)>,
    /// The `argv` and `envp` arrays, each closed by a null pointer.
    argv: Vec<*const c_char>,
    envp: Vec<*const c_char>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

impl Spawner {
    /// A spawner whose children get this process's environment as it is
    /// now, plus `fixed` (replacing variables of the same name).
    ///
    /// # Errors
    ///
    /// `/dev/null` cannot be opened, or a name or value in `fixed` holds a
    /// NUL byte (or a name is empty or holds `=`).
    pub fn new(fixed: &[(&str, &OsStr)]) -> io::Result<Self> {
        let dev_null = above_stdio(open(
            "/dev/null",
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )?)?;
        let mut env = Vec::with_capacity(4096);
        let mut entries = Vec::new();
        for &(key, value) in fixed {
            check_var(key.as_bytes(), value.as_bytes())?;
            entries.push((env.len(), key.len()));
            push_var(&mut env, key.as_bytes(), value.as_bytes());
        }
        let fixed_keys = entries.clone();
        for (key, value) in std::env::vars_os() {
            let (key, value) = (key.as_bytes(), value.as_bytes());
            // A variable std could not hand us cleanly is left out, as
            // `Command` leaves it out.
            if check_var(key, value).is_err()
                || fixed_keys
                    .iter()
                    .any(|&(start, len)| &env[start..start + len] == key)
            {
                continue;
            }
            entries.push((env.len(), key.len()));
            push_var(&mut env, key, value);
        }
        Ok(Self {
            env,
            entries,
            dev_null,
        })
    }

    /// Starts `argv[0]` (looked up in `PATH`) with the arguments `argv`,
    /// in a new process group, with the per-spawn variables `vars` added to
    /// the spawner's environment (replacing those of the same name).
    ///
    /// # Errors
    ///
    /// `InvalidInput` when `argv` is empty or an argument, name or value
    /// holds a NUL byte; otherwise the OS error of the pipes or of
    /// `posix_spawnp` (the `exec` error when the program cannot be run).
    pub fn spawn<'a>(
        &self,
        argv: &[OsString],
        vars: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> io::Result<Spawned> {
        if argv.is_empty() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty argv"));
        }
        SCRATCH.with(|scratch| {
            // A spawn never runs inside another on the same thread, but if
            // it ever did, a fresh buffer is correct too.
            match scratch.try_borrow_mut() {
                Ok(mut s) => self.spawn_with(&mut s, argv, vars),
                Err(_) => self.spawn_with(&mut Scratch::default(), argv, vars),
            }
        })
    }

    fn spawn_with<'a>(
        &self,
        s: &mut Scratch,
        argv: &[OsString],
        vars: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> io::Result<Spawned> {
        s.strings.clear();
        s.args.clear();
        s.vars.clear();
        for arg in argv {
            let arg = arg.as_bytes();
            if arg.contains(&0) {
                return Err(nul_error());
            }
            s.args.push(s.strings.len());
            s.strings.extend_from_slice(arg);
            s.strings.push(0);
        }
        for (key, value) in vars {
            check_var(key.as_bytes(), value)?;
            s.vars.push((s.strings.len(), key.len()));
            push_var(&mut s.strings, key.as_bytes(), value);
        }

        // The strings are complete: from here on they do not move, and the
        // pointers below stay valid until the end of this function.
        let strings = s.strings.as_ptr();
        s.argv.clear();
        // SAFETY (for every `add` below): each offset was recorded as the
        // start of a string pushed into the buffer, so it is in bounds.
        s.argv
            .extend(s.args.iter().map(|&at| unsafe { strings.add(at) }.cast()));
        s.argv.push(std::ptr::null());
        s.envp.clear();
        let env = self.env.as_ptr();
        let own = &s.strings;
        for &(start, len) in &self.entries {
            let key = &self.env[start..start + len];
            let replaced = s
                .vars
                .iter()
                .any(|&(at, klen)| klen == len && &own[at..at + klen] == key);
            if !replaced {
                // SAFETY: `start` is the start of an entry of `self.env`.
                s.envp.push(unsafe { env.add(start) }.cast());
            }
        }
        s.envp.extend(
            s.vars
                .iter()
                .map(|&(at, _)| unsafe { strings.add(at) }.cast()),
        );
        s.envp.push(std::ptr::null());

        let (out_r, out_w) = pipe_with(PipeFlags::CLOEXEC)?;
        let (err_r, err_w) = pipe_with(PipeFlags::CLOEXEC)?;
        let out_w = above_stdio(out_w)?;
        let err_w = above_stdio(err_w)?;

        let mut actions = FileActions::new()?;
        actions.dup2(&self.dev_null, 0)?;
        actions.dup2(&out_w, 1)?;
        actions.dup2(&err_w, 2)?;
        let attrs = Attrs::new()?;

        let mut pid: libc::pid_t = 0;
        // SAFETY: `argv` and `envp` are null-terminated arrays of pointers
        // to NUL-terminated strings in `s.strings` and `self.env`, which
        // are neither changed nor freed during the call; the file actions
        // and attributes are initialized and live until after it; `pid` is
        // a valid place to write. glibc's `posix_spawnp` runs the child on
        // its own stack with all signals blocked (`CLONE_VFORK`), so no
        // Rust code of ours runs in the child.
        let rc = unsafe {
            libc::posix_spawnp(
                &mut pid,
                s.argv[0],
                &actions.0,
                &attrs.0,
                s.argv.as_ptr().cast(),
                s.envp.as_ptr().cast(),
            )
        };
        drop((out_w, err_w));
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(Spawned {
            pid,
            stdout: above_stdio(out_r)?,
            stderr: above_stdio(err_r)?,
        })
    }
}

/// The error for a NUL byte inside an argument or variable (as std's).
fn nul_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "nul byte found in provided data",
    )
}

/// Refuses a variable that cannot be passed: NUL bytes, an empty name or
/// one holding `=`.
fn check_var(key: &[u8], value: &[u8]) -> io::Result<()> {
    if key.contains(&0) || value.contains(&0) {
        return Err(nul_error());
    }
    if key.is_empty() || key.contains(&b'=') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "environment variable name is empty or holds `=`",
        ));
    }
    Ok(())
}

/// Appends `KEY=VALUE\0` to `buf`.
fn push_var(buf: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    buf.reserve(key.len() + value.len() + 2);
    buf.extend_from_slice(key);
    buf.push(b'=');
    buf.extend_from_slice(value);
    buf.push(0);
}

/// `fd` itself, or when it is 0, 1 or 2 (this process started with a
/// standard stream closed) a close-on-exec duplicate above 2, so that the
/// child's `dup2` onto 0–2 never overwrites a descriptor still to be
/// duplicated.
fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        Ok(fd)
    } else {
        Ok(fcntl_dupfd_cloexec(&fd, 3)?)
    }
}

/// An initialized `posix_spawn_file_actions_t`, destroyed on drop.
struct FileActions(libc::posix_spawn_file_actions_t);

impl FileActions {
    fn new() -> io::Result<Self> {
        let mut raw = MaybeUninit::<libc::posix_spawn_file_actions_t>::uninit();
        // SAFETY: `init` initializes the object `raw` points to.
        let rc = unsafe { libc::posix_spawn_file_actions_init(raw.as_mut_ptr()) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        // SAFETY: initialized by the successful `init` above; the object
        // holds no pointer to itself, so it may move.
        Ok(Self(unsafe { raw.assume_init() }))
    }

    /// Adds `dup2(fd, target)` in the child.
    fn dup2(&mut self, fd: &OwnedFd, target: i32) -> io::Result<()> {
        // SAFETY: the object is initialized and exclusively borrowed; glibc
        // appends to the action list it owns. `fd` is open and stays open
        // until after the spawn.
        let rc =
            unsafe { libc::posix_spawn_file_actions_adddup2(&mut self.0, fd.as_raw_fd(), target) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(())
    }
}

impl Drop for FileActions {
    fn drop(&mut self) {
        // SAFETY: initialized in `new` and destroyed only here.
        unsafe { libc::posix_spawn_file_actions_destroy(&mut self.0) };
    }
}

/// An initialized `posix_spawnattr_t` with jobmill's attributes: own
/// process group, empty signal mask, SIGPIPE at its default action.
struct Attrs(libc::posix_spawnattr_t);

impl Attrs {
    fn new() -> io::Result<Self> {
        let mut raw = MaybeUninit::<libc::posix_spawnattr_t>::uninit();
        // SAFETY: `init` initializes the object `raw` points to.
        let rc = unsafe { libc::posix_spawnattr_init(raw.as_mut_ptr()) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        // SAFETY: initialized by the successful `init` above.
        let mut attrs = Self(unsafe { raw.assume_init() });
        let flags = libc::POSIX_SPAWN_SETPGROUP
            | libc::POSIX_SPAWN_SETSIGMASK
            | libc::POSIX_SPAWN_SETSIGDEF;
        // SAFETY: `sigemptyset`/`sigaddset` write only into the sigsets we
        // own; the setters copy from them into the initialized attribute
        // object, which nothing else uses.
        let rc = unsafe {
            let mut empty = MaybeUninit::<libc::sigset_t>::uninit();
            libc::sigemptyset(empty.as_mut_ptr());
            let mut pipe = MaybeUninit::<libc::sigset_t>::uninit();
            libc::sigemptyset(pipe.as_mut_ptr());
            libc::sigaddset(pipe.as_mut_ptr(), libc::SIGPIPE);
            let a = &mut attrs.0;
            [
                libc::posix_spawnattr_setflags(a, flags as libc::c_short),
                libc::posix_spawnattr_setpgroup(a, 0),
                libc::posix_spawnattr_setsigmask(a, empty.as_ptr()),
                libc::posix_spawnattr_setsigdefault(a, pipe.as_ptr()),
            ]
            .into_iter()
            .find(|&rc| rc != 0)
        };
        match rc {
            Some(rc) => Err(io::Error::from_raw_os_error(rc)),
            None => Ok(attrs),
        }
    }
}

impl Drop for Attrs {
    fn drop(&mut self) {
        // SAFETY: initialized in `new` and destroyed only here.
        unsafe { libc::posix_spawnattr_destroy(&mut self.0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn wait(pid: i32) -> i32 {
        let reaped = crate::sys::process::wait4(pid).unwrap();
        reaped.status
    }

    fn output(sp: Spawned) -> (Vec<u8>, Vec<u8>, i32) {
        let mut out = Vec::new();
        let mut err = Vec::new();
        std::fs::File::from(sp.stdout)
            .read_to_end(&mut out)
            .unwrap();
        std::fs::File::from(sp.stderr)
            .read_to_end(&mut err)
            .unwrap();
        (out, err, wait(sp.pid))
    }

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn the_child_has_its_own_group_null_stdin_and_default_sigpipe() {
        let spawner = Spawner::new(&[]).unwrap();
        let script = "ps -o pgid= -p $$; cat; grep SigIgn /proc/$$/status";
        let sp = spawner.spawn(&args(&["sh", "-c", script]), []).unwrap();
        let pid = sp.pid;
        let (out, _, status) = output(sp);
        assert_eq!(status, 0);
        let out = String::from_utf8(out).unwrap();
        let mut lines = out.lines();
        assert_eq!(lines.next().unwrap().trim(), pid.to_string(), "{out}");
        let ign = lines.next().unwrap();
        let mask = u64::from_str_radix(ign.split_whitespace().nth(1).unwrap(), 16).unwrap();
        assert_eq!(mask & (1 << (libc::SIGPIPE - 1)), 0, "SIGPIPE not ignored");
    }

    #[test]
    fn variables_are_added_and_replace_inherited_ones() {
        let spawner = Spawner::new(&[("JOBMILL_T_FIXED", OsStr::new("f"))]).unwrap();
        let sp = spawner
            .spawn(
                &args(&[
                    "sh",
                    "-c",
                    "printf '%s %s %s' \"$JOBMILL_T_FIXED\" \"$A\" \"$PATH\"",
                ]),
                [("A", &b"1"[..]), ("PATH", &b"/usr/bin:/bin"[..])],
            )
            .unwrap();
        let (out, _, _) = output(sp);
        assert_eq!(out, b"f 1 /usr/bin:/bin");
    }

    #[test]
    fn nul_bytes_and_missing_programs_are_errors() {
        let spawner = Spawner::new(&[]).unwrap();
        let err = spawner.spawn(&[OsString::from("a\0b")], []).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        let err = spawner
            .spawn(&args(&["true"]), [("K", &b"v\0"[..])])
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        let err = spawner
            .spawn(&args(&["jobmill-no-such-program-xyz"]), [])
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
    }
}

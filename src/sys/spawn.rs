//! Starting a job's process with one `posix_spawnp` and nothing else.
//!
//! std's `Command` does the same system call, but around it, for every
//! job: it copies jobmill's whole environment into a map and rebuilds the
//! `envp` array from it (as soon as one variable is set, which jobmill
//! always does), opens `/dev/null`, and allocates the argument strings and
//! several vectors. [`Spawner`] builds the environment block once, keeps
//! one `/dev/null` descriptor open for all jobs and one set of spawn
//! attributes, and reuses one scratch buffer per thread for the per-job
//! strings (arguments, per-job variables) and pointer arrays, and the
//! file actions of the last few descriptor numbers the thread's pipes
//! had, so that a spawn in steady state allocates nothing and makes no
//! system call besides its two `pipe2`, `posix_spawnp` and the `close`s
//! (new file actions cost glibc a `getrlimit` per descriptor of each
//! `dup2`: six system calls).
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
//!
//! **With a memory option** (`--mem-limit`, `--mem-per-job`) a job must
//! join its own cgroup before `exec` (cgroup v1 has no
//! `CLONE_INTO_CGROUP`), or get an `RLIMIT_AS`: [`Spawner::spawn_with_setup`]
//! then `fork`s and `exec`s itself, with the same argument and
//! environment arrays, the same descriptors, group and signal state, plus
//! a [`ChildSetup`] applied in the child (write `0` to the cgroup's
//! `cgroup.procs`, `setrlimit`). The child does only async-signal-safe
//! calls on memory prepared before the `fork`; an error in it (joining the
//! cgroup, `exec`) comes back through a close-on-exec pipe, as
//! `posix_spawnp` reports its own. Without a memory option this path is
//! never taken.
//!
//! What it saves is small next to a job's own cost. On 2,000 `true 1` jobs
//! at `-j2` (issue 10), `perf` puts about 87% of all CPU in the `true`
//! processes (exec, dynamic loading, exit), about 9% in the slot threads
//! (mostly the kernel side of clone, pipes, poll and pidfd; std's
//! `Command::spawn` itself was 0.5%), 2.5% in the journal's thread; per
//! job, `strace` shows std's extra `open`/`close` of `/dev/null` and two
//! `fcntl`s, gone here, against about 270 system calls of the child.

use std::cell::RefCell;
use std::ffi::{c_char, OsStr, OsString};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
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

/// What a child does between `fork` and `exec` when a memory option is on
/// (see the module documentation). The default does nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChildSetup<'a> {
    /// The `cgroup.procs` file of the cgroup the child joins (opened for
    /// writing by the parent); the child writes `0` to it (itself).
    pub cgroup_procs: Option<BorrowedFd<'a>>,
    /// An `RLIMIT_AS` (soft and hard) for the child, in bytes.
    pub rlimit_as: Option<u64>,
}

impl ChildSetup<'_> {
    /// Whether there is anything to do in the child.
    pub fn is_empty(&self) -> bool {
        self.cgroup_procs.is_none() && self.rlimit_as.is_none()
    }
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
    /// The spawn attributes, the same for every child (`posix_spawnp`
    /// only reads them).
    attrs: Attrs,
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
    /// File actions built for earlier spawns, by the descriptors they
    /// duplicate onto 0, 1 and 2 (see [`Scratch::actions_for`]).
    actions: Vec<([i32; 3], FileActions)>,
    /// The entry of `actions` the next new one replaces once it is full.
    next_evicted: usize,
}

/// File actions kept per thread. The pipes of a slot's jobs come back at
/// the same few descriptor numbers (the lowest free ones), so a handful
/// covers nearly every spawn; building them anew costs glibc a `getrlimit`
/// per descriptor of each `dup2` (six system calls) and an allocation.
const KEPT_ACTIONS: usize = 8;

impl Scratch {
    /// The index in `actions` of file actions that duplicate `fds` onto 0,
    /// 1 and 2: kept ones for the same descriptors, or new ones (then
    /// kept). Actions hold descriptor numbers only, so those built for the
    /// same numbers are the same.
    fn actions_for(&mut self, fds: [i32; 3]) -> io::Result<usize> {
        let at = match self.actions.iter().position(|(k, _)| *k == fds) {
            Some(at) => at,
            None => {
                let mut actions = FileActions::new()?;
                for (target, fd) in fds.into_iter().enumerate() {
                    actions.dup2(fd, target as i32)?;
                }
                if self.actions.len() < KEPT_ACTIONS {
                    self.actions.push((fds, actions));
                    self.actions.len() - 1
                } else {
                    let at = self.next_evicted;
                    self.next_evicted = (at + 1) % KEPT_ACTIONS;
                    self.actions[at] = (fds, actions);
                    at
                }
            }
        };
        Ok(at)
    }
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
            attrs: Attrs::new()?,
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
        self.spawn_with_setup(argv, vars, ChildSetup::default())
    }

    /// As [`Spawner::spawn`], with `setup` applied in the child before
    /// `exec`: a `fork` and `exec` of our own when `setup` is not empty
    /// (see the module documentation), `posix_spawnp` otherwise.
    ///
    /// # Errors
    ///
    /// As for [`Spawner::spawn`]; also the error of joining the cgroup or
    /// of `setrlimit` in the child.
    pub fn spawn_with_setup<'a>(
        &self,
        argv: &[OsString],
        vars: impl IntoIterator<Item = (&'a str, &'a [u8])>,
        setup: ChildSetup<'_>,
    ) -> io::Result<Spawned> {
        if argv.is_empty() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty argv"));
        }
        SCRATCH.with(|scratch| {
            // A spawn never runs inside another on the same thread, but if
            // it ever did, a fresh buffer is correct too.
            match scratch.try_borrow_mut() {
                Ok(mut s) => self.spawn_with(&mut s, argv, vars, setup),
                Err(_) => self.spawn_with(&mut Scratch::default(), argv, vars, setup),
            }
        })
    }

    fn spawn_with<'a>(
        &self,
        s: &mut Scratch,
        argv: &[OsString],
        vars: impl IntoIterator<Item = (&'a str, &'a [u8])>,
        setup: ChildSetup<'_>,
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

        if !setup.is_empty() {
            let pid = fork_exec(&s.argv, &s.envp, [&self.dev_null, &out_w, &err_w], setup)?;
            drop((out_w, err_w));
            return Ok(Spawned {
                pid,
                stdout: above_stdio(out_r)?,
                stderr: above_stdio(err_r)?,
            });
        }

        let fds = [
            self.dev_null.as_raw_fd(),
            out_w.as_raw_fd(),
            err_w.as_raw_fd(),
        ];
        let kept = s.actions_for(fds)?;
        let actions = &s.actions[kept].1;

        let mut pid: libc::pid_t = 0;
        // SAFETY: `argv` and `envp` are null-terminated arrays of pointers
        // to NUL-terminated strings in `s.strings` and `self.env`, which
        // are neither changed nor freed during the call; the file actions
        // and attributes are initialized and live until after it (the
        // actions name `fds`, which are open until after it); `pid` is a
        // valid place to write. glibc's `posix_spawnp` runs the child on
        // its own stack with all signals blocked (`CLONE_VFORK`), so no
        // Rust code of ours runs in the child.
        let rc = unsafe {
            libc::posix_spawnp(
                &mut pid,
                s.argv[0],
                &actions.0,
                &self.attrs.0,
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

/// Starts `argv[0]` with a `fork` and `exec` of our own, `setup` applied in
/// the child: its own process group, `stdio` as descriptors 0, 1 and 2,
/// `SIGPIPE` at its default action and an empty signal mask (what
/// [`Attrs`] gives `posix_spawnp`'s children). `argv` and `envp` are
/// null-terminated arrays of pointers to NUL-terminated strings that stay
/// valid during the call. Returns the child's pid once it has `exec`ed; an
/// error of the child (joining the cgroup, `setrlimit`, `exec`) is returned
/// after reaping it.
fn fork_exec(
    argv: &[*const c_char],
    envp: &[*const c_char],
    stdio: [&OwnedFd; 3],
    setup: ChildSetup<'_>,
) -> io::Result<i32> {
    // The child reports an error as its errno on this pipe; `exec` closes
    // the write end (close-on-exec), so end of file means success.
    let (err_r, err_w) = pipe_with(PipeFlags::CLOEXEC)?;
    let limit = setup.rlimit_as.map(|l| libc::rlimit {
        rlim_cur: l as libc::rlim_t,
        rlim_max: l as libc::rlim_t,
    });
    let procs = setup.cgroup_procs.map(|fd| fd.as_raw_fd());
    let fds = stdio.map(|fd| fd.as_raw_fd());
    let err_fd = err_w.as_raw_fd();
    // SAFETY: `sigfillset` and `pthread_sigmask` write only into the sigsets
    // we own. All signals are blocked across the `fork` so that no handler
    // of jobmill's runs in the child; the parent restores its mask at once.
    let old = unsafe {
        let mut all = MaybeUninit::<libc::sigset_t>::uninit();
        libc::sigfillset(all.as_mut_ptr());
        let mut old = MaybeUninit::<libc::sigset_t>::uninit();
        libc::pthread_sigmask(libc::SIG_SETMASK, all.as_ptr(), old.as_mut_ptr());
        old.assume_init()
    };
    // SAFETY: `fork` in a multi-threaded process: the child only makes
    // async-signal-safe calls (`setpgid`, `write`, `setrlimit`, `dup2`,
    // `sigaction`, `sigprocmask`, `execvpe`, `_exit`) on memory prepared
    // before the fork (the pointer arrays, `limit`, the descriptors), and
    // never returns into Rust code: it `exec`s or `_exit`s. (`execvpe` is
    // not on POSIX's list, but glibc's searches `PATH` in stack buffers and
    // allocates nothing, which is what `posix_spawnp`'s child does too.)
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: in the child, see above.
        unsafe { child_after_fork(argv, envp, fds, procs, limit, err_fd) }
    }
    let fork_error = io::Error::last_os_error();
    // SAFETY: restores the mask saved above, in the parent.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    drop(err_w);
    if pid < 0 {
        return Err(fork_error);
    }
    // End of file (the child `exec`ed) before four bytes: success.
    let mut errno = [0u8; 4];
    let mut got = 0;
    while got < errno.len() {
        match rustix::io::read(&err_r, &mut errno[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => break,
        }
    }
    if got < errno.len() {
        return Ok(pid);
    }
    // The child failed before `exec` and `_exit`ed: reap it.
    let _ = super::process::wait4(pid);
    Err(io::Error::from_raw_os_error(i32::from_ne_bytes(errno)))
}

/// The child's side of [`fork_exec`]: never returns.
///
/// # Safety
///
/// Only to be called in the child of a `fork`, with the arguments of
/// [`fork_exec`].
unsafe fn child_after_fork(
    argv: &[*const c_char],
    envp: &[*const c_char],
    fds: [i32; 3],
    procs: Option<i32>,
    limit: Option<libc::rlimit>,
    err_fd: i32,
) -> ! {
    let fail = |err_fd: i32| -> ! {
        let errno = *libc::__errno_location();
        let bytes = errno.to_ne_bytes();
        libc::write(err_fd, bytes.as_ptr().cast(), bytes.len());
        libc::_exit(127)
    };
    if libc::setpgid(0, 0) != 0 {
        fail(err_fd);
    }
    if let Some(fd) = procs {
        // `0` is the writing process itself (cgroup v1 and v2).
        if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
            fail(err_fd);
        }
    }
    if let Some(limit) = limit {
        if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
            fail(err_fd);
        }
    }
    for (target, fd) in fds.into_iter().enumerate() {
        // The sources are above 2 (`above_stdio`), so no `dup2` overwrites
        // a descriptor still to be duplicated; `dup2` clears close-on-exec.
        if libc::dup2(fd, target as i32) < 0 {
            fail(err_fd);
        }
    }
    // Handlers would be reset by `exec`, but a signal arriving between
    // unblocking and `exec` would run jobmill's handler in the child: reset
    // every handled signal first. SIGPIPE (ignored by the Rust runtime)
    // goes back to its default action, as `POSIX_SPAWN_SETSIGDEF` does.
    for sig in 1..32 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        let mut old = MaybeUninit::<libc::sigaction>::zeroed();
        if libc::sigaction(sig, std::ptr::null(), old.as_mut_ptr()) != 0 {
            continue;
        }
        let handler = old.assume_init().sa_sigaction;
        if sig == libc::SIGPIPE || (handler != libc::SIG_DFL && handler != libc::SIG_IGN) {
            let mut dfl = MaybeUninit::<libc::sigaction>::zeroed();
            (*dfl.as_mut_ptr()).sa_sigaction = libc::SIG_DFL;
            libc::sigaction(sig, dfl.as_ptr(), std::ptr::null_mut());
        }
    }
    let mut empty = MaybeUninit::<libc::sigset_t>::uninit();
    libc::sigemptyset(empty.as_mut_ptr());
    libc::sigprocmask(libc::SIG_SETMASK, empty.as_ptr(), std::ptr::null_mut());
    libc::execvpe(argv[0], argv.as_ptr(), envp.as_ptr());
    fail(err_fd)
}

/// Applies `setup` in the child of `cmd` before its `exec` (long-lived
/// workers, started by std's `Command`, which already forks): joins the
/// cgroup and sets the `RLIMIT_AS`. The caller keeps the cgroup's
/// descriptor open until the child is spawned.
pub fn setup_in_child(cmd: &mut std::process::Command, setup: ChildSetup<'_>) {
    use std::os::unix::process::CommandExt;
    if setup.is_empty() {
        return;
    }
    let procs = setup.cgroup_procs.map(|fd| fd.as_raw_fd());
    let limit = setup.rlimit_as.map(|l| libc::rlimit {
        rlim_cur: l as libc::rlim_t,
        rlim_max: l as libc::rlim_t,
    });
    // SAFETY: the closure runs in the child between fork and exec; it only
    // calls `write` and `setrlimit`, which are async-signal-safe, on values
    // copied into it, and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(fd) = procs {
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            if let Some(limit) = limit {
                if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
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

    /// Adds `dup2(fd, target)` in the child. `fd` is only a number here:
    /// the caller spawns with these actions only while `fd` is open.
    fn dup2(&mut self, fd: i32, target: i32) -> io::Result<()> {
        // SAFETY: the object is initialized and exclusively borrowed; glibc
        // appends to the action list it owns (it records the numbers only).
        let rc = unsafe { libc::posix_spawn_file_actions_adddup2(&mut self.0, fd, target) };
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

impl std::fmt::Debug for Attrs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Attrs")
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
    use std::os::fd::AsFd;

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
    fn kept_file_actions_give_each_child_its_own_pipes() {
        // Sequential spawns get their pipes at the same descriptors (kept
        // actions reused); spawns while earlier pipes are held get new
        // ones (more numbers than are kept: entries replaced). Every child
        // writes to its own pipes either way.
        let spawner = Spawner::new(&[]).unwrap();
        let script = "printf 'out %s' \"$1\"; printf 'err %s' \"$1\" >&2";
        for i in 0..6 {
            let sp = spawner
                .spawn(&args(&["sh", "-c", script, "sh", &i.to_string()]), [])
                .unwrap();
            let (out, err, status) = output(sp);
            assert_eq!(status, 0);
            assert_eq!(out, format!("out {i}").into_bytes());
            assert_eq!(err, format!("err {i}").into_bytes());
        }
        let held: Vec<Spawned> = (0..2 * KEPT_ACTIONS)
            .map(|i| {
                spawner
                    .spawn(&args(&["sh", "-c", script, "sh", &i.to_string()]), [])
                    .unwrap()
            })
            .collect();
        for (i, sp) in held.into_iter().enumerate() {
            let (out, err, status) = output(sp);
            assert_eq!(status, 0);
            assert_eq!(out, format!("out {i}").into_bytes());
            assert_eq!(err, format!("err {i}").into_bytes());
        }
        SCRATCH.with(|s| assert_eq!(s.borrow().actions.len(), KEPT_ACTIONS));
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
    fn the_fork_path_gives_the_same_child_plus_its_setup() {
        // A regular file stands in for `cgroup.procs`: the child writes
        // `0` (itself) to it before `exec`.
        let procs = tempfile::tempfile().unwrap();
        let fd = OwnedFd::from(procs.try_clone().unwrap());
        let spawner = Spawner::new(&[("JOBMILL_T_FIXED", OsStr::new("f"))]).unwrap();
        let script = "ps -o pgid= -p $$; cat; grep SigIgn /proc/$$/status; \
                      ulimit -v; printf '%s %s\n' \"$JOBMILL_T_FIXED\" \"$A\"";
        let sp = spawner
            .spawn_with_setup(
                &args(&["sh", "-c", script]),
                [("A", &b"1"[..])],
                ChildSetup {
                    cgroup_procs: Some(fd.as_fd()),
                    rlimit_as: Some(512 << 20),
                },
            )
            .unwrap();
        let pid = sp.pid;
        let (out, err, status) = output(sp);
        assert_eq!(status, 0, "{}", String::from_utf8_lossy(&err));
        let out = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0].trim(), pid.to_string(), "{out}");
        let mask = u64::from_str_radix(lines[1].split_whitespace().nth(1).unwrap(), 16).unwrap();
        assert_eq!(mask & (1 << (libc::SIGPIPE - 1)), 0, "SIGPIPE not ignored");
        assert_eq!(lines[2], (512 * 1024).to_string(), "RLIMIT_AS in KiB");
        assert_eq!(lines[3], "f 1");
        drop(fd);
        let mut joined = String::new();
        let mut f = procs;
        use std::io::Seek;
        f.rewind().unwrap();
        f.read_to_string(&mut joined).unwrap();
        assert_eq!(joined, "0");
    }

    #[test]
    fn the_fork_path_reports_a_missing_program_and_a_failed_join() {
        let spawner = Spawner::new(&[]).unwrap();
        let limit = ChildSetup {
            cgroup_procs: None,
            rlimit_as: Some(1 << 30),
        };
        let err = spawner
            .spawn_with_setup(&args(&["jobmill-no-such-program-xyz"]), [], limit)
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
        // A read-only descriptor cannot be written: the join fails in the
        // child and comes back as the spawn's error.
        let ro = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        let join = ChildSetup {
            cgroup_procs: Some(ro.as_fd()),
            rlimit_as: None,
        };
        let err = spawner
            .spawn_with_setup(&args(&["true"]), [], join)
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EBADF));
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

//! Starting a job's process with one `clone(CLONE_VM | CLONE_VFORK)` and
//! an `exec`, and nothing else.
//!
//! std's `Command` does the same system calls, but around them, for every
//! job: it copies jobmill's whole environment into a map and rebuilds the
//! `envp` array from it (as soon as one variable is set, which jobmill
//! always does), opens `/dev/null`, and allocates the argument strings and
//! several vectors. [`Spawner`] builds the environment block once, keeps
//! one `/dev/null` descriptor open for all jobs, and reuses per thread one
//! scratch buffer for the per-job strings (arguments, per-job variables)
//! and pointer arrays, and one stack for the child, so that a spawn in
//! steady state allocates nothing and makes no system call besides its two
//! `pipe2`, the `clone`, two `pthread_sigmask` and the `close`s.
//!
//! Why not `posix_spawnp`: glibc's maps a new stack for every child and
//! unmaps it after, and the unmapping of memory shared by several threads
//! sends every other CPU running one of them an interrupt to flush its TLB
//! and waits for it. On 2,000 `true 1` jobs at `-j2`, `perf` put a third of
//! the slot threads' CPU in that `munmap`; a C loop of `clone` on a reused
//! stack took 5–10% less time than the same loop of `posix_spawnp` here.
//!
//! The child (`child_main`) runs on the thread's reused stack, in the
//! parent's memory, while the parent waits in `clone` until it has
//! `exec`ed or exited (`CLONE_VFORK`). It makes only async-signal-safe
//! system calls on memory prepared before the `clone`, allocates nothing
//! and never returns into Rust code. What it gets is exactly what
//! jobmill's `Command` gave it:
//!
//! - its own process group (`setpgid(0, 0)`);
//! - stdin `/dev/null`, stdout and stderr the write ends of two new pipes
//!   (the read ends are returned; every descriptor is close-on-exec in
//!   jobmill, so concurrent spawns never inherit another job's pipes);
//! - every signal that jobmill handles, and `SIGPIPE` (which the Rust
//!   runtime ignores, and ignored signals survive `exec`), at its default
//!   action, and an empty signal mask. All signals are blocked in the
//!   parent across the `clone`, so no handler of jobmill's ever runs in the
//!   child, whose memory is jobmill's;
//! - the program looked up in jobmill's `PATH` as it was when the
//!   [`Spawner`] was made, as `execvp` does but without its fallback of
//!   running a file that is not an executable through `/bin/sh` (what
//!   `posix_spawnp` does too): a name with a `/` is used as is;
//! - the arguments as bytes, unchanged;
//! - jobmill's environment as it was when the [`Spawner`] was made, with
//!   the per-spawn variables added or replacing those of the same name.
//!
//! A program that cannot be started (`ENOENT`, `EACCES`, `ENOEXEC`…) is an
//! error returned by the spawn itself: the child leaves its `errno` in the
//! shared memory before it exits, and the parent reaps it.
//!
//! **With a memory option** (`--mem-limit`, `--mem-per-job`) a job must
//! join its own cgroup before `exec` (cgroup v1 has no
//! `CLONE_INTO_CGROUP`), or get an `RLIMIT_AS`: [`ChildSetup`] then has
//! the child write `0` to the cgroup's `cgroup.procs` and call `setrlimit`
//! before its `exec`, on the same path.

use std::cell::RefCell;
use std::ffi::{c_char, OsStr, OsString};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

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
    /// Where programs are looked up: jobmill's `PATH` when the spawner was
    /// made (`/bin:/usr/bin` without one, as glibc's `execvp`).
    path: Vec<u8>,
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
    /// Where the child builds each `PATH` entry joined with the program
    /// name: room for the longest.
    candidate: Vec<u8>,
    /// The child's stack ([`CHILD_STACK`] bytes once used).
    stack: Vec<u8>,
}

/// The size of the child's stack. The child's own frames take a few
/// hundred bytes and `exec` takes its arguments from the heap; glibc's
/// `posix_spawn` gives its child 32 KiB plus the argument pointers.
const CHILD_STACK: usize = 64 << 10;

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
        let path = std::env::var_os("PATH")
            .map(|p| p.into_vec())
            .unwrap_or_else(|| b"/bin:/usr/bin".to_vec());
        Ok(Self {
            env,
            entries,
            dev_null,
            path,
        })
    }

    /// Starts `argv[0]` (looked up in `PATH`) with the arguments `argv`,
    /// in a new process group, with the per-spawn variables `vars` added to
    /// the spawner's environment (replacing those of the same name).
    ///
    /// # Errors
    ///
    /// `InvalidInput` when `argv` is empty or an argument, name or value
    /// holds a NUL byte; otherwise the OS error of the pipes or of the
    /// `clone`, or the `exec` error when the program cannot be run.
    pub fn spawn<'a>(
        &self,
        argv: &[OsString],
        vars: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> io::Result<Spawned> {
        self.spawn_with_setup(argv, vars, ChildSetup::default())
    }

    /// As [`Spawner::spawn`], with `setup` applied in the child before
    /// `exec` (see the module documentation).
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

        let name = &s.strings[s.args[0]..s.args[0] + argv[0].len()];
        let need = self.path.len() + name.len() + 2;
        if s.candidate.len() < need {
            s.candidate.resize(need, 0);
        }
        if s.stack.len() < CHILD_STACK {
            s.stack.resize(CHILD_STACK, 0);
        }
        let mut child = Child {
            argv: s.argv.as_ptr(),
            envp: s.envp.as_ptr(),
            name: name.as_ptr(),
            name_len: name.len(),
            path: self.path.as_ptr(),
            path_len: self.path.len(),
            candidate: s.candidate.as_mut_ptr(),
            fds: [
                self.dev_null.as_raw_fd(),
                out_w.as_raw_fd(),
                err_w.as_raw_fd(),
            ],
            setup: Prepared::of(setup),
            errno: 0,
        };
        let pid = clone_exec(&mut child, &mut s.stack);
        drop((out_w, err_w));
        let pid = pid?;
        Ok(Spawned {
            pid,
            stdout: above_stdio(out_r)?,
            stderr: above_stdio(err_r)?,
        })
    }
}

/// What the child of a spawn needs, prepared by the parent: every pointer
/// points into memory that stays put and unchanged until the child has
/// `exec`ed or exited (the parent waits in `clone` until then).
struct Child {
    /// The `argv` array, closed by a null pointer.
    argv: *const *const c_char,
    /// The `envp` array, closed by a null pointer.
    envp: *const *const c_char,
    /// The program name (`argv[0]`, without its NUL).
    name: *const u8,
    name_len: usize,
    /// jobmill's `PATH`.
    path: *const u8,
    path_len: usize,
    /// Room for `PATH`'s longest entry, a `/`, the name and a NUL.
    candidate: *mut u8,
    /// The descriptors that become the child's 0, 1 and 2 (all above 2).
    fds: [i32; 3],
    /// What to do before `exec` besides the above.
    setup: Prepared,
    /// Written by the child when it fails before `exec`: its `errno`.
    errno: i32,
}

/// Starts the child of `child` on `stack` and waits until it has `exec`ed
/// or failed: its pid, or the error it failed with (it is reaped then).
fn clone_exec(child: &mut Child, stack: &mut [u8]) -> io::Result<i32> {
    // The stack grows down from its end, which must be 16-byte aligned.
    let top = (stack.as_mut_ptr() as usize + stack.len()) & !15;
    // SAFETY: `sigfillset` and `pthread_sigmask` write only into the sigsets
    // we own. All signals are blocked across the `clone` so that no handler
    // of jobmill's runs in the child (in jobmill's memory); the parent
    // restores its mask as soon as `clone` returns.
    let old = unsafe {
        let mut all = MaybeUninit::<libc::sigset_t>::uninit();
        libc::sigfillset(all.as_mut_ptr());
        let mut old = MaybeUninit::<libc::sigset_t>::uninit();
        libc::pthread_sigmask(libc::SIG_SETMASK, all.as_ptr(), old.as_mut_ptr());
        old.assume_init()
    };
    // SAFETY: `child_main` runs in the new process on `stack`, which this
    // thread owns and does not touch until `clone` returns (`CLONE_VFORK`
    // suspends it until the child `exec`s or exits); `top` lies within it,
    // aligned. The child reads `child` and the memory its pointers name,
    // all valid and unchanged meanwhile, writes only `child.errno` and the
    // `candidate` buffer, and makes only async-signal-safe system calls
    // (see `child_main`). Exit signal `SIGCHLD`: reaped like any child.
    let pid = unsafe {
        libc::clone(
            child_main,
            top as *mut libc::c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            (child as *mut Child).cast(),
        )
    };
    let clone_error = io::Error::last_os_error();
    // SAFETY: restores the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    if pid < 0 {
        return Err(clone_error);
    }
    // SAFETY: the child is done with `child` (it `exec`ed or exited): a
    // plain read of a field it may have written.
    let errno = unsafe { std::ptr::read_volatile(&child.errno) };
    if errno != 0 {
        let _ = super::process::wait4(pid);
        return Err(io::Error::from_raw_os_error(errno));
    }
    Ok(pid)
}

/// The child's side of [`clone_exec`]: sets up the new process and
/// `exec`s the program, or leaves its `errno` in `Child::errno` and exits
/// 127. Never returns.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `Child` that `clone_exec` passed, valid and not
    // used by anyone else until this process `exec`s or exits. Every call
    // below is an async-signal-safe system call wrapper, on memory prepared
    // before the `clone`; nothing here allocates, panics or unwinds.
    unsafe {
        let c = &mut *arg.cast::<Child>();
        let fail = |c: &mut Child| -> ! {
            std::ptr::write_volatile(&mut c.errno, *libc::__errno_location());
            libc::_exit(127)
        };
        if libc::setpgid(0, 0) != 0 {
            fail(c);
        }
        if !c.setup.apply() {
            fail(c);
        }
        for target in 0..3 {
            // The sources are above 2 (`above_stdio`), so no `dup2`
            // overwrites a descriptor still to be duplicated; `dup2`
            // clears close-on-exec.
            if libc::dup2(c.fds[target], target as i32) < 0 {
                fail(c);
            }
        }
        // Handlers would be reset by `exec`, but a signal arriving between
        // unblocking and `exec` would run jobmill's handler in the child
        // (in jobmill's memory): reset every handled signal first. SIGPIPE
        // (ignored by the Rust runtime) goes back to its default action.
        for sig in 1..32 {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            let mut old = MaybeUninit::<libc::sigaction>::zeroed();
            if libc::sigaction(sig, std::ptr::null(), old.as_mut_ptr()) != 0 {
                continue;
            }
            let handler = (*old.as_ptr()).sa_sigaction;
            if sig == libc::SIGPIPE || (handler != libc::SIG_DFL && handler != libc::SIG_IGN) {
                let mut dfl = MaybeUninit::<libc::sigaction>::zeroed();
                (*dfl.as_mut_ptr()).sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, dfl.as_ptr(), std::ptr::null_mut());
            }
        }
        let mut empty = MaybeUninit::<libc::sigset_t>::uninit();
        libc::sigemptyset(empty.as_mut_ptr());
        libc::sigprocmask(libc::SIG_SETMASK, empty.as_ptr(), std::ptr::null_mut());
        exec_path(c);
        fail(c)
    }
}

/// `execvp` without its `/bin/sh` fallback: `execve` of the name as is
/// when it holds a `/`, else of each `PATH` entry joined with it (an empty
/// entry is the current directory) until one starts. Returns only when
/// none did, with `errno` set: `EACCES` if some entry was found but not
/// executable, else the last error of a kind that lets the search go on
/// (`ENOENT`…), or at once the first error of another kind (`ENOEXEC`,
/// `E2BIG`…).
///
/// # Safety
///
/// Only in the child of [`clone_exec`], with the `Child` it passed.
unsafe fn exec_path(c: &mut Child) {
    let name = std::slice::from_raw_parts(c.name, c.name_len);
    if name.is_empty() {
        *libc::__errno_location() = libc::ENOENT;
        return;
    }
    if name.contains(&b'/') {
        libc::execve(*c.argv, c.argv, c.envp);
        return;
    }
    let path = std::slice::from_raw_parts(c.path, c.path_len);
    let mut eacces = false;
    for dir in path.split(|&b| b == b':') {
        let mut at = 0;
        if !dir.is_empty() {
            std::ptr::copy_nonoverlapping(dir.as_ptr(), c.candidate, dir.len());
            *c.candidate.add(dir.len()) = b'/';
            at = dir.len() + 1;
        }
        std::ptr::copy_nonoverlapping(name.as_ptr(), c.candidate.add(at), name.len());
        *c.candidate.add(at + name.len()) = 0;
        libc::execve(c.candidate.cast(), c.argv, c.envp);
        match *libc::__errno_location() {
            libc::EACCES => eacces = true,
            libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ENODEV | libc::ETIMEDOUT => {}
            _ => return,
        }
    }
    if eacces {
        *libc::__errno_location() = libc::EACCES;
    }
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
    let prepared = Prepared::of(setup);
    // SAFETY: the closure runs in the child between fork and exec; it only
    // calls `Prepared::apply` (async-signal-safe, see there) on a value
    // copied into it, and allocates nothing on success.
    unsafe {
        cmd.pre_exec(move || {
            if prepared.apply() {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        });
    }
}

/// A [`ChildSetup`] as plain values the child can use after `fork` or
/// `clone`: the one place where a child joins its cgroup and takes its
/// `RLIMIT_AS`.
#[derive(Clone, Copy)]
struct Prepared {
    /// The `cgroup.procs` descriptor to write `0` to, or -1.
    procs: i32,
    /// The `RLIMIT_AS` to set, if any.
    limit: Option<libc::rlimit>,
}

impl Prepared {
    fn of(setup: ChildSetup<'_>) -> Prepared {
        Prepared {
            procs: setup.cgroup_procs.map_or(-1, |fd| fd.as_raw_fd()),
            limit: setup.rlimit_as.map(|l| libc::rlimit {
                rlim_cur: l as libc::rlim_t,
                rlim_max: l as libc::rlim_t,
            }),
        }
    }

    /// Joins the cgroup and sets the limit, in the child before `exec`:
    /// `false`, with `errno` set, if either failed. Only async-signal-safe
    /// system calls (`write`, `setrlimit`), no allocation.
    fn apply(&self) -> bool {
        // SAFETY: `write` of a static byte to a descriptor number, and
        // `setrlimit` of a value we own: neither touches other memory.
        unsafe {
            // `0` is the writing process itself (cgroup v1 and v2).
            if self.procs >= 0 && libc::write(self.procs, b"0".as_ptr().cast(), 1) != 1 {
                return false;
            }
            if let Some(limit) = &self.limit {
                if libc::setrlimit(libc::RLIMIT_AS, limit) != 0 {
                    return false;
                }
            }
        }
        true
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
    fn each_child_writes_to_its_own_pipes_whether_earlier_ones_are_held_or_not() {
        // Sequential spawns get their pipes at the same descriptors (and
        // reuse the thread's stack); spawns while earlier pipes are held
        // get new ones. Every child writes to its own pipes either way.
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
        let held: Vec<Spawned> = (0..16)
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
    }

    #[test]
    fn the_path_search_skips_what_cannot_run_and_never_falls_back_to_a_shell() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (plain, runnable) = (dir.path().join("plain"), dir.path().join("runnable"));
        std::fs::create_dir_all(&plain).unwrap();
        std::fs::create_dir_all(&runnable).unwrap();
        let write = |path: &std::path::Path, text: &str, mode: u32| {
            std::fs::write(path, text).unwrap();
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        // Found first, but not executable: skipped, as `execvp` does.
        write(&plain.join("jm-tool"), "#!/bin/sh\necho plain\n", 0o644);
        write(
            &runnable.join("jm-tool"),
            "#!/bin/sh\necho runnable\n",
            0o755,
        );
        // Executable but neither a binary nor a script: not run by a shell.
        write(
            &runnable.join("jm-noshebang"),
            "echo ran by a shell\n",
            0o755,
        );

        let mut spawner = Spawner::new(&[]).unwrap();
        let mut path = b"/jobmill-no-such-dir:".to_vec();
        path.extend_from_slice(plain.as_os_str().as_bytes());
        path.push(b':');
        path.extend_from_slice(runnable.as_os_str().as_bytes());
        spawner.path = path;
        let (out, _, status) = output(spawner.spawn(&args(&["jm-tool"]), []).unwrap());
        assert_eq!((out, status), (b"runnable\n".to_vec(), 0));

        let err = spawner.spawn(&args(&["jm-noshebang"]), []).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOEXEC));

        spawner.path = plain.as_os_str().as_bytes().to_vec();
        let err = spawner.spawn(&args(&["jm-tool"]), []).unwrap_err();
        assert_eq!(
            err.raw_os_error(),
            Some(libc::EACCES),
            "found but not executable"
        );
        let err = spawner.spawn(&args(&["jm-missing"]), []).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));

        // A name with a slash is used as it is, never looked up.
        let tool = runnable.join("jm-tool");
        let (out, _, _) = output(spawner.spawn(&[tool.into_os_string()], []).unwrap());
        assert_eq!(out, b"runnable\n");
        let err = spawner.spawn(&args(&["./jm-tool"]), []).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
    }

    #[test]
    fn the_child_blocks_no_signal_even_when_the_spawning_thread_blocks_some() {
        // The parent blocks every signal across the `clone`; the child
        // must start its program with an empty mask all the same.
        // SAFETY: changes this test thread's own mask only.
        unsafe {
            let mut set = MaybeUninit::<libc::sigset_t>::uninit();
            libc::sigemptyset(set.as_mut_ptr());
            libc::sigaddset(set.as_mut_ptr(), libc::SIGUSR2);
            libc::pthread_sigmask(libc::SIG_BLOCK, set.as_ptr(), std::ptr::null_mut());
        }
        let spawner = Spawner::new(&[]).unwrap();
        // Not through `sh`, which clears its own mask when it starts.
        let grep = args(&["grep", "SigBlk", "/proc/self/status"]);
        let (out, _, status) = output(spawner.spawn(&grep, []).unwrap());
        assert_eq!(status, 0);
        let out = String::from_utf8(out).unwrap();
        let mask = u64::from_str_radix(out.split_whitespace().nth(1).unwrap(), 16).unwrap();
        assert_eq!(mask, 0, "{out}");
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
    fn a_setup_joins_the_cgroup_and_sets_the_limit_in_an_otherwise_identical_child() {
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
    fn a_setup_reports_a_missing_program_and_a_failed_join() {
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

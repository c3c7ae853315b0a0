//! A worker process's life cycle: spawning, the handshake, the conversation
//! (feeder and reader), reaping, and the slot loop that replaces workers.

use std::collections::VecDeque;
use std::io::Write;
use std::mem::Discriminant;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::exec::memory::{self, AttemptMemory};
use crate::job::{signal_name, FailReason, WorkerId};
use crate::protocol::io::FrameReader;
use crate::protocol::{
    decode, encode, Decoded, Frame, Refuse, Welcome, ARENA_FD_ENV, CAP_ARENA, CAP_RUNNING_PAGE,
    FD_ENV, MIN_VERSION, STATE_FD_ENV, VERSION,
};
use crate::queue::QueueError;
use crate::sys::shm::{Arena, SharedPage};

use super::link::{Flight, Link, Writer};
use super::output::{Gate, Pipe};
use super::read::read_error;
use super::{Ctx, SlotEnd, StopLevel, StopSource, Stream, WorkerEvent, TICK};
use crate::arena::Extents;

/// How one worker incarnation ended.
pub(super) enum Ended {
    /// Told CLOSED, channel ended: the normal end.
    Closed,
    /// Channel ended without CLOSED.
    Eof,
    /// Channel ended before the handshake.
    EarlyExit,
    /// No HELLO within the handshake deadline.
    NoHello(Duration),
    /// The worker speaks another protocol version; it was sent REFUSE and
    /// is given time to exit and say why.
    Refused(String),
    /// The worker broke the protocol.
    Protocol(String),
    /// The channel failed.
    Io(String),
    /// The oldest job ran past the timeout.
    Timeout,
    /// No heartbeat.
    Silent,
    /// Stop::kill.
    Killed,
    /// The queue backend failed.
    Queue(QueueError),
}

/// A spawned, not yet handshaken worker.
pub(super) struct Proc {
    pub(super) child: Child,
    pub(super) pid: u32,
    /// The worker's state page (the id of the job it runs), used once the
    /// worker has offered it in HELLO.
    pub(super) page: Arc<SharedPage>,
    pub(super) page_granted: bool,
    /// The worker's payload arena (if configured), used once granted.
    pub(super) arena: Option<Arc<Arena>>,
    pub(super) arena_granted: bool,
    /// The worker's cgroup or `RLIMIT_AS` (with a memory option); its
    /// cgroup is removed when the `Proc` is dropped, after reaping.
    pub(super) memory: Option<AttemptMemory>,
    /// The kernel's OOM kill count when the worker started, where no cgroup
    /// tells (see [`crate::exec::memory`]).
    pub(super) oom_at_start: Option<u64>,
}

impl Proc {
    /// The id of the job the worker says it is running (0: none), if it
    /// keeps the state page.
    pub(super) fn running(&self) -> Option<u64> {
        self.page_granted.then(|| self.page.load(0))
    }
}

impl Proc {
    pub(super) fn kill_group(&self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.pid as i32) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }

    /// Waits for the process, killing its group after `grace`; returns
    /// its status and its peak resident set size in KiB (`wait4`'s rusage;
    /// `None` if it could not be read).
    pub(super) fn reap(&mut self, grace: Duration) -> (ExitStatus, Option<u64>) {
        let deadline = Instant::now() + grace;
        let pid = self.pid as i32;
        loop {
            match crate::sys::process::try_wait4(pid) {
                Ok(Some(r)) => return (ExitStatus::from_raw(r.status), Some(r.max_rss_kib)),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2));
                }
                Ok(None) => {
                    self.kill_group();
                    return match crate::sys::process::wait4(pid) {
                        Ok(r) => (ExitStatus::from_raw(r.status), Some(r.max_rss_kib)),
                        Err(_) => (ExitStatus::from_raw(9), None),
                    };
                }
                // Not our child to reap (SIGCHLD ignored, or reaped
                // elsewhere): what std sees, without the memory.
                Err(_) => {
                    self.kill_group();
                    return match self.child.wait() {
                        Ok(s) => (s, None),
                        Err(_) => (ExitStatus::from_raw(9), None),
                    };
                }
            }
        }
    }
}

impl Proc {
    /// The worker's `RLIMIT_AS`, when `--mem-limit` is enforced that way.
    pub(super) fn rlimit_as(&self) -> Option<u64> {
        match self.memory {
            Some(AttemptMemory::Rlimit(limit)) => limit,
            _ => None,
        }
    }

    /// Why the worker died, when memory is why: its cgroup recorded an OOM
    /// kill (its own `--mem-limit`, or the memory of the run or machine);
    /// under `RLIMIT_AS`, it died by SIGABRT, SIGSEGV or SIGBUS ("likely",
    /// its stderr is not kept); without a cgroup, SIGKILL while the
    /// kernel's OOM kill count rose since it started ("likely"). Call after
    /// reaping, only for a worker that died on its own.
    pub(super) fn memory_death(&self, status: ExitStatus) -> Option<FailReason> {
        let killed_by = status.signal();
        if status.success() {
            return None;
        }
        let from_control = self.memory.as_ref().and_then(|m| match m {
            AttemptMemory::Rlimit(Some(limit)) => matches!(
                killed_by,
                Some(libc::SIGABRT | libc::SIGSEGV | libc::SIGBUS)
            )
            .then_some(FailReason::MemoryLimit {
                limit: *limit,
                likely: true,
            }),
            m => m.verdict(killed_by, &[]).reason,
        });
        from_control.or_else(|| match &self.memory {
            Some(AttemptMemory::Cgroup(_)) => None,
            _ => memory::likely_oom(killed_by, self.oom_at_start),
        })
    }
}

pub(super) fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(sig)) => format!("was killed by {}", signal_name(sig)),
        _ => "ended".into(),
    }
}

/// A worker's peak memory, as said after what happened to it:
/// " (peak RSS 812.3 MiB)"; empty when unknown.
pub(super) fn describe_peak(max_rss_kib: Option<u64>) -> String {
    match max_rss_kib {
        Some(kib) if kib > 0 => format!(" (peak RSS {:.1} MiB)", kib as f64 / 1024.0),
        _ => String::new(),
    }
}
impl Ctx<'_> {
    /// Runs one slot: workers one after another until the queue is drained
    /// or the run stops.
    pub(super) fn slot(&self, slot: usize) -> Result<(), SlotEnd> {
        let mut first = true;
        let r = self.slot_loop(slot, &mut first);
        if first {
            // Ended before its first worker's handshake was decided: the
            // other slots must not wait for it.
            self.first_round.failed(None, self.stop);
        }
        r
    }

    fn slot_loop(&self, slot: usize, first: &mut bool) -> Result<(), SlotEnd> {
        let mut failures = 0u32;
        loop {
            if self.stopping() {
                return Ok(());
            }
            let worker = WorkerId(self.next_worker.fetch_add(1, Ordering::Relaxed));
            let life = self.incarnation(slot, worker)?;
            let was_first = std::mem::replace(first, false);
            let life = match life {
                Life::NoHandshake { how, detail } => {
                    if was_first && self.first_round.failed(Some(how), self.stop) {
                        let detail = match self.config.workers {
                            1 => format!("the worker failed its protocol handshake: {detail}"),
                            n => format!(
                                "the first {n} workers all failed their protocol handshake; \
                                 slot {slot}: {detail}"
                            ),
                        };
                        self.observer.worker(WorkerEvent::GaveUp {
                            slot,
                            detail: detail.clone(),
                        });
                        return Err(SlotEnd::Failing(detail));
                    }
                    Life::Lost {
                        progressed: false,
                        detail,
                    }
                }
                life => life,
            };
            match life {
                Life::Done => return Ok(()),
                Life::Left => {
                    failures = 0;
                    // Replace it once there is work for a replacement.
                    if !self.wait_for_work()? {
                        return Ok(());
                    }
                }
                Life::Lost { progressed, detail } => {
                    failures = if progressed { 0 } else { failures + 1 };
                    if self.stopping() {
                        return Ok(());
                    }
                    if failures >= self.config.max_failed_starts {
                        let detail = format!(
                            "slot {slot}: {failures} workers in a row died without completing a job; last: {detail}"
                        );
                        self.observer.worker(WorkerEvent::GaveUp {
                            slot,
                            detail: detail.clone(),
                        });
                        return Err(SlotEnd::Failing(detail));
                    }
                    if self.queue.counts().map_err(SlotEnd::Queue)?.is_drained() {
                        return Ok(());
                    }
                }
                Life::NoHandshake { .. } => unreachable!("turned into Lost above"),
            }
        }
    }

    /// Waits until a job is queued (true) or the queue is drained or the
    /// run stops (false).
    pub(super) fn wait_for_work(&self) -> Result<bool, SlotEnd> {
        // From 5 ms up to a tick: quick when work follows at once, cheap
        // when the queue stays empty.
        let mut pause = Duration::from_millis(5);
        loop {
            if self.stopping() {
                return Ok(false);
            }
            let c = self.queue.counts().map_err(SlotEnd::Queue)?;
            if c.is_drained() {
                return Ok(false);
            }
            if c.queued > 0 {
                return Ok(true);
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(TICK);
        }
    }

    pub(super) fn spawn(
        &self,
        slot: usize,
        worker: WorkerId,
    ) -> Result<(Proc, UnixStream), SlotEnd> {
        let program = &self.config.command[0];
        let (ours, theirs) = UnixStream::pair().map_err(|e| SlotEnd::Spawn(program.clone(), e))?;
        for s in [&ours, &theirs] {
            let _ = rustix::net::sockopt::set_socket_send_buffer_size(s, 1 << 20);
            let _ = rustix::net::sockopt::set_socket_recv_buffer_size(s, 1 << 20);
        }
        let fd = theirs.as_raw_fd();
        let page = SharedPage::create("jobmill-worker-state")
            .map_err(|e| SlotEnd::Spawn(program.clone(), e))?;
        let arena = if self.config.arena > 0 {
            let len = self.config.arena.saturating_mul(2);
            let arena = Arena::create("jobmill-worker-arena", len).map_err(|e| {
                SlotEnd::Spawn(
                    program.clone(),
                    std::io::Error::new(
                        e.kind(),
                        format!("cannot create a payload arena of {len} bytes: {e}"),
                    ),
                )
            })?;
            Some(Arc::new(arena))
        } else {
            None
        };
        let mut cmd = Command::new(program);
        cmd.args(&self.config.command[1..])
            .envs(self.config.env.iter().map(|(k, v)| (k, v)))
            .env(FD_ENV, fd.to_string())
            .env(STATE_FD_ENV, page.fd().to_string())
            .env("JOBMILL_WORKER_SLOT", slot.to_string())
            .env("JOBMILL_WORKER_ID", worker.0.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        crate::sys::fd::keep_open_in_child(&mut cmd, fd);
        crate::sys::fd::keep_open_in_child(&mut cmd, page.fd());
        for &inherited in &self.config.inherit_fds {
            crate::sys::fd::keep_open_in_child(&mut cmd, inherited);
        }
        if let Some(arena) = &arena {
            cmd.env(ARENA_FD_ENV, arena.fd().to_string());
            crate::sys::fd::keep_open_in_child(&mut cmd, arena.fd());
        }
        let mem = match self.config.memory.as_ref().map(|m| m.for_attempt()) {
            None => None,
            Some(Ok(mem)) => Some(mem),
            Some(Err(e)) => return Err(SlotEnd::Spawn(program.clone(), e)),
        };
        if let Some(mem) = &mem {
            crate::sys::spawn::setup_in_child(&mut cmd, mem.setup());
        }
        let oom_at_start = match &mem {
            Some(AttemptMemory::Cgroup(_)) => None,
            _ => memory::recent_oom_kills(),
        };
        let child = cmd
            .spawn()
            .map_err(|e| SlotEnd::Spawn(program.clone(), e))?;
        drop(theirs);
        let pid = child.id();
        Ok((
            Proc {
                child,
                pid,
                page: Arc::new(page),
                page_granted: false,
                arena,
                arena_granted: false,
                memory: mem,
                oom_at_start,
            },
            ours,
        ))
    }

    /// One worker process from spawn to reaping.
    pub(super) fn incarnation(&self, slot: usize, worker: WorkerId) -> Result<Life, SlotEnd> {
        let (mut proc, stream) = self.spawn(slot, worker)?;
        self.observer.spawned(slot, worker, proc.pid);
        let name = format!("worker {} (pid {}, slot {slot})", worker.0, proc.pid);
        let stdout = proc.child.stdout.take();
        let stderr = proc.child.stderr.take();
        let pipes = stdout.is_some() as usize + stderr.is_some() as usize;
        let gate = Gate::new(self.config.output_limit, pipes);
        let pipe = |stream| Pipe {
            slot,
            worker,
            name: &name,
            stream,
            gate: &gate,
        };
        let (out_pipe, err_pipe) = (pipe(Stream::Stdout), pipe(Stream::Stderr));
        std::thread::scope(|s| {
            if let Some(out) = stdout {
                s.spawn(|| self.pipe_lines(&out_pipe, out));
            }
            if let Some(err) = stderr {
                s.spawn(|| self.pipe_lines(&err_pipe, err));
            }
            self.converse(slot, worker, &name, &mut proc, stream)
        })
    }

    /// Handshake, then the feeder and the read loop, then the end of life.
    pub(super) fn converse(
        &self,
        slot: usize,
        worker: WorkerId,
        name: &str,
        proc: &mut Proc,
        stream: UnixStream,
    ) -> Result<Life, SlotEnd> {
        let write = match stream.try_clone() {
            Ok(w) => w,
            Err(e) => {
                return Ok(self.bury(slot, worker, name, proc, None, Ended::Io(e.to_string()), 0))
            }
        };
        let mut reader = FrameReader::new(stream, self.config.max_frame);
        let mut link = Link {
            slot,
            closed_sent: AtomicBool::new(false),
            flight: Mutex::new(Flight {
                inflight: VecDeque::new(),
                head_since: Instant::now(),
                sent: 0,
                want: false,
                full_at: None,
                dead: false,
                resolving: 0,
                taken: None,
                alloc: None,
                parked: VecDeque::new(),
            }),
            cond: Condvar::new(),
            writer: Mutex::new(Writer {
                stream: write,
                buf: Vec::with_capacity(64 << 10),
            }),
            arena: None,
        };
        if let Err(ended) = self.handshake(&mut reader, &link, name, proc) {
            let how = (!matches!(ended, Ended::Killed)).then(|| std::mem::discriminant(&ended));
            let life = self.bury(slot, worker, name, proc, Some(&link), ended, 0);
            return Ok(match (how, life) {
                (Some(how), Life::Lost { detail, .. }) => Life::NoHandshake { how, detail },
                (_, life) => life,
            });
        }
        self.first_round.started();
        if proc.arena_granted {
            if let Some(arena) = &proc.arena {
                link.arena = Some((Arc::clone(arena), Arc::clone(&proc.page)));
                link.flight().alloc = Some(Extents::new(
                    self.config.arena as u64,
                    self.config.arena_inflight as u64,
                ));
            }
        }
        self.observer.worker(WorkerEvent::Started {
            slot,
            worker,
            pid: proc.pid,
        });
        self.summary_mut().started += 1;
        let mut completed = 0u64;
        let ended = std::thread::scope(|s| {
            let feeder = std::thread::Builder::new()
                .name(format!("jobmill-feed-{slot}"))
                .spawn_scoped(s, || self.feed(worker, &link))
                .expect("spawning a thread");
            let ended = self.read_loop(slot, worker, &mut reader, &link, proc, &mut completed);
            // Stop the feeder before resolving leases, so that none is
            // taken after.
            link.flight().dead = true;
            link.cond.notify_all();
            if !matches!(
                ended,
                Ended::Closed | Ended::Eof | Ended::EarlyExit | Ended::Refused(_)
            ) {
                proc.kill_group();
            }
            let _ = link.writer().stream.shutdown(std::net::Shutdown::Both);
            match feeder.join() {
                Ok(Err(e)) => Ended::Queue(e),
                _ => ended,
            }
        });
        Ok(self.bury(slot, worker, name, proc, Some(&link), ended, completed))
    }

    pub(super) fn handshake(
        &self,
        reader: &mut FrameReader<UnixStream>,
        link: &Link,
        name: &str,
        proc: &mut Proc,
    ) -> Result<(), Ended> {
        let timeout = if self.config.hello_timeout.is_zero() {
            self.config.handshake_timeout
        } else {
            self.config.hello_timeout
        };
        let deadline = Instant::now() + timeout;
        let raw = loop {
            if self.stop.level() == StopLevel::Killing {
                return Err(Ended::Killed);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Ended::NoHello(timeout));
            }
            let _ = reader.get_ref().set_read_timeout(Some(left.min(TICK)));
            match reader.read_frame() {
                Ok(Some(raw)) => break raw,
                Ok(None) => return Err(Ended::EarlyExit),
                Err(e) if e.is_timeout() => continue,
                Err(e) => return Err(read_error(e)),
            }
        };
        let hello = match decode(&raw, self.config.max_frame) {
            Ok(Decoded::Frame {
                frame: Frame::Hello(h),
                ..
            }) => h,
            Ok(Decoded::Frame { frame, .. }) => {
                return Err(Ended::Protocol(format!(
                    "sent {} instead of HELLO",
                    frame.name()
                )))
            }
            Ok(Decoded::Incomplete { .. }) => unreachable!("whole frames only"),
            Err(e) => return Err(Ended::Protocol(e.to_string())),
        };
        let mut w = link.writer();
        let mut buf = Vec::new();
        if !(MIN_VERSION..=VERSION).contains(&hello.version) {
            let reason = format!(
                "{name} speaks protocol version {}, this coordinator speaks {MIN_VERSION} to {VERSION}",
                hello.version
            );
            let _ = encode(
                &mut buf,
                &Frame::Refuse(Refuse {
                    version: VERSION,
                    reason: reason.as_bytes(),
                }),
                usize::MAX,
            );
            let _ = w.stream.write_all(&buf);
            return Err(Ended::Refused(reason));
        }
        let version = hello.version;
        let mut capabilities = hello.capabilities & CAP_RUNNING_PAGE;
        let arena_wanted = CAP_ARENA | CAP_RUNNING_PAGE;
        if version >= 2 && hello.capabilities & arena_wanted == arena_wanted && proc.arena.is_some()
        {
            capabilities |= CAP_ARENA;
        }
        let arena_len = if capabilities & CAP_ARENA != 0 {
            self.config.arena as u64
        } else {
            0
        };
        let welcome = Welcome {
            version,
            window: self.config.window.min(u32::MAX as usize) as u32,
            max_frame: self.config.max_frame.min(u32::MAX as usize) as u32,
            heartbeat_ms: self
                .config
                .heartbeat
                .map_or(0, |h| h.as_millis().clamp(1, u32::MAX as u128) as u32),
            capabilities,
            arena_threshold: if arena_len > 0 {
                self.config.arena_threshold.min(u32::MAX as usize) as u32
            } else {
                0
            },
            arena_jobs: arena_len,
            arena_results: arena_len,
        };
        proc.page_granted = welcome.capabilities & CAP_RUNNING_PAGE != 0;
        proc.arena_granted = welcome.capabilities & CAP_ARENA != 0;
        let _ = encode(&mut buf, &Frame::Welcome(welcome), usize::MAX);
        w.stream
            .write_all(&buf)
            .map_err(|e| Ended::Io(format!("writing WELCOME: {e}")))
    }
}

/// How an incarnation ended, for the slot's decision.
pub(super) enum Life {
    /// Told CLOSED (or stopped): the slot is finished.
    Done,
    /// Exited cleanly on its own with nothing lost: replace when needed.
    Left,
    /// Died: replace now, unless the slot keeps failing.
    Lost {
        /// Whether it completed at least one job.
        progressed: bool,
        /// What happened.
        detail: String,
    },
    /// Failed its handshake (a `Lost` that never started).
    NoHandshake {
        /// How, for comparing with the other slots' first workers.
        how: Discriminant<Ended>,
        /// What happened.
        detail: String,
    },
}

/// How the first worker of each slot did with its handshake, so that a
/// command that is not a worker fails the run at once instead of after
/// [`Config::max_failed_starts`](super::Config::max_failed_starts)
/// handshake deadlines in every slot.
pub(super) struct FirstRound {
    slots: usize,
    state: Mutex<RoundState>,
    cond: Condvar,
}

struct RoundState {
    /// Some worker completed its handshake.
    started: bool,
    /// How the slots' first workers failed (None: not a handshake failure).
    failed: Vec<Option<Discriminant<Ended>>>,
}

impl FirstRound {
    pub(super) fn new(slots: usize) -> FirstRound {
        FirstRound {
            slots,
            state: Mutex::new(RoundState {
                started: false,
                failed: Vec::new(),
            }),
            cond: Condvar::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, RoundState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A worker completed its handshake.
    fn started(&self) {
        let mut s = self.state();
        if !s.started {
            s.started = true;
            self.cond.notify_all();
        }
    }

    /// A slot's first worker failed (`how`: its handshake, that way), or the
    /// slot ended before its first handshake (`None`). Waits until every
    /// slot's first worker has started or failed, and returns whether all
    /// of them failed their handshakes the same way, with none started.
    fn failed(&self, how: Option<Discriminant<Ended>>, stop: &dyn StopSource) -> bool {
        let mut s = self.state();
        s.failed.push(how);
        self.cond.notify_all();
        while !s.started && s.failed.len() < self.slots {
            if stop.level() != StopLevel::Running {
                return false;
            }
            s = self
                .cond
                .wait_timeout(s, TICK)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        !s.started && how.is_some() && s.failed.iter().all(|h| *h == how)
    }
}

//! Connecting to the coordinator: the channel, state page and arena
//! inherited from it, and the HELLO/WELCOME handshake that sets up the
//! outbox and its flusher thread.

use std::collections::VecDeque;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::protocol::io::FrameReader;
use crate::protocol::{
    decode, encode, Decoded, Frame, Hello, ARENA_FD_ENV, CAP_ARENA, CAP_RUNNING_PAGE,
    DEFAULT_MAX_FRAME, FD_ENV, STATE_FD_ENV, VERSION,
};
use crate::sys::shm::{Arena, SharedPage};

use super::arena::{ArenaGrant, Ring};
use super::outbox::{flusher, Out, Outbox, BATCH_BYTES};
use super::{Worker, WorkerError};

/// Name sent in HELLO.
const NAME: &str = concat!("rust/jobmill ", env!("CARGO_PKG_VERSION"));

impl Worker {
    /// Connects through the descriptor named by `$JOBMILL_FD` and performs
    /// the handshake.
    ///
    /// # Errors
    ///
    /// [`WorkerError::NotStarted`] when the variable is missing (the program
    /// was not started by jobmill), [`WorkerError::BadFd`] or
    /// [`WorkerError::Channel`] when it does not name a usable socket, and
    /// the errors of [`Worker::from_stream`].
    pub fn connect() -> Result<Worker, WorkerError> {
        let value = std::env::var(FD_ENV).map_err(|_| WorkerError::NotStarted)?;
        let fd: i32 = value.trim().parse().map_err(|_| WorkerError::BadFd {
            value: value.clone(),
        })?;
        let stream = crate::sys::fd::adopt_inherited_socket(fd).map_err(WorkerError::Channel)?;
        // The state page is optional: without it, crashes are blamed on the
        // oldest unanswered job.
        let page = std::env::var(STATE_FD_ENV)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .and_then(|fd| SharedPage::adopt(fd).ok());
        // So is the arena (it needs the page): without it, every payload
        // comes inline.
        let arena = page.as_ref().and_then(|_| {
            std::env::var(ARENA_FD_ENV)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .and_then(|fd| Arena::adopt(fd).ok())
        });
        Worker::handshake(stream, page, arena)
    }

    /// Performs the handshake over an already connected stream.
    ///
    /// # Errors
    ///
    /// [`WorkerError::Refused`] if the coordinator refuses this protocol
    /// version, [`WorkerError::Protocol`] if it answers something else,
    /// [`WorkerError::Io`] or [`WorkerError::Disconnected`] if the channel
    /// fails.
    pub fn from_stream(stream: UnixStream) -> Result<Worker, WorkerError> {
        Worker::handshake(stream, None, None)
    }

    fn handshake(
        stream: UnixStream,
        page: Option<SharedPage>,
        arena: Option<Arena>,
    ) -> Result<Worker, WorkerError> {
        let mut write = stream.try_clone().map_err(WorkerError::Channel)?;
        let mut hello = Vec::new();
        encode(
            &mut hello,
            &Frame::Hello(Hello {
                version: VERSION,
                capabilities: match (&page, &arena) {
                    (Some(_), Some(_)) => CAP_RUNNING_PAGE | CAP_ARENA,
                    (Some(_), None) => CAP_RUNNING_PAGE,
                    _ => 0,
                },
                name: NAME.as_bytes(),
            }),
            DEFAULT_MAX_FRAME,
        )
        .expect("a HELLO is small");
        write.write_all(&hello).map_err(WorkerError::Io)?;
        let mut reader = FrameReader::new(stream, DEFAULT_MAX_FRAME);
        let raw = reader.read_frame()?.ok_or(WorkerError::Disconnected)?;
        let welcome = match decode(&raw, DEFAULT_MAX_FRAME)
            .map_err(|e| WorkerError::Protocol(e.to_string()))?
        {
            Decoded::Frame {
                frame: Frame::Welcome(w),
                ..
            } => w,
            Decoded::Frame {
                frame: Frame::Refuse(r),
                ..
            } => {
                return Err(WorkerError::Refused {
                    version: r.version,
                    reason: String::from_utf8_lossy(r.reason).into_owned(),
                })
            }
            Decoded::Frame { frame, .. } => {
                return Err(WorkerError::Protocol(format!(
                    "expected WELCOME, got {}",
                    frame.name()
                )))
            }
            Decoded::Incomplete { .. } => unreachable!("read_frame returns whole frames"),
        };
        let max_frame = welcome.max_frame as usize;
        reader.set_max_frame(max_frame);
        let page = page
            .filter(|_| welcome.capabilities & CAP_RUNNING_PAGE != 0)
            .map(Arc::new);
        let arena = match (arena, &page) {
            (Some(arena), Some(page)) if welcome.capabilities & CAP_ARENA != 0 => {
                let need = welcome.arena_jobs.saturating_add(welcome.arena_results);
                if (arena.len() as u64) < need {
                    return Err(WorkerError::Protocol(format!(
                        "the arena has {} bytes, the coordinator announced {need}",
                        arena.len()
                    )));
                }
                Some(ArenaGrant {
                    arena: Arc::new(arena),
                    page: Arc::clone(page),
                    threshold: welcome.arena_threshold as usize,
                    jobs_len: welcome.arena_jobs,
                    results_len: welcome.arena_results,
                })
            }
            _ => None,
        };
        let ring = arena.as_ref().map(|a| Ring {
            base: a.jobs_len,
            len: a.results_len,
            head: 0,
            outstanding: VecDeque::new(),
            seen: 0,
        });
        let heartbeat =
            (welcome.heartbeat_ms > 0).then(|| Duration::from_millis(welcome.heartbeat_ms.into()));
        let outbox = Arc::new(Outbox {
            state: Mutex::new(Out {
                stream: write,
                buf: Vec::with_capacity(BATCH_BYTES + 1024),
                batch: None,
                first_pending: None,
                failed: None,
                max_frame,
                heartbeat,
                last_write: Instant::now(),
                stop: false,
                ring,
            }),
            cond: Condvar::new(),
        });
        let flusher = {
            let outbox = Arc::clone(&outbox);
            std::thread::Builder::new()
                .name("jobmill-flush".into())
                .spawn(move || flusher(outbox))
                .map_err(WorkerError::Io)?
        };
        Ok(Worker {
            reader,
            outbox,
            flusher: Some(flusher),
            buffer: VecDeque::with_capacity(welcome.window as usize),
            closed: false,
            polls_pending: 0,
            taken: 0,
            max_frame,
            window: welcome.window,
            left: false,
            page,
            arena,
            arena_unanswered: std::collections::HashSet::new(),
            warned_views: false,
        })
    }

    /// The most jobs the coordinator keeps in flight to this worker.
    pub fn window(&self) -> u32 {
        self.window
    }

    /// The largest frame body the coordinator accepts (bounds a result).
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }
}

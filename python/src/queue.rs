//! The core of `jobmill.Queue`: a [`MemoryQueue`] owned by the process that
//! created the queue, served to other processes over a Unix socket.
//!
//! A process started with `multiprocessing` (fork, spawn or forkserver)
//! gets the queue's socket path (the Python object pickles to it) and
//! connects; each request is answered only once the owner's queue has
//! applied it, so a `put` returns once the item is queued and a
//! non-blocking `get` says empty only when nothing is queued.
//!
//! Frames, both ways: `u32` length (little endian) of what follows, one
//! byte (request op or answer status), then the body.
//!
//! | request | body | answer |
//! |---|---|---|
//! | `PUT` | the item | `OK` (`CLOSED` once closed) |
//! | `GET` | `u32` milliseconds to wait (0: do not wait) | `OK` + item, `EMPTY`, `TIMEOUT`, `CLOSED` |
//! | `QSIZE` | — | `OK` + `u64` |
//! | `CLOSE` | — | `OK` |

use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use jobmill::job::{NewJob, RetryPolicy, WorkerId};
use jobmill::queue::memory::MemoryQueue;
use jobmill::queue::{GetError, PutError, Queue, TryGetError};
use pyo3::exceptions::{PyOSError, PyRuntimeError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

const PUT: u8 = 1;
const GET: u8 = 2;
const QSIZE: u8 = 3;
const CLOSE: u8 = 4;

const OK: u8 = 0;
const EMPTY: u8 = 1;
const CLOSED: u8 = 2;
const TIMEOUT: u8 = 3;

/// How long one wait lasts before the waiting caller checks for signals
/// (Ctrl-C) and deadlines.
const TICK: Duration = Duration::from_millis(100);

pyo3::create_exception!(_jobmill, Empty, pyo3::exceptions::PyException);
pyo3::create_exception!(_jobmill, Closed, pyo3::exceptions::PyException);

/// What a get found.
enum Got {
    Item(Bytes),
    Empty,
    Timeout,
    Closed,
}

struct Local {
    queue: Arc<MemoryQueue>,
    seq: AtomicU64,
}

impl Local {
    fn put(&self, item: Bytes) -> bool {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        match self.queue.put(NewJob::new(seq, item)) {
            Ok(_) => true,
            Err(PutError::Closed(_)) | Err(PutError::Backend(_)) => false,
        }
    }

    /// `wait` of zero: do not wait.
    fn get(&self, wait: Duration) -> Got {
        let worker = WorkerId(0);
        let lease = if wait.is_zero() {
            match self.queue.try_get(worker) {
                Ok(l) => l,
                Err(TryGetError::Closed) => return Got::Closed,
                Err(_) => return Got::Empty,
            }
        } else {
            match self.queue.get(worker, Some(wait)) {
                Ok(l) => l,
                Err(GetError::Closed) => return Got::Closed,
                Err(_) => return Got::Timeout,
            }
        };
        let _ = self.queue.complete(&lease);
        Got::Item(lease.job.payload)
    }

    fn qsize(&self) -> u64 {
        self.queue.counts().map_or(0, |c| c.queued)
    }
}

fn write_frame(w: &mut impl Write, code: u8, body: &[&[u8]]) -> io::Result<()> {
    let len: usize = 1 + body.iter().map(|b| b.len()).sum::<usize>();
    let len = u32::try_from(len).map_err(|_| io::Error::other("item larger than 4 GiB"))?;
    let mut head = [0u8; 5];
    head[..4].copy_from_slice(&len.to_le_bytes());
    head[4] = code;
    w.write_all(&head)?;
    for b in body {
        w.write_all(b)?;
    }
    w.flush()
}

fn read_frame(r: &mut impl Read) -> io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    r.read_exact(&mut head)?;
    let len = u32::from_le_bytes(head[..4].try_into().unwrap_or_default()) as usize;
    if len == 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "empty frame"));
    }
    let mut body = vec![0u8; len - 1];
    r.read_exact(&mut body)?;
    Ok((head[4], body))
}

fn serve_connection(local: Arc<Local>, stream: UnixStream) {
    let mut reader = io::BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut writer = io::BufWriter::new(stream);
    while let Ok((op, body)) = read_frame(&mut reader) {
        let r = match op {
            PUT => {
                let ok = local.put(Bytes::from(body));
                write_frame(&mut writer, if ok { OK } else { CLOSED }, &[])
            }
            GET => {
                let ms = body
                    .get(..4)
                    .map_or(0, |b| u32::from_le_bytes(b.try_into().unwrap_or_default()));
                match local.get(Duration::from_millis(ms.into())) {
                    Got::Item(item) => write_frame(&mut writer, OK, &[&item]),
                    Got::Empty => write_frame(&mut writer, EMPTY, &[]),
                    Got::Timeout => write_frame(&mut writer, TIMEOUT, &[]),
                    Got::Closed => write_frame(&mut writer, CLOSED, &[]),
                }
            }
            QSIZE => write_frame(&mut writer, OK, &[&local.qsize().to_le_bytes()]),
            CLOSE => {
                let _ = local.queue.close();
                write_frame(&mut writer, OK, &[])
            }
            _ => return,
        };
        if r.is_err() {
            return;
        }
    }
}

enum Side {
    /// This process created the queue and serves it.
    Owner {
        local: Arc<Local>,
        dir: PathBuf,
        stopped: Arc<AtomicBool>,
        pid: u32,
    },
    /// Another process, connected to the owner's socket.
    Client { stream: Mutex<UnixStream> },
}

/// One process's handle on a queue (Python: `jobmill._jobmill.QueueCore`).
#[pyclass(module = "jobmill._jobmill", frozen)]
pub struct QueueCore {
    side: Side,
    path: PathBuf,
}

fn os_err(e: io::Error) -> PyErr {
    PyOSError::new_err(format!("jobmill.Queue: {e}"))
}

fn lost_owner(e: io::Error) -> PyErr {
    PyRuntimeError::new_err(format!(
        "jobmill.Queue: the process that created the queue is gone ({e})"
    ))
}

impl QueueCore {
    fn request(&self, py: Python<'_>, op: u8, body: &[&[u8]]) -> PyResult<(u8, Vec<u8>)> {
        let Side::Client { stream } = &self.side else {
            unreachable!("only clients send requests")
        };
        py.allow_threads(|| {
            let mut s = stream.lock().unwrap_or_else(|e| e.into_inner());
            write_frame(&mut *s, op, body)?;
            read_frame(&mut *s)
        })
        .map_err(lost_owner)
    }

    /// One get of at most `wait` (zero: do not wait).
    fn get_once(&self, py: Python<'_>, wait: Duration) -> PyResult<Got> {
        match &self.side {
            Side::Owner { local, .. } => Ok(py.allow_threads(|| local.get(wait))),
            Side::Client { .. } => {
                let ms = u32::try_from(wait.as_millis()).unwrap_or(u32::MAX);
                let (code, body) = self.request(py, GET, &[&ms.to_le_bytes()])?;
                Ok(match code {
                    OK => Got::Item(Bytes::from(body)),
                    EMPTY => Got::Empty,
                    TIMEOUT => Got::Timeout,
                    _ => Got::Closed,
                })
            }
        }
    }
}

#[pymethods]
impl QueueCore {
    /// A new queue served by this process; `maxsize` 0 is unbounded.
    #[staticmethod]
    #[pyo3(signature = (maxsize = 0))]
    fn create(maxsize: usize) -> PyResult<QueueCore> {
        let dir = tempfile::Builder::new()
            .prefix("jobmill-queue-")
            .tempdir()
            .map_err(os_err)?
            .keep();
        let path = dir.join("q.sock");
        let listener = UnixListener::bind(&path).map_err(os_err)?;
        let capacity = if maxsize == 0 {
            usize::MAX / 2
        } else {
            maxsize
        };
        let local = Arc::new(Local {
            queue: Arc::new(MemoryQueue::new(capacity, RetryPolicy::with_retries(0))),
            seq: AtomicU64::new(0),
        });
        let stopped = Arc::new(AtomicBool::new(false));
        {
            let local = Arc::clone(&local);
            let stopped = Arc::clone(&stopped);
            std::thread::Builder::new()
                .name("jobmill-queue".into())
                .spawn(move || {
                    for conn in listener.incoming() {
                        if stopped.load(Ordering::SeqCst) {
                            return;
                        }
                        if let Ok(conn) = conn {
                            let local = Arc::clone(&local);
                            let _ = std::thread::Builder::new()
                                .name("jobmill-queue-conn".into())
                                .spawn(move || serve_connection(local, conn));
                        }
                    }
                })
                .map_err(os_err)?;
        }
        Ok(QueueCore {
            side: Side::Owner {
                local,
                dir,
                stopped,
                pid: std::process::id(),
            },
            path,
        })
    }

    /// A handle on the queue served at `path`, for another process.
    #[staticmethod]
    fn connect(py: Python<'_>, path: PathBuf) -> PyResult<QueueCore> {
        let stream = py
            .allow_threads(|| UnixStream::connect(&path))
            .map_err(lost_owner)?;
        Ok(QueueCore {
            side: Side::Client {
                stream: Mutex::new(stream),
            },
            path,
        })
    }

    /// The socket path other processes connect to.
    #[getter]
    fn path(&self) -> PathBuf {
        self.path.clone()
    }

    /// Whether this handle is the owner's.
    #[getter]
    fn owner(&self) -> bool {
        matches!(self.side, Side::Owner { .. })
    }

    /// Puts one (pickled) item; returns once it is in the queue. False when
    /// the queue is closed.
    fn put(&self, py: Python<'_>, item: &[u8]) -> PyResult<bool> {
        match &self.side {
            Side::Owner { local, .. } => {
                let item = Bytes::copy_from_slice(item);
                Ok(py.allow_threads(|| local.put(item)))
            }
            Side::Client { .. } => Ok(self.request(py, PUT, &[item])?.0 == OK),
        }
    }

    /// Takes one item: waits at most `timeout` seconds (`None`: as long as
    /// it takes; 0 or `block=False`: not at all). Raises `Empty` when
    /// nothing is queued (after the wait) and `Closed` once the queue is
    /// closed and drained. Ctrl-C interrupts the wait.
    #[pyo3(signature = (block = true, timeout = None))]
    fn get(&self, py: Python<'_>, block: bool, timeout: Option<f64>) -> PyResult<Py<PyBytes>> {
        let deadline = match (block, timeout) {
            (false, _) => Some(Instant::now()),
            (true, Some(t)) => Some(Instant::now() + Duration::from_secs_f64(t.max(0.0))),
            (true, None) => None,
        };
        loop {
            let wait = match deadline {
                None => TICK,
                Some(d) => d.saturating_duration_since(Instant::now()).min(TICK),
            };
            match self.get_once(py, wait)? {
                Got::Item(item) => return Ok(PyBytes::new(py, &item).unbind()),
                Got::Closed => return Err(Closed::new_err("the queue is closed and drained")),
                Got::Empty if wait.is_zero() => return Err(Empty::new_err(())),
                Got::Empty | Got::Timeout => {}
            }
            py.check_signals()?;
            if deadline.is_some_and(|d| Instant::now() >= d) {
                // One last look without waiting: empty only if nothing is queued.
                return match self.get_once(py, Duration::ZERO)? {
                    Got::Item(item) => Ok(PyBytes::new(py, &item).unbind()),
                    Got::Closed => Err(Closed::new_err("the queue is closed and drained")),
                    _ => Err(Empty::new_err(())),
                };
            }
        }
    }

    /// Items queued now.
    fn qsize(&self, py: Python<'_>) -> PyResult<u64> {
        match &self.side {
            Side::Owner { local, .. } => Ok(local.qsize()),
            Side::Client { .. } => {
                let (_, body) = self.request(py, QSIZE, &[])?;
                Ok(body
                    .get(..8)
                    .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or_default())))
            }
        }
    }

    /// Closes the queue to producers: once drained, `get` raises `Closed`.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        match &self.side {
            Side::Owner { local, .. } => {
                let _ = local.queue.close();
            }
            Side::Client { .. } => {
                self.request(py, CLOSE, &[])?;
            }
        }
        Ok(())
    }

    /// The owner stops serving new connections and removes its socket
    /// (connections already made keep working). Does nothing in another
    /// process (a forked child holding a copy of the owner's handle).
    fn shutdown(&self) {
        if let Side::Owner {
            dir, stopped, pid, ..
        } = &self.side
        {
            if *pid != std::process::id() || stopped.swap(true, Ordering::SeqCst) {
                return;
            }
            // Wake the accept loop so that it sees the flag and ends.
            let _ = UnixStream::connect(&self.path);
            let _ = std::fs::remove_file(&self.path);
            let _ = std::fs::remove_dir(dir);
        }
    }
}

impl Drop for QueueCore {
    fn drop(&mut self) {
        self.shutdown();
    }
}

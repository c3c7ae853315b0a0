//! Grouped output: each job's stdout and stderr are printed whole, after the
//! job ends, never interleaved with another job's.
//!
//! With `--keep-order`, output is printed in input order. A job that ends
//! before an earlier one waits in a reorder buffer. Its captured bytes are
//! already bounded in memory by the [`SpillBudget`](crate::exec::SpillBudget)
//! (past it they live in temporary files); once more than
//! [`MAX_HELD`] jobs wait, further ones are copied into one shared spill file
//! so that neither memory nor file descriptors grow without bound.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::sync::Mutex;

use crate::exec::Capture;

/// Waiting jobs kept as captures before spilling into the shared file.
pub const MAX_HELD: usize = 256;

enum Held {
    Captured {
        stdout: Capture,
        stderr: Capture,
    },
    Spilled {
        stdout: (u64, u64),
        stderr: (u64, u64),
    },
}

struct State {
    /// Sequence numbers in the order they were queued, not yet printed.
    order: VecDeque<u64>,
    waiting: HashMap<u64, Held>,
    captured: usize,
    spill: Option<File>,
    spill_len: u64,
}

/// Prints job output to stdout and stderr, grouped per job.
pub struct Printer {
    keep_order: bool,
    state: Mutex<State>,
}

impl Printer {
    /// A printer; with `keep_order`, in the order of [`Printer::expect`].
    pub fn new(keep_order: bool) -> Printer {
        Printer {
            keep_order,
            state: Mutex::new(State {
                order: VecDeque::new(),
                waiting: HashMap::new(),
                captured: 0,
                spill: None,
                spill_len: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers `seq` as the next job in input order (only matters with
    /// `--keep-order`).
    pub fn expect(&self, seq: u64) {
        if self.keep_order {
            self.lock().order.push_back(seq);
        }
    }

    /// Hands over the output of job `seq`. Prints it now, or holds it until
    /// the jobs before it are printed.
    ///
    /// # Errors
    ///
    /// Writing to stdout or stderr failed (a broken pipe included), or the
    /// spill file could not be written.
    pub fn job_output(&self, seq: u64, mut stdout: Capture, mut stderr: Capture) -> io::Result<()> {
        if !self.keep_order {
            return write_job(&mut stdout, &mut stderr);
        }
        let mut st = self.lock();
        if st.order.front() == Some(&seq) {
            st.order.pop_front();
            write_job(&mut stdout, &mut stderr)?;
            return flush_ready(&mut st);
        }
        let held = if st.captured < MAX_HELD {
            st.captured += 1;
            Held::Captured { stdout, stderr }
        } else {
            let out = spill(&mut st, &mut stdout)?;
            let err = spill(&mut st, &mut stderr)?;
            Held::Spilled {
                stdout: out,
                stderr: err,
            }
        };
        st.waiting.insert(seq, held);
        Ok(())
    }

    /// Job `seq` will produce no output (it was never run); later jobs need
    /// not wait for it.
    pub fn skip(&self, seq: u64) -> io::Result<()> {
        if !self.keep_order {
            return Ok(());
        }
        let mut st = self.lock();
        st.order.retain(|&s| s != seq);
        flush_ready(&mut st)
    }

    /// Prints everything still held, in order. Called at the end of a run.
    ///
    /// # Errors
    ///
    /// As for [`Printer::job_output`].
    pub fn finish(&self) -> io::Result<()> {
        let mut st = self.lock();
        let mut seqs: Vec<u64> = st.waiting.keys().copied().collect();
        seqs.sort_unstable();
        st.order.clear();
        for seq in seqs {
            let held = st.waiting.remove(&seq).expect("listed above");
            print_held(&mut st, held)?;
        }
        Ok(())
    }
}

fn flush_ready(st: &mut State) -> io::Result<()> {
    while let Some(&next) = st.order.front() {
        let Some(held) = st.waiting.remove(&next) else {
            break;
        };
        st.order.pop_front();
        print_held(st, held)?;
    }
    Ok(())
}

fn print_held(st: &mut State, held: Held) -> io::Result<()> {
    match held {
        Held::Captured {
            mut stdout,
            mut stderr,
        } => {
            st.captured -= 1;
            write_job(&mut stdout, &mut stderr)
        }
        Held::Spilled { stdout, stderr } => {
            let file = st
                .spill
                .as_mut()
                .expect("spilled entries have a spill file");
            copy_range(file, stdout, &mut io::stdout().lock())?;
            copy_range(file, stderr, &mut io::stderr().lock())
        }
    }
}

fn write_job(stdout: &mut Capture, stderr: &mut Capture) -> io::Result<()> {
    if !stdout.is_empty() {
        let mut out = io::stdout().lock();
        stdout.copy_to(&mut out)?;
        out.flush()?;
    }
    if !stderr.is_empty() {
        let mut err = io::stderr().lock();
        stderr.copy_to(&mut err)?;
        err.flush()?;
    }
    Ok(())
}

fn spill(st: &mut State, capture: &mut Capture) -> io::Result<(u64, u64)> {
    if st.spill.is_none() {
        st.spill = Some(tempfile::tempfile()?);
    }
    let start = st.spill_len;
    let file = st.spill.as_mut().expect("created above");
    file.seek(SeekFrom::Start(start))?;
    capture.copy_to(file)?;
    let len = capture.len();
    st.spill_len += len;
    Ok((start, len))
}

fn copy_range(file: &mut File, (start, len): (u64, u64), to: &mut dyn Write) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    file.seek(SeekFrom::Start(start))?;
    io::copy(&mut file.take(len), to)?;
    to.flush()
}

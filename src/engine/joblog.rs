//! GNU parallel's `--joblog` format, in one place: the live `--joblog FILE`
//! observer ([`Joblog`]) and `jobmill results --format joblog` both write
//! their lines with [`write_entry`] and [`command_field`].
//!
//! ```text
//! Seq  Host  Starttime       JobRuntime  Send  Receive  Exitval  Signal  Command
//! 1    :     1796417946.129       0.184  0     2        0        0       echo a
//! ```
//!
//! Tab-separated; the host is `:` (this machine), Send is 0 (jobmill sends
//! nothing on stdin), Receive counts the bytes the job wrote to stdout. A
//! job that jobmill killed (a timeout) has Exitval -1 and its signal; one
//! killed by someone else has Exitval 0 and the signal, as in GNU parallel.
//!
//! The live file gets one line per job, when the job ends for good (its
//! last attempt under `--retries`), appended with one `write(2)` and so
//! readable while the run goes on. Attempts that jobmill stopped (Ctrl-C,
//! `--halt now`) are not written: the job runs again on resume.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bytes::Bytes;

use crate::events::{AttemptReport, Observer, ObserverError};
use crate::job::{FailReason, NewJob};
use crate::outcome::AttemptEnd;
use crate::template::Template;

/// The header line, without its newline.
pub const HEADER: &str =
    "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand";

/// One line of a joblog.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry<'a> {
    /// The job's sequence number.
    pub seq: u64,
    /// Start of the (last) attempt, Unix seconds.
    pub started_at: f64,
    /// Its duration, seconds.
    pub runtime: f64,
    /// Bytes written to stdout.
    pub received: u64,
    /// The exit code, if the process exited.
    pub exit_code: Option<i64>,
    /// The signal that ended it, if one did.
    pub signal: Option<i64>,
    /// Whether jobmill stopped it at its timeout.
    pub timed_out: bool,
    /// The Command column, as [`command_field`] writes it.
    pub command: &'a [u8],
}

/// Writes one joblog line, with its newline.
///
/// # Errors
///
/// Writing to `out` failed.
pub fn write_entry(out: &mut impl Write, e: &Entry<'_>) -> io::Result<()> {
    // GNU parallel: Exitval -1 with the signal for a job it killed
    // (timeout), 0 with the signal for one killed by someone else.
    let exitval = e.exit_code.unwrap_or(if e.timed_out || e.signal.is_none() {
        -1
    } else {
        0
    });
    let mut line = Vec::with_capacity(64 + e.command.len());
    write!(
        line,
        "{}\t:\t{:.3}\t{:>10.3}\t0\t{}\t{}\t{}\t",
        e.seq,
        e.started_at,
        e.runtime,
        e.received,
        exitval,
        e.signal.unwrap_or(0),
    )?;
    line.extend_from_slice(e.command);
    line.push(b'\n');
    out.write_all(&line)
}

/// The Command column for a rendered argument vector `argv` (cleared into
/// `out`): for `--shell`, the script (newlines as `\n`), as GNU parallel
/// logs it; otherwise the words, quoted as GNU parallel quotes them.
pub fn command_field(argv: &[OsString], shell: bool, out: &mut Vec<u8>) {
    out.clear();
    if shell {
        let script = argv.last().map_or(&[][..], |s| s.as_bytes());
        for &b in script {
            match b {
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b => out.push(b),
            }
        }
    } else {
        for (i, a) in argv.iter().enumerate() {
            if i > 0 {
                out.push(b' ');
            }
            parallel_quote_into(a.as_bytes(), out);
        }
    }
}

fn hex_byte(b: u8, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.extend_from_slice(&[
        b'\\',
        b'x',
        HEX[usize::from(b >> 4)],
        HEX[usize::from(b & 15)],
    ]);
}

/// Quotes one word as GNU parallel does in its joblog: unquoted when it
/// holds only safe characters, else in single quotes with `'` as
/// `'"'"'`; a word with control characters as `$'...'` (bash), so the
/// line stays one line.
pub fn parallel_quote_into(word: &[u8], out: &mut Vec<u8>) {
    let safe = |b: u8| b.is_ascii_alphanumeric() || b"_%+,./:=@-".contains(&b);
    if !word.is_empty() && word.iter().all(|&b| safe(b)) {
        out.extend_from_slice(word);
    } else if word.iter().any(|&b| b < 0x20 || b == 0x7f) {
        out.extend_from_slice(b"$'");
        for &b in word {
            match b {
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\'' => out.extend_from_slice(b"\\'"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\t' => out.extend_from_slice(b"\\t"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b if b < 0x20 || b == 0x7f => hex_byte(b, out),
                b => out.push(b),
            }
        }
        out.push(b'\'');
    } else {
        out.push(b'\'');
        for &b in word {
            if b == b'\'' {
                out.extend_from_slice(b"'\"'\"'");
            } else {
                out.push(b);
            }
        }
        out.push(b'\'');
    }
}

/// How a run's jobs become the Command column.
#[derive(Debug, Clone)]
pub enum Command {
    /// Each job renders this template.
    Template(Template),
    /// Every job runs this command as is (`--persistent`).
    Fixed(Vec<OsString>),
}

/// What one finished attempt means as a joblog line, shared by the
/// observers that write GNU parallel's columns (`--joblog`, `--results`).
pub(crate) struct Columns {
    pub exit_code: Option<i64>,
    pub signal: Option<i64>,
    pub timed_out: bool,
    pub started_at: f64,
    pub runtime: f64,
}

impl Columns {
    pub(crate) fn of(report: &AttemptReport<'_>) -> Columns {
        let o = report.outcome;
        let timed_out = o.end == AttemptEnd::Failed(FailReason::Timeout);
        let exit_code = match &o.end {
            AttemptEnd::Succeeded => Some(0),
            _ if timed_out => None,
            end => end.exit_code().map(i64::from),
        };
        let signal = match &o.end {
            AttemptEnd::Failed(FailReason::Signal { signal }) => Some(i64::from(*signal)),
            // Stopped at its timeout by TERM (or KILL after the grace).
            _ if timed_out => Some(i64::from(libc::SIGTERM)),
            _ => None,
        };
        Columns {
            exit_code,
            signal,
            timed_out,
            started_at: o
                .started
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            runtime: o.duration.map_or(0.0, |d| d.as_secs_f64()),
        }
    }
}

/// Renders the Command column of jobs, reusing its buffers.
pub(crate) struct CommandRenderer {
    command: Command,
    argv: Vec<OsString>,
}

impl CommandRenderer {
    pub(crate) fn new(command: Command) -> CommandRenderer {
        CommandRenderer {
            command,
            argv: Vec::new(),
        }
    }

    /// The Command column of job `seq` with `payload` in `slot`, into `out`.
    pub(crate) fn render(&mut self, payload: &[u8], seq: u64, slot: usize, out: &mut Vec<u8>) {
        match &self.command {
            Command::Template(t) => {
                t.render(payload, seq, slot, &mut self.argv);
                command_field(&self.argv, t.is_shell(), out);
            }
            Command::Fixed(argv) => command_field(argv, false, out),
        }
    }
}

/// The payloads of jobs read and not yet ended, for observers that need
/// a job's input when it ends.
#[derive(Default)]
pub(crate) struct Inputs(HashMap<u64, Bytes>);

impl Inputs {
    pub(crate) fn read(&mut self, job: &NewJob) {
        self.0.insert(job.seq, job.payload.clone());
    }

    pub(crate) fn get(&self, seq: u64) -> Bytes {
        self.0.get(&seq).cloned().unwrap_or_default()
    }

    pub(crate) fn ended(&mut self, seq: u64) {
        self.0.remove(&seq);
    }
}

struct State {
    file: File,
    inputs: Inputs,
    command: CommandRenderer,
    field: Vec<u8>,
}

/// `--joblog FILE`: an observer writing one line per ended job, live.
pub struct Joblog {
    path: PathBuf,
    state: Mutex<State>,
}

impl Joblog {
    /// Creates (or truncates) `path` and writes the header; with `append`
    /// (`--resume`), adds to what is there, the header only if it is empty.
    ///
    /// # Errors
    ///
    /// The file cannot be opened or written.
    pub fn create(path: &Path, command: Command, append: bool) -> io::Result<Joblog> {
        let mut file = if append {
            OpenOptions::new().create(true).append(true).open(path)?
        } else {
            File::create(path)?
        };
        if file.metadata()?.len() == 0 {
            file.write_all(format!("{HEADER}\n").as_bytes())?;
        }
        Ok(Joblog {
            path: path.to_path_buf(),
            state: Mutex::new(State {
                file,
                inputs: Inputs::default(),
                command: CommandRenderer::new(command),
                field: Vec::new(),
            }),
        })
    }

    /// The file written.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Observer for Joblog {
    fn job_read(&self, job: &NewJob) -> Result<(), ObserverError> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .inputs
            .read(job);
        Ok(())
    }

    fn attempt_finished(&self, report: &mut AttemptReport<'_>) -> Result<(), ObserverError> {
        if !report.resolution.is_final() {
            return Ok(());
        }
        let c = Columns::of(report);
        let received = report.stdout.len();
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let st = &mut *guard;
        let payload = st.inputs.get(report.seq);
        st.inputs.ended(report.seq);
        st.command
            .render(&payload, report.seq, report.slot, &mut st.field);
        let entry = Entry {
            seq: report.seq,
            started_at: c.started_at,
            runtime: c.runtime,
            received,
            exit_code: c.exit_code,
            signal: c.signal,
            timed_out: c.timed_out,
            command: &st.field,
        };
        // One write(2) of the whole line: readers never see half of it.
        write_entry(&mut st.file, &entry).map_err(|e| {
            ObserverError::msg(format!(
                "cannot write the joblog {}: {e}",
                self.path.display()
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_have_gnu_parallels_columns() {
        let mut out = Vec::new();
        let e = Entry {
            seq: 3,
            started_at: 1.5,
            runtime: 0.25,
            received: 7,
            exit_code: Some(2),
            signal: None,
            timed_out: false,
            command: b"echo 'a b'",
        };
        write_entry(&mut out, &e).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "3\t:\t1.500\t     0.250\t0\t7\t2\t0\techo 'a b'\n"
        );
        let mut out = Vec::new();
        write_entry(
            &mut out,
            &Entry {
                exit_code: None,
                signal: Some(15),
                timed_out: true,
                ..e.clone()
            },
        )
        .unwrap();
        assert!(String::from_utf8(out).unwrap().contains("\t-1\t15\t"));
    }

    #[test]
    fn words_are_quoted_as_gnu_parallel_quotes_them() {
        let mut out = Vec::new();
        let argv: Vec<OsString> = ["echo", "a b", "it's", "x\ny", "ok-1"]
            .iter()
            .map(Into::into)
            .collect();
        command_field(&argv, false, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "echo 'a b' 'it'\"'\"'s' $'x\\ny' ok-1"
        );
    }
}

//! Reading journals: `jobmill results RUN_ID|PATH`, `jobmill status
//! RUN_ID|PATH` and `jobmill runs [--prune AGE]`. `results` and `status`
//! with `--queue URL` first collect a shared Redis queue's results into a
//! journal (a temporary one, or `--save PATH`; src/cli/collect.rs), then
//! render it with the same code.
//!
//! Apart from that collection, every command here opens the journal
//! read-only and never changes it.

use std::ffi::OsString;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};

use jobmill::engine::joblog;
use jobmill::journal::prune;
use jobmill::journal::read::{
    format_duration, format_utc, JobRow, JobState, Journal, Liveness, Output, RunInfo, StateFilter,
    Stream,
};
use jobmill::journal::{self, JournalError};
use jobmill::template::Template;

use super::args;
use super::collect;
use super::queue::{self, QueueArgs};

/// Output formats of `jobmill results`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Tab-separated values with a header line (default).
    Tsv,
    /// Comma-separated values (RFC 4180) with a header line.
    Csv,
    /// JSON Lines: one object per job.
    Json,
    /// GNU parallel's `--joblog` format (finished jobs only).
    Joblog,
}

/// Options of `jobmill results`.
#[derive(Debug, Args)]
pub struct ResultsArgs {
    /// The run: a run id (or a unique prefix of one) in the state
    /// directory, or the path of a journal file.
    #[arg(value_name = "RUN_ID|PATH")]
    pub run: Option<String>,

    /// Read a shared queue (redis://[:password@]host:port/NAME) instead of
    /// a journal: its finished jobs are collected into a journal (see
    /// --save), then shown as for a run.
    #[arg(long, value_name = "URL", conflicts_with = "run")]
    pub queue: Option<String>,

    /// With --queue: collect into the journal PATH (created, or updated in
    /// place) and keep it, so `jobmill results PATH` and `status PATH`
    /// work offline afterwards.
    #[arg(long, value_name = "PATH", requires = "queue")]
    pub save: Option<PathBuf>,

    /// Output format.
    #[arg(long, value_enum, default_value = "tsv")]
    pub format: Format,

    /// Only failed jobs (combines with --dead and --done).
    #[arg(long)]
    pub failed: bool,

    /// Only dead jobs (combines with --failed and --done).
    #[arg(long)]
    pub dead: bool,

    /// Only done jobs (combines with --failed and --dead).
    #[arg(long)]
    pub done: bool,

    /// Print the stored stdout and stderr of the selected jobs instead of
    /// the table; with SEQ, of that job alone, raw (stdout to stdout,
    /// stderr to stderr).
    /// (A value that is not a number, as in `results --output ./x.sqlite`,
    /// is the run when none was given.)
    #[arg(long, value_name = "SEQ", num_args = 0..=1)]
    pub output: Option<Option<String>>,
}

/// Options of `jobmill status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The run: a run id (or a unique prefix of one) in the state
    /// directory, or the path of a journal file.
    #[arg(value_name = "RUN_ID|PATH")]
    pub run: Option<String>,

    /// Show a shared queue (redis://[:password@]host:port/NAME) instead of
    /// a journal.
    #[arg(long, value_name = "URL", conflicts_with = "run")]
    pub queue: Option<String>,

    /// With --queue: also collect its results into the journal PATH
    /// (created, or updated in place), as `results --queue --save` does.
    #[arg(long, value_name = "PATH", requires = "queue")]
    pub save: Option<PathBuf>,

    /// Redraw every second until the run is no longer running, or the
    /// queue is drained (or Ctrl-C).
    #[arg(long)]
    pub watch: bool,
}

/// Options of `jobmill runs`.
#[derive(Debug, Args)]
pub struct RunsArgs {
    /// Delete the journals of finished runs that ended more than AGE ago
    /// (e.g. 7d, 12h); running and interrupted runs are always kept.
    #[arg(long, value_name = "AGE", value_parser = args::duration)]
    pub prune: Option<Duration>,
}

fn open(run: &str) -> anyhow::Result<Journal> {
    let path = journal::locate(run)?;
    let j = Journal::open(&path)?;
    // A jobmill killed before its last commit left the ends of its last
    // attempts in the completions log: record them first (only when no
    // jobmill holds the journal; a live one owns its log).
    match journal::completions::recover_if_idle(&path) {
        Ok(None) => Ok(j),
        Ok(Some(r)) => {
            report_recovered(&path, &r);
            drop(j);
            Ok(Journal::open_header_only(&path)?)
        }
        Err(e) => {
            eprintln!("jobmill: warning: {e}; showing what the journal had committed");
            Ok(j)
        }
    }
}

/// Says on stderr what [`journal::completions::recover`] could not read.
pub(crate) fn report_recovered(path: &Path, r: &journal::completions::Recovered) {
    if let (Some(kept), Some(problem)) = (&r.kept_as, &r.problem) {
        eprintln!(
            "jobmill: warning: journal {}: the completions log has a damaged record ({problem}); \
             {} attempt ends before it were recorded, the log was kept as {}",
            path.display(),
            r.applied,
            kept.display()
        );
    }
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// Collects the queue `url` into `save`, or into a temporary journal that
/// lives as long as the returned directory.
fn collect_queue(
    url: &str,
    save: Option<&Path>,
) -> anyhow::Result<(Option<tempfile::TempDir>, PathBuf)> {
    let queue = queue::open_queue(url, false)?;
    let (dir, path, c) = match save {
        Some(p) => {
            let c = collect::collect(&queue, p, collect::RunContext::default())?;
            (None, p.to_path_buf(), c)
        }
        None => {
            let (dir, path, c) = collect::collect_temporary(&queue)?;
            (Some(dir), path, c)
        }
    };
    collect::report(&c);
    if save.is_some() {
        eprintln!(
            "jobmill: collected the jobs of {} into {} (run {})",
            queue.url(),
            c.summary.path.display(),
            c.summary.run_id
        );
    }
    Ok((dir, path))
}

/// `jobmill results`.
pub fn results(mut a: ResultsArgs) -> anyhow::Result<u8> {
    // `--output` takes an optional SEQ, so it swallows a run given after
    // it: `results --output ./x.sqlite` means the run ./x.sqlite.
    let output: Option<Option<u64>> = match a.output.take() {
        None => None,
        Some(None) => Some(None),
        Some(Some(v)) => match v.parse::<u64>() {
            Ok(seq) => Some(Some(seq)),
            Err(_) if a.run.is_none() && a.queue.is_none() => {
                a.run = Some(v);
                Some(None)
            }
            Err(_) => bail!("--output takes a job number (SEQ), not {v:?}"),
        },
    };
    let (_dir, j) = match (&a.run, &a.queue) {
        (Some(run), _) => (None, open(run)?),
        (None, Some(url)) => {
            let (dir, path) = collect_queue(url, a.save.as_deref())?;
            (dir, Journal::open(&path)?)
        }
        (None, None) => {
            bail!("give the run to read (RUN_ID|PATH: a run id or a journal file) or --queue URL")
        }
    };
    let info = j.run()?;
    let filter = StateFilter {
        done: a.done,
        failed: a.failed,
        dead: a.dead,
        final_only: a.format == Format::Joblog && output.is_none(),
    };
    let stdout = io::stdout();
    let mut out = BufWriter::with_capacity(64 * 1024, stdout.lock());
    match output {
        Some(Some(seq)) => return output_of_one(&j, &info, seq, a.format, &mut out),
        Some(None) => {
            j.for_each_job(filter, |row: &JobRow| -> anyhow::Result<()> {
                let outputs = j.output(row.seq)?;
                if a.format == Format::Json {
                    write_json(&mut out, row, Some(&outputs))?;
                } else {
                    write_outputs(&mut out, row, &outputs)?;
                }
                Ok(())
            })?;
        }
        None => {
            let mut w = RowWriter::new(a.format, &info)?;
            w.header(&mut out)?;
            j.for_each_job(filter, |row: &JobRow| -> anyhow::Result<()> {
                w.row(&mut out, row)?;
                Ok(())
            })?;
        }
    }
    out.flush()?;
    Ok(0)
}

/// `--output SEQ`: the job's stdout raw on stdout, its stderr raw on
/// stderr, truncation notes on stderr; with `--format json` one object.
fn output_of_one(
    j: &Journal,
    info: &RunInfo,
    seq: u64,
    format: Format,
    out: &mut impl Write,
) -> anyhow::Result<u8> {
    let Some(row) = j.job(seq)? else {
        bail!(
            "run {} ({}) has no job {seq}",
            info.run_id,
            j.path().display()
        );
    };
    let outputs = j.output(seq)?;
    if format == Format::Json {
        write_json(out, &row, Some(&outputs))?;
        out.flush()?;
        return Ok(0);
    }
    let mut notes = Vec::new();
    for o in &outputs {
        match o.stream {
            Stream::Stdout => out.write_all(&o.data)?,
            Stream::Stderr => {
                out.flush()?;
                io::stderr().write_all(&o.data)?;
            }
        }
        if o.truncated {
            notes.push(format!(
                "jobmill: job {seq}: {} truncated: {} of {} bytes stored",
                o.stream.as_str(),
                o.data.len(),
                o.total_bytes
            ));
        }
    }
    out.flush()?;
    if row.state.is_some_and(|s| !s.is_final()) {
        notes.push(format!(
            "jobmill: job {seq} is {}: no finished attempt yet",
            row.state.map_or("?", JobState::as_str)
        ));
    }
    for n in notes {
        eprintln!("{n}");
    }
    Ok(0)
}

/// `--output` for many jobs: a header line per stored stream, then the
/// bytes, then a newline if they did not end with one.
fn write_outputs(out: &mut impl Write, row: &JobRow, outputs: &[Output]) -> io::Result<()> {
    for o in outputs {
        if o.total_bytes == 0 && o.data.is_empty() {
            continue;
        }
        write!(
            out,
            "==> job {} ({}",
            row.seq,
            row.state.map_or("?", JobState::as_str)
        )?;
        if let Some(c) = row.exit_code {
            write!(out, ", exit {c}")?;
        }
        if let Some(s) = row.signal {
            write!(out, ", signal {s}")?;
        }
        write!(out, ") {}: ", o.stream.as_str())?;
        if o.truncated {
            write!(
                out,
                "TRUNCATED, {} of {} bytes stored",
                o.data.len(),
                o.total_bytes
            )?;
        } else {
            write!(out, "{} bytes", o.data.len())?;
        }
        writeln!(out, " <==")?;
        out.write_all(&o.data)?;
        if o.data.last().is_some_and(|&b| b != b'\n') {
            out.write_all(b"\n")?;
        }
    }
    Ok(())
}

/// The column names of tsv, csv and json.
const COLUMNS: [&str; 11] = [
    "seq",
    "state",
    "attempts",
    "exit_code",
    "signal",
    "started_at",
    "ended_at",
    "duration",
    "reason",
    "cause",
    "input",
];

/// How the run's payloads hold their values (`shape` in its options;
/// absent in single-value runs and older journals).
fn stored_shape(info: &RunInfo) -> jobmill::input::Shape {
    info.options
        .get("shape")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default()
}

/// Writes rows in one format, reusing its buffers.
struct RowWriter {
    format: Format,
    template: Option<Template>,
    persistent: bool,
    command: Vec<OsString>,
    field: Vec<u8>,
    argv: Vec<OsString>,
}

impl RowWriter {
    fn new(format: Format, info: &RunInfo) -> anyhow::Result<RowWriter> {
        // A queue's collected results may not know the command (the
        // workers had it): the joblog's Command column is then empty.
        let template = if format == Format::Joblog && !info.command.iter().all(|a| a.is_empty()) {
            Some(
                Template::parse_shaped(&info.command, info.shell(), stored_shape(info))
                    .context("the journal's command cannot be rendered")?,
            )
        } else {
            None
        };
        Ok(RowWriter {
            format,
            template,
            persistent: info.persistent(),
            command: info.command.clone(),
            field: Vec::new(),
            argv: Vec::new(),
        })
    }

    fn header(&self, out: &mut impl Write) -> io::Result<()> {
        match self.format {
            Format::Tsv => writeln!(out, "{}", COLUMNS.join("\t")),
            Format::Csv => write!(out, "{}\r\n", COLUMNS.join(",")),
            Format::Json => Ok(()),
            Format::Joblog => writeln!(out, "{}", joblog::HEADER),
        }
    }

    fn row(&mut self, out: &mut impl Write, r: &JobRow) -> io::Result<()> {
        match self.format {
            Format::Tsv | Format::Csv => self.delimited(out, r),
            Format::Json => write_json(out, r, None),
            Format::Joblog => self.joblog(out, r),
        }
    }

    fn delimited(&mut self, out: &mut impl Write, r: &JobRow) -> io::Result<()> {
        let csv = self.format == Format::Csv;
        let sep: &[u8] = if csv { b"," } else { b"\t" };
        write!(
            out,
            "{}{sep}{}{sep}{}{sep}",
            r.seq,
            r.state.map_or("?", JobState::as_str),
            r.attempts,
            sep = if csv { ',' } else { '\t' }
        )?;
        write_opt(out, r.exit_code)?;
        out.write_all(sep)?;
        write_opt(out, r.signal)?;
        out.write_all(sep)?;
        write_time(out, r.started_at)?;
        out.write_all(sep)?;
        write_time(out, r.ended_at)?;
        out.write_all(sep)?;
        write_time(out, r.duration)?;
        out.write_all(sep)?;
        self.field.clear();
        if let Some(reason) = &r.reason {
            escape_into(reason.as_bytes(), &mut self.field);
        }
        write_field(out, &self.field, csv)?;
        out.write_all(sep)?;
        out.write_all(r.cause.as_deref().unwrap_or("").as_bytes())?;
        out.write_all(sep)?;
        self.field.clear();
        escape_into(&r.input, &mut self.field);
        write_field(out, &self.field, csv)?;
        out.write_all(if csv { b"\r\n" } else { b"\n" })
    }

    fn joblog(&mut self, out: &mut impl Write, r: &JobRow) -> io::Result<()> {
        self.field.clear();
        if let Some(t) = &self.template {
            if self.persistent {
                // Run as is, without substitution.
                joblog::command_field(&self.command, false, &mut self.field);
            } else {
                t.render(
                    &r.input,
                    r.seq,
                    r.slot.unwrap_or(1) as usize,
                    &mut self.argv,
                );
                joblog::command_field(&self.argv, t.is_shell(), &mut self.field);
            }
        }
        joblog::write_entry(
            out,
            &joblog::Entry {
                seq: r.seq,
                started_at: r.started_at.unwrap_or(0.0),
                runtime: r.duration.unwrap_or(0.0),
                received: r.stdout_bytes.unwrap_or(0),
                exit_code: r.exit_code,
                signal: r.signal,
                timed_out: r.timed_out,
                command: &self.field,
            },
        )
    }
}

fn write_opt(out: &mut impl Write, v: Option<i64>) -> io::Result<()> {
    match v {
        Some(v) => write!(out, "{v}"),
        None => Ok(()),
    }
}

fn write_time(out: &mut impl Write, v: Option<f64>) -> io::Result<()> {
    match v {
        Some(v) => write!(out, "{v:.3}"),
        None => Ok(()),
    }
}

/// A CSV field is quoted when it holds a comma, a quote, CR or LF
/// (RFC 4180); quotes inside are doubled. TSV fields are escaped already.
fn write_field(out: &mut impl Write, field: &[u8], csv: bool) -> io::Result<()> {
    if csv
        && field
            .iter()
            .any(|b| matches!(b, b',' | b'"' | b'\r' | b'\n'))
    {
        out.write_all(b"\"")?;
        for chunk in field.split_inclusive(|&b| b == b'"') {
            out.write_all(chunk)?;
            if chunk.last() == Some(&b'"') {
                out.write_all(b"\"")?;
            }
        }
        out.write_all(b"\"")
    } else {
        out.write_all(field)
    }
}

/// Escapes bytes for one TSV/CSV field: `\` as `\\`, tab as `\t`, newline
/// as `\n`, CR as `\r`, other control characters and bytes that are not
/// UTF-8 as `\xHH`. Valid UTF-8 text is kept as is. Reversible.
pub fn escape_into(bytes: &[u8], out: &mut Vec<u8>) {
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.extend_from_slice(b"\\\\"),
                '\t' => out.extend_from_slice(b"\\t"),
                '\n' => out.extend_from_slice(b"\\n"),
                '\r' => out.extend_from_slice(b"\\r"),
                c if (c as u32) < 0x20 || c as u32 == 0x7f => hex_byte(c as u8, out),
                c => {
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
        for &b in chunk.invalid() {
            hex_byte(b, out);
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

/// Base64 (standard alphabet, padded).
pub fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Writes `"key":` then the bytes as a JSON string if UTF-8; else
/// `"key":null,"key_base64":"..."`.
fn write_json_bytes(out: &mut impl Write, key: &str, bytes: &[u8]) -> io::Result<()> {
    match std::str::from_utf8(bytes) {
        Ok(s) => {
            write!(out, "\"{key}\":")?;
            serde_json::to_writer(&mut *out, s).map_err(io::Error::from)
        }
        Err(_) => write!(out, "\"{key}\":null,\"{key}_base64\":\"{}\"", base64(bytes)),
    }
}

fn json_opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "null".into(), |v| v.to_string())
}

fn json_time(v: Option<f64>) -> String {
    v.map_or_else(|| "null".into(), |v| format!("{v:.3}"))
}

/// One JSON object per job on one line; with `outputs`, the stored
/// streams as `stdout`/`stderr` (or `..._base64`), `..._bytes` and
/// `..._truncated`.
fn write_json(out: &mut impl Write, r: &JobRow, outputs: Option<&[Output]>) -> io::Result<()> {
    write!(
        out,
        "{{\"seq\":{},\"state\":\"{}\",\"attempts\":{},\"exit_code\":{},\"signal\":{},\
         \"started_at\":{},\"ended_at\":{},\"duration\":{},\"timed_out\":{},\
         \"max_rss_kb\":{},\"reason\":",
        r.seq,
        r.state.map_or("?", JobState::as_str),
        r.attempts,
        json_opt(r.exit_code),
        json_opt(r.signal),
        json_time(r.started_at),
        json_time(r.ended_at),
        json_time(r.duration),
        r.timed_out,
        json_opt(r.max_rss_kb),
    )?;
    serde_json::to_writer(&mut *out, &r.reason).map_err(io::Error::from)?;
    out.write_all(b",\"cause\":")?;
    serde_json::to_writer(&mut *out, &r.cause).map_err(io::Error::from)?;
    out.write_all(b",")?;
    write_json_bytes(out, "input", &r.input)?;
    if let Some(outputs) = outputs {
        for stream in [Stream::Stdout, Stream::Stderr] {
            let key = stream.as_str();
            match outputs.iter().find(|o| o.stream == stream) {
                Some(o) => {
                    out.write_all(b",")?;
                    write_json_bytes(out, key, &o.data)?;
                    write!(
                        out,
                        ",\"{key}_bytes\":{},\"{key}_truncated\":{}",
                        o.total_bytes, o.truncated
                    )?;
                }
                None => write!(
                    out,
                    ",\"{key}\":null,\"{key}_bytes\":0,\"{key}_truncated\":false"
                )?,
            }
        }
    }
    out.write_all(b"}\n")
}

/// `jobmill status`.
pub fn status(a: StatusArgs) -> anyhow::Result<u8> {
    if a.watch {
        return super::page::watch(a.run.as_deref(), a.queue.as_deref());
    }
    let Some(run) = a.run else {
        let Some(url) = a.queue else {
            bail!("give the run to read (RUN_ID|PATH: a run id or a journal file) or --queue URL");
        };
        // The queue's own state (open/closed, producer, settings), then
        // what its collected results show, as for a run.
        queue::status(QueueArgs { queue: url.clone() })?;
        let (_dir, path) = collect_queue(&url, a.save.as_deref())?;
        let j = Journal::open(&path)?;
        let stdout = io::stdout();
        let mut out = BufWriter::new(stdout.lock());
        if a.save.is_some() {
            writeln!(out, "journal:  {}", path.display())?;
        }
        write_details(&j, &mut out)?;
        out.flush()?;
        return Ok(0);
    };
    let j = open(&run)?;
    let info = j.run()?;
    let counts = j.counts()?;
    let live = j.liveness()?;
    let progress = j.progress(now())?;
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    writeln!(out, "run:       {}", info.run_id)?;
    writeln!(out, "journal:   {}", j.path().display())?;
    if info.command_display.is_empty() {
        writeln!(
            out,
            "command:   (not known here: the queue's workers had it)"
        )?;
    } else {
        writeln!(out, "command:   {}", info.command_display)?;
    }
    writeln!(
        out,
        "started:   {} UTC on {}",
        format_utc(info.started_at),
        info.host
    )?;
    match &live {
        Liveness::Running { pid } => writeln!(out, "state:     running (pid {pid})")?,
        Liveness::Finished => writeln!(
            out,
            "state:     finished ({}) at {} UTC",
            info.end_reason.as_deref().unwrap_or("complete"),
            format_utc(info.ended_at.unwrap_or(info.started_at))
        )?,
        Liveness::Interrupted if info.options.get("source").is_some() => writeln!(
            out,
            "state:     {} at {} UTC",
            info.end_reason.as_deref().unwrap_or("snapshot"),
            format_utc(info.ended_at.unwrap_or(info.started_at))
        )?,
        Liveness::Interrupted if info.options.get("pool").is_some() => writeln!(
            out,
            "state:     interrupted ({}); run its script again to continue it (a jobmill.Pool journal)",
            info.end_reason
                .as_deref()
                .unwrap_or("the Python program was killed or crashed"),
        )?,
        Liveness::Interrupted => writeln!(
            out,
            "state:     interrupted ({}); continue it with `jobmill resume {}`",
            info.end_reason
                .as_deref()
                .unwrap_or("jobmill was killed or crashed"),
            info.run_id
        )?,
    }
    writeln!(out, "elapsed:   {}", format_duration(progress.elapsed))?;
    let total = match (info.input_complete, info.total_jobs) {
        (true, Some(t)) => t.to_string(),
        _ => format!("{}+ (input not complete)", counts.total()),
    };
    write!(out, "jobs:      {total} total")?;
    for s in JobState::ALL {
        let n = counts.get(s);
        if n > 0 || s.is_final() {
            write!(out, ", {n} {}", s.as_str())?;
        }
    }
    writeln!(out)?;
    if let Liveness::Running { .. } = live {
        match (progress.eta, progress.rate) {
            (Some(eta), Some(rate)) => writeln!(
                out,
                "eta:       {} ({rate:.2} jobs/s)",
                format_duration(eta)
            )?,
            (None, Some(rate)) => writeln!(
                out,
                "eta:       unknown, input not complete ({rate:.2} jobs/s)"
            )?,
            _ => writeln!(out, "eta:       unknown (no job finished yet)")?,
        }
    } else if let (Liveness::Interrupted, Some(left)) = (&live, progress.remaining) {
        writeln!(
            out,
            "left:      {left} job{} not finished",
            if left == 1 { "" } else { "s" }
        )?;
    }
    if let Some(source) = info.options.get("source").and_then(|s| s.as_str()) {
        writeln!(out, "collected: from {source}")?;
    }
    write_details(&j, &mut out)?;
    out.flush()?;
    Ok(0)
}

/// The slowest jobs, the failures by cause, the top failure reasons and
/// the jobs that died of memory.
fn write_details(j: &Journal, out: &mut impl Write) -> anyhow::Result<()> {
    let slowest = j.slowest(5)?;
    if !slowest.is_empty() {
        writeln!(out, "slowest:")?;
        let mut field = Vec::new();
        for r in &slowest {
            field.clear();
            escape_into(&r.input, &mut field);
            // The escaped form is UTF-8: cut on a character boundary.
            cut_field(&mut field, 60);
            write!(
                out,
                "  {:>10}  job {:<6} {:<7} ",
                match r.duration.unwrap_or(0.0) {
                    d if d < 60.0 => format!("{d:.3}s"),
                    d => format_duration(d),
                },
                r.seq,
                r.state.map_or("?", JobState::as_str)
            )?;
            out.write_all(&field)?;
            writeln!(out)?;
        }
    }
    let causes = j.failure_causes()?;
    if !causes.is_empty() {
        let list: Vec<String> = causes.iter().map(|(c, n)| format!("{c} {n}")).collect();
        writeln!(out, "failures by cause: {}", list.join(", "))?;
    }
    let reasons = j.failure_reasons(5)?;
    if !reasons.is_empty() {
        writeln!(out, "top failure reasons:")?;
        for (reason, n) in reasons {
            writeln!(out, "  {n:>8}  {reason}")?;
        }
    }
    const MEMORY_SHOWN: usize = 10;
    let (deaths, total) = j.memory_deaths(MEMORY_SHOWN)?;
    if !deaths.is_empty() {
        writeln!(
            out,
            "died of memory ({total} job{}):",
            if total == 1 { "" } else { "s" }
        )?;
        let mut field = Vec::new();
        for d in &deaths {
            field.clear();
            escape_into(&d.input, &mut field);
            cut_field(&mut field, 40);
            write!(
                out,
                "  job {:<6} {:<7} peak {:>10}  ",
                d.seq,
                d.state.map_or("?", JobState::as_str),
                d.max_rss_kb
                    .map_or("?".to_owned(), |kb| human_size(kb.max(0) as u64 * 1024)),
            )?;
            out.write_all(&field)?;
            writeln!(out, "  (attempt {}: {})", d.attempt, d.reason)?;
        }
        if total > deaths.len() as u64 {
            writeln!(out, "  ... and {} more", total - deaths.len() as u64)?;
        }
    }
    Ok(())
}

/// Cuts an escaped (UTF-8) field to at most `max` bytes, ending in `...`.
fn cut_field(field: &mut Vec<u8>, max: usize) {
    if field.len() > max {
        let mut cut = max - 3;
        while cut > 0 && field[cut] & 0xC0 == 0x80 {
            cut -= 1;
        }
        field.truncate(cut);
        field.extend_from_slice(b"...");
    }
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `jobmill runs [--prune AGE]`.
pub fn runs(a: RunsArgs) -> anyhow::Result<u8> {
    let dir = journal::state_dir();
    if let Some(age) = a.prune {
        let pruned = prune::prune(&dir, age, now())?;
        let stdout = io::stdout();
        let mut out = stdout.lock();
        let mut freed = 0;
        for p in &pruned {
            freed += p.size;
            writeln!(
                out,
                "deleted {}  {}  ({})",
                p.run_id,
                p.path.display(),
                human_size(p.size)
            )?;
        }
        writeln!(
            out,
            "pruned {} finished run{} older than {}: {} freed",
            pruned.len(),
            if pruned.len() == 1 { "" } else { "s" },
            format_duration(age.as_secs_f64()),
            human_size(freed)
        )?;
        return Ok(0);
    }
    let entries = prune::list(&dir)?;
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    if entries.is_empty() {
        writeln!(out, "no journals in {}", dir.display())?;
        out.flush()?;
        return Ok(0);
    }
    writeln!(
        out,
        "{:<22} {:<19}  {:<11} {:>15} {:>10}  COMMAND",
        "RUN ID", "STARTED (UTC)", "STATE", "DONE/TOTAL", "SIZE"
    )?;
    let mut total = 0;
    for e in &entries {
        total += e.size;
        match &e.summary {
            Ok(s) => {
                let jobs = if s.run.input_complete {
                    format!(
                        "{}/{}",
                        s.counts.done,
                        s.run.total_jobs.unwrap_or(s.counts.total())
                    )
                } else {
                    format!("{}/{}+", s.counts.done, s.counts.total())
                };
                writeln!(
                    out,
                    "{:<22} {:<19}  {:<11} {:>15} {:>10}  {}",
                    s.run.run_id,
                    format_utc(s.run.started_at),
                    s.liveness.as_str(),
                    jobs,
                    human_size(e.size),
                    s.run.command_display
                )?;
            }
            Err(err) => {
                let name = e
                    .path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                writeln!(
                    out,
                    "! {name}  {:>10}  not a readable journal, left alone: {}",
                    human_size(e.size),
                    describe(err)
                )?;
            }
        }
    }
    writeln!(
        out,
        "{} journal file{}, {} in {}",
        entries.len(),
        if entries.len() == 1 { "" } else { "s" },
        human_size(total),
        dir.display()
    )?;
    out.flush()?;
    Ok(0)
}

/// The reason alone, without the path (the listing shows it).
fn describe(e: &JournalError) -> String {
    match e {
        JournalError::Corrupt { detail, .. } => detail.clone(),
        JournalError::NotAJournal { found, .. } => {
            format!("an SQLite database with application_id {found:#x}")
        }
        JournalError::NewerSchema { found, .. } => {
            format!("schema version {found}, newer than this jobmill's")
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
        assert_eq!(base64(&[0xff, 0xfe, 0xfd]), "//79");
    }

    #[test]
    fn words_are_quoted_like_gnu_parallel_quotes_them() {
        let q = |w: &[u8]| {
            let mut out = Vec::new();
            joblog::parallel_quote_into(w, &mut out);
            String::from_utf8_lossy(&out).into_owned()
        };
        assert_eq!(q(b"plain-1.txt"), "plain-1.txt");
        assert_eq!(q(b"a b"), "'a b'");
        assert_eq!(q(b"x'y"), "'x'\"'\"'y'");
        assert_eq!(q(b"$x"), "'$x'");
        assert_eq!(q(b""), "''");
        assert_eq!(q(b"a\nb'c"), "$'a\\nb\\'c'");
    }

    #[test]
    fn escaping_keeps_text_and_marks_every_other_byte() {
        let mut out = Vec::new();
        escape_into(b"caf\xc3\xa9 \\ \t\n\r\x00\x7f\xff", &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "café \\\\ \\t\\n\\r\\x00\\x7f\\xff"
        );
    }
}

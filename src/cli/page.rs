//! `jobmill report RUN_ID|PATH [-o FILE.html]`: one self-contained HTML
//! page of a run (built by `jobmill::report`), and `jobmill status
//! --watch` (a terminal view of a live run, redrawn every second).
//!
//! Both read the journal read-only and never disturb its writer.

use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;

use jobmill::journal::read::{self, format_duration, format_utc, JobState, Journal, Liveness};
use jobmill::journal::{self};
use jobmill::report;

use super::collect;
use super::journal::{escape_into, report_recovered};
use super::queue::{self, QueueArgs};

/// Options of `jobmill report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The run: a run id (or a unique prefix of one) in the state
    /// directory, or the path of a journal file.
    #[arg(value_name = "RUN_ID|PATH")]
    pub run: Option<String>,

    /// Draw a shared queue (redis://[:password@]host:port/NAME) instead:
    /// its finished jobs are collected into a temporary journal first (each
    /// job's last attempt only; the page says what is missing).
    #[arg(long, value_name = "URL", conflicts_with = "run")]
    pub queue: Option<String>,

    /// Write the page to FILE (`-` for stdout); default RUN_ID.html in the
    /// current directory.
    #[arg(short = 'o', long = "output", value_name = "FILE.html")]
    pub output: Option<PathBuf>,
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// Locates the journal and, as `status` and `results` do, first records
/// the attempt ends a killed jobmill left in its completions log (only
/// when no jobmill holds it).
fn locate(run: &str) -> anyhow::Result<PathBuf> {
    let path = journal::locate(run)?;
    journal::check(&path)?;
    match journal::completions::recover_if_idle(&path) {
        Ok(Some(r)) => report_recovered(&path, &r),
        Ok(None) => {}
        Err(e) => eprintln!("jobmill: warning: {e}; showing what the journal had committed"),
    }
    Ok(path)
}

/// `jobmill report`.
pub fn report(a: ReportArgs) -> anyhow::Result<u8> {
    let (_collected, path) = match (&a.run, &a.queue) {
        (Some(run), _) => (None, locate(run)?),
        (None, Some(url)) => {
            let queue = queue::open_queue(url, false)?;
            let (dir, path, c) = collect::collect_temporary(&queue)?;
            collect::report(&c);
            (Some(dir), path)
        }
        (None, None) => anyhow::bail!(
            "give the run to draw (RUN_ID|PATH: a run id or a journal file) or --queue URL"
        ),
    };
    let page = report::build(
        &path,
        &report::Options {
            escape: escape_into,
            now: now(),
        },
    )?;
    let out = a
        .output
        .unwrap_or_else(|| PathBuf::from(format!("{}.html", page.run_id)));
    if out.as_os_str() == "-" {
        let mut stdout = io::stdout().lock();
        stdout.write_all(page.html.as_bytes())?;
        stdout.flush()?;
        return Ok(0);
    }
    // Written next to its destination, then renamed: a reader never sees
    // half a page. Created as `>` would create it (0666 less the umask).
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "report.html".into());
    let tmp = out.with_file_name(format!(".{name}.jobmill-{}", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .and_then(|mut f| f.write_all(page.html.as_bytes()))
        .and_then(|()| std::fs::rename(&tmp, &out));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", out.display()));
    }
    eprintln!(
        "jobmill: wrote the report of run {} to {} ({} attempts{})",
        page.run_id,
        out.display(),
        page.attempts,
        if page.canvas {
            ", timeline on a canvas"
        } else {
            ""
        }
    );
    Ok(0)
}

/// One frame of `status --watch`.
struct Frame {
    text: String,
    live: bool,
}

/// Reads what `--watch` shows, through the readers' read-only handle and
/// a second read-only connection for the slots and recent failures.
fn frame(j: &Journal, conn: &rusqlite::Connection, now: f64) -> anyhow::Result<Frame> {
    let info = j.run()?;
    let live = j.liveness()?;
    let counts = j.counts()?;
    let progress = j.progress(now)?;
    let mut t = String::new();
    use std::fmt::Write as _;
    let running = matches!(live, Liveness::Running { .. });
    writeln!(t, "run:      {}   ({})", info.run_id, j.path().display())?;
    writeln!(t, "command:  {}", info.command_display)?;
    match &live {
        Liveness::Running { pid } => writeln!(t, "state:    running (pid {pid})")?,
        Liveness::Finished => writeln!(
            t,
            "state:    finished ({}) at {} UTC",
            info.end_reason.as_deref().unwrap_or("complete"),
            format_utc(info.ended_at.unwrap_or(info.started_at))
        )?,
        Liveness::Interrupted => writeln!(
            t,
            "state:    interrupted ({}); continue it with `jobmill resume {}`",
            info.end_reason
                .as_deref()
                .unwrap_or("jobmill was killed or crashed"),
            info.run_id
        )?,
    }
    writeln!(
        t,
        "elapsed:  {} (started {} UTC)",
        format_duration(progress.elapsed),
        format_utc(info.started_at)
    )?;
    let total = match (info.input_complete, info.total_jobs) {
        (true, Some(n)) => n.to_string(),
        _ => format!("{}+", counts.total()),
    };
    write!(t, "jobs:     {total} total")?;
    for s in JobState::ALL {
        write!(t, ", {} {}", counts.get(s), s.as_str())?;
    }
    writeln!(t)?;
    if let (true, Some(n)) = (info.input_complete, info.total_jobs) {
        let width = 40usize;
        let frac = if n == 0 {
            1.0
        } else {
            counts.finished() as f64 / n as f64
        };
        let filled = ((frac * width as f64).round() as usize).min(width);
        writeln!(
            t,
            "progress: [{}{}] {:.1}%",
            "#".repeat(filled),
            ".".repeat(width - filled),
            frac * 100.0
        )?;
    }
    if running {
        match (progress.rate, progress.eta) {
            (Some(r), Some(eta)) => {
                writeln!(t, "rate:     {r:.2} jobs/s, eta {}", format_duration(eta))?
            }
            (Some(r), None) => writeln!(
                t,
                "rate:     {r:.2} jobs/s, eta unknown (input not complete)"
            )?,
            _ => writeln!(t, "rate:     - (no job finished yet in this session)")?,
        }
        // Slots busy: attempts of the live session without an end.
        let busy: i64 = conn
            .query_row(
                "SELECT COUNT(DISTINCT slot) FROM attempt WHERE ended_at IS NULL \
                 AND session = (SELECT MAX(id) FROM session)",
                [],
                |r| r.get(0),
            )
            .context("reading the busy slots")?;
        let slots = info
            .options
            .get("jobs")
            .and_then(serde_json::Value::as_u64)
            .map_or_else(String::new, |n| format!(" of {n}"));
        writeln!(t, "slots:    {busy} busy{slots}")?;
    }
    let mut st = conn
        .prepare_cached(
            "SELECT seq, state, COALESCE(reason, 'signal ' || signal, 'exit code ' || exit_code, \
             'unknown'), input FROM job WHERE state IN ('failed', 'dead') \
             ORDER BY finished_at DESC, seq DESC LIMIT 5",
        )
        .context("reading the recent failures")?;
    let mut rows = st.query([]).context("reading the recent failures")?;
    let mut first = true;
    let mut field = Vec::new();
    while let Some(r) = rows.next()? {
        if first {
            writeln!(t, "recent failures:")?;
            first = false;
        }
        let seq: i64 = r.get(0)?;
        let state: String = r.get(1)?;
        let reason: String = r.get(2)?;
        field.clear();
        if let rusqlite::types::ValueRef::Blob(b) | rusqlite::types::ValueRef::Text(b) =
            r.get_ref(3)?
        {
            escape_into(b, &mut field);
        }
        let mut input = String::from_utf8_lossy(&field).into_owned();
        if let Some((cut, _)) = input.char_indices().nth(50) {
            input.truncate(cut);
            input.push_str("...");
        }
        writeln!(t, "  job {seq:<7} {state:<6} {reason:<28} {input}")?;
    }
    if first && counts.failed + counts.dead == 0 {
        writeln!(t, "recent failures: none")?;
    }
    Ok(Frame {
        text: t,
        live: running,
    })
}

/// `jobmill status RUN --watch`: redraws every second until the run is no
/// longer running (then shows its last state and says so) or Ctrl-C.
pub fn watch(run: Option<&str>, queue_url: Option<&str>) -> anyhow::Result<u8> {
    let Some(run) = run else {
        let Some(url) = queue_url else {
            anyhow::bail!(
                "give the run to watch (RUN_ID|PATH: a run id or a journal file) or --queue URL"
            );
        };
        return watch_queue(url);
    };
    let path = locate(run)?;
    // The full check once; then each frame opens the journal afresh (header
    // check only) and closes it at once: a reader kept open across the
    // writer's end would keep it from removing its `-wal` and `-shm`.
    drop(Journal::open(&path)?);
    let tty = io::stdout().is_terminal();
    let mut stdout = io::stdout().lock();
    loop {
        let tick = Instant::now();
        let f = {
            let j = Journal::open_header_only(&path)?;
            let conn = open_conn(&path)?;
            frame(&j, &conn, now())?
        };
        let mut out = String::new();
        out.push_str(&format!(
            "jobmill status --watch - {} UTC - every 1s, Ctrl-C to stop\n",
            format_utc(now())
        ));
        out.push_str(&f.text);
        if !f.live {
            out.push_str("the run is not running (any more): this is its last state.\n");
        } else if !tty {
            out.push('\n');
        }
        if tty {
            out = in_place(&out);
        }
        stdout.write_all(out.as_bytes())?;
        stdout.flush()?;
        if !f.live {
            return Ok(0);
        }
        let spent = tick.elapsed();
        std::thread::sleep(Duration::from_secs(1).saturating_sub(spent));
    }
}

fn open_conn(path: &Path) -> anyhow::Result<rusqlite::Connection> {
    let conn = read::open_read_only(path)
        .with_context(|| format!("cannot open journal {} read-only", path.display()))?;
    conn.busy_timeout(Duration::from_secs(10))?;
    Ok(conn)
}

/// `jobmill status --queue URL --watch`: the queue's counters every
/// second, until it is closed and drained (or Ctrl-C).
fn watch_queue(url: &str) -> anyhow::Result<u8> {
    let q = queue::open_queue(url, false)?;
    let tty = io::stdout().is_terminal();
    loop {
        let tick = Instant::now();
        {
            let mut stdout = io::stdout().lock();
            if tty {
                // Home and clear (the queue's status is printed by another
                // function, line by line).
                stdout.write_all(b"\x1b[H\x1b[2J")?;
            }
            writeln!(
                stdout,
                "jobmill status --watch - {} UTC - every 1s, Ctrl-C to stop",
                format_utc(now())
            )?;
            stdout.flush()?;
        }
        queue::status(QueueArgs {
            queue: url.to_string(),
        })?;
        let drained = q.status()?.counts.is_drained();
        let mut stdout = io::stdout().lock();
        if drained {
            writeln!(
                stdout,
                "the queue is closed and drained: this is its last state."
            )?;
            stdout.flush()?;
            return Ok(0);
        }
        if !tty {
            writeln!(stdout)?;
        }
        stdout.flush()?;
        drop(stdout);
        std::thread::sleep(Duration::from_secs(1).saturating_sub(tick.elapsed()));
    }
}

/// A frame drawn over the previous one on a terminal: from the top-left
/// corner, each line cleared to its end, then the rest of the screen
/// cleared (no full clear between frames: no flicker, no scrolling).
fn in_place(frame: &str) -> String {
    let mut out = String::with_capacity(frame.len() + 64);
    out.push_str("\x1b[H");
    for line in frame.lines() {
        out.push_str(line);
        out.push_str("\x1b[K\n");
    }
    out.push_str("\x1b[J");
    out
}

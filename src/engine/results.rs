//! `--results`: each job's output and status kept in files, in GNU
//! parallel's layout. An [`Observer`]: it writes the final attempt of each
//! job (the last one under `--retries`); attempts that jobmill stopped are
//! not written (the job runs again on resume).
//!
//! **A directory** (`--results DIR`): per job, a directory named after its
//! values, with the files `seq` (the sequence number, no newline),
//! `stdout` and `stderr`:
//!
//! ```text
//! DIR/1/a/seq  DIR/1/a/stdout  DIR/1/a/stderr          one input source
//! DIR/1/a/2/x/{seq,stdout,stderr}                       two sources: values a and x
//! ```
//!
//! In a value, `\` is written `\\` and `/` is written `\_`, as GNU parallel
//! does. Unlike GNU parallel (which writes `..` as is, outside the job's
//! directory), the values `.` and `..` are written `\.` and `\.\.`. The exit
//! status is in the table form or the joblog (GNU parallel 20221122 writes
//! no file for it either).
//!
//! **A table** (`--results FILE.csv`, `.tsv` or `.json`): one row per job,
//! with GNU parallel's columns `Seq, Host, Starttime, JobRuntime, Send,
//! Receive, Exitval, Signal, Command, V1…Vn, Stdout, Stderr` (JSON: one
//! object per line, the values as a list `V`). A CSV or TSV field holding
//! white space, a comma or a quote is quoted, quotes doubled, as GNU
//! parallel writes them. Output that is not UTF-8 is written in JSON with
//! U+FFFD for the bytes that are not.
//!
//! As in GNU parallel, the output is not printed when it goes to
//! `--results`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::events::{AttemptReport, Observer, ObserverError};
use crate::job::NewJob;

use super::joblog::{self, Columns, CommandRenderer, Inputs};

/// Splits a job's payload into its values (`{1}`, `{2}`, …).
pub type Splitter = Box<dyn Fn(&[u8]) -> Vec<Vec<u8>> + Send + Sync>;

/// The form of a results table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// Comma-separated.
    Csv,
    /// Tab-separated.
    Tsv,
    /// One JSON object per line.
    Json,
}

/// Where `--results` writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A directory tree.
    Dir(PathBuf),
    /// A table file.
    Table(PathBuf, Table),
}

impl Target {
    /// The target GNU parallel would choose for `path`: a table for a name
    /// ending in `.csv`, `.tsv` or `.json`, else a directory.
    pub fn of(path: &Path) -> Target {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("csv") => Target::Table(path.to_path_buf(), Table::Csv),
            Some("tsv") => Target::Table(path.to_path_buf(), Table::Tsv),
            Some("json") => Target::Table(path.to_path_buf(), Table::Json),
            _ => Target::Dir(path.to_path_buf()),
        }
    }
}

/// One value as a path component, as GNU parallel writes it.
pub fn path_component(value: &[u8]) -> Vec<u8> {
    match value {
        b"." => return b"\\.".to_vec(),
        b".." => return b"\\.\\.".to_vec(),
        _ => {}
    }
    let mut out = Vec::with_capacity(value.len());
    for &b in value {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'/' => out.extend_from_slice(b"\\_"),
            b => out.push(b),
        }
    }
    out
}

/// The directory of a job with `values` under `dir`.
pub fn job_dir(dir: &Path, values: &[Vec<u8>]) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    let mut p = dir.to_path_buf();
    for (i, v) in values.iter().enumerate() {
        p.push((i + 1).to_string());
        let c = path_component(v);
        if !c.is_empty() {
            p.push(std::ffi::OsStr::from_bytes(&c));
        }
    }
    p
}

struct State {
    inputs: Inputs,
    command: CommandRenderer,
    field: Vec<u8>,
    /// The table, once opened.
    file: Option<File>,
}

/// The `--results` observer.
pub struct Results {
    target: Target,
    split: Splitter,
    append: bool,
    state: Mutex<State>,
}

impl Results {
    /// Writes to `target`, rendering the Command column from `command`
    /// and splitting payloads with `split`. With `append` (a resumed run),
    /// a table is added to instead of replaced.
    ///
    /// # Errors
    ///
    /// The directory cannot be created, or the table not opened.
    pub fn create(
        target: Target,
        command: joblog::Command,
        split: Splitter,
        append: bool,
    ) -> io::Result<Results> {
        let file = match &target {
            Target::Dir(dir) => {
                fs::create_dir_all(dir)?;
                None
            }
            Target::Table(path, _) => Some(if append {
                OpenOptions::new().create(true).append(true).open(path)?
            } else {
                File::create(path)?
            }),
        };
        Ok(Results {
            target,
            split,
            append,
            state: Mutex::new(State {
                inputs: Inputs::default(),
                command: CommandRenderer::new(command),
                field: Vec::new(),
                file,
            }),
        })
    }

    fn write_dir(dir: &Path, values: &[Vec<u8>], report: &mut AttemptReport<'_>) -> io::Result<()> {
        let d = job_dir(dir, values);
        fs::create_dir_all(&d)?;
        fs::write(d.join("seq"), report.seq.to_string())?;
        let mut out = io::BufWriter::new(File::create(d.join("stdout"))?);
        report.stdout.copy_to(&mut out)?;
        out.into_inner().map_err(|e| e.into_error())?;
        let mut err = io::BufWriter::new(File::create(d.join("stderr"))?);
        report.stderr.copy_to(&mut err)?;
        err.into_inner().map_err(|e| e.into_error())?;
        Ok(())
    }

    fn write_row(
        st: &mut State,
        table: Table,
        values: &[Vec<u8>],
        report: &mut AttemptReport<'_>,
        first_row: bool,
    ) -> io::Result<()> {
        let c = Columns::of(report);
        let exitval = c.exit_code.unwrap_or(if c.timed_out || c.signal.is_none() {
            -1
        } else {
            0
        });
        let (stdout, _) = report.stdout.head(usize::MAX)?;
        let (stderr, _) = report.stderr.head(usize::MAX)?;
        let mut line = Vec::with_capacity(128 + stdout.len() + stderr.len());
        let command = String::from_utf8_lossy(&st.field).into_owned();
        match table {
            Table::Json => {
                let values: Vec<String> = values
                    .iter()
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .collect();
                writeln!(
                    line,
                    "{{ \"Seq\": {}, \"Host\": \":\", \"Starttime\": {:.3}, \"JobRuntime\": {:.3}, \
                     \"Send\": 0, \"Receive\": {}, \"Exitval\": {exitval}, \"Signal\": {}, \
                     \"Command\": {}, \"V\": {}, \"Stdout\": {}, \"Stderr\": {} }}",
                    report.seq,
                    c.started_at,
                    c.runtime,
                    stdout.len(),
                    c.signal.unwrap_or(0),
                    json(&command),
                    json(&values),
                    json(&String::from_utf8_lossy(&stdout).into_owned()),
                    json(&String::from_utf8_lossy(&stderr).into_owned()),
                )?;
            }
            Table::Csv | Table::Tsv => {
                let sep = if table == Table::Csv { b',' } else { b'\t' };
                if first_row {
                    let mut names: Vec<String> = [
                        "Seq",
                        "Host",
                        "Starttime",
                        "JobRuntime",
                        "Send",
                        "Receive",
                        "Exitval",
                        "Signal",
                        "Command",
                    ]
                    .iter()
                    .map(|s| s.to_string())
                    .collect();
                    names.extend((1..=values.len()).map(|i| format!("V{i}")));
                    names.push("Stdout".into());
                    names.push("Stderr".into());
                    line.extend_from_slice(names.join(&(sep as char).to_string()).as_bytes());
                    line.push(b'\n');
                }
                write!(
                    line,
                    "{}{s}:{s}{:.3}{s}{:.3}{s}0{s}{}{s}{exitval}{s}{}",
                    report.seq,
                    c.started_at,
                    c.runtime,
                    stdout.len(),
                    c.signal.unwrap_or(0),
                    s = sep as char,
                )?;
                let fields = std::iter::once(&st.field[..])
                    .chain(values.iter().map(Vec::as_slice))
                    .chain([&stdout[..], &stderr[..]]);
                for f in fields {
                    line.push(sep);
                    quote_field(f, &mut line);
                }
                line.push(b'\n');
            }
        }
        let file = st.file.as_mut().expect("a table has its file");
        file.write_all(&line)
    }
}

/// Quotes a CSV/TSV field as GNU parallel does: in double quotes, quotes
/// doubled, when it holds white space, a comma or a quote.
fn quote_field(f: &[u8], out: &mut Vec<u8>) {
    if f.iter()
        .any(|&b| b.is_ascii_whitespace() || b == b',' || b == b'"')
    {
        out.push(b'"');
        for &b in f {
            if b == b'"' {
                out.push(b'"');
            }
            out.push(b);
        }
        out.push(b'"');
    } else {
        out.extend_from_slice(f);
    }
}

/// A value as JSON.
fn json<T: serde::Serialize + ?Sized>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

impl Observer for Results {
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
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let st = &mut *guard;
        let payload = st.inputs.get(report.seq);
        st.inputs.ended(report.seq);
        let values = (self.split)(&payload);
        let written = match &self.target {
            Target::Dir(dir) => Results::write_dir(dir, &values, report),
            Target::Table(_, table) => {
                st.command
                    .render(&payload, report.seq, report.slot, &mut st.field);
                let empty = match st.file.as_ref().map(File::metadata) {
                    Some(Ok(m)) => m.len() == 0,
                    _ => !self.append,
                };
                Results::write_row(st, *table, &values, report, empty)
            }
        };
        written.map_err(|e| {
            let path = match &self.target {
                Target::Dir(p) | Target::Table(p, _) => p,
            };
            ObserverError::msg(format!(
                "cannot write the results of job {} to {}: {e}",
                report.seq,
                path.display()
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_become_path_components_as_in_gnu_parallel() {
        assert_eq!(path_component(b"a/b"), b"a\\_b".to_vec());
        assert_eq!(path_component(b"x\\y"), b"x\\\\y".to_vec());
        assert_eq!(path_component(b".."), b"\\.\\.".to_vec());
        assert_eq!(
            job_dir(Path::new("r"), &[b"a".to_vec(), b"x".to_vec()]),
            PathBuf::from("r/1/a/2/x")
        );
    }

    #[test]
    fn the_target_follows_the_extension() {
        assert_eq!(
            Target::of(Path::new("o.CSV")),
            Target::Table("o.CSV".into(), Table::Csv)
        );
        assert_eq!(Target::of(Path::new("dir")), Target::Dir("dir".into()));
    }

    #[test]
    fn fields_are_quoted_when_gnu_parallel_quotes_them() {
        let q = |f: &[u8]| {
            let mut o = Vec::new();
            quote_field(f, &mut o);
            String::from_utf8(o).unwrap()
        };
        assert_eq!(q(b"a"), "a");
        assert_eq!(q(b""), "");
        assert_eq!(q(b"echo a"), "\"echo a\"");
        assert_eq!(q(b"q\"x,y\n"), "\"q\"\"x,y\n\"");
    }
}

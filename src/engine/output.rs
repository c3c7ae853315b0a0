//! Grouped output: each job's stdout and stderr are printed whole, after the
//! job ends, never interleaved with another job's.
//!
//! With `--keep-order`, output is printed in input order. A job that ends
//! before an earlier one waits in a reorder buffer. Its captured bytes are
//! already bounded in memory by the [`SpillBudget`](crate::exec::SpillBudget)
//! (past it they live in temporary files); once more than
//! [`MAX_HELD`] jobs wait, further ones are copied into one shared spill file
//! so that neither memory nor file descriptors grow without bound.
//!
//! With `--tag` or `--tagstring STR`, every line of a job's stdout and
//! stderr is prefixed with the job's [`Tag`] (GNU parallel's meaning: the
//! input, or STR with its replacement strings, then a TAB). A last line
//! without a newline keeps none.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::sync::Mutex;

use crate::exec::Capture;
use crate::template::Template;

/// Waiting jobs kept as captures before spilling into the shared file.
pub const MAX_HELD: usize = 256;

enum Held {
    Captured {
        stdout: Capture,
        stderr: Capture,
        tag: Vec<u8>,
    },
    Spilled {
        stdout: (u64, u64),
        stderr: (u64, u64),
        tag: Vec<u8>,
    },
}

/// The prefix of every line of a job's output (`--tag`, `--tagstring`).
#[derive(Debug, Clone)]
pub struct Tag {
    /// The tag string as a one-word command template; `None` for a tag
    /// string without a replacement string (used as is).
    template: Option<Template>,
    literal: Vec<u8>,
    /// Whether the tag string holds `{}` or one of its forms, whose several
    /// values (several input sources) are several words. Otherwise only
    /// the first word is the tag: a template without the input may append
    /// it.
    all_words: bool,
}

impl Tag {
    /// A tag from the words of a template parsed from the tag string alone
    /// (`{}` for `--tag`), as `Template::parse(&[STR], false)` gives it.
    /// `text` is the tag string itself.
    pub fn new(text: &[u8], template: Template) -> Tag {
        let has = |token: &[u8]| text.windows(token.len()).any(|w| w == token);
        Tag {
            template: text.contains(&b'{').then_some(template),
            literal: text.to_vec(),
            all_words: [&b"{}"[..], b"{.}", b"{/}", b"{//}", b"{/.}"]
                .iter()
                .any(|t| has(t)),
        }
    }

    /// The same tag for a run whose payloads have another [`Shape`]
    /// (several values per job).
    ///
    /// [`Shape`]: crate::input::Shape
    pub fn with_shape(&self, shape: crate::input::Shape) -> Tag {
        Tag {
            template: self.template.as_ref().map(|t| t.with_shape(shape)),
            ..self.clone()
        }
    }

    /// The prefix for the job of `payload`, `seq` and `slot`, with its TAB.
    /// The words the template renders are joined with spaces (several
    /// values of `{}`, as GNU parallel prints them).
    pub fn render(&self, payload: &[u8], seq: u64, slot: usize) -> Vec<u8> {
        let mut out = match &self.template {
            None => self.literal.clone(),
            Some(t) => {
                let mut argv = Vec::new();
                t.render(payload, seq, slot, &mut argv);
                let n = if self.all_words { argv.len() } else { 1 };
                let words: Vec<&[u8]> = argv.iter().take(n).map(|w| w.as_bytes()).collect();
                words.join(&b' ')
            }
        };
        out.push(b'\t');
        out
    }
}

/// A writer that puts `tag` before every line (empty: none).
struct Tagged<'a, W: Write> {
    inner: W,
    tag: &'a [u8],
    at_line_start: bool,
}

impl<'a, W: Write> Tagged<'a, W> {
    fn new(inner: W, tag: &'a [u8]) -> Self {
        Tagged {
            inner,
            tag,
            at_line_start: true,
        }
    }
}

impl<W: Write> Write for Tagged<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.tag.is_empty() {
            return self.inner.write(buf);
        }
        for line in buf.split_inclusive(|&b| b == b'\n') {
            if self.at_line_start {
                self.inner.write_all(self.tag)?;
            }
            self.inner.write_all(line)?;
            self.at_line_start = line.last() == Some(&b'\n');
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
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
    pub fn job_output(&self, seq: u64, stdout: Capture, stderr: Capture) -> io::Result<()> {
        self.tagged_output(seq, Vec::new(), stdout, stderr)
    }

    /// As [`Printer::job_output`], with `tag` before every line (empty:
    /// none).
    ///
    /// # Errors
    ///
    /// As for [`Printer::job_output`].
    pub fn tagged_output(
        &self,
        seq: u64,
        tag: Vec<u8>,
        mut stdout: Capture,
        mut stderr: Capture,
    ) -> io::Result<()> {
        if !self.keep_order {
            return write_job(&mut stdout, &mut stderr, &tag);
        }
        let mut st = self.lock();
        if st.order.front() == Some(&seq) {
            st.order.pop_front();
            write_job(&mut stdout, &mut stderr, &tag)?;
            return flush_ready(&mut st);
        }
        let held = if st.captured < MAX_HELD {
            st.captured += 1;
            Held::Captured {
                stdout,
                stderr,
                tag,
            }
        } else {
            let out = spill(&mut st, &mut stdout)?;
            let err = spill(&mut st, &mut stderr)?;
            Held::Spilled {
                stdout: out,
                stderr: err,
                tag,
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
            tag,
        } => {
            st.captured -= 1;
            write_job(&mut stdout, &mut stderr, &tag)
        }
        Held::Spilled {
            stdout,
            stderr,
            tag,
        } => {
            let file = st
                .spill
                .as_mut()
                .expect("spilled entries have a spill file");
            copy_range(file, stdout, &mut Tagged::new(io::stdout().lock(), &tag))?;
            copy_range(file, stderr, &mut Tagged::new(io::stderr().lock(), &tag))
        }
    }
}

fn write_job(stdout: &mut Capture, stderr: &mut Capture, tag: &[u8]) -> io::Result<()> {
    if !stdout.is_empty() {
        let mut out = Tagged::new(io::stdout().lock(), tag);
        stdout.copy_to(&mut out)?;
        out.flush()?;
    }
    if !stderr.is_empty() {
        let mut err = Tagged::new(io::stderr().lock(), tag);
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

/// How a running job's output is printed as it comes (`--line-buffer`,
/// `-u`), instead of whole when the job ends. The executor of a process per
/// attempt reads the job's pipes and hands each chunk to a [`LivePrinter`]
/// (through `exec::AttemptSpec::on_output`); the output is still captured
/// for the journal. Every attempt's output is printed, a failed attempt's
/// that is retried included, since it is printed before anyone knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Live {
    /// Whole lines as they come, never half a line (`--line-buffer`).
    Lines,
    /// Every chunk as it comes (`-u`).
    Ungrouped,
}

/// The output of one running job, printed as it comes (see [`Live`]).
pub struct LiveOutput {
    mode: Live,
    tag: Vec<u8>,
    /// The unfinished last line of stdout and of stderr.
    pending: [Vec<u8>; 2],
}

impl LiveOutput {
    /// The live output of one attempt, each line prefixed with `tag`
    /// (empty: none).
    pub fn new(mode: Live, tag: Vec<u8>) -> LiveOutput {
        LiveOutput {
            mode,
            tag,
            pending: [Vec::new(), Vec::new()],
        }
    }

    /// Bytes the job wrote to stdout (`stderr` false) or stderr, written
    /// to `out` now: whole lines under `--line-buffer` (the rest waits for
    /// its newline), everything under `-u`. `out` is locked by the caller
    /// for one call, so that lines of different jobs never mix.
    ///
    /// # Errors
    ///
    /// Writing to `out` failed.
    pub fn chunk(&mut self, stderr: bool, bytes: &[u8], out: &mut dyn Write) -> io::Result<()> {
        let pending = &mut self.pending[usize::from(stderr)];
        match self.mode {
            Live::Ungrouped => {
                let mut w = Tagged {
                    inner: out,
                    tag: &self.tag,
                    at_line_start: pending.is_empty(),
                };
                w.write_all(bytes)?;
                // Remember whether the next chunk starts a line.
                pending.clear();
                if !w.at_line_start {
                    pending.push(b'.');
                }
                w.flush()
            }
            Live::Lines => {
                let Some(last_nl) = bytes.iter().rposition(|&b| b == b'\n') else {
                    pending.extend_from_slice(bytes);
                    return Ok(());
                };
                let mut w = Tagged::new(&mut *out, &self.tag);
                w.write_all(pending)?;
                w.write_all(&bytes[..=last_nl])?;
                w.flush()?;
                pending.clear();
                pending.extend_from_slice(&bytes[last_nl + 1..]);
                Ok(())
            }
        }
    }

    /// The job ended: what remains of a last line without a newline, for
    /// `stderr` false (stdout) or true, is written to `out`.
    ///
    /// # Errors
    ///
    /// Writing to `out` failed.
    pub fn finish(&mut self, stderr: bool, out: &mut dyn Write) -> io::Result<()> {
        let pending = std::mem::take(&mut self.pending[usize::from(stderr)]);
        if self.mode == Live::Lines && !pending.is_empty() {
            let mut w = Tagged::new(&mut *out, &self.tag);
            w.write_all(&pending)?;
            w.flush()?;
        }
        Ok(())
    }
}

/// A [`LiveOutput`] printing to jobmill's stdout and stderr, each call
/// holding the stream's lock so that output of different jobs never mixes
/// within a line (under `--line-buffer`). After the first error it prints
/// nothing more.
pub struct LivePrinter {
    out: LiveOutput,
    failed: bool,
}

impl LivePrinter {
    /// A printer of one attempt's output, each line prefixed with `tag`.
    pub fn new(mode: Live, tag: Vec<u8>) -> LivePrinter {
        LivePrinter {
            out: LiveOutput::new(mode, tag),
            failed: false,
        }
    }

    /// Prints what the job just wrote to its stdout (`stderr` false) or
    /// stderr, as [`LiveOutput::chunk`] says.
    ///
    /// # Errors
    ///
    /// The first error writing to stdout or stderr (a closed pipe
    /// included); after it, calls print nothing and succeed.
    pub fn chunk(&mut self, stderr: bool, bytes: &[u8]) -> io::Result<()> {
        if self.failed {
            return Ok(());
        }
        let result = if stderr {
            self.out.chunk(true, bytes, &mut io::stderr().lock())
        } else {
            self.out.chunk(false, bytes, &mut io::stdout().lock())
        };
        self.failed = result.is_err();
        result
    }

    /// The attempt ended: prints what remains of unfinished last lines.
    ///
    /// # Errors
    ///
    /// As for [`LivePrinter::chunk`].
    pub fn finish(mut self) -> io::Result<()> {
        if self.failed {
            return Ok(());
        }
        self.out.finish(false, &mut io::stdout().lock())?;
        self.out.finish(true, &mut io::stderr().lock())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tagged(tag: &[u8], chunks: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = Tagged::new(&mut out, tag);
        for c in chunks {
            w.write_all(c).unwrap();
        }
        out
    }

    #[test]
    fn every_line_gets_the_tag_even_across_writes() {
        assert_eq!(
            tagged(b"t\t", &[b"a\nb", b"c\n", b"d"]),
            b"t\ta\nt\tbc\nt\td".to_vec()
        );
        assert_eq!(tagged(b"", &[b"a\nb"]), b"a\nb".to_vec());
        assert_eq!(tagged(b"t\t", &[b""]), b"".to_vec());
    }

    #[test]
    fn a_tag_renders_its_replacement_strings() {
        let t = |s: &str| {
            Tag::new(
                s.as_bytes(),
                Template::parse(&[std::ffi::OsString::from(s)], false).unwrap(),
            )
        };
        assert_eq!(t("{}").render(b"a b", 1, 1), b"a b\t".to_vec());
        assert_eq!(t("{}-x").render(b"in", 1, 1), b"in-x\t".to_vec());
        assert_eq!(t("{}:{#}:{%}").render(b"in", 4, 2), b"in:4:2\t".to_vec());
        assert_eq!(t("plain").render(b"in", 1, 1), b"plain\t".to_vec());
        assert_eq!(t("j{#}").render(b"in", 4, 2), b"j4\t".to_vec());
    }

    #[test]
    fn line_buffer_prints_whole_lines_only_and_the_rest_at_the_end() {
        let mut live = LiveOutput::new(Live::Lines, b"t\t".to_vec());
        let mut out = Vec::new();
        live.chunk(false, b"ab", &mut out).unwrap();
        assert!(out.is_empty(), "half a line waits");
        live.chunk(false, b"c\nd\ne", &mut out).unwrap();
        assert_eq!(out, b"t\tabc\nt\td\n");
        live.finish(false, &mut out).unwrap();
        assert_eq!(out, b"t\tabc\nt\td\nt\te");
    }

    #[test]
    fn ungrouped_prints_every_chunk_at_once() {
        let mut live = LiveOutput::new(Live::Ungrouped, b"t\t".to_vec());
        let mut out = Vec::new();
        live.chunk(false, b"ab", &mut out).unwrap();
        assert_eq!(out, b"t\tab");
        live.chunk(false, b"c\nd", &mut out).unwrap();
        assert_eq!(out, b"t\tabc\nt\td");
        live.finish(false, &mut out).unwrap();
        assert_eq!(out, b"t\tabc\nt\td");
    }
}

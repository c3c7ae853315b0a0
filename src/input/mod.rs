//! Lazy input reading: one job input per record, from a stream or a list of
//! arguments.
//!
//! Records are separated by `\n` (or NUL with `-0`). The separator is not
//! part of the input; a last record without a separator still counts; an
//! input that ends with a separator does not produce an extra empty record.
//! Bytes are passed on unchanged, UTF-8 or not.
//!
//! Reading is lazy and its memory is bounded by the longest record: a
//! consumer can start work on the first record before the stream ends.
//!
//! [`plan`] turns several sources, columns and batches into job payloads;
//! [`shape`] defines how a job with several values is stored.

pub mod columns;
pub mod plan;
pub mod shape;

pub use columns::{Columns, Trim};
pub use plan::{Batch, Header, Plan, SourceDef, SourceSpec};
pub use shape::Shape;

use std::ffi::OsString;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

/// Where the inputs come from.
pub enum Source {
    /// Records read from a stream (stdin or an argument file).
    Stream {
        /// The stream.
        reader: Box<dyn Read + Send>,
        /// A name for errors: `stdin` or the file's path.
        name: String,
    },
    /// Inputs given as arguments (`::: a b c`).
    Args(Vec<OsString>),
}

impl Source {
    /// The records of an argument file.
    ///
    /// # Errors
    ///
    /// The file cannot be opened; the error names it.
    pub fn file(path: &PathBuf) -> Result<Source, InputError> {
        let f = std::fs::File::open(path).map_err(|e| InputError {
            name: path.display().to_string(),
            source: e,
        })?;
        Ok(Source::Stream {
            reader: Box::new(f),
            name: path.display().to_string(),
        })
    }

    /// The records of standard input.
    pub fn stdin() -> Source {
        Source::Stream {
            reader: Box::new(io::stdin()),
            name: "stdin".to_string(),
        }
    }
}

/// A failure to read the input, naming it.
#[derive(Debug, thiserror::Error)]
#[error("cannot read input from {name}: {source}")]
pub struct InputError {
    /// `stdin` or the file's path.
    pub name: String,
    /// The I/O error.
    #[source]
    pub source: io::Error,
}

/// An iterator over input records.
pub struct Records {
    inner: Inner,
    separator: u8,
}

enum Inner {
    Stream {
        reader: BufReader<Box<dyn Read + Send>>,
        name: String,
        done: bool,
    },
    Args(std::vec::IntoIter<OsString>),
}

impl Records {
    /// Records of `source`, split on `separator` (`b'\n'` or `0`).
    pub fn new(source: Source, separator: u8) -> Records {
        let inner = match source {
            Source::Stream { reader, name } => Inner::Stream {
                reader: BufReader::with_capacity(64 * 1024, reader),
                name,
                done: false,
            },
            Source::Args(args) => Inner::Args(args.into_iter()),
        };
        Records { inner, separator }
    }
}

impl Iterator for Records {
    type Item = Result<Vec<u8>, InputError>;

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.inner {
            Inner::Args(it) => it.next().map(|a| Ok(a.into_vec())),
            Inner::Stream { reader, name, done } => {
                if *done {
                    return None;
                }
                let mut buf = Vec::new();
                match reader.read_until(self.separator, &mut buf) {
                    Ok(0) => {
                        *done = true;
                        None
                    }
                    Ok(_) => {
                        if buf.last() == Some(&self.separator) {
                            buf.pop();
                        }
                        Some(Ok(buf))
                    }
                    Err(e) => {
                        *done = true;
                        Some(Err(InputError {
                            name: name.clone(),
                            source: e,
                        }))
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(data: &'static [u8], sep: u8) -> Vec<Vec<u8>> {
        let src = Source::Stream {
            reader: Box::new(data),
            name: "test".into(),
        };
        Records::new(src, sep).map(|r| r.unwrap()).collect()
    }

    #[test]
    fn lines_without_trailing_newline_still_count() {
        assert_eq!(records(b"a\nb", b'\n'), vec![b"a".to_vec(), b"b".to_vec()]);
    }

    #[test]
    fn trailing_newline_adds_no_empty_record() {
        assert_eq!(
            records(b"a\nb\n", b'\n'),
            vec![b"a".to_vec(), b"b".to_vec()]
        );
    }

    #[test]
    fn empty_input_has_no_records() {
        assert!(records(b"", b'\n').is_empty());
    }

    #[test]
    fn empty_lines_in_the_middle_are_records() {
        assert_eq!(
            records(b"a\n\nb\n", b'\n'),
            vec![b"a".to_vec(), b"".to_vec(), b"b".to_vec()]
        );
    }

    #[test]
    fn nul_separated_records_keep_newlines() {
        assert_eq!(
            records(b"a\nb\0c\0", 0),
            vec![b"a\nb".to_vec(), b"c".to_vec()]
        );
    }

    #[test]
    fn non_utf8_bytes_pass_unchanged() {
        assert_eq!(records(b"\xff\xfe\n", b'\n'), vec![b"\xff\xfe".to_vec()]);
    }

    #[test]
    fn args_are_records() {
        let r: Vec<_> = Records::new(Source::Args(vec!["x".into(), "y z".into()]), b'\n')
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(r, vec![b"x".to_vec(), b"y z".to_vec()]);
    }

    #[test]
    fn missing_file_error_names_the_file() {
        let err = Source::file(&PathBuf::from("/nonexistent/inputs.txt"))
            .err()
            .unwrap();
        assert!(err.to_string().contains("/nonexistent/inputs.txt"));
    }
}

//! Splitting each input into columns: `--colsep REGEX` and `--csv`.

use std::io;

use regex::bytes::Regex;

use super::{InputError, Records};

/// How an input becomes values.
#[derive(Debug, Clone, Default)]
pub enum Columns {
    /// The input is one value.
    #[default]
    Whole,
    /// `--colsep REGEX`: the input is split at every match.
    Regex(Regex),
    /// `--csv`: the input is a CSV record with this field separator; a
    /// quoted field may hold the separator, `""` for a quote, and line
    /// breaks (the record then spans several lines).
    Csv(u8),
}

impl Columns {
    /// Whether an input may become more than one value.
    pub fn splits(&self) -> bool {
        !matches!(self, Columns::Whole)
    }
}

/// One input's values.
pub type Row = Vec<Vec<u8>>;

/// `--trim`: white space removed from each value (each column with
/// `--colsep`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Trim {
    /// From the start.
    pub left: bool,
    /// From the end.
    pub right: bool,
}

impl Trim {
    /// Parses GNU parallel's `n`, `l`, `r`, `lr`, `rl`.
    pub fn parse(s: &str) -> Option<Trim> {
        Some(match s {
            "n" => Trim::default(),
            "l" => Trim {
                left: true,
                right: false,
            },
            "r" => Trim {
                left: false,
                right: true,
            },
            "lr" | "rl" => Trim {
                left: true,
                right: true,
            },
            _ => return None,
        })
    }

    fn apply(self, v: &mut Vec<u8>) {
        // Perl's \s: space, \t, \n, \v, \f, \r.
        let ws = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r');
        if self.right {
            let end = v.iter().rposition(|b| !ws(b)).map_or(0, |i| i + 1);
            v.truncate(end);
        }
        if self.left {
            let start = v.iter().position(|b| !ws(b)).unwrap_or(v.len());
            v.drain(..start);
        }
    }
}

/// Rows of one source: its records split into columns.
pub struct Rows {
    records: Records,
    columns: Columns,
    name: String,
    /// Refuse values holding NUL (the payload joins values with NUL).
    refuse_nul: bool,
    /// Records read so far, for error messages.
    count: u64,
    trim: Trim,
}

impl Rows {
    /// The rows of `records` (read from the source called `name`).
    pub fn new(records: Records, columns: Columns, name: String, refuse_nul: bool) -> Rows {
        Rows {
            records,
            columns,
            name,
            refuse_nul,
            count: 0,
            trim: Trim::default(),
        }
    }

    /// Trims each value.
    pub fn trimmed(mut self, trim: Trim) -> Rows {
        self.trim = trim;
        self
    }

    fn error(&self, what: String) -> InputError {
        InputError {
            name: self.name.clone(),
            source: io::Error::new(io::ErrorKind::InvalidData, what),
        }
    }
}

impl Iterator for Rows {
    type Item = Result<Row, InputError>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut record = match self.records.next()? {
            Ok(r) => r,
            Err(e) => return Some(Err(e)),
        };
        self.count += 1;
        let first_line = self.count;
        let row = match &self.columns {
            Columns::Whole => vec![record],
            Columns::Regex(re) => re.split(&record).map(<[u8]>::to_vec).collect(),
            Columns::Csv(sep) => {
                // A quoted field may hold line breaks: read on until the
                // quotes balance.
                while record.iter().filter(|&&b| b == b'"').count() % 2 == 1 {
                    match self.records.next() {
                        Some(Ok(more)) => {
                            self.count += 1;
                            record.push(b'\n');
                            record.extend_from_slice(&more);
                        }
                        Some(Err(e)) => return Some(Err(e)),
                        None => {
                            return Some(Err(self.error(format!(
                                "input {first_line} is not valid CSV: a quoted field is not closed"
                            ))))
                        }
                    }
                }
                match parse_csv(&record, *sep) {
                    Some(row) => row,
                    None => {
                        return Some(Err(self.error(format!(
                            "input {first_line} is not valid CSV: a quote inside an unquoted field or after a quoted one"
                        ))))
                    }
                }
            }
        };
        let mut row = row;
        if self.trim != Trim::default() {
            row.iter_mut().for_each(|v| self.trim.apply(v));
        }
        if self.refuse_nul && row.iter().any(|v| v.contains(&0)) {
            return Some(Err(self.error(format!(
                "input {first_line} holds a NUL byte, which a job with several values cannot carry \
                 (they are stored NUL-separated)"
            ))));
        }
        Some(Ok(row))
    }
}

/// Parses one CSV record (RFC 4180, any separator). `None` when a quote
/// appears where it cannot.
pub fn parse_csv(record: &[u8], sep: u8) -> Option<Row> {
    let mut fields = Vec::new();
    let mut i = 0;
    loop {
        let mut field = Vec::new();
        if record.get(i) == Some(&b'"') {
            i += 1;
            loop {
                match record.get(i) {
                    None => return None,
                    Some(b'"') if record.get(i + 1) == Some(&b'"') => {
                        field.push(b'"');
                        i += 2;
                    }
                    Some(b'"') => {
                        i += 1;
                        break;
                    }
                    Some(&b) => {
                        field.push(b);
                        i += 1;
                    }
                }
            }
            match record.get(i) {
                None => {
                    fields.push(field);
                    return Some(fields);
                }
                Some(&b) if b == sep => i += 1,
                Some(_) => return None,
            }
        } else {
            let end = record[i..]
                .iter()
                .position(|&b| b == sep)
                .map_or(record.len(), |p| i + p);
            field.extend_from_slice(&record[i..end]);
            if field.contains(&b'"') {
                return None;
            }
            fields.push(field);
            if end == record.len() {
                return Some(fields);
            }
            i = end + 1;
            continue;
        }
        fields.push(field);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::Source;

    fn rows(data: &'static [u8], columns: Columns) -> Vec<Result<Row, String>> {
        let src = Source::Stream {
            reader: Box::new(data),
            name: "t".into(),
        };
        Rows::new(Records::new(src, b'\n'), columns, "t".into(), true)
            .map(|r| r.map_err(|e| e.to_string()))
            .collect()
    }

    fn v(items: &[&str]) -> Row {
        items.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    #[test]
    fn colsep_is_a_regex_and_keeps_empty_columns() {
        let r = rows(b"a,b,,c\nx\n", Columns::Regex(Regex::new(",").unwrap()));
        assert_eq!(r[0].as_ref().unwrap(), &v(&["a", "b", "", "c"]));
        assert_eq!(r[1].as_ref().unwrap(), &v(&["x"]));
        let r = rows(b"a  b\tc\n", Columns::Regex(Regex::new(r"\s+").unwrap()));
        assert_eq!(r[0].as_ref().unwrap(), &v(&["a", "b", "c"]));
    }

    #[test]
    fn csv_handles_quotes_separators_and_line_breaks() {
        let r = rows(
            b"a,\"b,c\",d\n\"multi\nline\",x,\"q\"\"q\"\n,\n",
            Columns::Csv(b','),
        );
        assert_eq!(r[0].as_ref().unwrap(), &v(&["a", "b,c", "d"]));
        assert_eq!(r[1].as_ref().unwrap(), &v(&["multi\nline", "x", "q\"q"]));
        assert_eq!(r[2].as_ref().unwrap(), &v(&["", ""]));
    }

    #[test]
    fn trim_removes_white_space_per_column() {
        let src = Source::Stream {
            reader: Box::new(&b"  a , b \t\n"[..]),
            name: "t".into(),
        };
        let r: Vec<Row> = Rows::new(
            Records::new(src, b'\n'),
            Columns::Regex(Regex::new(",").unwrap()),
            "t".into(),
            true,
        )
        .trimmed(Trim::parse("lr").unwrap())
        .map(Result::unwrap)
        .collect();
        assert_eq!(r, vec![v(&["a", "b"])]);
        let mut x = b" a ".to_vec();
        Trim::parse("l").unwrap().apply(&mut x);
        assert_eq!(x, b"a ");
        assert!(Trim::parse("x").is_none());
    }

    #[test]
    fn bad_csv_is_an_error_naming_the_input() {
        let r = rows(b"ok\n\"open\n", Columns::Csv(b','));
        let e = r[1].as_ref().unwrap_err();
        assert!(e.contains("input 2") && e.contains("not closed"), "{e}");
        let r = rows(b"a\"b\n", Columns::Csv(b','));
        assert!(r[0].as_ref().unwrap_err().contains("not valid CSV"));
    }

    #[test]
    fn a_nul_in_a_column_is_refused_with_its_input_number() {
        let r = rows(b"a\nb\0c\n", Columns::Regex(Regex::new(",").unwrap()));
        let e = r[1].as_ref().unwrap_err();
        assert!(e.contains("input 2") && e.contains("NUL"), "{e}");
    }
}

//! From input sources to job payloads: several sources combined or linked,
//! columns, `--header`, and batches (`-n`, `-X`, `-m`).
//!
//! Memory: as in GNU parallel, every source but the first is read whole
//! into memory before the first job; the first source stays lazy, so a huge
//! stdin (or file) still streams with bounded memory. (With `--link`, values
//! of the first source are also kept while another source is longer than
//! what was read of it, to wrap around.)

use std::ffi::OsString;
use std::io;
use std::path::PathBuf;

use regex::bytes::Regex;

use super::columns::{Columns, Row, Rows, Trim};
use super::shape::{encode, Shape};
use super::{InputError, Records, Source};

/// Where one input source comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    /// Standard input (`-a -`, `:::: -`, or no source given).
    Stdin,
    /// A file (`-a FILE`, `:::: FILE`).
    File(PathBuf),
    /// Arguments (`::: a b c`).
    Args(Vec<OsString>),
}

/// One input source and how it joins the ones before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceDef {
    /// Where its inputs come from.
    pub spec: SourceSpec,
    /// `:::+` / `::::+`: paired with the previous source (the shortest
    /// ends the pairs) instead of combined with it.
    pub linked: bool,
}

/// `--header`.
#[derive(Debug, Clone)]
pub enum Header {
    /// `--header :`: the first input of each source names its columns.
    FirstLine,
    /// `--header REGEX`: as `:`, and the first input must match REGEX.
    Matching(Regex),
}

/// How inputs are grouped into jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Batch {
    /// One input (one combination of the sources' values) per job.
    #[default]
    One,
    /// `-n N`: up to N inputs per job.
    Count(usize),
    /// `-X` / `-m`: as many inputs as fit: the values' lengths plus
    /// `overhead` bytes each stay within `budget` (at least one input per
    /// job). As in GNU parallel, when the input ends before a command is
    /// full, the inputs left are spread evenly over `slots` commands.
    Fit {
        /// Bytes available for the values.
        budget: usize,
        /// Bytes each value adds besides its own length.
        overhead: usize,
        /// Job slots (`-j`) to spread the last inputs over.
        slots: usize,
    },
}

/// Everything that turns sources into payloads.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The sources, in order (at least one).
    pub sources: Vec<SourceDef>,
    /// `--link`: all sources paired, the shorter ones wrapping around.
    pub link: bool,
    /// Record separator of streams: `\n`, or NUL with `-0`.
    pub separator: u8,
    /// `--colsep` / `--csv`.
    pub columns: Columns,
    /// `--trim`.
    pub trim: Trim,
    /// `--header`.
    pub header: Option<Header>,
    /// `-n`, `-X`, `-m`.
    pub batch: Batch,
    /// `-X`: context replace (recorded in the shape for the template).
    pub context: bool,
}

/// Payloads in job order.
pub type Payloads = Box<dyn Iterator<Item = Result<Vec<u8>, InputError>> + Send>;

type RowIter = Box<dyn Iterator<Item = Result<Row, InputError>> + Send>;

impl Plan {
    /// A plan reading `\n`-separated records of `sources`, one per job.
    pub fn new(sources: Vec<SourceDef>) -> Plan {
        Plan {
            sources,
            link: false,
            separator: b'\n',
            columns: Columns::Whole,
            trim: Trim::default(),
            header: None,
            batch: Batch::One,
            context: false,
        }
    }

    /// Whether jobs carry several values (the payload encoding).
    pub fn joined(&self) -> bool {
        self.sources.len() > 1 || self.columns.splits() || self.batch != Batch::One
    }

    /// Opens the sources, reads the header and every source but the first,
    /// and returns the payloads (lazy in the first source) and the run's
    /// shape.
    ///
    /// # Errors
    ///
    /// A source cannot be opened or read, stdin is used twice, or a header
    /// does not match; the error names the source.
    pub fn open(self) -> Result<(Payloads, Shape), InputError> {
        let joined = self.joined();
        if self.sources.is_empty() {
            return Err(usage("stdin", "no input source"));
        }
        let stdin_uses = self
            .sources
            .iter()
            .filter(|s| s.spec == SourceSpec::Stdin)
            .count();
        if stdin_uses > 1 {
            return Err(usage(
                "stdin",
                "standard input can be read by one input source only",
            ));
        }
        if self.sources.len() == 1
            && !joined
            && self.header.is_none()
            && self.trim == Trim::default()
        {
            // One plain source: its records are the payloads.
            let source = match &self.sources[0].spec {
                SourceSpec::Stdin => Source::stdin(),
                SourceSpec::File(p) => Source::file(p)?,
                SourceSpec::Args(a) => Source::Args(a.clone()),
            };
            let payloads: Payloads = Box::new(Records::new(source, self.separator));
            return Ok((payloads, Shape::default()));
        }
        let mut rows: Vec<(RowIter, bool)> = Vec::with_capacity(self.sources.len());
        let mut names = Vec::new();
        for def in &self.sources {
            let (source, name) = match &def.spec {
                SourceSpec::Stdin => (Source::stdin(), "stdin".to_string()),
                SourceSpec::File(p) => (Source::file(p)?, p.display().to_string()),
                SourceSpec::Args(a) => (Source::Args(a.clone()), "the `:::` arguments".to_string()),
            };
            let mut it = Rows::new(
                Records::new(source, self.separator),
                self.columns.clone(),
                name.clone(),
                joined,
            )
            .trimmed(self.trim);
            if let Some(h) = &self.header {
                match it.next() {
                    Some(Ok(row)) => {
                        if let Header::Matching(re) = h {
                            let line = row.join(&b' ');
                            if !re.is_match(&line) {
                                return Err(usage(
                                    &name,
                                    &format!("its first input does not match --header {re}"),
                                ));
                            }
                        }
                        names.extend(row.iter().map(|n| String::from_utf8_lossy(n).into_owned()));
                    }
                    Some(Err(e)) => return Err(e),
                    None => {}
                }
            }
            // As in GNU parallel, an empty source among several (not
            // --link) counts as one empty value.
            let it: RowIter = if self.sources.len() > 1 && !self.link {
                Box::new(OrEmpty {
                    inner: it,
                    seen: false,
                })
            } else {
                Box::new(it)
            };
            rows.push((it, def.linked || self.link));
        }
        let wrap = self.link;
        // Groups of linked sources; the first group stays lazy in its
        // first source, the others are read whole.
        let mut groups: Vec<Vec<RowIter>> = Vec::new();
        for (i, (it, linked)) in rows.into_iter().enumerate() {
            if i > 0 && linked {
                groups.last_mut().expect("a group").push(it);
            } else {
                groups.push(vec![it]);
            }
        }
        let mut groups = groups.into_iter();
        let mut head_members = groups.next().expect("at least one source").into_iter();
        let first = head_members.next().expect("at least one source");
        let mut others = Vec::new();
        for m in head_members {
            others.push(m.collect::<Result<Vec<Row>, _>>()?);
        }
        let head = LinkedHead::new(first, others, wrap);
        let mut rest = Vec::new();
        for g in groups {
            let members = g
                .into_iter()
                .map(|m| m.collect::<Result<Vec<Row>, _>>())
                .collect::<Result<Vec<_>, _>>()?;
            rest.push(link_all(members, wrap));
        }
        let combined: RowIter = if rest.is_empty() {
            Box::new(head)
        } else {
            Box::new(Product::new(Box::new(head), rest))
        };
        let payloads: Payloads = Box::new(Batcher {
            rows: combined,
            batch: self.batch,
            joined,
            pending: None,
            spread: std::collections::VecDeque::new(),
            chunk: 1,
        });
        let shape = Shape {
            joined,
            names,
            context: self.context,
        };
        Ok((payloads, shape))
    }
}

fn usage(name: &str, what: &str) -> InputError {
    InputError {
        name: name.to_string(),
        source: io::Error::new(io::ErrorKind::InvalidInput, what.to_string()),
    }
}

/// A source that yields one empty value when it has none.
struct OrEmpty<I> {
    inner: I,
    seen: bool,
}

impl<I: Iterator<Item = Result<Row, InputError>>> Iterator for OrEmpty<I> {
    type Item = Result<Row, InputError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.inner.next() {
            Some(r) => {
                self.seen = true;
                Some(r)
            }
            None if !self.seen => {
                self.seen = true;
                Some(Ok(vec![Vec::new()]))
            }
            None => None,
        }
    }
}

/// Pairs in-memory sources: `wrap` (`--link`) to the longest, the shorter
/// ones starting over; else (`:::+`) to the shortest.
fn link_all(members: Vec<Vec<Row>>, wrap: bool) -> Vec<Row> {
    if members.iter().any(Vec::is_empty) {
        return Vec::new();
    }
    let lens = members.iter().map(Vec::len);
    let n = if wrap {
        lens.max().unwrap_or(0)
    } else {
        lens.min().unwrap_or(0)
    };
    (0..n)
        .map(|i| {
            members
                .iter()
                .flat_map(|m| m[i % m.len()].iter().cloned())
                .collect()
        })
        .collect()
}

/// The first group: its first source lazy, paired with in-memory ones.
struct LinkedHead {
    first: RowIter,
    others: Vec<Vec<Row>>,
    wrap: bool,
    i: usize,
    first_done: bool,
    /// With `wrap`: the first source's rows while another is longer.
    kept: Vec<Row>,
    min_other: usize,
    max_other: usize,
}

impl LinkedHead {
    fn new(first: RowIter, others: Vec<Vec<Row>>, wrap: bool) -> LinkedHead {
        let min_other = others.iter().map(Vec::len).min().unwrap_or(usize::MAX);
        let max_other = others.iter().map(Vec::len).max().unwrap_or(0);
        LinkedHead {
            first,
            others,
            wrap,
            i: 0,
            first_done: false,
            kept: Vec::new(),
            min_other,
            max_other,
        }
    }
}

impl Iterator for LinkedHead {
    type Item = Result<Row, InputError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.min_other == 0 {
            return None;
        }
        if !self.wrap && self.i >= self.min_other {
            return None;
        }
        let mut row = if self.first_done {
            None
        } else {
            match self.first.next() {
                Some(Ok(r)) => Some(r),
                Some(Err(e)) => return Some(Err(e)),
                None => {
                    self.first_done = true;
                    None
                }
            }
        };
        if row.is_none() {
            // The first source ended: with --link it wraps while another
            // source still has values.
            if !self.wrap || self.kept.is_empty() || self.i >= self.max_other {
                return None;
            }
            row = Some(self.kept[self.i % self.kept.len()].clone());
        } else if self.wrap && self.i < self.max_other {
            self.kept.push(row.clone().expect("a row"));
        }
        let mut row = row.expect("a row");
        for o in &self.others {
            row.extend(o[self.i % o.len()].iter().cloned());
        }
        self.i += 1;
        Some(Ok(row))
    }
}

/// Every combination of the head's rows with the rows of the other groups,
/// the last group varying fastest (GNU parallel's order).
struct Product {
    head: RowIter,
    rest: Vec<Vec<Row>>,
    current: Option<Row>,
    idx: Vec<usize>,
}

impl Product {
    fn new(head: RowIter, rest: Vec<Vec<Row>>) -> Product {
        let idx = vec![0; rest.len()];
        Product {
            head,
            rest,
            current: None,
            idx,
        }
    }
}

impl Iterator for Product {
    type Item = Result<Row, InputError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.iter().any(Vec::is_empty) {
            return None;
        }
        if self.current.is_none() {
            match self.head.next()? {
                Ok(r) => self.current = Some(r),
                Err(e) => return Some(Err(e)),
            }
            self.idx.iter_mut().for_each(|i| *i = 0);
        }
        let mut row = self.current.clone().expect("a head row");
        for (g, &i) in self.rest.iter().zip(&self.idx) {
            row.extend(g[i].iter().cloned());
        }
        // Advance the odometer.
        let mut k = self.rest.len();
        loop {
            if k == 0 {
                self.current = None;
                break;
            }
            k -= 1;
            self.idx[k] += 1;
            if self.idx[k] < self.rest[k].len() {
                break;
            }
            self.idx[k] = 0;
        }
        Some(Ok(row))
    }
}

/// Groups rows into jobs and encodes each job's payload.
struct Batcher {
    rows: RowIter,
    batch: Batch,
    joined: bool,
    /// A row read that did not fit the previous batch.
    pending: Option<Row>,
    /// The last rows of the input, being spread over the slots.
    spread: std::collections::VecDeque<Row>,
    /// Rows per command while spreading.
    chunk: usize,
}

impl Iterator for Batcher {
    type Item = Result<Vec<u8>, InputError>;

    fn next(&mut self) -> Option<Self::Item> {
        if !self.spread.is_empty() {
            let n = self.chunk.min(self.spread.len());
            let values: Row = self.spread.drain(..n).flatten().collect();
            return Some(self.payload(values));
        }
        let mut values: Row = match self.pending.take() {
            Some(r) => r,
            None => match self.rows.next()? {
                Ok(r) => r,
                Err(e) => return Some(Err(e)),
            },
        };
        match self.batch {
            Batch::One => {}
            Batch::Count(n) => {
                for _ in 1..n.max(1) {
                    match self.rows.next() {
                        Some(Ok(r)) => values.extend(r),
                        Some(Err(e)) => return Some(Err(e)),
                        None => break,
                    }
                }
            }
            Batch::Fit {
                budget,
                overhead,
                slots,
            } => {
                let cost = |r: &Row| r.iter().map(|v| v.len() + overhead).sum::<usize>();
                let mut used = cost(&values);
                let mut rows = vec![values];
                let ended = loop {
                    match self.rows.next() {
                        Some(Ok(r)) => {
                            let c = cost(&r);
                            if used + c > budget {
                                self.pending = Some(r);
                                break false;
                            }
                            used += c;
                            rows.push(r);
                        }
                        Some(Err(e)) => return Some(Err(e)),
                        None => break true,
                    }
                };
                if ended && slots > 1 && rows.len() > 1 {
                    self.chunk = rows.len().div_ceil(slots);
                    self.spread = rows.into();
                    return self.next();
                }
                values = rows.into_iter().flatten().collect();
            }
        }
        Some(self.payload(values))
    }
}

impl Batcher {
    fn payload(&self, mut values: Row) -> Result<Vec<u8>, InputError> {
        if !self.joined {
            return Ok(values.pop().unwrap_or_default());
        }
        encode(&values).map_err(|i| InputError {
            name: "the input".to_string(),
            source: io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "value {} of a job holds a NUL byte, which a job with several values cannot carry",
                    i + 1
                ),
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(items: &[&str]) -> SourceDef {
        SourceDef {
            spec: SourceSpec::Args(items.iter().map(OsString::from).collect()),
            linked: false,
        }
    }

    fn linked(items: &[&str]) -> SourceDef {
        SourceDef {
            linked: true,
            ..args(items)
        }
    }

    fn jobs(plan: Plan) -> Vec<String> {
        let (p, shape) = plan.open().unwrap();
        p.map(|r| {
            let payload = r.unwrap();
            let mut v = Vec::new();
            shape.split(&payload, &mut v);
            v.iter()
                .map(|x| String::from_utf8_lossy(x).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
    }

    #[test]
    fn several_sources_combine_in_gnu_parallel_order() {
        let p = Plan::new(vec![args(&["a", "b"]), args(&["1", "2"]), args(&["x"])]);
        assert_eq!(jobs(p), ["a 1 x", "a 2 x", "b 1 x", "b 2 x"]);
    }

    #[test]
    fn an_empty_source_among_several_is_one_empty_value() {
        // GNU parallel: `parallel echo ::: a :::` runs `echo a ''`.
        assert_eq!(jobs(Plan::new(vec![args(&["a"]), args(&[])])), ["a "]);
        assert_eq!(jobs(Plan::new(vec![args(&[]), args(&["a"])])), [" a"]);
        assert!(jobs(Plan::new(vec![args(&[])])).is_empty());
        let mut p = Plan::new(vec![args(&["a"]), args(&[])]);
        p.link = true;
        assert!(jobs(p).is_empty());
    }

    #[test]
    fn link_wraps_the_shorter_sources() {
        let mut p = Plan::new(vec![args(&["a", "b", "c"]), args(&["1", "2"])]);
        p.link = true;
        assert_eq!(jobs(p), ["a 1", "b 2", "c 1"]);
        let mut p = Plan::new(vec![args(&["a"]), args(&["1", "2", "3"])]);
        p.link = true;
        assert_eq!(jobs(p), ["a 1", "a 2", "a 3"]);
    }

    #[test]
    fn plus_links_to_the_previous_source_up_to_the_shortest() {
        let p = Plan::new(vec![args(&["a", "b", "c"]), linked(&["1", "2"])]);
        assert_eq!(jobs(p), ["a 1", "b 2"]);
        let p = Plan::new(vec![
            args(&["a", "b"]),
            args(&["x", "y"]),
            linked(&["1", "2", "3"]),
        ]);
        assert_eq!(jobs(p), ["a x 1", "a y 2", "b x 1", "b y 2"]);
    }

    #[test]
    fn batches_of_n_and_of_what_fits() {
        let mut p = Plan::new(vec![args(&["a", "b", "c"])]);
        p.batch = Batch::Count(2);
        assert_eq!(jobs(p), ["a b", "c"]);
        let mut p = Plan::new(vec![args(&["aa", "bb", "cc", "dd"])]);
        p.batch = Batch::Fit {
            budget: 7,
            overhead: 1,
            slots: 1,
        };
        assert_eq!(jobs(p), ["aa bb", "cc dd"]);
        let mut p = Plan::new(vec![args(&["toolong", "x"])]);
        p.batch = Batch::Fit {
            budget: 2,
            overhead: 1,
            slots: 1,
        };
        assert_eq!(jobs(p), ["toolong", "x"]);
    }

    #[test]
    fn the_last_inputs_that_fit_are_spread_over_the_slots() {
        let fit = |items: &[&str], budget, slots| {
            let mut p = Plan::new(vec![args(items)]);
            p.batch = Batch::Fit {
                budget,
                overhead: 1,
                slots,
            };
            jobs(p)
        };
        let seven = ["1", "2", "3", "4", "5", "6", "7"];
        assert_eq!(fit(&seven, 1000, 3), ["1 2 3", "4 5 6", "7"]);
        assert_eq!(fit(&seven, 1000, 2), ["1 2 3 4", "5 6 7"]);
        assert_eq!(fit(&seven[..1], 1000, 2), ["1"]);
        // A full command first, then the rest spread.
        assert_eq!(fit(&seven, 8, 2), ["1 2 3 4", "5 6", "7"]);
    }

    #[test]
    fn header_names_the_columns_and_is_not_a_job() {
        let mut p = Plan::new(vec![args(&["x,y", "1,2"])]);
        p.columns = Columns::Regex(Regex::new(",").unwrap());
        p.header = Some(Header::FirstLine);
        let (it, shape) = p.open().unwrap();
        assert_eq!(shape.names, ["x", "y"]);
        assert!(shape.joined);
        assert_eq!(
            it.map(Result::unwrap).collect::<Vec<_>>(),
            [b"1\x002".to_vec()]
        );
    }

    #[test]
    fn single_source_payloads_are_the_input_bytes() {
        let p = Plan::new(vec![args(&["a\u{e9}", "b c"])]);
        let (it, shape) = p.open().unwrap();
        assert!(!shape.joined);
        let got: Vec<_> = it.map(Result::unwrap).collect();
        assert_eq!(got, ["a\u{e9}".as_bytes().to_vec(), b"b c".to_vec()]);
    }

    #[test]
    fn stdin_twice_is_refused() {
        let s = SourceDef {
            spec: SourceSpec::Stdin,
            linked: false,
        };
        let e = Plan::new(vec![s.clone(), s]).open().err().unwrap();
        assert!(e.to_string().contains("one input source"));
    }

    #[test]
    fn the_first_source_stays_lazy() {
        // An endless first source still yields jobs.
        let endless = Source::Stream {
            reader: Box::new(io::repeat(b'\n')),
            name: "endless".into(),
        };
        let rows = Rows::new(
            Records::new(endless, b'\n'),
            Columns::Whole,
            "e".into(),
            true,
        );
        let head = LinkedHead::new(Box::new(rows), vec![], false);
        let mut p = Product::new(
            Box::new(head),
            vec![vec![vec![b"1".to_vec()], vec![b"2".to_vec()]]],
        );
        for _ in 0..1000 {
            assert!(p.next().unwrap().is_ok());
        }
    }
}

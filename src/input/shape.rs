//! How a job's values are stored in its payload.
//!
//! A run whose jobs each take one value (one input source, no `--colsep`,
//! no `-n`/`-X`/`-m`) stores that value as the payload, byte for byte, as
//! jobmill always has. A run whose jobs take several values (several
//! sources, columns, batches) stores them **joined by a NUL byte**: the
//! payload of the values `a`, `b c` and `` (empty) is `a\0b c\0`. Splitting
//! on NUL gives the values back, as many as were joined (at least one).
//! Values are otherwise bytes, unchanged, UTF-8 or not; a value that holds a
//! NUL byte itself cannot be encoded and is refused with an error naming the
//! input (it can only come from a newline-separated stream: arguments cannot
//! hold NUL, and with `-0` NUL separates the inputs).
//!
//! Which of the two encodings a run uses is a property of the run, its
//! [`Shape`], decided before the first job and stored in the journal's
//! options so that `jobmill resume` renders the stored payloads alike.

use serde::{Deserialize, Serialize};

/// The separator of the values in a joined payload.
pub const VALUE_SEPARATOR: u8 = 0;

/// The run-level description of the jobs' payloads, stored with the run.
///
/// `Shape::default()` is a single-value run: the payload is the value. It is
/// also what an absent field in an old journal means.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    /// The payload holds several values joined by NUL (`false`: the payload
    /// is the one value, as is).
    #[serde(default)]
    pub joined: bool,
    /// Names of the value positions, from `--header`: `names[i]` is
    /// `{i+1}`, so `{name}` is a positional replacement string.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// `-X`: a word holding `{}` is repeated for each value (context
    /// replace). Otherwise, as in GNU parallel, the values of `{}` are
    /// separate arguments, the word's text before it going to the first
    /// and its text after it to the last.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub context: bool,
}

impl Shape {
    /// The values of `payload`: the payload itself, or its NUL-separated
    /// parts when joined. Always at least one value.
    pub fn split<'a>(&self, payload: &'a [u8], out: &mut Vec<&'a [u8]>) {
        out.clear();
        if self.joined {
            out.extend(payload.split(|&b| b == VALUE_SEPARATOR));
        } else {
            out.push(payload);
        }
    }

    /// The position (from 0) named `name` by `--header`.
    pub fn position_of(&self, name: &[u8]) -> Option<usize> {
        self.names.iter().position(|n| n.as_bytes() == name)
    }
}

/// Joins `values` into a payload (NUL-separated).
///
/// # Errors
///
/// The index (from 0) of the first value that holds a NUL byte.
pub fn encode<V: AsRef<[u8]>>(values: &[V]) -> Result<Vec<u8>, usize> {
    let len = values.iter().map(|v| v.as_ref().len() + 1).sum::<usize>();
    let mut out = Vec::with_capacity(len.saturating_sub(1));
    for (i, v) in values.iter().enumerate() {
        let v = v.as_ref();
        if v.contains(&VALUE_SEPARATOR) {
            return Err(i);
        }
        if i > 0 {
            out.push(VALUE_SEPARATOR);
        }
        out.extend_from_slice(v);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn split(shape: &Shape, payload: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        shape.split(payload, &mut out);
        out.into_iter().map(<[u8]>::to_vec).collect()
    }

    #[test]
    fn single_shape_keeps_the_payload_whole() {
        let s = Shape::default();
        assert_eq!(split(&s, b"a\0b"), vec![b"a\0b".to_vec()]);
        assert_eq!(split(&s, b""), vec![b"".to_vec()]);
    }

    #[test]
    fn joined_payloads_are_nul_separated_and_keep_empty_values() {
        let p = encode(&[&b"a"[..], b"b c", b""]).unwrap();
        assert_eq!(p, b"a\0b c\0");
        let s = Shape {
            joined: true,
            ..Shape::default()
        };
        assert_eq!(split(&s, &p), vec![b"a".to_vec(), b"b c".to_vec(), vec![]]);
        assert_eq!(split(&s, b""), vec![Vec::<u8>::new()]);
    }

    #[test]
    fn a_value_with_nul_is_refused_by_index() {
        assert_eq!(encode(&[&b"ok"[..], b"bad\0"]), Err(1));
    }

    #[test]
    fn old_journals_without_a_shape_read_as_single() {
        let s: Shape = serde_json::from_str("{}").unwrap();
        assert_eq!(s, Shape::default());
        let s = Shape {
            joined: true,
            names: vec!["a".into()],
            context: false,
        };
        let back: Shape = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }

    proptest! {
        #[test]
        fn encoding_round_trips_any_bytes_without_nul(
            values in proptest::collection::vec(
                proptest::collection::vec(1u8..=255, 0..8), 1..6)
        ) {
            let p = encode(&values).unwrap();
            let s = Shape { joined: true, ..Shape::default() };
            prop_assert_eq!(split(&s, &p), values);
        }
    }
}

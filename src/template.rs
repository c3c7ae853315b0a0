//! Command templates: turning `COMMAND [ARG...]` and one input into the
//! argument vector of a job.
//!
//! Replacement strings follow GNU parallel:
//!
//! | string | expands to |
//! |---|---|
//! | `{}` | the input |
//! | `{.}` | the input without the last extension of its last path component |
//! | `{/}` | the basename of the input |
//! | `{//}` | the dirname of the input (`.` when there is none) |
//! | `{/.}` | the basename without its extension |
//! | `{#}` | the job's sequence number, from 1 |
//! | `{%}` | the job slot, from 1; no two running jobs share a slot |
//! | `{N}` `{N.}` `{N/}` `{N//}` `{N/.}` | value N of the job (from 1), with the same modifiers; empty when the job has fewer values |
//! | `{-N}` (and modifiers) | value N from the end: `{-1}` is the last |
//! | `{name}` | the value of the column named `name` by `--header` |
//!
//! A job may carry several values (several input sources, `--colsep`, `-n`,
//! `-X`; see [`crate::input::shape`]). `{}` then stands for all of them: one
//! argument per value, the text before `{}` in its word going with the first
//! and the text after it with the last, as GNU parallel's shell would split
//! them; with `-X` ([`Shape::context`]) the whole word is repeated per value.
//!
//! When no argument holds a replacement string (of any kind, `{#}` and `{%}`
//! included), the values are appended as the last arguments.
//!
//! Without `--shell`, the program is executed directly and each substituted
//! value lands inside one argument, byte for byte: `$(touch x)`, `; rm -rf ~`,
//! quotes and spaces are never interpreted. With `--shell`, the words are
//! joined with spaces into a script for `sh -c`, and every substituted value
//! is single-quoted, so the script sees it as one literal word.
//!
//! All of this works on bytes: inputs that are not UTF-8 pass unchanged.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use crate::input::Shape;

/// What a replacement string does to a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Modifier {
    /// `{}`: the value.
    Whole,
    /// `{.}`: without its extension.
    NoExtension,
    /// `{/}`: its basename.
    Basename,
    /// `{//}`: its dirname.
    Dirname,
    /// `{/.}`: its basename without extension.
    BasenameNoExtension,
}

impl Modifier {
    fn parse(s: &[u8]) -> Option<Modifier> {
        Some(match s {
            b"" => Modifier::Whole,
            b"." => Modifier::NoExtension,
            b"/" => Modifier::Basename,
            b"//" => Modifier::Dirname,
            b"/." => Modifier::BasenameNoExtension,
            _ => return None,
        })
    }

    fn apply(self, v: &[u8]) -> &[u8] {
        match self {
            Modifier::Whole => v,
            Modifier::NoExtension => strip_extension(v),
            Modifier::Basename => basename(v),
            Modifier::Dirname => dirname(v),
            Modifier::BasenameNoExtension => strip_extension(basename(v)),
        }
    }
}

/// One part of a template argument.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(Vec<u8>),
    /// `{}` and its modified forms: every value of the job.
    All(Modifier),
    /// `{N}` (from 0 here) or `{name}` (`--header`), with a modifier.
    Position(usize, Modifier),
    /// `{-N}`: the Nth value from the end (1 is the last).
    FromEnd(usize, Modifier),
    Seq,
    Slot,
}

/// Why a template was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// No command was given.
    #[error("no command given: put the command after `--`, e.g. `jobmill run -- echo {{}}`")]
    Empty,
}

/// A parsed command template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    words: Vec<Vec<u8>>,
    args: Vec<Vec<Piece>>,
    /// Some argument holds a replacement string: the values are not
    /// appended.
    uses_replacement: bool,
    shell: bool,
    shape: Shape,
}

impl Template {
    /// Parses `argv` (the program and its arguments) for a run whose jobs
    /// each take one value. With `shell`, the result runs as `sh -c SCRIPT`.
    ///
    /// # Errors
    ///
    /// [`TemplateError::Empty`] when `argv` is empty.
    pub fn parse(argv: &[OsString], shell: bool) -> Result<Template, TemplateError> {
        Template::parse_shaped(argv, shell, Shape::default())
    }

    /// Parses `argv` for a run of the given [`Shape`]: its payloads are
    /// split into values as the shape says, and its `--header` names are
    /// replacement strings.
    ///
    /// # Errors
    ///
    /// [`TemplateError::Empty`] when `argv` is empty.
    pub fn parse_shaped(
        argv: &[OsString],
        shell: bool,
        shape: Shape,
    ) -> Result<Template, TemplateError> {
        if argv.is_empty() {
            return Err(TemplateError::Empty);
        }
        let words: Vec<Vec<u8>> = argv.iter().map(|a| a.as_bytes().to_vec()).collect();
        let args: Vec<Vec<Piece>> = words.iter().map(|a| parse_arg(a, &shape)).collect();
        let uses_replacement = args
            .iter()
            .flatten()
            .any(|p| !matches!(p, Piece::Literal(_)));
        Ok(Template {
            words,
            args,
            uses_replacement,
            shell,
            shape,
        })
    }

    /// The same command for a run of another shape.
    pub fn with_shape(&self, shape: Shape) -> Template {
        let argv: Vec<OsString> = self
            .words
            .iter()
            .map(|w| OsString::from_vec(w.clone()))
            .collect();
        Template::parse_shaped(&argv, self.shell, shape).expect("a parsed template has words")
    }

    /// The run shape this template renders payloads for.
    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    /// Whether the command runs through `sh -c`.
    pub fn is_shell(&self) -> bool {
        self.shell
    }

    /// Bytes of the command line that do not depend on the values (each
    /// argument counted with a terminating NUL).
    pub fn fixed_len(&self) -> usize {
        self.args
            .iter()
            .filter(|p| !p.iter().any(|p| matches!(p, Piece::All(_))))
            .map(|p| literal_len(p) + 1)
            .sum::<usize>()
            + if self.shell { 6 } else { 0 }
    }

    /// Bytes each value adds to the command line besides its own length
    /// (with `-X`, the text around `{}` is repeated for each value).
    pub fn value_overhead(&self) -> usize {
        let quote = if self.shell { 2 } else { 0 };
        let with_all: Vec<&Vec<Piece>> = self
            .args
            .iter()
            .filter(|p| p.iter().any(|p| matches!(p, Piece::All(_))))
            .collect();
        if with_all.is_empty() {
            return 1 + quote;
        }
        with_all
            .iter()
            .map(|p| {
                if self.shape.context {
                    literal_len(p) + 1 + quote
                } else {
                    1 + quote
                }
            })
            .sum()
    }

    /// Renders the argument vector for one job into `out` (cleared first).
    /// `payload` is split into values as the template's shape says.
    pub fn render(&self, payload: &[u8], seq: u64, slot: usize, out: &mut Vec<OsString>) {
        out.clear();
        let mut values: Vec<&[u8]> = Vec::new();
        self.shape.split(payload, &mut values);
        let cx = Cx {
            values: &values,
            seq,
            slot,
            quote: self.shell,
        };
        let mut rendered: Vec<Vec<u8>> = Vec::with_capacity(self.args.len() + 1);
        for pieces in &self.args {
            self.render_arg(pieces, &cx, &mut rendered);
        }
        if !self.uses_replacement {
            for v in &values {
                let mut last = Vec::with_capacity(v.len() + 2);
                cx.value(v, &mut last);
                rendered.push(last);
            }
        }
        if self.shell {
            out.push(OsString::from("sh"));
            out.push(OsString::from("-c"));
            out.push(OsString::from_vec(rendered.join(&b' ')));
        } else {
            out.extend(rendered.into_iter().map(OsString::from_vec));
        }
    }

    /// Renders one template argument: one word, or with `{}` and several
    /// values, one word per value.
    fn render_arg(&self, pieces: &[Piece], cx: &Cx<'_>, out: &mut Vec<Vec<u8>>) {
        let all = |p: &Piece| matches!(p, Piece::All(_));
        if !pieces.iter().any(all) {
            let mut w = Vec::new();
            for p in pieces {
                cx.expand(p, None, &mut w);
            }
            out.push(w);
            return;
        }
        if self.shape.context && cx.values.len() > 1 {
            // -X: the whole word for each value.
            for v in cx.values {
                let mut w = Vec::new();
                for p in pieces {
                    cx.expand(p, Some(v), &mut w);
                }
                out.push(w);
            }
            return;
        }
        // Each `{}` gives every value, one argument each: the text before it
        // joins the first, the text after it the last, as GNU parallel's
        // shell splits `pre{}post`.
        let mut words = vec![Vec::new()];
        for p in pieces {
            if let Piece::All(_) = p {
                for (i, v) in cx.values.iter().enumerate() {
                    if i > 0 {
                        words.push(Vec::new());
                    }
                    cx.expand(p, Some(v), words.last_mut().expect("a word"));
                }
            } else {
                cx.expand(p, None, words.last_mut().expect("a word"));
            }
        }
        out.extend(words);
    }

    /// A human-readable form of the template, for logs and journals.
    pub fn display(&self) -> String {
        self.words
            .iter()
            .map(|w| String::from_utf8_lossy(w).into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn literal_len(pieces: &[Piece]) -> usize {
    pieces
        .iter()
        .map(|p| match p {
            Piece::Literal(b) => b.len(),
            _ => 0,
        })
        .sum()
}

/// What one job's replacement strings expand to.
struct Cx<'a> {
    values: &'a [&'a [u8]],
    seq: u64,
    slot: usize,
    quote: bool,
}

impl Cx<'_> {
    /// Appends a substituted value, single-quoted in shell mode.
    fn value(&self, v: &[u8], out: &mut Vec<u8>) {
        if self.quote {
            shell_quote_into(v, out);
        } else {
            out.extend_from_slice(v);
        }
    }

    /// Appends piece `p`; `all` is the value `{}` stands for.
    fn expand(&self, p: &Piece, all: Option<&[u8]>, out: &mut Vec<u8>) {
        match p {
            Piece::Literal(b) => out.extend_from_slice(b),
            Piece::All(m) => self.value(m.apply(all.unwrap_or_default()), out),
            Piece::Position(i, m) => self.value(
                m.apply(self.values.get(*i).copied().unwrap_or_default()),
                out,
            ),
            Piece::FromEnd(n, m) => {
                let v = self
                    .values
                    .len()
                    .checked_sub(*n)
                    .map_or(&b""[..], |i| self.values[i]);
                self.value(m.apply(v), out)
            }
            Piece::Seq => self.value(self.seq.to_string().as_bytes(), out),
            Piece::Slot => self.value(self.slot.to_string().as_bytes(), out),
        }
    }
}

/// The replacement string `{inner}`, if it is one.
fn token(inner: &[u8], shape: &Shape) -> Option<Piece> {
    match inner {
        b"#" => return Some(Piece::Seq),
        b"%" => return Some(Piece::Slot),
        _ => {}
    }
    if let Some(m) = Modifier::parse(inner) {
        return Some(Piece::All(m));
    }
    let (negative, num) = match inner.strip_prefix(b"-") {
        Some(rest) => (true, rest),
        None => (false, inner),
    };
    let digits = num.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits > 0 {
        let n: usize = std::str::from_utf8(&num[..digits]).ok()?.parse().ok()?;
        let m = Modifier::parse(&num[digits..])?;
        if n == 0 {
            return None;
        }
        return Some(if negative {
            Piece::FromEnd(n, m)
        } else {
            Piece::Position(n - 1, m)
        });
    }
    shape
        .position_of(inner)
        .map(|i| Piece::Position(i, Modifier::Whole))
}

fn parse_arg(arg: &[u8], shape: &Shape) -> Vec<Piece> {
    let mut pieces = Vec::new();
    let mut lit = Vec::new();
    let mut i = 0;
    while i < arg.len() {
        if arg[i] == b'{' {
            if let Some(len) = arg[i + 1..].iter().position(|&b| b == b'}') {
                if let Some(piece) = token(&arg[i + 1..i + 1 + len], shape) {
                    if !lit.is_empty() {
                        pieces.push(Piece::Literal(std::mem::take(&mut lit)));
                    }
                    pieces.push(piece);
                    i += len + 2;
                    continue;
                }
            }
        }
        lit.push(arg[i]);
        i += 1;
    }
    if !lit.is_empty() || pieces.is_empty() {
        pieces.push(Piece::Literal(lit));
    }
    pieces
}

/// The last path component of `path` (trailing slashes ignored).
pub fn basename(path: &[u8]) -> &[u8] {
    let trimmed = trim_trailing_slashes(path);
    match trimmed.iter().rposition(|&b| b == b'/') {
        Some(i) => &trimmed[i + 1..],
        None => trimmed,
    }
}

/// Everything before the last path component, `.` when there is none, `/`
/// for a file at the root.
pub fn dirname(path: &[u8]) -> &[u8] {
    let trimmed = trim_trailing_slashes(path);
    match trimmed.iter().rposition(|&b| b == b'/') {
        Some(0) => b"/",
        Some(i) => &trimmed[..i],
        None => b".",
    }
}

fn trim_trailing_slashes(path: &[u8]) -> &[u8] {
    let mut end = path.len();
    while end > 1 && path[end - 1] == b'/' {
        end -= 1;
    }
    &path[..end]
}

/// `path` without the last extension of its last component. A leading dot
/// (`.bashrc`) is not an extension.
pub fn strip_extension(path: &[u8]) -> &[u8] {
    let start = path.iter().rposition(|&b| b == b'/').map_or(0, |i| i + 1);
    match path[start..].iter().rposition(|&b| b == b'.') {
        Some(0) | None => path,
        Some(i) => &path[..start + i],
    }
}

/// Appends `value` single-quoted for `sh`: `it's` becomes `'it'\''s'`.
pub fn shell_quote_into(value: &[u8], out: &mut Vec<u8>) {
    out.push(b'\'');
    for &b in value {
        if b == b'\'' {
            out.extend_from_slice(b"'\\''");
        } else {
            out.push(b);
        }
    }
    out.push(b'\'');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(words: &[&str]) -> Vec<OsString> {
        words.iter().map(OsString::from).collect()
    }

    fn render(words: &[&str], shell: bool, input: &[u8], seq: u64, slot: usize) -> Vec<Vec<u8>> {
        let t = Template::parse(&argv(words), shell).unwrap();
        let mut out = Vec::new();
        t.render(input, seq, slot, &mut out);
        out.into_iter().map(|s| s.into_vec()).collect()
    }

    #[test]
    fn input_is_appended_when_no_replacement_string() {
        assert_eq!(
            render(&["echo", "-n"], false, b"a b", 1, 1),
            vec![b"echo".to_vec(), b"-n".to_vec(), b"a b".to_vec()]
        );
    }

    #[test]
    fn replacement_strings_expand_like_gnu_parallel() {
        let out = render(
            &["x", "{}", "{.}", "{/}", "{//}", "{/.}", "{#}", "{%}"],
            false,
            b"dir/sub/file.tar.gz",
            42,
            3,
        );
        let want: Vec<&[u8]> = vec![
            b"x",
            b"dir/sub/file.tar.gz",
            b"dir/sub/file.tar",
            b"file.tar.gz",
            b"dir/sub",
            b"file.tar",
            b"42",
            b"3",
        ];
        assert_eq!(
            out,
            want.into_iter().map(|s| s.to_vec()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn seq_or_slot_alone_do_not_append_the_input() {
        // As GNU parallel: `parallel echo {#} ::: /d/f.txt` prints `1`.
        assert_eq!(
            render(&["echo", "{#}"], false, b"in", 5, 1),
            vec![b"echo".to_vec(), b"5".to_vec()]
        );
        assert_eq!(
            render(&["echo", "{%}"], false, b"in", 5, 2),
            vec![b"echo".to_vec(), b"2".to_vec()]
        );
    }

    #[test]
    fn replacement_inside_a_word_keeps_the_surroundings() {
        assert_eq!(
            render(&["cp", "{}", "out/{/.}.bak"], false, b"/a/b.txt", 1, 1),
            vec![b"cp".to_vec(), b"/a/b.txt".to_vec(), b"out/b.bak".to_vec()]
        );
    }

    #[test]
    fn unknown_braces_stay_literal() {
        assert_eq!(
            render(&["echo", "{x}", "{", "{}"], false, b"v", 1, 1),
            vec![
                b"echo".to_vec(),
                b"{x}".to_vec(),
                b"{".to_vec(),
                b"v".to_vec()
            ]
        );
    }

    #[test]
    fn path_helpers_handle_edge_cases() {
        assert_eq!(dirname(b"file"), b".");
        assert_eq!(dirname(b"/file"), b"/");
        assert_eq!(dirname(b"a/b/"), b"a");
        assert_eq!(basename(b"a/b/"), b"b");
        assert_eq!(strip_extension(b".bashrc"), b".bashrc");
        assert_eq!(strip_extension(b"dir.d/file"), b"dir.d/file");
        assert_eq!(strip_extension(b"a.b.c"), b"a.b");
    }

    #[test]
    fn injection_strings_stay_one_literal_argument_without_shell() {
        for evil in [
            &b"$(touch x)"[..],
            b"; rm -rf ~",
            b"a'b\"c",
            b"with space",
            b"`id`",
        ] {
            let out = render(&["echo", "{}"], false, evil, 1, 1);
            assert_eq!(out, vec![b"echo".to_vec(), evil.to_vec()]);
        }
    }

    #[test]
    fn shell_mode_quotes_every_substituted_value() {
        let out = render(&["echo {} | cat"], true, b"it's $(x)", 1, 1);
        assert_eq!(out[0], b"sh");
        assert_eq!(out[1], b"-c");
        assert_eq!(out[2], b"echo 'it'\\''s $(x)' | cat".to_vec());
    }

    #[test]
    fn shell_mode_appends_quoted_input_when_no_replacement_string() {
        let out = render(&["printf", "%s\\n"], true, b"a;b", 1, 1);
        assert_eq!(out[2], b"printf %s\\n 'a;b'".to_vec());
    }

    #[test]
    fn non_utf8_input_passes_unchanged() {
        let input = b"\xff\xfe name\x80";
        let out = render(&["x", "{}"], false, input, 1, 1);
        assert_eq!(out[1], input.to_vec());
    }

    #[test]
    fn empty_command_is_refused() {
        assert_eq!(Template::parse(&[], false), Err(TemplateError::Empty));
    }

    fn render_shaped(words: &[&str], shell: bool, shape: Shape, values: &[&str]) -> Vec<String> {
        let t = Template::parse_shaped(&argv(words), shell, shape).unwrap();
        let payload = crate::input::shape::encode(values).unwrap();
        let mut out = Vec::new();
        t.render(&payload, 7, 2, &mut out);
        out.into_iter().map(|s| s.into_string().unwrap()).collect()
    }

    fn joined() -> Shape {
        Shape {
            joined: true,
            ..Shape::default()
        }
    }

    #[test]
    fn positional_values_take_modifiers() {
        let out = render_shaped(
            &["x", "{1}", "{1.}", "{1/}", "{1//}", "{1/.}", "{2}", "{3}"],
            false,
            joined(),
            &["dir/a.txt", "b.c"],
        );
        assert_eq!(
            out,
            ["x", "dir/a.txt", "dir/a", "a.txt", "dir", "a", "b.c", ""]
        );
    }

    #[test]
    fn negative_positions_count_from_the_last_value() {
        let out = render_shaped(
            &["e", "{-1}", "{-2/}", "{-3}"],
            false,
            joined(),
            &["x/a", "b"],
        );
        assert_eq!(out, ["e", "b", "a", ""]);
    }

    #[test]
    fn several_values_are_appended_in_order_without_replacement_strings() {
        let out = render_shaped(&["echo"], false, joined(), &["a", "b c", ""]);
        assert_eq!(out, ["echo", "a", "b c", ""]);
    }

    #[test]
    fn braces_with_several_values_split_like_gnu_parallel() {
        let out = render_shaped(&["echo", "pre{}post"], false, joined(), &["a", "b", "c"]);
        assert_eq!(out, ["echo", "prea", "b", "cpost"]);
        let x = Shape {
            context: true,
            ..joined()
        };
        let out = render_shaped(&["echo", "pre{}post", "{#}"], false, x, &["a", "b"]);
        assert_eq!(out, ["echo", "preapost", "prebpost", "7"]);
        let out = render_shaped(&["echo", "{.}"], false, joined(), &["a.x", "b.y"]);
        assert_eq!(out, ["echo", "a", "b"]);
        // Each `{}` form gives all the values: `{.}x{/}` with `a/b.c g.h`
        // is `a/b gxb.c g.h` to GNU parallel's shell.
        let out = render_shaped(&["echo", "{.}x{/}"], false, joined(), &["a/b.c", "g.h"]);
        assert_eq!(out, ["echo", "a/b", "gxb.c", "g.h"]);
    }

    #[test]
    fn header_names_are_replacement_strings() {
        let shape = Shape {
            names: vec!["x".into(), "y".into()],
            ..joined()
        };
        let out = render_shaped(&["echo", "{y}-{x}", "{z}"], false, shape, &["1", "2"]);
        assert_eq!(out, ["echo", "2-1", "{z}"]);
    }

    #[test]
    fn shell_mode_quotes_each_of_several_values() {
        let out = render_shaped(&["echo {2} {}"], true, joined(), &["a b", "it's"]);
        assert_eq!(out[2], "echo 'it'\\''s' 'a b' 'it'\\''s'");
    }

    #[test]
    fn a_single_value_run_never_splits_its_payload() {
        let out = render(&["echo"], false, b"a\0b", 1, 1);
        assert_eq!(out, vec![b"echo".to_vec(), b"a\0b".to_vec()]);
    }

    #[test]
    fn with_shape_reparses_names() {
        let t = Template::parse(&argv(&["echo", "{n}"]), false).unwrap();
        let t = t.with_shape(Shape {
            names: vec!["n".into()],
            ..joined()
        });
        let mut out = Vec::new();
        t.render(b"v", 1, 1, &mut out);
        assert_eq!(out, [OsString::from("echo"), OsString::from("v")]);
    }

    #[test]
    fn display_shows_the_template() {
        let t = Template::parse(&argv(&["echo", "{}", "x{#}"]), false).unwrap();
        assert_eq!(t.display(), "echo {} x{#}");
    }
}

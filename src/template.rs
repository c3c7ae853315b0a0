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
//!
//! When no argument holds a replacement string, the input is appended as the
//! last argument.
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

/// One part of a template argument.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(Vec<u8>),
    Input,
    NoExtension,
    Basename,
    Dirname,
    BasenameNoExtension,
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
    args: Vec<Vec<Piece>>,
    uses_input: bool,
    shell: bool,
}

impl Template {
    /// Parses `argv` (the program and its arguments). With `shell`, the
    /// result runs as `sh -c SCRIPT`.
    ///
    /// # Errors
    ///
    /// [`TemplateError::Empty`] when `argv` is empty.
    pub fn parse(argv: &[OsString], shell: bool) -> Result<Template, TemplateError> {
        if argv.is_empty() {
            return Err(TemplateError::Empty);
        }
        let args: Vec<Vec<Piece>> = argv.iter().map(|a| parse_arg(a.as_bytes())).collect();
        let uses_input = args.iter().flatten().any(|p| {
            matches!(
                p,
                Piece::Input
                    | Piece::NoExtension
                    | Piece::Basename
                    | Piece::Dirname
                    | Piece::BasenameNoExtension
            )
        });
        Ok(Template {
            args,
            uses_input,
            shell,
        })
    }

    /// Whether the command runs through `sh -c`.
    pub fn is_shell(&self) -> bool {
        self.shell
    }

    /// Renders the argument vector for one job into `out` (cleared first).
    pub fn render(&self, input: &[u8], seq: u64, slot: usize, out: &mut Vec<OsString>) {
        out.clear();
        let quote = self.shell;
        let mut rendered: Vec<Vec<u8>> = self
            .args
            .iter()
            .map(|pieces| {
                let mut buf = Vec::new();
                for p in pieces {
                    expand(p, input, seq, slot, quote, &mut buf);
                }
                buf
            })
            .collect();
        if !self.uses_input {
            let mut last = Vec::with_capacity(input.len() + 2);
            expand(&Piece::Input, input, seq, slot, quote, &mut last);
            rendered.push(last);
        }
        if self.shell {
            out.push(OsString::from("sh"));
            out.push(OsString::from("-c"));
            out.push(OsString::from_vec(rendered.join(&b' ')));
        } else {
            out.extend(rendered.into_iter().map(OsString::from_vec));
        }
    }

    /// A human-readable form of the template, for logs and journals.
    pub fn display(&self) -> String {
        let mut words = Vec::new();
        for pieces in &self.args {
            let mut w = Vec::new();
            for p in pieces {
                match p {
                    Piece::Literal(b) => w.extend_from_slice(b),
                    other => w.extend_from_slice(token_of(other).as_bytes()),
                }
            }
            words.push(String::from_utf8_lossy(&w).into_owned());
        }
        words.join(" ")
    }
}

fn token_of(p: &Piece) -> &'static str {
    match p {
        Piece::Input => "{}",
        Piece::NoExtension => "{.}",
        Piece::Basename => "{/}",
        Piece::Dirname => "{//}",
        Piece::BasenameNoExtension => "{/.}",
        Piece::Seq => "{#}",
        Piece::Slot => "{%}",
        Piece::Literal(_) => "",
    }
}

const TOKENS: [(&[u8], Piece); 7] = [
    (b"{}", Piece::Input),
    (b"{.}", Piece::NoExtension),
    (b"{/}", Piece::Basename),
    (b"{//}", Piece::Dirname),
    (b"{/.}", Piece::BasenameNoExtension),
    (b"{#}", Piece::Seq),
    (b"{%}", Piece::Slot),
];

fn parse_arg(arg: &[u8]) -> Vec<Piece> {
    let mut pieces = Vec::new();
    let mut lit = Vec::new();
    let mut i = 0;
    'outer: while i < arg.len() {
        if arg[i] == b'{' {
            for (tok, piece) in &TOKENS {
                if arg[i..].starts_with(tok) {
                    if !lit.is_empty() {
                        pieces.push(Piece::Literal(std::mem::take(&mut lit)));
                    }
                    pieces.push(piece.clone());
                    i += tok.len();
                    continue 'outer;
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

fn expand(p: &Piece, input: &[u8], seq: u64, slot: usize, quote: bool, out: &mut Vec<u8>) {
    let value: std::borrow::Cow<'_, [u8]> = match p {
        Piece::Literal(b) => {
            out.extend_from_slice(b);
            return;
        }
        Piece::Input => input.into(),
        Piece::NoExtension => strip_extension(input).into(),
        Piece::Basename => basename(input).into(),
        Piece::Dirname => dirname(input).into(),
        Piece::BasenameNoExtension => strip_extension(basename(input)).into(),
        Piece::Seq => seq.to_string().into_bytes().into(),
        Piece::Slot => slot.to_string().into_bytes().into(),
    };
    if quote {
        shell_quote_into(&value, out);
    } else {
        out.extend_from_slice(&value);
    }
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
    fn seq_and_slot_alone_still_append_the_input() {
        assert_eq!(
            render(&["echo", "{#}"], false, b"in", 5, 1),
            vec![b"echo".to_vec(), b"5".to_vec(), b"in".to_vec()]
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

    #[test]
    fn display_shows_the_template() {
        let t = Template::parse(&argv(&["echo", "{}", "x{#}"]), false).unwrap();
        assert_eq!(t.display(), "echo {} x{#}");
    }
}

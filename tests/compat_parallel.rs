//! `jobmill run` against the real GNU parallel: each case runs the same
//! options, command and input sources through both and compares their
//! standard output and exit status. `-k` (or `-j1`) keeps the order
//! deterministic. GNU parallel must be installed (`apt-get install
//! parallel`; scripts/test.sh does): without it these tests fail, never
//! skip.
//!
//! The commands are plain words (`echo`, a script) whose meaning is the
//! same whether run directly (jobmill) or through a shell (GNU parallel).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

const JOBMILL: &str = env!("CARGO_BIN_EXE_jobmill");

/// One invocation: options, then the command and its input sources.
struct Case {
    opts: &'static [&'static str],
    cmd: &'static [&'static str],
    stdin: &'static [u8],
}

const fn case(opts: &'static [&'static str], cmd: &'static [&'static str]) -> Case {
    Case {
        opts,
        cmd,
        stdin: b"",
    }
}

const fn with_stdin(
    opts: &'static [&'static str],
    cmd: &'static [&'static str],
    stdin: &'static [u8],
) -> Case {
    Case { opts, cmd, stdin }
}

/// Files the cases read, in the directory they run in.
fn fixtures(dir: &Path) {
    let files: &[(&str, &[u8])] = &[
        ("lines.txt", b"one\ntwo\nthree\n"),
        ("more.txt", b"x\ny\n"),
        ("cols.csv", b"1,2,3\n4,5,6\n"),
        ("padded.csv", b"  a , b \n c,d  \n"),
        ("head.csv", b"x,y\n1,2\n3,4\n"),
        ("tabs.tsv", b"a\tb\nc\td\n"),
        ("spaces.txt", b"a   b c\nd e    f\n"),
        ("quoted.csv", b"a,\"b,c\",d\n\"multi\nline\",x,\"q\"\"q\"\n"),
        ("nul.bin", b"a b\0c\nd\0"),
        ("paths.txt", b"dir/sub/file.tar.gz\n/root.txt\nplain\n"),
        ("fail.sh", b"#!/bin/sh\necho \"out $1\"\nexit \"$1\"\n"),
    ];
    for (name, data) in files {
        std::fs::write(dir.join(name), data).unwrap();
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join("fail.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn run(mut cmd: Command, stdin: &[u8]) -> Output {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

fn parallel_cmd(dir: &Path) -> Command {
    let mut c = Command::new("parallel");
    c.current_dir(dir)
        .env("HOME", dir.join("home"))
        .env("TMPDIR", dir.join("tmp"))
        .arg("--will-cite");
    c
}

/// Runs every case through both; returns the mismatches, described.
fn compare(cases: &[Case]) -> Vec<String> {
    let status = Command::new("parallel")
        .arg("--version")
        .stdout(Stdio::null())
        .status();
    assert!(
        status.is_ok_and(|s| s.success()),
        "GNU parallel is not installed: these compatibility tests need it \
         (apt-get install parallel; scripts/test.sh installs it)"
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("home")).unwrap();
    std::fs::create_dir_all(d.join("tmp")).unwrap();
    fixtures(d);
    let mut bad = Vec::new();
    for c in cases {
        let mut p = parallel_cmd(d);
        p.args(c.opts).args(c.cmd);
        let want = run(p, c.stdin);
        let mut j = Command::new(JOBMILL);
        j.current_dir(d)
            .env("XDG_STATE_HOME", d.join("state"))
            .args(["run", "--no-journal"])
            .args(c.opts)
            .arg("--")
            .args(c.cmd);
        let got = run(j, c.stdin);
        if want.stdout != got.stdout || want.status.code() != got.status.code() {
            bad.push(format!(
                "opts {:?} cmd {:?}:\n  parallel ({:?}): {:?}\n  jobmill  ({:?}): {:?}\n  jobmill stderr: {}",
                c.opts,
                c.cmd,
                want.status.code(),
                String::from_utf8_lossy(&want.stdout),
                got.status.code(),
                String::from_utf8_lossy(&got.stdout),
                String::from_utf8_lossy(&got.stderr),
            ));
        }
    }
    bad
}

fn assert_same(cases: &[Case]) {
    let bad = compare(cases);
    assert!(
        bad.is_empty(),
        "{} of {} invocations differ from GNU parallel:\n{}",
        bad.len(),
        cases.len(),
        bad.join("\n")
    );
}

#[test]
fn several_sources_combine_like_gnu_parallel() {
    assert_same(&[
        case(&["-k"], &["echo", ":::", "a", "b", "c"]),
        case(&["-k"], &["echo", ":::", "a", "b", ":::", "1", "2"]),
        case(
            &["-k"],
            &["echo", ":::", "a", "b", ":::", "1", "2", ":::", "x", "y"],
        ),
        case(
            &["-k"],
            &["echo", "{2}", "{1}", ":::", "a", "b", ":::", "1", "2"],
        ),
        case(&["-k"], &["echo", "{}", ":::", "a", "b", ":::", "1", "2"]),
        case(&["-k"], &["echo", "x{}y", ":::", "a", "b"]),
        case(&["-k"], &["echo", ":::", "a", ":::"]),
        case(&["-k"], &["echo", "x{}x", ":::"]),
        case(&["-k"], &["echo", "::::", "/dev/null", ":::", "a"]),
        case(&["-k"], &["echo", "x{}x", ":::", "a", ":::+"]),
        case(&["-k"], &["echo", "::::", "lines.txt"]),
        case(&["-k"], &["echo", "::::", "lines.txt", "more.txt"]),
        case(&["-k"], &["echo", ":::", "a", "b", "::::", "more.txt"]),
        case(
            &["-k"],
            &["echo", "pre-{}", ":::", "caf\u{e9}", "two words"],
        ),
    ]);
}

#[test]
fn linked_sources_pair_like_gnu_parallel() {
    assert_same(&[
        case(&["-k"], &["echo", ":::", "a", "b", ":::+", "1", "2"]),
        case(&["-k"], &["echo", ":::", "a", "b", "c", ":::+", "1", "2"]),
        case(&["-k"], &["echo", ":::", "a", ":::+", "1", "2", "3"]),
        case(
            &["-k"],
            &[
                "echo", ":::", "a", "b", ":::", "x", "y", ":::+", "1", "2", "3",
            ],
        ),
        case(&["-k"], &["echo", ":::", "a", "b", "::::+", "more.txt"]),
        case(
            &["-k", "--link"],
            &["echo", ":::", "a", "b", ":::", "1", "2"],
        ),
        case(
            &["-k", "--link"],
            &["echo", ":::", "a", "b", "c", ":::", "1", "2"],
        ),
        case(
            &["-k", "--link"],
            &["echo", ":::", "a", ":::", "1", "2", "3"],
        ),
        case(
            &["-k", "--link"],
            &["echo", ":::", "a", "b", ":::", "1", "2", "3", ":::", "x"],
        ),
    ]);
}

#[test]
fn replacement_strings_expand_like_gnu_parallel() {
    assert_same(&[
        case(
            &["-k"],
            &[
                "echo",
                "{1.}",
                "{1/}",
                "{1//}",
                "{1/.}",
                "{2}",
                ":::",
                "dir/a.txt",
                ":::",
                "b.c",
            ],
        ),
        case(
            &["-k"],
            &[
                "echo",
                "{2.}",
                "{2/}",
                "{2//}",
                "{2/.}",
                ":::",
                "x",
                "::::",
                "paths.txt",
            ],
        ),
        case(
            &["-k"],
            &[
                "echo",
                "{}",
                "{.}",
                "{/}",
                "{//}",
                "{/.}",
                "::::",
                "paths.txt",
            ],
        ),
        case(&["-k"], &["echo", "{#}", ":::", "/d/f.txt"]),
        case(
            &["-k"],
            &["echo", "{.}x{/}", ":::", "a/b.c", "d/e.f", ":::", "g.h"],
        ),
        case(
            &["-k"],
            &["echo", "{-1}", "{-2/}", ":::", "a/b", ":::", "c", "d"],
        ),
        case(&["-k"], &["echo", "{2}x", ":::", "a"]),
        case(
            &["-k"],
            &["echo", "{#}", "{}", ":::", "a", "b", ":::", "1", "2"],
        ),
        case(&["-k"], &["echo", "{#}-{}", ":::", "a", "b", "c"]),
        with_stdin(&["-k"], &["echo", "got", "{}"], b"one\n\nthree\n"),
        with_stdin(&["-k"], &["echo"], b"a b\nc\n"),
    ]);
}

#[test]
fn columns_split_like_gnu_parallel() {
    assert_same(&[
        case(
            &["-k", "--colsep", ","],
            &["echo", "{3}", "{1}", "::::", "cols.csv"],
        ),
        case(&["-k", "--colsep", ","], &["echo", "::::", "cols.csv"]),
        case(
            &["-k", "--colsep", "\\t"],
            &["echo", "{2}", "{1}", "::::", "tabs.tsv"],
        ),
        case(
            &["-k", "--colsep", " +"],
            &["echo", "{3}", "{1}", "::::", "spaces.txt"],
        ),
        case(&["-k", "--colsep", ","], &["echo", ":::", "a,b", "c"]),
        case(
            &["-k", "--header", ":"],
            &[
                "echo", "{a}", "{b}", ":::", "a", "1", "2", ":::", "b", "3", "4",
            ],
        ),
        case(
            &["-k", "--header", ":"],
            &["echo", "{}", ":::", "a", "1", "2"],
        ),
        case(
            &["-k", "--header", ":", "--colsep", ","],
            &["echo", "{y}", "{x}", "::::", "head.csv"],
        ),
        case(&["-k", "--csv"], &["echo", "{2}", "::::", "quoted.csv"]),
        case(
            &["-k", "--colsep", ","],
            &["echo", "[{1}]", "[{2}]", "::::", "padded.csv"],
        ),
        case(
            &["-k", "--colsep", ",", "--trim", "n"],
            &["echo", "[{2}]x", "::::", "padded.csv"],
        ),
        case(
            &["-k", "--trim", "l"],
            &["echo", "[{}]x", "::::", "padded.csv"],
        ),
        case(&["-k", "--csv"], &["echo", "[{1}]x", "::::", "padded.csv"]),
        case(
            &["-k", "--csv", "--colsep", ","],
            &["echo", "{1}={3}", "::::", "quoted.csv"],
        ),
    ]);
}

#[test]
fn batches_fill_commands_like_gnu_parallel() {
    assert_same(&[
        case(&["-k", "-n", "2"], &["echo", ":::", "a", "b", "c"]),
        case(
            &["-k", "-n", "2"],
            &["echo", "{2}-{1}", ":::", "a", "b", "c"],
        ),
        case(&["-k", "-n", "2"], &["echo", "{}", ":::", "a", "b", "c"]),
        case(
            &["-k", "-n", "3"],
            &["echo", "::::", "lines.txt", "more.txt"],
        ),
        case(&["-k", "-n2"], &["echo", "x{}y", ":::", "a", "b", "c"]),
        case(&["-j1", "-X"], &["echo", "pre{}post", ":::", "a", "b", "c"]),
        case(&["-j1", "-m"], &["echo", "pre{}post", ":::", "a", "b", "c"]),
        case(&["-j1", "-X"], &["echo", ":::", "a", "b", "c"]),
        case(&["-j1", "-X"], &["echo", "{#}", "{}", ":::", "a", "b", "c"]),
        // The inputs left when the input ends are spread over the slots.
        case(&["-k", "-j2", "-X"], &["echo", ":::", "1", "2", "3"]),
        case(
            &["-k", "-j2", "-X"],
            &["echo", ":::", "1", "2", "3", "4", "5"],
        ),
        case(
            &["-k", "-j3", "-X"],
            &["echo", ":::", "1", "2", "3", "4", "5", "6", "7"],
        ),
        case(
            &["-k", "-j2", "-m"],
            &["echo", "x{}", ":::", "1", "2", "3", "4"],
        ),
    ]);
}

#[test]
fn dry_run_prints_commands_like_gnu_parallel() {
    assert_same(&[
        case(
            &["-k", "--dry-run"],
            &["echo", ":::", "a", "b c", "it's", "x$y", "", "\u{e9}"],
        ),
        case(
            &["-k", "--dry-run"],
            &["echo", "{2}", "{1}", ":::", "a", "b", ":::", "x/y"],
        ),
        case(
            &["-k", "--dry-run", "-n", "2"],
            &["echo", "{3}x", ":::", "a", "b", "c"],
        ),
        case(&["--dry-run"], &["./fail.sh", "{#}", ":::", "a", "b"]),
    ]);
}

#[test]
fn input_options_read_like_gnu_parallel() {
    assert_same(&[
        case(&["-k", "-0"], &["echo", "::::", "nul.bin"]),
        with_stdin(&["-k", "-0"], &["echo", "[{}]"], b"x y\0z\nw\0"),
        case(&["-k", "-a", "lines.txt", "-a", "more.txt"], &["echo"]),
        with_stdin(&["-k", "-a", "-"], &["echo", "in:{}"], b"s1\ns2\n"),
        with_stdin(&["-k", "-a", "-", "-a", "more.txt"], &["echo"], b"s1\ns2\n"),
        with_stdin(&["-k"], &["echo", "::::", "-", "more.txt"], b"s1\n"),
        case(&["-k", "-a", "more.txt"], &["echo", ":::", "1", "2"]),
    ]);
}

#[test]
fn run_options_behave_like_gnu_parallel() {
    assert_same(&[
        case(&["-k", "--timeout", "0"], &["echo", ":::", "a", "b"]),
        case(
            &["-j1", "--halt", "1"],
            &["./fail.sh", ":::", "0", "1", "0"],
        ),
        case(
            &["-j1", "--halt", "2"],
            &["./fail.sh", ":::", "0", "1", "0"],
        ),
        case(
            &["-j1", "--halt", "0"],
            &["./fail.sh", ":::", "0", "1", "0"],
        ),
        case(&["-k"], &["./fail.sh", ":::", "1", "2", "0"]),
        case(&["-k", "-j", "+0"], &["echo", ":::", "a", "b", "c"]),
        case(&["-k", "-j", "50%"], &["echo", ":::", "a", "b", "c"]),
        case(&["-k", "-j", "-1"], &["echo", ":::", "a", "b", "c"]),
        case(&["-k", "-j", "+1"], &["echo", "{%}", ":::", "a"]),
    ]);
}

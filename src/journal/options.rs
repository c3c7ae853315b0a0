//! The options of a run as its journal stores them (`run.options`, JSON):
//! everything `jobmill resume` needs to continue the run. The journal owns
//! this encoding; front ends fill it in and read it back.
//!
//! Versioned: [`StoredOptions::version`] is [`OPTIONS_VERSION`] in journals
//! written now; journals written before the field existed have none and
//! read as version 1. Fields added later get defaults, so older journals
//! keep parsing; a journal from a newer jobmill with a higher version is
//! refused, naming both versions.
//!
//! Version 2 added the retry policy by cause (`max_oom`, `retry_on`,
//! `retry_delay`, `retry_backoff`, `retry_max_delay`), `mem_per_job` and
//! `mem_limit`: an older jobmill refuses such a journal rather than resume
//! it while ignoring them.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::writer::WriterConfig;

/// The version of the stored options this build writes and reads.
pub const OPTIONS_VERSION: u32 = 2;

fn version_1() -> u32 {
    1
}

/// The options of a run, as stored in its journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredOptions {
    /// The encoding's version ([`OPTIONS_VERSION`]; 1 when absent).
    #[serde(default = "version_1")]
    pub version: u32,
    /// Jobs at once (`-j`).
    pub jobs: usize,
    /// `-k`.
    pub keep_order: bool,
    /// `-0`: inputs are NUL-separated.
    pub null: bool,
    /// `--shell`.
    pub shell: bool,
    /// `--retries`.
    pub retries: u32,
    /// `--max-lost` (3 in journals written before it was stored).
    #[serde(default = "default_max_lost")]
    pub max_lost: u32,
    /// `--max-oom` (3 when absent).
    #[serde(default = "default_max_oom")]
    pub max_oom: u32,
    /// `--retry-on`, as given (every failure is retried when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_on: Option<String>,
    /// `--retry-delay`, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_delay: Option<f64>,
    /// `--retry-backoff` (2 when absent).
    #[serde(default = "default_retry_backoff")]
    pub retry_backoff: f64,
    /// `--retry-max-delay`, seconds (600 when absent).
    #[serde(default = "default_retry_max_delay")]
    pub retry_max_delay: f64,
    /// `--mem-per-job`: `"auto"`, or bytes as a decimal string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_per_job: Option<String>,
    /// `--timeout`, seconds.
    pub timeout: Option<f64>,
    /// `--grace`, seconds.
    pub grace: f64,
    /// `--halt`, as given.
    pub halt: Option<String>,
    /// `--output-memory`, bytes.
    pub output_memory: usize,
    /// `--persistent`.
    pub persistent: bool,
    /// `--window`.
    pub window: usize,
    /// `--arena`, bytes; `None` in journals written before it was stored
    /// (then the executor's default applies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arena: Option<usize>,
    /// `--handshake-timeout`, seconds (10 when absent).
    #[serde(default = "default_handshake")]
    pub handshake_timeout: f64,
    /// `--print0`.
    #[serde(default)]
    pub print0: bool,
    /// How each job's payload holds its values (one value per job when
    /// absent).
    #[serde(default)]
    pub shape: crate::input::Shape,
    /// With [`StoredInput::Plan`]: the sources, columns and batching, as
    /// the command line that made them stored it (read by the CLI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<serde_json::Value>,
    /// `--tag`.
    #[serde(default)]
    pub tag: bool,
    /// `--tagstring`.
    #[serde(default)]
    pub tagstring: Option<String>,
    /// `--line-buffer` or `-u`: how output is printed as it comes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<crate::engine::output::Live>,
    /// `--results`, absolute.
    #[serde(default)]
    pub results: Option<std::path::PathBuf>,
    /// `--joblog`, absolute: `run --resume --joblog FILE` finds the run by it.
    #[serde(default)]
    pub joblog: Option<std::path::PathBuf>,
    /// `--delay`, seconds.
    #[serde(default)]
    pub delay: Option<f64>,
    /// `--memfree`, bytes.
    #[serde(default)]
    pub memfree: Option<u64>,
    /// `--mem-limit`, bytes: each job's memory limit (version 2; none
    /// when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_limit: Option<u64>,
    /// `--load`, processes (a percentage resolved when the run started).
    #[serde(default)]
    pub load: Option<f64>,
    /// `--journal-output-cap`, bytes.
    pub journal_output_cap: usize,
    /// `--journal-fsync`, seconds.
    pub journal_fsync: f64,
    /// Where the inputs come from.
    pub input: StoredInput,
}

fn default_max_lost() -> u32 {
    crate::job::DEFAULT_MAX_LOST
}

fn default_max_oom() -> u32 {
    crate::job::DEFAULT_MAX_OOM
}

fn default_retry_backoff() -> f64 {
    crate::job::DEFAULT_RETRY_BACKOFF
}

fn default_retry_max_delay() -> f64 {
    crate::job::DEFAULT_RETRY_MAX_DELAY.as_secs_f64()
}

fn default_handshake() -> f64 {
    10.0
}

/// Where the inputs of a run come from, as stored: `{"kind": "stdin"}`,
/// `{"kind": "file", "path": P}` (absolute) or `{"kind": "args", "args":
/// [...]}`; paths and arguments are strings, or `{"hex": ...}` when not
/// UTF-8.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum StoredInput {
    /// Standard input.
    Stdin,
    /// `-a FILE`.
    File {
        /// The file, absolute.
        #[serde(with = "os_json")]
        path: OsString,
    },
    /// `::: INPUT...`.
    Args {
        /// The inputs.
        #[serde(with = "os_json_list")]
        args: Vec<OsString>,
    },
    /// Several sources, columns or batches: see [`StoredOptions::plan`].
    Plan,
}

impl StoredInput {
    /// The input file, for [`StoredInput::File`].
    pub fn file(&self) -> Option<PathBuf> {
        match self {
            StoredInput::File { path } => Some(PathBuf::from(path)),
            _ => None,
        }
    }
}

impl StoredOptions {
    /// The journal writer's settings of this run.
    pub fn writer_config(&self) -> WriterConfig {
        WriterConfig {
            output_cap: self.journal_output_cap,
            sync_interval: Duration::from_secs_f64(self.journal_fsync.max(0.0)),
        }
    }

    /// The input separator: NUL with `-0`, else newline.
    pub fn separator(&self) -> u8 {
        if self.null {
            0
        } else {
            b'\n'
        }
    }

    /// The retry policy these options describe: `--retries`,
    /// `--max-lost`, `--max-oom`, `--retry-on` and the retry delays.
    ///
    /// # Errors
    ///
    /// The stored `--retry-on` does not parse (the message names it).
    pub fn retry_policy(&self) -> Result<crate::job::RetryPolicy, String> {
        use crate::job::{Backoff, RetryOn, RetryPolicy};
        let retry_on = match &self.retry_on {
            Some(text) => RetryOn::parse(text).map_err(|e| e.to_string())?,
            None => RetryOn::ALL,
        };
        let secs = |s: f64| Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::MAX);
        Ok(RetryPolicy::with_retries(self.retries)
            .max_lost(self.max_lost)
            .max_oom(self.max_oom)
            .retry_on(retry_on)
            .backoff(Backoff {
                delay: self.retry_delay.map_or(Duration::ZERO, secs),
                factor: self.retry_backoff,
                max: secs(self.retry_max_delay),
            }))
    }

    /// The stored JSON.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("stored options always encode")
    }

    /// Parses stored JSON; `Err` says what is wrong (a newer version, a
    /// missing or invalid field).
    ///
    /// # Errors
    ///
    /// As said.
    pub fn from_json(v: &serde_json::Value) -> Result<StoredOptions, String> {
        let o: StoredOptions = serde_json::from_value(v.clone())
            .map_err(|e| format!("the stored options are not those of `jobmill run` ({e})"))?;
        if o.version > OPTIONS_VERSION {
            return Err(format!(
                "the stored options have version {}, newer than this jobmill's {OPTIONS_VERSION}; use a newer jobmill",
                o.version
            ));
        }
        Ok(o)
    }
}

/// Bytes that should be text, as JSON: a string when they are UTF-8,
/// else `{"hex": "..."}`.
pub fn bytes_to_json(b: &[u8]) -> serde_json::Value {
    match std::str::from_utf8(b) {
        Ok(s) => serde_json::Value::String(s.to_string()),
        Err(_) => serde_json::json!({ "hex": hex::encode(b) }),
    }
}

/// Decodes [`bytes_to_json`].
pub fn json_to_bytes(v: &serde_json::Value) -> Option<Vec<u8>> {
    match v {
        serde_json::Value::String(s) => Some(s.as_bytes().to_vec()),
        serde_json::Value::Object(o) => hex::decode(o.get("hex")?.as_str()?).ok(),
        _ => None,
    }
}

/// [`bytes_to_json`] of an OS string.
pub fn os_to_json(s: &std::ffi::OsStr) -> serde_json::Value {
    bytes_to_json(s.as_bytes())
}

fn os_from_json<E: serde::de::Error>(v: &serde_json::Value) -> Result<OsString, E> {
    json_to_bytes(v)
        .map(OsString::from_vec)
        .ok_or_else(|| E::custom(format!("not a string or {{\"hex\": ...}}: {v}")))
}

mod os_json {
    use super::*;

    pub fn serialize<S: Serializer>(s: &OsString, ser: S) -> Result<S::Ok, S::Error> {
        os_to_json(s).serialize(ser)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<OsString, D::Error> {
        os_from_json(&serde_json::Value::deserialize(de)?)
    }
}

mod os_json_list {
    use super::*;

    pub fn serialize<S: Serializer>(list: &[OsString], ser: S) -> Result<S::Ok, S::Error> {
        list.iter()
            .map(|s| os_to_json(s))
            .collect::<Vec<_>>()
            .serialize(ser)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Vec<OsString>, D::Error> {
        Vec::<serde_json::Value>::deserialize(de)?
            .iter()
            .map(os_from_json)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The options as `jobmill run` stored them before they were versioned
    /// and before `arena` (journals of earlier builds).
    const OLD: &str = r#"{"jobs":4,"keep_order":true,"null":false,"shell":false,"retries":2,
        "timeout":1.5,"grace":2.0,"halt":"now,fail=1","output_memory":67108864,
        "persistent":false,"window":16,"journal_output_cap":1048576,"journal_fsync":0.05,
        "input":{"kind":"args","args":["a",{"hex":"ff00"}]}}"#;

    #[test]
    fn options_stored_by_an_older_jobmill_still_parse() {
        let o = StoredOptions::from_json(&serde_json::from_str(OLD).unwrap()).unwrap();
        assert_eq!(o.version, 1);
        assert_eq!(o.arena, None);
        // Before version 2: every failure retried at once, 3 OOM kills.
        let p = o.retry_policy().unwrap();
        assert_eq!((p.max_attempts, p.max_oom), (3, 3));
        assert!(p.retry_on.is_all() && p.backoff.delay.is_zero());
        assert_eq!(o.mem_per_job, None);
        assert_eq!((o.jobs, o.retries, o.timeout), (4, 2, Some(1.5)));
        assert_eq!(o.halt.as_deref(), Some("now,fail=1"));
        assert_eq!(
            o.input,
            StoredInput::Args {
                args: vec![OsString::from("a"), OsString::from_vec(vec![0xff, 0])]
            }
        );
        assert_eq!(o.writer_config().sync_interval, Duration::from_millis(50));
        // And the file and stdin forms, with a path that is not UTF-8.
        for (json, input) in [
            (r#"{"kind":"stdin"}"#, StoredInput::Stdin),
            (
                r#"{"kind":"file","path":{"hex":"2f746d702fff"}}"#,
                StoredInput::File {
                    path: OsString::from_vec(b"/tmp/\xff".to_vec()),
                },
            ),
        ] {
            let mut v: serde_json::Value = serde_json::from_str(OLD).unwrap();
            v["input"] = serde_json::from_str(json).unwrap();
            assert_eq!(StoredOptions::from_json(&v).unwrap().input, input);
        }
    }

    #[test]
    fn stored_options_roundtrip_and_a_newer_version_is_refused() {
        let mut o = StoredOptions::from_json(&serde_json::from_str(OLD).unwrap()).unwrap();
        o.version = OPTIONS_VERSION;
        o.arena = Some(1 << 20);
        assert_eq!(o.mem_limit, None, "journals before version 2 have no limit");
        o.mem_limit = Some(64 << 20);
        let v = o.to_json();
        assert_eq!(v["mem_limit"], 64u64 << 20);
        o.retry_on = Some("exit=3,10-12,timeout".into());
        o.retry_delay = Some(1.5);
        o.mem_per_job = Some("auto".into());
        o.max_oom = 5;
        let v = o.to_json();
        let p = StoredOptions::from_json(&v)
            .unwrap()
            .retry_policy()
            .unwrap();
        assert_eq!(p.max_oom, 5);
        assert_eq!(p.backoff.delay, Duration::from_millis(1500));
        assert!(p
            .retry_on
            .selects(&crate::job::FailReason::Exit { code: 11 }));
        assert!(!p
            .retry_on
            .selects(&crate::job::FailReason::Exit { code: 1 }));
        assert_eq!(v["version"], OPTIONS_VERSION);
        assert_eq!(StoredOptions::from_json(&v).unwrap(), o);
        let mut newer = v.clone();
        newer["version"] = (OPTIONS_VERSION + 1).into();
        let err = StoredOptions::from_json(&newer).unwrap_err();
        assert!(err.contains("newer"), "{err}");
        let mut bad = v;
        bad["input"] = serde_json::json!({"kind": "tape"});
        assert!(StoredOptions::from_json(&bad).is_err());
    }
}

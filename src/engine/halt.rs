//! `--halt`: when to stop a run early, with GNU parallel's meaning.
//!
//! `--halt WHEN,WHAT=N` or `--halt WHEN,WHAT=P%`, where WHEN is `soon`
//! (start no new jobs, let running ones finish) or `now` (also stop the
//! running ones), and WHAT counts `fail`ed jobs (failed or dead), `success`ful
//! ones (done), or all `done` ones (finished either way). `never` is the
//! default.
//!
//! Beyond GNU parallel, WHAT may be a failure cause (`exit`, `signal`,
//! `timeout`, `oom`, `memory-limit`, `lost`, `spawn`, `reported`,
//! `refused`): it
//! counts the jobs that ended failed or dead with that cause, so
//! `--halt now,oom=1` stops the run at the first job that died of memory
//! (after `--max-oom` requeues), and `--halt soon,timeout=10%` once a tenth
//! of the finished jobs timed out.
//!
//! A percentage is taken of the jobs finished so far, and is only checked
//! once at least 3 jobs have finished, so that the first failure of a run is
//! not "100%". (Lazy input means the total is not known in advance.)

use std::fmt;
use std::str::FromStr;

/// When a halt condition stops a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// Start no new jobs; running jobs finish.
    Soon,
    /// Start no new jobs and stop the running ones.
    Now,
}

/// What a halt condition counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum What {
    /// Jobs that failed or died.
    Fail,
    /// Jobs that succeeded.
    Success,
    /// Jobs that finished, either way.
    Done,
    /// Jobs that ended failed or dead with this cause (one of
    /// [`crate::outcome::CAUSES`], not `succeeded` or `stopped`).
    Cause(&'static str),
}

/// The threshold of a halt condition.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Threshold {
    /// An absolute count of jobs (at least 1).
    Count(u64),
    /// A percentage (0 < P <= 100) of the jobs finished so far.
    Percent(f64),
}

/// A parsed `--halt` policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Halt {
    /// When to stop.
    pub when: When,
    /// What to count.
    pub what: What,
    /// How many.
    pub threshold: Threshold,
}

/// A `--halt` value that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid --halt value {value:?}: {why} (expected e.g. `soon,fail=1`, `now,fail=10%`, `now,success=1`, `now,oom=1` or `never`)")]
pub struct HaltParseError {
    value: String,
    why: &'static str,
}

impl FromStr for Halt {
    type Err = HaltParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why| HaltParseError {
            value: s.to_string(),
            why,
        };
        let (when, cond) = s.split_once(',').ok_or_else(|| err("missing `,`"))?;
        let when = match when {
            "soon" => When::Soon,
            "now" => When::Now,
            _ => return Err(err("WHEN must be `soon` or `now`")),
        };
        let (what, n) = cond.split_once('=').ok_or_else(|| err("missing `=`"))?;
        let what = match what {
            "fail" => What::Fail,
            "success" => What::Success,
            "done" => What::Done,
            cause => match crate::outcome::CAUSES
                .iter()
                .find(|c| **c == cause && !matches!(cause, "succeeded" | "stopped"))
            {
                Some(c) => What::Cause(c),
                None => {
                    return Err(err(
                        "WHAT must be `fail`, `success`, `done` or a failure cause (`exit`, \
                         `signal`, `timeout`, `oom`, `memory-limit`, `lost`, `spawn`, \
                         `reported`, `refused`)",
                    ))
                }
            },
        };
        let threshold = if let Some(p) = n.strip_suffix('%') {
            let p: f64 = p.parse().map_err(|_| err("percentage is not a number"))?;
            if !(p > 0.0 && p <= 100.0) {
                return Err(err("percentage must be in (0, 100]"));
            }
            Threshold::Percent(p)
        } else {
            let n: u64 = n.parse().map_err(|_| err("count is not a number"))?;
            if n == 0 {
                return Err(err("count must be at least 1"));
            }
            Threshold::Count(n)
        };
        Ok(Halt {
            when,
            what,
            threshold,
        })
    }
}

impl fmt::Display for Halt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let when = match self.when {
            When::Soon => "soon",
            When::Now => "now",
        };
        let what = match self.what {
            What::Fail => "fail",
            What::Success => "success",
            What::Done => "done",
            What::Cause(c) => c,
        };
        match self.threshold {
            Threshold::Count(n) => write!(f, "{when},{what}={n}"),
            Threshold::Percent(p) => write!(f, "{when},{what}={p}%"),
        }
    }
}

impl Halt {
    /// The failure cause this condition counts, if it counts one.
    pub fn cause(&self) -> Option<&'static str> {
        match self.what {
            What::Cause(c) => Some(c),
            _ => None,
        }
    }

    /// Whether the condition holds after `succeeded` jobs succeeded and
    /// `failed` failed or died, `of_cause` of them with the cause it counts
    /// (see [`Halt::cause`]; ignored otherwise).
    pub fn triggered(&self, succeeded: u64, failed: u64, of_cause: u64) -> bool {
        let counted = match self.what {
            What::Fail => failed,
            What::Success => succeeded,
            What::Done => succeeded + failed,
            What::Cause(_) => of_cause,
        };
        match self.threshold {
            Threshold::Count(n) => counted >= n,
            Threshold::Percent(p) => {
                let finished = succeeded + failed;
                finished >= 3 && (counted as f64) * 100.0 >= p * finished as f64
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_gnu_forms() {
        let h: Halt = "soon,fail=3".parse().unwrap();
        assert_eq!(
            h,
            Halt {
                when: When::Soon,
                what: What::Fail,
                threshold: Threshold::Count(3)
            }
        );
        let h: Halt = "now,success=50%".parse().unwrap();
        assert_eq!(h.threshold, Threshold::Percent(50.0));
        assert_eq!(h.to_string(), "now,success=50%");
    }

    #[test]
    fn rejects_nonsense_with_a_reason() {
        for bad in [
            "later,fail=1",
            "soon",
            "soon,fail",
            "soon,fail=0",
            "now,fail=200%",
            "now,x=1",
        ] {
            let e = bad.parse::<Halt>().unwrap_err();
            assert!(e.to_string().contains(bad), "{e}");
        }
    }

    #[test]
    fn count_threshold_triggers_at_n() {
        let h: Halt = "soon,fail=2".parse().unwrap();
        assert!(!h.triggered(10, 1, 0));
        assert!(h.triggered(0, 2, 0));
    }

    #[test]
    fn percent_needs_three_finished_jobs() {
        let h: Halt = "now,fail=50%".parse().unwrap();
        assert!(!h.triggered(0, 1, 0));
        assert!(!h.triggered(0, 2, 0));
        assert!(h.triggered(1, 2, 0));
        assert!(!h.triggered(3, 2, 0));
    }

    #[test]
    fn a_cause_counts_only_the_jobs_that_ended_with_it() {
        let h: Halt = "now,oom=1".parse().unwrap();
        assert_eq!(h.cause(), Some("oom"));
        assert_eq!(h.to_string(), "now,oom=1");
        assert!(!h.triggered(5, 4, 0), "four failures, none of memory");
        assert!(h.triggered(5, 4, 1));
        let h: Halt = "soon,timeout=50%".parse().unwrap();
        assert!(!h.triggered(2, 2, 1));
        assert!(h.triggered(2, 2, 2));
        for bad in ["now,succeeded=1", "now,stopped=1", "now,memory=1"] {
            assert!(bad.parse::<Halt>().is_err(), "{bad}");
        }
        assert!("now,memory-limit=2".parse::<Halt>().is_ok());
    }
}

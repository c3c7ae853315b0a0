//! Value parsers shared by subcommands.

use std::time::Duration;

/// Parses a duration: `10` or `10s` (seconds, fractions allowed), `500ms`,
/// `3m`, `1h`.
pub fn duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600.0)
    } else if let Some(n) = s.strip_suffix('d') {
        (n, 86400.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (expected e.g. 30, 1.5s, 500ms, 10m, 2h)"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("invalid duration {s:?}: must be a positive number"));
    }
    Ok(Duration::from_secs_f64(v * scale))
}

/// Parses a byte size: `1048576`, `64K`, `16M`, `1G` (powers of 1024).
pub fn size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let (num, scale) = match t.char_indices().last() {
        Some((i, 'K' | 'k')) => (&t[..i], 1usize << 10),
        Some((i, 'M' | 'm')) => (&t[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&t[..i], 1 << 30),
        _ => (t, 1),
    };
    let v: usize = num
        .parse()
        .map_err(|_| format!("invalid size {s:?} (expected e.g. 4096, 64K, 16M, 1G)"))?;
    v.checked_mul(scale)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

/// The number of CPU threads, which relative `-j` values count from.
pub fn cpu_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Parses `-j` as GNU parallel does: `N`, `+N` (CPU threads plus N), `-N`
/// (CPU threads minus N, at least 1) or `P%` (P percent of the CPU
/// threads, at least 1).
pub fn jobs(s: &str) -> Result<usize, String> {
    jobs_for(s, cpu_threads())
}

fn jobs_for(s: &str, cpus: usize) -> Result<usize, String> {
    let bad = || format!("invalid job count {s:?} (expected N, +N, -N or N%, e.g. 8, +0, -1, 50%)");
    let t = s.trim();
    let num = |n: &str| n.parse::<usize>().map_err(|_| bad());
    let n = if let Some(p) = t.strip_suffix('%') {
        (cpus.saturating_mul(num(p)?) / 100).max(1)
    } else if let Some(n) = t.strip_prefix('+') {
        cpus.saturating_add(num(n)?)
    } else if let Some(n) = t.strip_prefix('-') {
        cpus.saturating_sub(num(n)?).max(1)
    } else {
        let n = num(t)?;
        if n == 0 {
            return Err(
                "-j 0 (as many as possible) is not supported: give a number of jobs".into(),
            );
        }
        n
    };
    Ok(n)
}

/// Parses `--retries N`, refusing a negative N clearly.
pub fn retries(s: &str) -> Result<u32, String> {
    let t = s.trim();
    if t.starts_with('-') {
        return Err(format!(
            "--retries {t}: must be 0 or more (the number of re-runs after a failed attempt)"
        ));
    }
    t.parse()
        .map_err(|_| format!("invalid retry count {t:?} (expected a whole number, e.g. 3)"))
}

/// Normalizes `--halt`: GNU parallel's old numeric forms `0` (never), `1`
/// (`soon,fail=1`) and `2` (`now,fail=1`); other values are kept.
pub fn halt(s: &str) -> Option<String> {
    match s.trim() {
        "0" => None,
        "1" => Some("soon,fail=1".to_string()),
        "2" => Some("now,fail=1".to_string()),
        other => Some(other.to_string()),
    }
}

/// Finds the program on `PATH` once, instead of in every job's spawn, and
/// refuses one that cannot be found instead of failing every job. `None`
/// when the program name comes from the input (`{}` in it).
pub(super) fn resolve_program(
    program: &std::ffi::OsString,
) -> anyhow::Result<Option<std::path::PathBuf>> {
    use std::os::unix::ffi::OsStrExt;
    if program.as_bytes().contains(&b'{') {
        return Ok(None);
    }
    let found = if program.as_bytes().contains(&b'/') {
        let p = std::path::PathBuf::from(program);
        is_executable(&p).then_some(p)
    } else {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(program))
                .find(|p| is_executable(p))
        })
    };
    match found {
        Some(p) => Ok(Some(p)),
        None => anyhow::bail!(
            "command not found or not executable: {}",
            program.to_string_lossy()
        ),
    }
}

fn is_executable(path: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_count_like_gnu_parallel() {
        assert_eq!(jobs_for("8", 4), Ok(8));
        assert_eq!(jobs_for("+0", 4), Ok(4));
        assert_eq!(jobs_for("+2", 4), Ok(6));
        assert_eq!(jobs_for("-1", 4), Ok(3));
        assert_eq!(jobs_for("-9", 4), Ok(1));
        assert_eq!(jobs_for("50%", 4), Ok(2));
        assert_eq!(jobs_for("10%", 4), Ok(1));
        assert_eq!(jobs_for("200%", 4), Ok(8));
        assert!(jobs_for("0", 4).is_err());
        assert!(jobs_for("many", 4).is_err());
        assert!(jobs_for("-x", 4).is_err());
    }

    #[test]
    fn negative_retries_are_a_clear_error() {
        assert_eq!(retries("3"), Ok(3));
        assert!(retries("-1").unwrap_err().contains("must be 0 or more"));
        assert!(retries("x").is_err());
    }

    #[test]
    fn numeric_halt_values_mean_what_they_mean_in_gnu_parallel() {
        assert_eq!(halt("0"), None);
        assert_eq!(halt("1").as_deref(), Some("soon,fail=1"));
        assert_eq!(halt("2").as_deref(), Some("now,fail=1"));
        assert_eq!(halt("now,fail=50%").as_deref(), Some("now,fail=50%"));
    }

    #[test]
    fn durations_accept_common_units() {
        assert_eq!(duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(duration("3m").unwrap(), Duration::from_secs(180));
        assert!(duration("soon").is_err());
        assert!(duration("-1").is_err());
    }

    #[test]
    fn sizes_accept_binary_suffixes() {
        assert_eq!(size("64K").unwrap(), 65536);
        assert_eq!(size("16M").unwrap(), 16 << 20);
        assert!(size("lots").is_err());
    }
}

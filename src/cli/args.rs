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

#[cfg(test)]
mod tests {
    use super::*;

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

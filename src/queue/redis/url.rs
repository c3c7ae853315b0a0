//! Parsing of queue URLs: `redis://[[user]:password@]host[:port]/NAME` and
//! `rediss://…` for TLS.
//!
//! The path names the queue, not a Redis database number (the queue always
//! lives in database 0, the only one Redis Cluster has). The password is
//! never shown back: [`QueueUrl`]'s `Display` redacts it.

use std::fmt;

/// A parsed queue URL.
#[derive(Clone, PartialEq, Eq)]
pub struct QueueUrl {
    /// `true` for `rediss://` (TLS).
    pub tls: bool,
    /// The user-info part before `@`, as written (percent-encoded), if any.
    userinfo: Option<String>,
    /// Host name or address; IPv6 addresses keep their brackets.
    pub host: String,
    /// TCP port (6379 when the URL gives none).
    pub port: u16,
    /// The queue name (the URL's path without its leading `/`).
    pub name: String,
}

/// A queue URL that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "bad queue URL {url:?}: {reason} (expected redis://[:password@]host:port/NAME or rediss://...)"
)]
pub struct UrlError {
    /// The URL as given, with any password replaced by `***`.
    pub url: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Longest queue name accepted.
pub const MAX_NAME_LEN: usize = 200;

impl QueueUrl {
    /// Parses `url`.
    ///
    /// # Errors
    ///
    /// [`UrlError`] when the scheme is not `redis` or `rediss`, the host or
    /// the queue name is missing, the port is not a number in 1..=65535, or
    /// the name has characters other than ASCII letters, digits, `_`, `-`,
    /// `.` and `:` (braces would break the Cluster hash tag).
    pub fn parse(url: &str) -> Result<QueueUrl, UrlError> {
        let err = |reason: &str| UrlError {
            url: redact(url),
            reason: reason.to_string(),
        };
        let (tls, rest) = if let Some(r) = url.strip_prefix("redis://") {
            (false, r)
        } else if let Some(r) = url.strip_prefix("rediss://") {
            (true, r)
        } else {
            return Err(err("the scheme must be redis:// or rediss://"));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(i) => (Some(authority[..i].to_string()), &authority[i + 1..]),
            None => (None, authority),
        };
        let (host, port) = split_host_port(hostport).map_err(|r| err(&r))?;
        if host.is_empty() {
            return Err(err("the host is missing"));
        }
        if path.is_empty() {
            return Err(err("the queue name (the path after host:port/) is missing"));
        }
        if path.len() > MAX_NAME_LEN {
            return Err(err(&format!(
                "the queue name is longer than {MAX_NAME_LEN} bytes"
            )));
        }
        if let Some(c) = path
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':')))
        {
            return Err(err(&format!(
                "the queue name may only hold letters, digits, '_', '-', '.' and ':', not {c:?}"
            )));
        }
        Ok(QueueUrl {
            tls,
            userinfo,
            host: host.to_string(),
            port,
            name: path.to_string(),
        })
    }

    /// The URL handed to the `redis` crate: same server, database 0, no
    /// queue name.
    pub(crate) fn server_url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        match &self.userinfo {
            Some(u) => format!("{scheme}://{u}@{}:{}/0", self.host, self.port),
            None => format!("{scheme}://{}:{}/0", self.host, self.port),
        }
    }

    /// `host:port` of the server, for messages.
    pub fn endpoint(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

impl fmt::Display for QueueUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "rediss" } else { "redis" };
        let auth = if self.userinfo.is_some() { ":***@" } else { "" };
        write!(
            f,
            "{scheme}://{auth}{}:{}/{}",
            self.host, self.port, self.name
        )
    }
}

impl fmt::Debug for QueueUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "QueueUrl({self})")
    }
}

fn split_host_port(hostport: &str) -> Result<(&str, u16), String> {
    let (host, port) = if let Some(rest) = hostport.strip_prefix('[') {
        let end = rest
            .find(']')
            .ok_or_else(|| "an IPv6 address lacks its closing ']'".to_string())?;
        let host = &hostport[..end + 2];
        match &rest[end + 1..] {
            "" => (host, None),
            p => match p.strip_prefix(':') {
                Some(p) => (host, Some(p)),
                None => return Err("junk after the IPv6 address".to_string()),
            },
        }
    } else {
        match hostport.rfind(':') {
            Some(i) => (&hostport[..i], Some(&hostport[i + 1..])),
            None => (hostport, None),
        }
    };
    let port = match port {
        None => 6379,
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => return Err(format!("the port {p:?} is not a number in 1..=65535")),
        },
    };
    Ok((host, port))
}

/// `url` with the password part of its user info replaced by `***`.
fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}://***@{}", &url[..scheme_end], &rest[at + 1..]),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_host_port_and_name() {
        let u = QueueUrl::parse("redis://127.0.0.1:6380/jobs").unwrap();
        assert!(!u.tls);
        assert_eq!(u.host, "127.0.0.1");
        assert_eq!(u.port, 6380);
        assert_eq!(u.name, "jobs");
        assert_eq!(u.server_url(), "redis://127.0.0.1:6380/0");
    }

    #[test]
    fn password_is_passed_on_but_never_displayed() {
        let u = QueueUrl::parse("rediss://:s3cret@example.com:6390/q.1").unwrap();
        assert!(u.tls);
        assert_eq!(u.server_url(), "rediss://:s3cret@example.com:6390/0");
        assert_eq!(u.to_string(), "rediss://:***@example.com:6390/q.1");
        assert!(!format!("{u:?}").contains("s3cret"));
    }

    #[test]
    fn default_port_and_ipv6() {
        let u = QueueUrl::parse("redis://[::1]/q").unwrap();
        assert_eq!(u.host, "[::1]");
        assert_eq!(u.port, 6379);
        let u = QueueUrl::parse("redis://[::1]:7000/q").unwrap();
        assert_eq!(u.port, 7000);
    }

    #[test]
    fn bad_urls_are_refused_with_the_reason_and_no_password() {
        for (url, needle) in [
            ("http://h:1/q", "scheme"),
            ("redis://h:1", "queue name"),
            ("redis://h:1/", "queue name"),
            ("redis://:1/q", "host is missing"),
            ("redis://h:99999/q", "port"),
            ("redis://h:x/q", "port"),
            ("redis://h:1/a{b}", "not '{'"),
            ("redis://h:1/a/b", "not '/'"),
        ] {
            let e = QueueUrl::parse(url).unwrap_err();
            assert!(e.to_string().contains(needle), "{url}: {e}");
        }
        let e = QueueUrl::parse("redis://:pw@h:x/q").unwrap_err();
        assert!(!e.to_string().contains("pw@"), "{e}");
    }
}

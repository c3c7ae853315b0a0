//! Signed tasks and results on a shared queue: an HMAC-SHA256 with a key
//! that the producer and the workers share and that never goes to the
//! queue.
//!
//! Why: a `jobmill.Pool(queue=...)` task is a pickle, and unpickling runs
//! code. Anyone who can write to the Redis server (a password is shared
//! by everyone who uses it) could otherwise run anything on every worker.
//! With a key, the side that feeds the worker process (the coordinator of
//! `jobmill worker`) checks every task before the worker sees it, and
//! refuses one that is unsigned or wrongly signed (the job is dead with
//! the reason, [`crate::job::FailReason::Refused`]); results and failure
//! messages come back signed, and the caller checks them before
//! unpickling.
//!
//! The key comes from the file named by `JOBMILL_KEY_FILE`, or from
//! `JOBMILL_KEY` ([`Key::from_env`]); at least 16 bytes.
//!
//! Formats (every tag is HMAC-SHA256 over a domain string, the job's
//! sequence number as 8 little-endian bytes, then the body, so a tag made
//! for one job, or for a task, does not verify for another job, or as a
//! result):
//!
//! - a signed task or result: a 64-byte header, then the body. The header
//!   is the magic ([`TASK_MAGIC`] or [`RESULT_MAGIC`], 8 bytes), the tag
//!   (32 bytes) and 24 zero bytes (64 keeps the body's alignment, which
//!   out-of-band buffers rely on);
//! - a signed failure message: `jmsig1:` + the tag in hex + `:` + the
//!   message.
//!
//! Tags are compared in constant time (`hmac`'s `verify_slice`).

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Magic of a signed task.
pub const TASK_MAGIC: &[u8; 8] = b"JMTASK1\0";
/// Magic of a signed result.
pub const RESULT_MAGIC: &[u8; 8] = b"JMRSLT1\0";
/// Length of the header of a signed task or result.
pub const HEADER: usize = 64;
/// Prefix of a signed failure message.
pub const MESSAGE_PREFIX: &str = "jmsig1:";
/// Environment variable naming the key file.
pub const KEY_FILE_ENV: &str = "JOBMILL_KEY_FILE";
/// Environment variable holding the key itself.
pub const KEY_ENV: &str = "JOBMILL_KEY";
/// Shortest key accepted, in bytes.
pub const MIN_KEY: usize = 16;

const TASK_DOMAIN: &[u8] = b"jobmill-task\0";
const RESULT_DOMAIN: &[u8] = b"jobmill-result\0";
const MESSAGE_DOMAIN: &[u8] = b"jobmill-failure\0";

/// Why a key could not be had.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Neither variable is set.
    #[error("no signing key: set {KEY_FILE_ENV} to a file holding a secret key (or {KEY_ENV} to the key), the same on the caller and on every worker")]
    Missing,
    /// The key file could not be read.
    #[error("cannot read the signing key file {path} ({KEY_FILE_ENV}): {cause}")]
    Unreadable {
        /// The file.
        path: String,
        /// The operating system's error.
        cause: std::io::Error,
    },
    /// The key is too short.
    #[error("the signing key from {from} is {len} bytes; at least {MIN_KEY} are needed")]
    TooShort {
        /// Where it came from.
        from: &'static str,
        /// Its length.
        len: usize,
    },
}

/// Why a signed item was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// It carries no signature.
    #[error("the {0} is not signed")]
    NotSigned(&'static str),
    /// Its signature does not verify with this key.
    #[error("the {0}'s signature does not match (a wrong key, or it was changed in the queue)")]
    BadSignature(&'static str),
}

/// A signing key.
#[derive(Clone)]
pub struct Key(Vec<u8>);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    /// A key of these bytes (at least [`MIN_KEY`]).
    ///
    /// # Errors
    ///
    /// [`KeyError::TooShort`].
    pub fn new(bytes: Vec<u8>, from: &'static str) -> Result<Key, KeyError> {
        if bytes.len() < MIN_KEY {
            return Err(KeyError::TooShort {
                from,
                len: bytes.len(),
            });
        }
        Ok(Key(bytes))
    }

    /// The key from the file named by `JOBMILL_KEY_FILE` (trailing
    /// whitespace removed), else from `JOBMILL_KEY`; `Ok(None)` when
    /// neither is set.
    ///
    /// # Errors
    ///
    /// The file cannot be read, or the key is too short.
    pub fn from_env() -> Result<Option<Key>, KeyError> {
        if let Some(path) = std::env::var_os(KEY_FILE_ENV).filter(|p| !p.is_empty()) {
            let mut bytes = std::fs::read(&path).map_err(|cause| KeyError::Unreadable {
                path: path.to_string_lossy().into_owned(),
                cause,
            })?;
            while bytes.last().is_some_and(u8::is_ascii_whitespace) {
                bytes.pop();
            }
            return Key::new(bytes, KEY_FILE_ENV).map(Some);
        }
        if let Some(k) = std::env::var_os(KEY_ENV).filter(|k| !k.is_empty()) {
            use std::os::unix::ffi::OsStrExt;
            return Key::new(k.as_bytes().to_vec(), KEY_ENV).map(Some);
        }
        Ok(None)
    }

    fn mac(&self, domain: &[u8], seq: u64, body: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(domain);
        mac.update(&seq.to_le_bytes());
        mac.update(body);
        mac
    }

    fn seal(&self, magic: &[u8; 8], domain: &[u8], seq: u64, body: &[u8]) -> Vec<u8> {
        let tag = self.mac(domain, seq, body).finalize().into_bytes();
        let mut out = Vec::with_capacity(HEADER + body.len());
        out.extend_from_slice(magic);
        out.extend_from_slice(&tag);
        out.resize(HEADER, 0);
        out.extend_from_slice(body);
        out
    }

    fn open<'a>(
        &self,
        magic: &[u8; 8],
        domain: &[u8],
        what: &'static str,
        seq: u64,
        data: &'a [u8],
    ) -> Result<&'a [u8], Refusal> {
        if data.len() < HEADER || &data[..8] != magic {
            return Err(Refusal::NotSigned(what));
        }
        let body = &data[HEADER..];
        self.mac(domain, seq, body)
            .verify_slice(&data[8..40])
            .map_err(|_| Refusal::BadSignature(what))?;
        Ok(body)
    }

    /// The signed task of job `seq` with this body (a task's payload).
    pub fn sign_task(&self, seq: u64, body: &[u8]) -> Vec<u8> {
        self.seal(TASK_MAGIC, TASK_DOMAIN, seq, body)
    }

    /// Checks the signed task `payload` of job `seq`; returns its body.
    ///
    /// # Errors
    ///
    /// [`Refusal`] when it is not signed or its tag does not verify.
    pub fn verify_task<'a>(&self, seq: u64, payload: &'a [u8]) -> Result<&'a [u8], Refusal> {
        self.open(TASK_MAGIC, TASK_DOMAIN, "task", seq, payload)
    }

    /// The signed result of job `seq`.
    pub fn sign_result(&self, seq: u64, body: &[u8]) -> Vec<u8> {
        self.seal(RESULT_MAGIC, RESULT_DOMAIN, seq, body)
    }

    /// Checks the signed result `data` of job `seq`; returns its body.
    ///
    /// # Errors
    ///
    /// [`Refusal`] when it is not signed or its tag does not verify.
    pub fn verify_result<'a>(&self, seq: u64, data: &'a [u8]) -> Result<&'a [u8], Refusal> {
        self.open(RESULT_MAGIC, RESULT_DOMAIN, "result", seq, data)
    }

    /// The signed failure message of job `seq`.
    pub fn sign_message(&self, seq: u64, message: &str) -> String {
        let tag = self
            .mac(MESSAGE_DOMAIN, seq, message.as_bytes())
            .finalize()
            .into_bytes();
        format!("{MESSAGE_PREFIX}{}:{message}", hex::encode(tag))
    }

    /// Checks a signed failure message of job `seq`; returns the message.
    ///
    /// # Errors
    ///
    /// [`Refusal`] when it is not signed or its tag does not verify.
    pub fn verify_message<'a>(&self, seq: u64, signed: &'a str) -> Result<&'a str, Refusal> {
        let rest = signed
            .strip_prefix(MESSAGE_PREFIX)
            .ok_or(Refusal::NotSigned("failure message"))?;
        let (tag, message) = rest
            .split_once(':')
            .ok_or(Refusal::NotSigned("failure message"))?;
        let tag = hex::decode(tag).map_err(|_| Refusal::BadSignature("failure message"))?;
        self.mac(MESSAGE_DOMAIN, seq, message.as_bytes())
            .verify_slice(&tag)
            .map_err(|_| Refusal::BadSignature("failure message"))?;
        Ok(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> Key {
        Key::new(vec![b; 32], "test").unwrap()
    }

    #[test]
    fn signed_task_verifies_and_keeps_its_body_aligned() {
        let k = key(1);
        let signed = k.sign_task(7, b"payload");
        assert_eq!(signed.len(), HEADER + 7);
        assert_eq!(k.verify_task(7, &signed), Ok(&b"payload"[..]));
    }

    #[test]
    fn task_changed_or_for_another_job_or_key_is_refused() {
        let k = key(1);
        let mut signed = k.sign_task(7, b"payload");
        assert_eq!(
            k.verify_task(8, &signed),
            Err(Refusal::BadSignature("task"))
        );
        assert_eq!(
            key(2).verify_task(7, &signed),
            Err(Refusal::BadSignature("task"))
        );
        *signed.last_mut().unwrap() ^= 1;
        assert_eq!(
            k.verify_task(7, &signed),
            Err(Refusal::BadSignature("task"))
        );
        assert_eq!(
            k.verify_task(7, b"unsigned pickle"),
            Err(Refusal::NotSigned("task"))
        );
    }

    #[test]
    fn a_task_signature_does_not_verify_as_a_result() {
        let k = key(1);
        let mut as_result = k.sign_task(7, b"x");
        as_result[..8].copy_from_slice(RESULT_MAGIC);
        assert_eq!(
            k.verify_result(7, &as_result),
            Err(Refusal::BadSignature("result"))
        );
        let r = k.sign_result(7, b"x");
        assert_eq!(k.verify_result(7, &r), Ok(&b"x"[..]));
    }

    #[test]
    fn failure_messages_are_signed_per_job() {
        let k = key(3);
        let m = k.sign_message(5, "boom: with: colons");
        assert_eq!(k.verify_message(5, &m), Ok("boom: with: colons"));
        assert!(k.verify_message(6, &m).is_err());
        assert!(k.verify_message(5, "boom").is_err());
    }

    #[test]
    fn short_keys_are_refused() {
        assert!(matches!(
            Key::new(b"short".to_vec(), "test"),
            Err(KeyError::TooShort { len: 5, .. })
        ));
    }
}

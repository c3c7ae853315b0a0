//! Decoding: bytes to a [`Frame`], or [`Decoded::Incomplete`] when more
//! are needed, or a typed [`DecodeError`]; never a panic, whatever the
//! input.

use super::{
    kind, kind_name, payload_kind, Batch, BatchEntry, FailureFrame, Frame, Hello, JobFrame,
    Payload, Refuse, ResultFrame, Welcome, HEADER_LEN, MAGIC,
};

/// Bytes that are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The header announces a body longer than the cap.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// The announced body length.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// The type byte is not a known frame type.
    #[error("unknown frame type 0x{0:02x}")]
    UnknownType(u8),
    /// The body does not match its frame type's layout.
    #[error("malformed {frame} frame: {detail}")]
    Malformed {
        /// The frame type's name.
        frame: &'static str,
        /// What is wrong.
        detail: &'static str,
    },
    /// A payload kind this version does not know.
    #[error("unknown payload kind {kind} in {frame} frame")]
    UnknownPayloadKind {
        /// The frame type's name.
        frame: &'static str,
        /// The kind byte.
        kind: u8,
    },
    /// A HELLO that does not start with the magic bytes: the peer does not
    /// speak this protocol at all.
    #[error("not a jobmill worker: HELLO does not start with \"JMWP\"")]
    BadMagic,
}

/// What [`decode`] found at the start of its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// The input holds only part of a frame; at least `needed` bytes in
    /// total are required before trying again.
    Incomplete {
        /// Total bytes needed (header plus body once the header is known).
        needed: usize,
    },
    /// One complete frame, which took `len` bytes of the input.
    Frame {
        /// The frame.
        frame: Frame<'a>,
        /// Bytes used, header included.
        len: usize,
    },
}

/// Reads the header at the start of `buf`: the total frame length (header
/// included), checked against `max_frame`, or `None` if fewer than
/// [`HEADER_LEN`] bytes are there.
///
/// # Errors
///
/// [`DecodeError::FrameTooLarge`] if the body length exceeds `max_frame`.
pub fn frame_len(buf: &[u8], max_frame: usize) -> Result<Option<usize>, DecodeError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > max_frame {
        return Err(DecodeError::FrameTooLarge {
            len,
            max: max_frame,
        });
    }
    Ok(Some(HEADER_LEN + len))
}

/// Decodes the frame at the start of `buf`, whose body may be at most
/// `max_frame` bytes.
///
/// # Errors
///
/// A [`DecodeError`] when the bytes cannot be a valid frame. The decoder
/// never panics, whatever the input.
pub fn decode(buf: &[u8], max_frame: usize) -> Result<Decoded<'_>, DecodeError> {
    let Some(total) = frame_len(buf, max_frame)? else {
        return Ok(Decoded::Incomplete { needed: HEADER_LEN });
    };
    if buf.len() < total {
        return Ok(Decoded::Incomplete { needed: total });
    }
    let frame = decode_body(buf[4], &buf[HEADER_LEN..total])?;
    Ok(Decoded::Frame { frame, len: total })
}

/// A little cursor over a frame body.
struct Body<'a> {
    rest: &'a [u8],
    frame: &'static str,
}

impl<'a> Body<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.rest.len() < n {
            return Err(DecodeError::Malformed {
                frame: self.frame,
                detail: "body too short",
            });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn payload(&mut self) -> Result<Payload<'a>, DecodeError> {
        match self.u8()? {
            payload_kind::INLINE => Ok(Payload::Inline(std::mem::take(&mut self.rest))),
            payload_kind::ARENA => Ok(Payload::Arena {
                offset: self.u64()?,
                len: self.u64()?,
            }),
            other => Err(DecodeError::UnknownPayloadKind {
                frame: self.frame,
                kind: other,
            }),
        }
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.rest)
    }

    fn end(&self) -> Result<(), DecodeError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Malformed {
                frame: self.frame,
                detail: "trailing bytes after the body",
            })
        }
    }
}

fn decode_body(code: u8, body: &[u8]) -> Result<Frame<'_>, DecodeError> {
    let name = kind_name(code);
    let mut b = Body {
        rest: body,
        frame: name,
    };
    let frame = match code {
        kind::HELLO => {
            if b.take(4).map_err(|_| DecodeError::BadMagic)? != MAGIC {
                return Err(DecodeError::BadMagic);
            }
            Frame::Hello(Hello {
                version: b.u16()?,
                capabilities: b.u32()?,
                name: b.rest(),
            })
        }
        kind::WELCOME => {
            let version = b.u16()?;
            let window = b.u32()?;
            let max_frame = b.u32()?;
            let heartbeat_ms = b.u32()?;
            let capabilities = b.u32()?;
            let (arena_threshold, arena_jobs, arena_results) = if version >= 2 {
                (b.u32()?, b.u64()?, b.u64()?)
            } else {
                (0, 0, 0)
            };
            Frame::Welcome(Welcome {
                version,
                window,
                max_frame,
                heartbeat_ms,
                capabilities,
                arena_threshold,
                arena_jobs,
                arena_results,
            })
        }
        kind::REFUSE => Frame::Refuse(Refuse {
            version: b.u16()?,
            reason: b.rest(),
        }),
        kind::JOB => Frame::Job(JobFrame {
            id: b.u64()?,
            seq: b.u64()?,
            attempt: b.u32()?,
            payload: b.payload()?,
        }),
        kind::POLL_END => Frame::PollEnd,
        kind::CLOSED => Frame::Closed,
        kind::RESULT => Frame::Result(ResultFrame {
            id: b.u64()?,
            payload: b.payload()?,
        }),
        kind::FAILURE => Frame::Failure(FailureFrame {
            id: b.u64()?,
            message: b.rest(),
        }),
        kind::BATCH => {
            let mut rest = b.rest();
            let mut count = 0usize;
            while !rest.is_empty() {
                match decode_batch_entry(rest)? {
                    Some((_, used)) => {
                        rest = &rest[used..];
                        count += 1;
                    }
                    None => {
                        return Err(DecodeError::Malformed {
                            frame: "BATCH",
                            detail: "an entry runs past the end of the batch",
                        })
                    }
                }
            }
            Frame::Batch(Batch { body, count })
        }
        kind::POLL => Frame::Poll,
        kind::LEAVING => Frame::Leaving { taken: b.u64()? },
        kind::HEARTBEAT => Frame::Heartbeat { nonce: b.u64()? },
        other => return Err(DecodeError::UnknownType(other)),
    };
    b.end()?;
    Ok(frame)
}

/// Decodes one entry at the start of a batch body: `None` when the entry is
/// cut short.
pub(super) fn decode_batch_entry(
    buf: &[u8],
) -> Result<Option<(BatchEntry<'_>, usize)>, DecodeError> {
    // Entries are bounded by the batch, itself bounded by the cap.
    match decode(buf, usize::MAX)? {
        Decoded::Incomplete { .. } => Ok(None),
        Decoded::Frame { frame, len } => match frame {
            Frame::Result(r) => Ok(Some((BatchEntry::Result(r), len))),
            Frame::Failure(f) => Ok(Some((BatchEntry::Failure(f), len))),
            _ => Err(DecodeError::Malformed {
                frame: "BATCH",
                detail: "an entry is neither RESULT nor FAILURE",
            }),
        },
    }
}

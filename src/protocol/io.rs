//! Buffered reading of whole frames from a byte stream.
//!
//! [`FrameReader`] reads in large chunks and hands out one raw frame at a
//! time as [`Bytes`] (header included), without copying: payloads can then be
//! sliced out of it with [`Bytes::slice_ref`]. Writing needs no helper: encode
//! frames into a `Vec<u8>` with the functions of [`super`] and write the
//! buffer in one call.

use std::io::{self, Read};

use bytes::{Bytes, BytesMut};

use super::{frame_len, DecodeError, HEADER_LEN};

/// Size of one read from the stream when the buffer needs more bytes.
const READ_CHUNK: usize = 256 << 10;

/// Most bytes one read of a large frame asks for (a socket buffer's worth).
const LARGE_READ: usize = 1 << 20;

/// Why [`FrameReader::read_frame`] returned no frame.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The stream failed. A read timeout shows up here as
    /// [`io::ErrorKind::WouldBlock`] or [`io::ErrorKind::TimedOut`]; the
    /// bytes read so far are kept, so reading again is safe.
    #[error("read failed: {0}")]
    Io(#[from] io::Error),
    /// The bytes are not a valid frame.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The stream ended in the middle of a frame.
    #[error("connection closed in the middle of a frame ({have} of {need} bytes received)")]
    EarlyEof {
        /// Bytes of the frame received.
        have: usize,
        /// Bytes the frame needed.
        need: usize,
    },
}

impl ReadError {
    /// Whether this is a read timeout (try again), not a failure.
    pub fn is_timeout(&self) -> bool {
        matches!(self, ReadError::Io(e)
            if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut))
    }
}

/// Reads whole frames from `R`, buffering.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    max_frame: usize,
    /// Zeroed once: small reads land here and are appended to `buf`, which
    /// costs a copy of what was read instead of zeroing a whole chunk of
    /// `buf` per read.
    scratch: Vec<u8>,
}

impl<R: Read> FrameReader<R> {
    /// A reader accepting frame bodies of at most `max_frame` bytes.
    pub fn new(inner: R, max_frame: usize) -> Self {
        FrameReader {
            inner,
            buf: BytesMut::new(),
            max_frame,
            scratch: Vec::new(),
        }
    }

    /// Changes the cap on frame bodies (after a handshake).
    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.max_frame = max_frame;
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// Whether a complete frame is already buffered (no I/O needed).
    ///
    /// # Errors
    ///
    /// [`DecodeError::FrameTooLarge`] if the buffered header is over the cap.
    pub fn has_frame(&self) -> Result<bool, DecodeError> {
        Ok(matches!(frame_len(&self.buf, self.max_frame)?, Some(n) if self.buf.len() >= n))
    }

    /// Bytes buffered but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Returns the next raw frame (header included), reading from the stream
    /// as needed; `Ok(None)` when the stream ends cleanly between frames.
    /// Only the length is checked here; decode the frame with
    /// [`super::decode`].
    ///
    /// # Errors
    ///
    /// [`ReadError::Decode`] for an oversized length, [`ReadError::EarlyEof`]
    /// when the stream ends inside a frame, [`ReadError::Io`] when reading
    /// fails or times out (buffered bytes are kept).
    pub fn read_frame(&mut self) -> Result<Option<Bytes>, ReadError> {
        loop {
            let need = frame_len(&self.buf, self.max_frame)?.unwrap_or(HEADER_LEN);
            if self.buf.len() >= need {
                return Ok(Some(self.buf.split_to(need).freeze()));
            }
            if self.fill(need)? == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(ReadError::EarlyEof {
                    have: self.buf.len(),
                    need,
                });
            }
        }
    }

    /// Reads once from the stream, making room for at least `need` bytes in
    /// total. Returns the bytes read (0 at end of stream).
    fn fill(&mut self, need: usize) -> io::Result<usize> {
        let have = self.buf.len();
        if need - have <= READ_CHUNK {
            if self.scratch.is_empty() {
                self.scratch = vec![0; READ_CHUNK];
            }
            loop {
                match self.inner.read(&mut self.scratch) {
                    Ok(n) => {
                        self.buf.extend_from_slice(&self.scratch[..n]);
                        return Ok(n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            }
        }
        // A large frame: read its rest straight into the buffer, at most
        // LARGE_READ at a time, zeroing the room first so that it can be
        // handed to `read` as a slice (a memset about as long as the read).
        self.buf.reserve(need - have);
        let want = (need - have).min(LARGE_READ);
        self.buf.resize(have + want, 0);
        loop {
            match self.inner.read(&mut self.buf[have..]) {
                Ok(n) => {
                    self.buf.truncate(have + n);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.buf.truncate(have);
                    return Err(e);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{decode, encode_result, Decoded, Frame, DEFAULT_MAX_FRAME};

    /// A reader that returns its data a few bytes at a time.
    struct Trickle {
        data: Vec<u8>,
        pos: usize,
        step: usize,
    }

    impl Read for Trickle {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.step.min(out.len()).min(self.data.len() - self.pos);
            out[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    #[test]
    fn frames_split_across_reads_come_out_whole() {
        let mut data = Vec::new();
        for i in 0..50u64 {
            encode_result(&mut data, i, &vec![i as u8; i as usize], DEFAULT_MAX_FRAME).unwrap();
        }
        let mut r = FrameReader::new(
            Trickle {
                data,
                pos: 0,
                step: 7,
            },
            DEFAULT_MAX_FRAME,
        );
        for i in 0..50u64 {
            let raw = r.read_frame().unwrap().unwrap();
            let Decoded::Frame {
                frame: Frame::Result(res),
                ..
            } = decode(&raw, DEFAULT_MAX_FRAME).unwrap()
            else {
                panic!("not a result")
            };
            assert_eq!(res.id, i);
            assert_eq!(res.payload.len(), i);
        }
        assert!(r.read_frame().unwrap().is_none());
    }

    #[test]
    fn eof_inside_a_frame_is_early_eof() {
        let mut data = Vec::new();
        encode_result(&mut data, 1, b"hello", DEFAULT_MAX_FRAME).unwrap();
        data.truncate(data.len() - 2);
        let mut r = FrameReader::new(&data[..], DEFAULT_MAX_FRAME);
        assert!(matches!(
            r.read_frame(),
            Err(ReadError::EarlyEof { have: 17, need: 19 })
        ));
    }

    #[test]
    fn oversized_header_is_refused_without_reading_the_body() {
        let mut data = (1u32 << 30).to_le_bytes().to_vec();
        data.push(0x20);
        let mut r = FrameReader::new(&data[..], 1024);
        assert!(matches!(
            r.read_frame(),
            Err(ReadError::Decode(DecodeError::FrameTooLarge { .. }))
        ));
    }
}

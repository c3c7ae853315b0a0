//! The worker protocol's frame codec: pure functions from frames to bytes
//! and back, with no I/O, so that it can be fuzzed.
//!
//! The wire format is specified byte by byte in `docs/PROTOCOL.md`. In
//! short, every frame is
//!
//! ```text
//! u32 LE  body length (the bytes after this 5-byte header)
//! u8      frame type
//! [body]
//! ```
//!
//! and all integers are little-endian. [`decode`] takes a byte slice and
//! returns [`Decoded::Incomplete`] when more bytes are needed, or one
//! [`Frame`] borrowing from the slice, or a typed [`DecodeError`]. The
//! `encode_*` functions append one frame to a `Vec<u8>`; several frames
//! encoded into one buffer go out in one write, which is how both sides
//! batch.
//!
//! Payloads carry a one-byte kind: [`Payload::Inline`] bytes in the frame,
//! or (version 2, when the arena was granted) [`Payload::Arena`], an
//! `(offset, len)` reference into the worker's shared-memory arena
//! (`docs/PAYLOADS.md`).
//!
//! [`io`] adds buffered reading of whole frames from a stream.

mod decode;
mod encode;
mod frame;
pub mod io;

pub use decode::{decode, frame_len, DecodeError, Decoded};
pub use encode::{
    encode, encode_empty, encode_failure, encode_job, encode_job_arena, encode_result,
    encode_result_arena, job_body_len, result_body_len, BatchBuilder, FrameTooLarge,
};
pub use frame::{
    kind_name, Batch, BatchEntry, BatchIter, FailureFrame, Frame, Hello, JobFrame, Payload, Refuse,
    ResultFrame, Welcome, WELCOME_V1_LEN, WELCOME_V2_LEN,
};

/// The protocol version this crate speaks (the highest it accepts).
pub const VERSION: u16 = 2;

/// The lowest protocol version a coordinator of this crate accepts: a
/// version-1 worker gets a version-1 WELCOME and no arena.
pub const MIN_VERSION: u16 = 1;

/// Environment variable naming the worker's payload arena, a shared memory
/// file for payloads above the threshold (`docs/PAYLOADS.md`).
pub const ARENA_FD_ENV: &str = "JOBMILL_ARENA_FD";

/// Capability bit (version 2): the worker maps the arena named by
/// [`ARENA_FD_ENV`] and accepts [`Payload::Arena`] references. Granted only
/// together with [`CAP_RUNNING_PAGE`] (the page carries the count of
/// consumed arena results).
pub const CAP_ARENA: u32 = 2;

/// Slot of the state page (a `u64`) where the coordinator counts the arena
/// results it has consumed, so the worker can reuse their space.
pub const RESULTS_CONSUMED_SLOT: usize = 1;

/// The four bytes every HELLO starts with.
pub const MAGIC: [u8; 4] = *b"JMWP";

/// Length of a frame header: `u32` body length and `u8` type.
pub const HEADER_LEN: usize = 5;

/// Default cap on a frame body, in bytes (64 MiB).
pub const DEFAULT_MAX_FRAME: usize = 64 << 20;

/// Environment variable naming the worker's protocol file descriptor.
pub const FD_ENV: &str = "JOBMILL_FD";

/// Environment variable naming the worker's state page, a shared memory
/// file where the worker keeps the id of the job it is running.
pub const STATE_FD_ENV: &str = "JOBMILL_STATE_FD";

/// Capability bit: the worker writes the id of the job it is running (0
/// when none) as a `u64` at offset 0 of the state page.
pub const CAP_RUNNING_PAGE: u32 = 1;

/// Frame type codes (the byte after the length).
pub mod kind {
    /// Worker → coordinator: magic, version, capabilities, name.
    pub const HELLO: u8 = 0x01;
    /// Coordinator → worker: the handshake is accepted.
    pub const WELCOME: u8 = 0x02;
    /// Coordinator → worker: the handshake is refused; the connection ends.
    pub const REFUSE: u8 = 0x03;
    /// Coordinator → worker: one job.
    pub const JOB: u8 = 0x10;
    /// Coordinator → worker: end of the answer to a POLL.
    pub const POLL_END: u8 = 0x11;
    /// Coordinator → worker: no more jobs will come.
    pub const CLOSED: u8 = 0x12;
    /// Worker → coordinator: a job's result.
    pub const RESULT: u8 = 0x20;
    /// Worker → coordinator: a job's failure.
    pub const FAILURE: u8 = 0x21;
    /// Worker → coordinator: RESULT and FAILURE frames in one frame.
    pub const BATCH: u8 = 0x22;
    /// Worker → coordinator: "my buffer is empty, send what you have".
    pub const POLL: u8 = 0x23;
    /// Worker → coordinator: "I am leaving; I took this many jobs".
    pub const LEAVING: u8 = 0x24;
    /// Either way: a sign of life.
    pub const HEARTBEAT: u8 = 0x30;
}

/// Payload kinds (the byte before a payload).
pub mod payload_kind {
    /// The payload's bytes follow, to the end of the frame.
    pub const INLINE: u8 = 0;
    /// Version 2: `u64 offset`, `u64 len` of a region of the worker's arena
    /// follow, ending the frame.
    pub const ARENA: u8 = 1;
}

#[cfg(test)]
mod tests;

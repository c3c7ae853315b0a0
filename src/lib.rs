//! # jobmill
//!
//! A job queue with exact semantics, and a command runner built on it that
//! never loses a job.
//!
//! ## The model
//!
//! A [`job::Job`] is an input (bytes) with a sequence number and an attempt
//! count. Its life cycle is one state machine, [`job::JobState::apply`]:
//! `queued → leased → done | failed → (requeued | dead)`.
//!
//! A [`queue::Queue`] holds jobs between producers and consumers. Its
//! semantics are exact, whatever the backend:
//!
//! - `try_get` never says "empty" while a job is queued;
//! - a blocking `get` returns `Closed` only once the queue is closed *and*
//!   drained, so consumers end without sentinels;
//! - a lease whose worker dies is requeued with its attempt counted, and a
//!   job ends done, failed or dead exactly once.
//!
//! ## The pieces
//!
//! Data flows one way (see `docs/ARCHITECTURE.md`):
//!
//! ```text
//! input → queue → dispatcher → executor → worker → outcome → journal/output
//! ```
//!
//! - [`input`] reads inputs lazily (lines, NUL-separated, arguments);
//! - [`queue`] is the model's trait with its backends ([`queue::memory`],
//!   [`queue::redis`]);
//! - [`template`] turns a command template and an input into an argument
//!   vector, without a shell unless asked;
//! - [`exec`] runs one attempt of a command in its own process group, with
//!   timeouts, output capture and resource usage;
//! - [`run`] is the dispatcher of `jobmill run`: it feeds slots from the
//!   queue and reports each outcome to the output, the journal and the
//!   progress bar;
//! - [`journal`] is the crash-safe SQLite record of a run;
//! - [`protocol`], [`worker`] and [`persistent`] are long-lived workers:
//!   the frame codec, the worker-side library and the coordinator side;
//! - [`pool`] is [`Pool`], a typed process pool for Rust programs: `map`
//!   a serde-typed function over items in worker processes of the same
//!   binary, on top of [`persistent`] and [`worker`];
//! - [`remote`] is `jobmill worker --queue URL`: slots that run the jobs of
//!   a shared Redis queue;
//! - [`sys`] holds the few calls into the operating system that need
//!   `unsafe`.

#![deny(missing_docs)]
#![deny(unsafe_code)]

pub use pool::Pool;

pub mod engine;
pub mod events;
pub mod exec;
pub mod input;
pub mod job;
pub mod journal;
pub mod outcome;
pub mod persistent;
pub mod pool;
pub mod protocol;
pub mod queue;
pub mod report;
pub mod sign;
pub mod sys;
pub mod template;
pub mod worker;

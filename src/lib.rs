//! # jobmill
//!
//! A job queue with exact semantics, and a command runner built on it that
//! never loses a job.
//!
//! ## The model
//!
//! A [`job::Job`] is an input (bytes) with a sequence number and an attempt
//! count. Its life cycle is one state machine, [`job::JobState::apply`]:
//! `queued → leased → done | failed | dead`, with requeues under the retry
//! policy ([`job::RetryPolicy`]: `--retries`, `--retry-on`, the retry
//! delays) and the lost-worker and out-of-memory rules. How an attempt
//! ended is one type, [`outcome::Outcome`], whose failures carry a
//! [`job::FailReason`] with a stable cause name.
//!
//! A [`queue::Queue`] holds jobs between producers and consumers. Its
//! semantics are exact, whatever the backend:
//!
//! - `try_get` never says "empty" while a job is queued;
//! - a blocking `get` returns `Closed` only once the queue is closed *and*
//!   drained, so consumers end without sentinels;
//! - a lease whose worker vanishes is requeued without counting against
//!   the retries (up to `--max-lost` times), and a job ends done, failed or
//!   dead exactly once.
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
//! - [`engine`] is the one dispatcher: any [`queue::Queue`] to any
//!   executor (a process per attempt, or long-lived workers), with one
//!   stop model, `--halt`, output and throttles; every front end (`run`,
//!   `run --persistent`, `run --queue`, `worker`, `resume`, [`Pool`], the
//!   Python package) is the engine with a queue, an executor and
//!   [`events::Observer`]s;
//! - [`exec`] runs one attempt of a command in its own process group, with
//!   timeouts, output capture, resource usage and, with a memory option,
//!   a memory cgroup of its own;
//! - [`journal`] is the crash-safe SQLite record of a run, an observer of
//!   the engine's events; [`report`] draws it as one HTML page;
//! - [`protocol`], [`worker`] and [`persistent`] are long-lived workers:
//!   the frame codec, the worker-side library and the coordinator side;
//!   [`arena`] allocates regions of their shared-memory arenas;
//! - [`pool`] is [`Pool`], a typed process pool for Rust programs: `map`
//!   a serde-typed function over items in worker processes of the same
//!   binary, on the engine with long-lived workers ([`worker`]);
//! - [`sign`] signs tasks and results on a shared queue (HMAC-SHA256);
//! - [`sys`] holds the few calls into the operating system that need
//!   `unsafe`.

#![deny(missing_docs)]
#![deny(unsafe_code)]

pub use pool::Pool;

pub mod arena;
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

//! [`Pool::map`] and [`Pool::map_unordered`], and their iterators: the
//! input read lazily under the buffer bound, items queued to the engine,
//! results yielded in input order ([`Map`]) or as they come
//! ([`MapUnordered`]).

use std::collections::{HashSet, VecDeque};
use std::sync::mpsc::TryRecvError;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::job::NewJob;
use crate::queue::Queue;

use super::builder::worker_guard;
use super::engine::{Engine, Event};
use super::{task, Pool, PoolError, Task};

impl Pool {
    /// Runs `task` on every item, yielding the results in input order.
    ///
    /// Workers are started on the first `next()`, or taken over from the
    /// last map that finished; see [Workers between maps](super#workers-between-maps).
    /// The iterator yields exactly one `Result` per input item, then ends;
    /// or, if the pool stops (see [`PoolError::Stopped`]), one error per
    /// item read and a last [`PoolError::Stopped`]. Setup problems
    /// ([`init`](super::init) not called, `task` not given to it) are yielded as a
    /// single [`PoolError::Setup`].
    pub fn map<A, R, I>(&self, task: &Task<A, R>, items: I) -> Map<I::IntoIter, R>
    where
        I: IntoIterator<Item = A>,
        A: Serialize,
        R: DeserializeOwned,
    {
        Map {
            core: Core::new(self, task.name(), items.into_iter()),
            slots: VecDeque::new(),
        }
    }

    /// Runs `task` on every item, yielding each result as soon as it is
    /// ready: `Ok` values carry no index, so return it from the function if
    /// you need it. Otherwise as [`Pool::map`].
    pub fn map_unordered<A, R, I>(
        &self,
        task: &Task<A, R>,
        items: I,
    ) -> MapUnordered<I::IntoIter, R>
    where
        I: IntoIterator<Item = A>,
        A: Serialize,
        R: DeserializeOwned,
    {
        MapUnordered {
            core: Core::new(self, task.name(), items.into_iter()),
            pending: HashSet::new(),
            ready: VecDeque::new(),
            _result: std::marker::PhantomData,
        }
    }
}

/// What [`Core::step`] found.
enum Step {
    /// An item's outcome.
    Outcome(u64, Result<Bytes, PoolError>),
    /// An item could not be encoded: its error, in its place.
    Unsent(u64, PoolError),
    /// The coordinator stopped: the items in flight were not run.
    Stopped(String),
    /// Nothing is in flight and nothing more can be read now.
    Idle,
}

/// The part of an iterator shared by [`Map`] and [`MapUnordered`]: the
/// input and the engine.
struct Core<I> {
    pool: Pool,
    input: Option<I>,
    task: &'static str,
    /// An error to yield instead of starting.
    setup: Option<PoolError>,
    started: bool,
    engine: Option<Engine>,
    /// Items read from the input (the next item's index).
    read: u64,
    /// Items read and not yet yielded.
    unyielded: usize,
    /// Items queued and not yet resolved.
    in_flight: usize,
    /// Why the pool stopped, once it has.
    stopped: Option<String>,
    /// Where items are encoded.
    scratch: Vec<u8>,
}

impl<I: Iterator> Core<I>
where
    I::Item: Serialize,
{
    fn new(pool: &Pool, task: &'static str, input: I) -> Core<I> {
        let setup = worker_guard().or_else(|| match task::registered() {
            None => Some(PoolError::Setup {
                detail: "jobmill::pool::init was not called: call it first thing in main, with every task".into(),
            }),
            Some(names) if !names.contains(&task) => Some(PoolError::Setup {
                detail: format!(
                    "task {task:?} was not given to jobmill::pool::init (given: {names:?}); the workers would not know it"
                ),
            }),
            Some(_) => None,
        });
        Core {
            pool: pool.clone(),
            input: Some(input),
            task,
            setup,
            started: false,
            engine: None,
            read: 0,
            unyielded: 0,
            in_flight: 0,
            stopped: None,
            scratch: Vec::new(),
        }
    }

    /// Takes the pool's idle engine if it can serve, or starts one.
    fn start(&mut self) -> Result<(), PoolError> {
        self.started = true;
        let idle = self
            .pool
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        // A dead engine is dropped (reaped) here, outside the lock.
        let engine = match idle.filter(Engine::reusable) {
            Some(engine) => engine,
            None => Engine::start(&self.pool)?,
        };
        self.engine = Some(engine);
        Ok(())
    }

    /// Reads one more input item, if the buffer has room and the input
    /// is not exhausted, and queues it. Returns its index, and its error if
    /// it could not be sent.
    fn read_one(&mut self) -> Option<(u64, Option<PoolError>)> {
        if self.unyielded >= self.pool.buffer || self.stopped.is_some() {
            return None;
        }
        let engine = self.engine.as_ref()?;
        let input = self.input.as_mut()?;
        let Some(item) = input.next() else {
            self.input = None;
            return None;
        };
        let index = self.read;
        self.read += 1;
        self.unyielded += 1;
        // The task's name, then the item.
        self.scratch.clear();
        self.scratch.push(self.task.len() as u8);
        self.scratch.extend_from_slice(self.task.as_bytes());
        if let Err(e) = self
            .pool
            .builder
            .codec
            .encode_into(&item, &mut self.scratch)
        {
            let detail = format!("cannot encode the item: {e}");
            return Some((index, Some(PoolError::Codec { index, detail })));
        }
        drop(item);
        // One allocation of the exact size per item; the scratch buffer
        // absorbs the growth while encoding.
        let payload = Bytes::copy_from_slice(&self.scratch);
        if self.scratch.capacity() > 4 << 20 {
            self.scratch = Vec::new();
        }
        if let Err(e) = engine.queue.put(NewJob {
            seq: index,
            payload,
            attempts: 0,
            lost: 0,
            oom: 0,
        }) {
            // Not expected: the queue has room and stays open while the
            // engine runs.
            let detail = format!("cannot queue the item: {e}");
            return Some((index, Some(PoolError::NotRun { index, detail })));
        }
        self.in_flight += 1;
        Some((index, None))
    }

    /// Fills the buffer from the input, then waits for the next event.
    /// `sent` is told of each item queued (for the caller's bookkeeping).
    fn step(&mut self, mut sent: impl FnMut(u64)) -> Step {
        if !self.started {
            if let Err(e) = self.start() {
                return self.stop_reading(e.to_string());
            }
        }
        // Read ahead: up to half the buffer unconditionally (so the workers
        // stay fed), beyond that only while no result is waiting (so that a
        // slow input does not delay results that are ready).
        let mut early = None;
        loop {
            if self.unyielded >= self.pool.buffer / 2 {
                if let Some(engine) = &self.engine {
                    match engine.rx.try_recv() {
                        Ok(event) => {
                            early = Some(event);
                            break;
                        }
                        Err(TryRecvError::Empty) => {}
                        Err(TryRecvError::Disconnected) => break,
                    }
                }
            }
            match self.read_one() {
                Some((index, Some(e))) => return Step::Unsent(index, e),
                Some((index, None)) => sent(index),
                None => break,
            }
        }
        let event = match (early, &self.engine) {
            (Some(event), _) => Ok(event),
            (None, _) if self.in_flight == 0 => return Step::Idle,
            (None, Some(engine)) => engine.rx.recv().map_err(|_| ()),
            (None, None) => return Step::Idle,
        };
        match event {
            Ok(Event::Outcome(index, result)) => {
                self.in_flight -= 1;
                Step::Outcome(index, result)
            }
            Ok(Event::Ended(detail)) => {
                self.stop_reading(detail.unwrap_or_else(|| "the pool's workers stopped".into()))
            }
            Err(()) => self.stop_reading("the pool's coordinator thread ended".into()),
        }
    }

    /// The engine stopped (or could not start): nothing more is read, the
    /// items in flight are given up.
    fn stop_reading(&mut self, detail: String) -> Step {
        // Reap what is left of it.
        self.engine = None;
        self.in_flight = 0;
        self.stopped = Some(detail.clone());
        Step::Stopped(detail)
    }

    /// After a stop: the final [`PoolError::Stopped`] if input was left
    /// unread (once).
    fn unread_error(&mut self) -> Option<PoolError> {
        let detail = self.stopped.clone()?;
        let mut input = self.input.take()?;
        input.next()?;
        Some(PoolError::Stopped {
            next: self.read,
            detail,
        })
    }

    fn decode<R: DeserializeOwned>(
        &self,
        index: u64,
        result: Result<Bytes, PoolError>,
    ) -> Result<R, PoolError> {
        let bytes = result?;
        self.pool
            .builder
            .codec
            .decode(&bytes)
            .map_err(|e| PoolError::Codec {
                index,
                detail: format!("cannot decode the result: {e}"),
            })
    }
}

impl<I> Core<I> {
    /// Gives the engine back to the pool if the map finished cleanly (all
    /// input read, nothing in flight); otherwise kills its workers and
    /// reaps them.
    fn finish(&mut self) {
        let Some(engine) = self.engine.take() else {
            return;
        };
        if self.input.is_none() && self.in_flight == 0 && self.stopped.is_none() {
            let previous = self
                .pool
                .idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .replace(engine);
            // One idle engine is kept; another one is stopped, outside the
            // lock.
            drop(previous);
        } else {
            drop(engine);
        }
    }
}

impl<I> Drop for Core<I> {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The iterator of [`Pool::map`]: results in input order.
pub struct Map<I, R> {
    core: Core<I>,
    /// Results of items `core.read - slots.len()` onwards, in order;
    /// `None` while the item is running.
    slots: VecDeque<Option<Result<R, PoolError>>>,
}

impl<I, R> Iterator for Map<I, R>
where
    I: Iterator,
    I::Item: Serialize,
    R: DeserializeOwned,
{
    type Item = Result<R, PoolError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.core.setup.take() {
            self.core.input = None;
            self.core.stopped = Some(e.to_string());
            return Some(Err(e));
        }
        loop {
            if let Some(Some(_)) = self.slots.front() {
                let result = self.slots.pop_front().flatten();
                self.core.unyielded -= 1;
                return result;
            }
            if self.slots.is_empty() && self.core.stopped.is_some() {
                return self.core.unread_error().map(Err);
            }
            let head = self.core.read - self.slots.len() as u64;
            let slots = &mut self.slots;
            let step = self.core.step(|_| slots.push_back(None));
            let detail = match step {
                Step::Outcome(index, result) => {
                    let result = self.core.decode(index, result);
                    if let Some(slot) = index
                        .checked_sub(head)
                        .and_then(|i| self.slots.get_mut(i as usize))
                    {
                        *slot = Some(result);
                    }
                    continue;
                }
                Step::Unsent(index, error) => {
                    debug_assert_eq!(index, head + self.slots.len() as u64);
                    self.slots.push_back(Some(Err(error)));
                    continue;
                }
                Step::Stopped(detail) => detail,
                Step::Idle if self.slots.is_empty() => {
                    // Every item read and yielded: the workers go back to
                    // the pool.
                    self.core.finish();
                    return None;
                }
                Step::Idle if self.slots.iter().all(Option::is_some) => continue,
                // Not expected: an item is waiting with nothing in flight.
                Step::Idle => "an item's outcome was lost".to_string(),
            };
            for (i, slot) in self.slots.iter_mut().enumerate() {
                if slot.is_none() {
                    *slot = Some(Err(PoolError::NotRun {
                        index: head + i as u64,
                        detail: detail.clone(),
                    }));
                }
            }
        }
    }
}

impl<I, R> std::fmt::Debug for Map<I, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Map")
            .field("task", &self.core.task)
            .field("read", &self.core.read)
            .field("waiting", &self.slots.len())
            .finish_non_exhaustive()
    }
}

/// The iterator of [`Pool::map_unordered`]: results as they come.
pub struct MapUnordered<I, R> {
    core: Core<I>,
    /// Items queued and not yet resolved.
    pending: HashSet<u64>,
    /// Errors ready to be yielded (after a stop).
    ready: VecDeque<PoolError>,
    _result: std::marker::PhantomData<fn() -> R>,
}

impl<I, R> Iterator for MapUnordered<I, R>
where
    I: Iterator,
    I::Item: Serialize,
    R: DeserializeOwned,
{
    type Item = Result<R, PoolError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.core.setup.take() {
            self.core.input = None;
            self.core.stopped = Some(e.to_string());
            return Some(Err(e));
        }
        loop {
            if let Some(e) = self.ready.pop_front() {
                self.core.unyielded -= 1;
                return Some(Err(e));
            }
            if self.pending.is_empty() && self.core.stopped.is_some() {
                return self.core.unread_error().map(Err);
            }
            let pending = &mut self.pending;
            let step = self.core.step(|index| {
                pending.insert(index);
            });
            let detail = match step {
                Step::Outcome(index, result) => {
                    if self.pending.remove(&index) {
                        self.core.unyielded -= 1;
                        return Some(self.core.decode(index, result));
                    }
                    continue;
                }
                Step::Unsent(_, error) => {
                    self.core.unyielded -= 1;
                    return Some(Err(error));
                }
                Step::Stopped(detail) => detail,
                Step::Idle if self.pending.is_empty() => {
                    // Every item read and yielded: the workers go back to
                    // the pool.
                    self.core.finish();
                    return None;
                }
                // Not expected: items waiting with nothing in flight.
                Step::Idle => "an item's outcome was lost".to_string(),
            };
            let mut left: Vec<u64> = self.pending.drain().collect();
            left.sort_unstable();
            self.ready
                .extend(left.into_iter().map(|index| PoolError::NotRun {
                    index,
                    detail: detail.clone(),
                }));
        }
    }
}

impl<I, R> std::fmt::Debug for MapUnordered<I, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MapUnordered")
            .field("task", &self.core.task)
            .field("read", &self.core.read)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_and_iterators_can_move_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>() {}
        send_sync::<Pool>();
        send::<Map<std::ops::Range<u64>, u64>>();
        send::<MapUnordered<std::ops::Range<u64>, u64>>();
    }
}

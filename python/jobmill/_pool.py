"""jobmill.Pool: ``multiprocessing.Pool``'s API over jobmill's engine.

The workers are long-lived ``python -m jobmill.worker`` processes started and
supervised by the Rust coordinator (``jobmill::engine`` with the ``Workers``
executor over a ``MemoryQueue``). Each task is one job; results come back
through an observer of the engine, never printed. The caller waits in Rust
with the GIL released, checking for Ctrl-C every 50 ms.
"""
import base64
import collections
import concurrent.futures
import hashlib
import itertools
import json
import os
import pickle
import sys
import threading
import time
import weakref

from . import _jobmill
from . import _wire
from ._wire import CHUNK, CHUNK_MAP, CHUNK_STAR, EXC_PREFIX

_KIND = {"call": CHUNK, "map": CHUNK_MAP, "star": CHUNK_STAR}


def _pair(mode, item):
    """(args, kwargs) of an item of ``mode``."""
    if mode == "map":
        return (item,), {}
    if mode == "star":
        return tuple(item), {}
    return item

DONE, RAISED, TIMED_OUT, LOST, OTHER, REFUSED = 0, 1, 2, 3, 4, 5
# Payload bytes submitted and not yet answered, at most (see Pool._feed).
MAX_INFLIGHT = 256 << 20
# The pool's shared arena (python/src/shared.rs): large out-of-band buffers
# (numpy arrays) are copied into it once, and the workers read them in place.
# Sparse: only the pages of the regions in use take memory. A payload larger
# than the arena goes whole, as bytes.
SHARED_ARENA = 2 << 30
# Bytes of shared regions in flight, at most (always at least one job a
# worker): few regions in use stay warm in the CPU caches, and
# few regions of large items mean few pages to fault in the first time.
SHARED_INFLIGHT = 16 << 20
# A batch of jobs is submitted once its payloads add up to this many bytes
# (or it holds 1024 jobs): see Pool._feed.
SUBMIT_BYTES = 8 << 20
_TERMINATED = 100  # the pool was terminated before the task ended
# With journal=PATH: a result is kept whole in the journal up to RESULT_CAP
# bytes (its pickle); a larger one is computed again on resume. A task's
# arguments are kept in the journal (after its key line) when their pickle
# is at most INPUT_CAP bytes, else by their hash only.
RESULT_CAP = 64 << 20
INPUT_CAP = 1 << 20


class WorkerLost(Exception):
    """The worker running a task died (SIGKILL, segfault, ``os._exit``, the
    OOM killer) more than ``max_lost`` times."""


class TaskRefused(RuntimeError):
    """A worker of a shared queue (``Pool(queue=...)``) refused the task:
    it was unsigned or its signature did not match (a wrong key, or the
    task was changed in the queue). It was not run; its job is dead."""


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker (its ``__cause__``)."""

    def __init__(self, tb):
        super().__init__(tb)
        self.tb = tb

    def __str__(self):
        return self.tb


def _describe(args, kwargs):
    parts = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
    text = ", ".join(parts)
    return text if len(text) <= 200 else text[:197] + "..."


def _function_name(func, fkey):
    """The function part of a task's journal key: its module and qualified
    name, plus a hash of its pickle when it travels by value (a lambda or a
    closure through cloudpickle, whose name does not say which it is)."""
    module = getattr(func, "__module__", None) or "?"
    qual = getattr(func, "__qualname__", None) or getattr(func, "__name__", None) \
        or type(func).__qualname__
    name = f"{module}.{qual}"
    try:
        by_reference = pickle.dumps(func, protocol=pickle.HIGHEST_PROTOCOL) == fkey
    except Exception:
        by_reference = False
    if not by_reference:
        name += "#" + hashlib.sha256(fkey).hexdigest()[:16]
    return name


def _task_key(fname, args, kwargs):
    """The journal input of a task: its key line (the function and the
    SHA-256 of the pickle of its arguments, out-of-band buffers included),
    then the arguments' pickle when it is at most INPUT_CAP bytes."""
    buffers = []
    data = pickle.dumps((args, kwargs), protocol=5, buffer_callback=buffers.append)
    h = hashlib.sha256(data)
    size = len(data)
    for b in buffers:
        raw = b.raw()
        h.update(raw)
        size += raw.nbytes
    line = f"jobmill.Pool {fname} sha256:{h.hexdigest()}".encode()
    if size <= INPUT_CAP:
        if buffers:
            data = pickle.dumps((args, kwargs), protocol=5)
        return line, line + b"\n" + data
    return line, line


def _function_key(func):
    """The pickle of ``func``: by reference (module and qualified name), or by
    value through cloudpickle when it is installed and ``func`` has no name
    to be found by (a lambda, a closure)."""
    try:
        data = pickle.dumps(func, protocol=pickle.HIGHEST_PROTOCOL)
        pickle.loads(data)
        if getattr(func, "__module__", None) == "__main__" and not _main_is_importable():
            raise pickle.PicklingError("defined in an interactive __main__")
        return data
    except Exception as exc:
        try:
            import cloudpickle
        except ImportError:
            name = getattr(func, "__qualname__", repr(func))
            raise TypeError(
                f"jobmill.Pool passes functions by reference (module and qualified name), "
                f"as multiprocessing's spawn does: {name!r} cannot be found that way ({exc}). "
                f"Define it at the top level of a module (in a script, above the "
                f"`if __name__ == \"__main__\":` guard), or install cloudpickle."
            ) from None
        return cloudpickle.dumps(func, protocol=pickle.HIGHEST_PROTOCOL)


def _main_is_importable():
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return (spec is not None and spec.name not in ("__main__",)) or bool(getattr(main, "__file__", None))


def _main_env():
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and getattr(spec, "name", None):
        name = spec.name
        if name.endswith(".__main__"):
            return {}
        return {"JOBMILL_PY_MAIN_MODULE": name}
    path = getattr(main, "__file__", None)
    if path and path.endswith(".py") and os.path.exists(path):
        return {"JOBMILL_PY_MAIN_PATH": os.path.abspath(path)}
    return {}


def _rebuild_exception(data):
    text = data.decode("utf-8", "replace")
    # "SUMMARY jobmill-py-exc:BASE64" (older workers: no summary).
    at = text.rfind(EXC_PREFIX)
    if at < 0:
        return RuntimeError(f"the task failed: {text}")
    exc, tb = pickle.loads(base64.b64decode(text[at + len(EXC_PREFIX):]))
    if exc is None:
        exc = RuntimeError(tb.strip().splitlines()[-1] if tb.strip() else "task failed")
    exc.__cause__ = RemoteTraceback(f'\n"""\n{tb}"""')
    return exc


class _Progress:
    """``progress=True``: one line on stderr (a terminal) with the tasks done,
    the rate and the time left, redrawn at most 5 times a second."""

    def __init__(self):
        self.total = 0
        self.done = 0
        self.start = time.monotonic()
        self.drawn = 0.0

    def update(self, pool, batch):
        for seq, code, data in batch:
            entry = pool._pending.get(seq)
            if entry is not None:
                self.done += len(entry[0].part) if isinstance(entry[0], _Chunk) else 1
        now = time.monotonic()
        if now - self.drawn < 0.2 and self.done < self.total:
            return
        self.drawn = now
        rate = self.done / max(now - self.start, 1e-9)
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        eta = "?" if left == float("inf") else f"{left:.0f}s"
        sys.stderr.write(f"\rjobmill: {self.done}/{self.total} tasks, {rate:,.0f}/s, ETA {eta}   ")
        if self.done >= self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


class _Chunk:
    """Tasks start..start+len(part) of a sink, sent as one job."""
    __slots__ = ("sink", "start", "fkey", "part", "mode")

    def __init__(self, sink, start, fkey, part, mode):
        self.sink, self.start, self.fkey, self.part, self.mode = sink, start, fkey, part, mode


class AsyncResult:
    """The result of ``apply_async``/``map_async`` (``multiprocessing``'s API)."""

    def __init__(self, pool, n, callback=None, error_callback=None, single=True):
        self._pool = pool
        self._values = [None] * n
        self._left = n
        self._error = None
        self._single = single
        self._callback = callback
        self._error_callback = error_callback
        self._event = threading.Event()
        if n == 0:
            self._finish()

    def _set(self, index, ok, value):
        if ok:
            self._values[index] = value
        elif self._error is None:
            self._error = value
        self._left -= 1
        if self._left == 0:
            self._finish()

    def _set_many(self, start, values):
        self._values[start:start + len(values)] = values
        self._left -= len(values)
        if self._left == 0:
            self._finish()

    def _finish(self):
        self._event.set()
        if self._error is None:
            if self._callback is not None:
                self._callback(self._values[0] if self._single else self._values)
        elif self._error_callback is not None:
            self._error_callback(self._error)

    def ready(self):
        self._pool._pump_once(0)
        return self._event.is_set()

    def successful(self):
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return self._error is None

    def wait(self, timeout=None):
        self._pool._wait(self._event.is_set, timeout)

    def get(self, timeout=None):
        if not self._pool._wait(self._event.is_set, timeout):
            raise concurrent.futures.TimeoutError
        if self._error is not None:
            raise self._error
        return self._values[0] if self._single else self._values


class _Iter:
    """``imap`` (ordered) and ``imap_unordered``."""

    def __init__(self, pool, n, ordered):
        self._pool = pool
        self._n = n
        self._ordered = ordered
        self._ready = {} if ordered else collections.deque()
        self._next = 0
        self._given = 0

    def _set(self, index, ok, value):
        if self._ordered:
            self._ready[index] = (ok, value)
        else:
            self._ready.append((ok, value))

    def _set_many(self, start, values):
        if self._ordered:
            self._ready.update(zip(range(start, start + len(values)), [(True, v) for v in values]))
        else:
            self._ready.extend((True, v) for v in values)

    def __iter__(self):
        return self

    def _available(self):
        return (self._next in self._ready) if self._ordered else bool(self._ready)

    def __next__(self):
        return self.next()

    def next(self, timeout=None):
        if self._given >= self._n:
            raise StopIteration
        if not self._pool._wait(self._available, timeout):
            raise concurrent.futures.TimeoutError
        if self._ordered:
            ok, value = self._ready.pop(self._next)
            self._next += 1
        else:
            ok, value = self._ready.popleft()
        self._given += 1
        if not ok:
            raise value
        return value


class Pool:
    """A process pool with ``multiprocessing.Pool``'s methods, over jobmill.

    ``retries``: times a task that raised is run again. ``max_lost``: times a
    task whose worker died is run again on a fresh worker before it raises
    ``WorkerLost``. ``timeout``: seconds a task may run; past it its worker is
    killed and the task raises ``TimeoutError`` (counted under ``retries``).
    ``chunksize`` arguments are accepted and ignored: tasks are pipelined to
    each worker through a window of ``window`` jobs.

    ``journal``: the path of a jobmill journal (SQLite) recording every
    task and its result. If the script runs again on the same file (after
    a crash, Ctrl-C or a kill), each task whose function and pickled
    arguments match a task recorded done returns the recorded result
    without running; the rest run (see the package README for the rules).
    ``journal_reused`` counts the results taken from the journal.

    ``queue``: ``"redis://host:port/NAME"``: the tasks go, signed, to that
    shared queue for ``jobmill worker --queue URL --persistent -- python -m
    jobmill.worker`` on any host, and the results come back from it. The
    signing key comes from ``JOBMILL_KEY_FILE`` or ``JOBMILL_KEY`` (the
    same on every side); without one the pool does not start.
    """

    def __init__(self, processes=None, initializer=None, initargs=(), maxtasksperchild=None, *,
                 retries=0, max_lost=3, timeout=None, journal=None, progress=False, queue=None,
                 window=None):
        if queue is not None:
            unsupported = [name for name, value in (
                ("initializer", initializer), ("maxtasksperchild", maxtasksperchild),
                ("timeout", timeout), ("journal", journal)) if value is not None]
            if unsupported:
                raise ValueError(
                    f"jobmill.Pool(queue=...) does not take {', '.join(unsupported)}: its workers "
                    f"are `jobmill worker` processes on other hosts (give them --timeout there)")
        if processes is None:
            processes = os.cpu_count() or 1
        if processes < 1:
            raise ValueError("Number of processes must be at least 1")
        if maxtasksperchild is not None and maxtasksperchild < 1:
            raise ValueError("maxtasksperchild must be a positive int or None")
        self._processes = processes
        env = {
            "JOBMILL_PY_PARENT": str(os.getpid()),
            "JOBMILL_PY_SYS_PATH": json.dumps([p for p in sys.path if isinstance(p, str)]),
        }
        env.update(_main_env())
        if initializer is not None:
            env["JOBMILL_PY_INITIALIZER"] = base64.b64encode(
                pickle.dumps((initializer, tuple(initargs)))).decode("ascii")
        if maxtasksperchild:
            env["JOBMILL_PY_MAXTASKS"] = str(maxtasksperchild)
        if window is None:
            window = 1 if timeout is not None or maxtasksperchild else 16
        journal_path = None if journal is None else os.fspath(journal)
        if queue is not None:
            # The same tasks, signed, on a shared queue (see the README).
            self._core = _jobmill.RemoteCore(queue, retries, max_lost)
        else:
            self._core = _jobmill.PoolCore(
                [sys.executable, "-m", "jobmill.worker"], list(env.items()), processes,
                retries, max_lost, timeout, window, journal_path,
                [sys.executable] + [a for a in sys.argv if isinstance(a, str)], RESULT_CAP,
                SHARED_ARENA)
        # The pool's shared arena (not on a shared queue's pool).
        self._shared = getattr(self._core, "has_shared", False)
        self._shared_inflight = 0
        self._journal = journal_path is not None
        # key line -> deque of (seq, reusable) recorded by earlier sessions
        self._recorded = collections.defaultdict(collections.deque)
        for key, seq, reusable in self._core.journal_jobs():
            self._recorded[key].append((seq, reusable))
        self.journal_reused = 0
        self._timeout = timeout
        self._retries = retries
        self._progress = _Progress() if progress and sys.stderr.isatty() else None
        self._pending = {}
        self._backlog = collections.deque()
        self._core_closed = False
        self._inflight = 0
        self._seq = itertools.count(self._core.first_seq)
        # Reentrant: a journal's recorded result may finish an AsyncResult
        # (and run its callback) while jobs are fed.
        self._submit_lock = threading.RLock()
        self._pump_lock = threading.Lock()
        self._state = "run"
        self._finalizer = weakref.finalize(self, _terminate_core, self._core)

    # -- submitting ------------------------------------------------------

    def _check_running(self):
        if self._state != "run":
            raise ValueError("Pool not running")

    def _submit(self, func, arglist, sink, chunked=False, mode="call"):
        """Queue one task per (args, kwargs) of ``arglist``; each result goes
        to ``sink._set(index, ok, value)``. With ``chunked`` (the map family,
        no timeout, no retries), tasks travel in chunks of one job each, so
        that tiny tasks are not bound by the per-job cost; a chunk whose
        worker died is split into single tasks (each with the lost-worker
        rule), so a task that kills its worker is named alone."""
        self._check_running()
        fkey = _function_key(func)
        fname = _function_name(func, fkey) if self._journal else None
        n = len(arglist)
        size = 1
        if chunked and self._timeout is None and self._retries == 0 and n > 1 and not self._journal:
            # Chunks are for tiny tasks: large items go one a job, through
            # the arena. (With a journal, each task is a job of its own:
            # each has its own key and recorded result.)
            if _wire.size(_wire.encode(arglist[0])) <= 4096:
                size = max(1, min(2048, n // (self._processes * 4)))
        def jobs():
            for start in range(0, n, size):
                if size == 1:
                    args, kwargs = _pair(mode, arglist[start])
                    seq, line = None, None
                    if fname is not None:
                        key, line = _task_key(fname, args, kwargs)
                        seq = self._from_journal(key, sink, start)
                        if seq is True:
                            continue
                    yield (sink, start, args, kwargs), _wire.encode((fkey, args, kwargs)), seq, line
                else:
                    part = arglist[start:start + size]
                    yield ((_Chunk(sink, start, fkey, part, mode), -1, None, None),
                           _wire.encode((fkey, _KIND[mode], part)), None, None)

        with self._submit_lock:
            self._backlog.append(jobs())
        if self._progress is not None:
            self._progress.total += n
        self._feed()

    def _from_journal(self, key, sink, index):
        """A task of ``key``: True if its result was recorded (then it is
        given to ``sink``), else the sequence number of the recorded job it
        runs again as (None: a new job)."""
        recorded = self._recorded.get(key)
        if not recorded:
            return None
        seq, reusable = recorded.popleft()
        if reusable:
            data = self._core.recorded(seq)
            if data is not None:
                if data.endswith(b"\n"):
                    data = data[:-1]
                try:
                    value = _wire.loads(bytearray(data))
                except Exception:
                    return seq  # unreadable: computed again
                self.journal_reused += 1
                if self._progress is not None:
                    self._progress.done += 1
                sink._set(index, True, value)
                return True
        return seq

    def _feed(self):
        """Submit backlogged jobs while the payload bytes in flight stay under
        ``MAX_INFLIGHT``, and those in shared regions under
        ``SHARED_INFLIGHT`` (always at least one job a worker), so that the
        caller's memory holds a bounded part of a large map."""
        with self._submit_lock:
            seqs, payloads, inputs = [], [], []
            # Bytes of the batch's payloads: a batch goes once it holds
            # 1024 jobs or SUBMIT_BYTES, so a worker starts on a large item
            # while the next is still being copied.
            batched = 0
            while self._backlog and (
                    (self._inflight < MAX_INFLIGHT and self._shared_inflight < SHARED_INFLIGHT)
                    or len(self._pending) < self._processes):
                try:
                    entry, encoded, seq, line = next(self._backlog[0])
                except StopIteration:
                    self._backlog.popleft()
                    continue
                if seq is None:
                    seq = next(self._seq)
                seqs.append(seq)
                payloads.append(self._pend(seq, entry, encoded))
                inputs.append(line)
                batched += _wire.size(encoded)
                if len(payloads) >= 1024 or batched >= SUBMIT_BYTES:
                    self._submit_jobs(seqs, payloads, inputs)
                    seqs, payloads, inputs = [], [], []
                    batched = 0
            if payloads:
                self._submit_jobs(seqs, payloads, inputs)

    def _pend(self, seq, entry, encoded):
        """Records job ``seq`` as pending and returns its payload: a task
        with large out-of-band buffers is placed in the shared arena (one
        copy) when it has room, and travels as a reference to its region."""
        size = _wire.size(encoded)
        region = None
        if isinstance(encoded, bytes):
            payload = encoded
        elif self._shared and (region := _wire.place(encoded, self._core)) is not None:
            payload = _wire.ref(region, size)
            self._shared_inflight += size
        else:
            payload = _wire.join(encoded)
        self._pending[seq] = entry + (size, region)
        self._inflight += size
        return payload

    def _settle(self, seq):
        """Job ``seq`` has its final outcome: its pending entry, with its
        shared region given back (None if it was not pending)."""
        entry = self._pending.pop(seq, None)
        if entry is not None:
            size, region = entry[-2:]
            self._inflight -= size
            if region is not None:
                self._shared_inflight -= size
                self._core.shared_release(region)
        return entry

    def _submit_jobs(self, seqs, payloads, inputs):
        self._core.submit_jobs(seqs, payloads, inputs if self._journal else None)

    def _resubmit_single(self, chunk):
        """A chunk was lost: its tasks go again one job each."""
        with self._submit_lock:
            seqs, payloads = [], []
            for i, item in enumerate(chunk.part):
                args, kwargs = _pair(chunk.mode, item)
                seq = next(self._seq)
                encoded = _wire.encode((chunk.fkey, args, kwargs))
                seqs.append(seq)
                payloads.append(self._pend(seq, (chunk.sink, chunk.start + i, args, kwargs), encoded))
            if payloads:
                self._submit_jobs(seqs, payloads, [None] * len(seqs))

    # -- waiting ---------------------------------------------------------

    def _dispatch(self, batch):
        if self._progress is not None and batch:
            self._progress.update(self, batch)
        for seq, code, data in batch:
            entry = self._settle(seq)
            if entry is None:
                continue
            sink, index, args, kwargs = entry[:4]
            if isinstance(sink, _Chunk):
                if code == DONE:
                    if data[:len(_wire.OOB_MAGIC)] == _wire.OOB_MAGIC:
                        data = bytearray(data)
                    values, errors = _wire.loads(data)
                    if errors:
                        for i, value in enumerate(values):
                            if i in errors:
                                sink.sink._set(sink.start + i, False, _rebuild_exception(errors[i].encode()))
                            else:
                                sink.sink._set(sink.start + i, True, value)
                    else:
                        sink.sink._set_many(sink.start, values)
                    continue
                if code == LOST and not self._core_closed:
                    self._resubmit_single(sink)
                    continue
                for i, item in enumerate(sink.part):
                    a, k = _pair(sink.mode, item)
                    self._dispatch_failure(sink.sink, sink.start + i, seq, code, data, a, k)
                continue
            if code == DONE:
                if data[:len(_wire.OOB_MAGIC)] == _wire.OOB_MAGIC:
                    # Writable arrays, the caller's to keep.
                    data = bytearray(data)
                sink._set(index, True, _wire.loads(data))
                continue
            self._dispatch_failure(sink, index, seq, code, data, args, kwargs)

    def _dispatch_failure(self, sink, index, seq, code, data, args, kwargs):
        desc = _describe(args, kwargs)
        if code == RAISED:
            err = _rebuild_exception(data)
        elif code == TIMED_OUT:
            err = concurrent.futures.TimeoutError(
                f"task {seq} ({desc}) ran past the timeout of {self._timeout} s; its worker was killed")
        elif code == LOST:
            err = WorkerLost(f"task {seq} ({desc}) was lost: {data.decode('utf-8', 'replace')}")
        elif code == REFUSED:
            err = TaskRefused(f"task {seq} ({desc}) was refused by a worker: {data.decode('utf-8', 'replace')}")
        elif code == _TERMINATED:
            err = RuntimeError(f"task {seq} ({desc}) did not run: {data.decode('utf-8', 'replace')}")
        else:
            err = RuntimeError(f"task {seq} ({desc}) failed: {data.decode('utf-8', 'replace')}")
        sink._set(index, False, err)

    def _fail_pending(self, why):
        with self._submit_lock:
            # Jobs never submitted fail as those submitted and not done.
            while self._backlog:
                for entry, encoded, seq, _ in self._backlog.popleft():
                    if seq is None:
                        seq = next(self._seq)
                    self._pending[seq] = entry + (_wire.size(encoded), None)
                    self._inflight += _wire.size(encoded)
        batch = [(seq, _TERMINATED, why.encode()) for seq in list(self._pending)]
        self._dispatch(batch)

    def _pump_once(self, wait):
        got = self._pump_lock.acquire(timeout=wait) if wait > 0 else self._pump_lock.acquire(False)
        if not got:
            return
        try:
            batch = self._core.collect(wait)
            self._dispatch(batch)
            if self._backlog and self._state != "terminate":
                self._feed()
            if self._state == "close" and not self._core_closed:
                self._close_core_when_fed()
            if not batch and self._core.finished and self._pending:
                self._core.join()
                why = self._core.error or (
                    "the pool was terminated" if self._state == "terminate" else "the pool's engine ended")
                self._fail_pending(why)
        finally:
            self._pump_lock.release()

    def _wait(self, done, timeout=None):
        """Pump results until ``done()``; False if ``timeout`` passed first.
        Ctrl-C terminates the pool (every worker is killed) and propagates."""
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while not done():
                wait = 0.2
                if deadline is not None:
                    wait = min(wait, deadline - time.monotonic())
                    if wait <= 0:
                        return done()
                self._pump_once(wait)
            return True
        except KeyboardInterrupt:
            self.terminate()
            raise

    # -- the API of multiprocessing.Pool ----------------------------------

    def apply_async(self, func, args=(), kwds={}, callback=None, error_callback=None):
        result = AsyncResult(self, 1, callback, error_callback, single=True)
        self._submit(func, [(tuple(args), dict(kwds))], result)
        return result

    def apply(self, func, args=(), kwds={}):
        return self.apply_async(func, args, kwds).get()

    def map_async(self, func, iterable, chunksize=None, callback=None, error_callback=None):
        items = list(iterable)
        result = AsyncResult(self, len(items), callback, error_callback, single=False)
        self._submit(func, items, result, chunked=True, mode="map")
        return result

    def starmap_async(self, func, iterable, chunksize=None, callback=None, error_callback=None):
        items = list(iterable)
        result = AsyncResult(self, len(items), callback, error_callback, single=False)
        self._submit(func, items, result, chunked=True, mode="star")
        return result

    def map(self, func, iterable, chunksize=None):
        return self.map_async(func, iterable).get()

    def starmap(self, func, iterable, chunksize=None):
        return self.starmap_async(func, iterable).get()

    def imap(self, func, iterable, chunksize=None):
        items = list(iterable)
        it = _Iter(self, len(items), ordered=True)
        self._submit(func, items, it, chunked=True, mode="map")
        return it

    def imap_unordered(self, func, iterable, chunksize=None):
        items = list(iterable)
        it = _Iter(self, len(items), ordered=False)
        self._submit(func, items, it, chunked=True, mode="map")
        return it

    def close(self):
        """No more tasks; the workers exit once the queued ones are done."""
        if self._state == "run":
            self._state = "close"
            self._close_core_when_fed()

    def _close_core_when_fed(self):
        # The engine's queue closes once every task is in it: none waits in
        # the backlog, and no chunk that may be split (if its worker dies)
        # is still out.
        with self._submit_lock:
            if self._core_closed or self._backlog:
                return
            if any(isinstance(e[0], _Chunk) for e in self._pending.values()):
                return
            self._core_closed = True
        self._core.close()

    def terminate(self):
        """Kill every worker now; tasks not done raise in their callers.
        (A pool with no task left to run is closed instead: its workers
        exit, and a journal records the run complete.)"""
        if self._state != "terminate" and not self._core_closed_killed():
            self._state = "terminate"
            self._finalizer.detach()
            return
        self._state = "terminate"
        self._core_closed = True
        self._core.terminate()
        self._core.join()
        if self._pump_lock.acquire(timeout=1):
            try:
                self._dispatch(self._core.collect(0))
                self._fail_pending("the pool was terminated")
            finally:
                self._pump_lock.release()
        self._finalizer.detach()

    def _core_closed_killed(self):
        """Ends an idle pool gracefully: True if it had to be killed (tasks
        left, or the workers did not exit in time), False if it ended."""
        with self._submit_lock:
            if self._pending or self._backlog:
                return True
            self._core_closed = True
        self._core.close()
        try:
            if self._core.join(10.0):
                return False
        except KeyboardInterrupt:
            pass
        return True

    def join(self):
        """Wait for the workers to exit (after ``close`` or ``terminate``)."""
        if self._state == "run":
            raise ValueError("Pool is still running")
        try:
            while not self._core.finished:
                self._pump_once(0.2)
            self._core.join()
            self._pump_once(0)
        except KeyboardInterrupt:
            self.terminate()
            raise
        self._finalizer.detach()

    def __enter__(self):
        self._check_running()
        return self

    def __exit__(self, *exc):
        # As multiprocessing.Pool: leaving the block terminates the pool.
        self.terminate()

    def __reduce__(self):
        raise NotImplementedError("pool objects cannot be passed between processes or pickled")


def _terminate_core(core):
    core.terminate()
    try:
        core.join(5.0)
    except BaseException:
        pass

"""jobmill_worker: long-lived jobmill workers in Python (standard library only).

A worker is started by ``jobmill run --persistent -- python3 script.py`` (or any
jobmill coordinator) and takes jobs until the queue is closed and drained::

    import jobmill_worker

    for job in jobmill_worker.jobs():
        job.complete(str(len(job.payload)).encode())   # or job.fail("message")

The loop ends when no job will ever come again: the queue was closed and
drained. There are no sentinels. ``Worker.try_get()`` raises ``Empty`` only
when the coordinator had no job queued when it answered.

The protocol runs on the socket named by ``$JOBMILL_FD``; the script's own
stdout and stderr stay free (jobmill captures them). Jobs arrive pipelined and
results leave in batches; a background thread writes any result within
``FLUSH_DELAY`` seconds, so results are never held back while a long job runs.
See docs/PROTOCOL.md for the wire format.

Large payloads (at least the coordinator's threshold, 64 KiB by default) come
through a shared-memory arena mapped once (``$JOBMILL_ARENA_FD``): such a
``job.payload`` is a read-only ``memoryview`` of the arena, not a copy, so
``numpy.frombuffer(job.payload, dtype=...)`` wraps it without copying. It is
valid until the job is completed or failed (the arena region is then reused;
the view is released, and a view kept past that point may see other bytes):
copy it with ``bytes(job.payload)`` to keep it. Large results (any bytes-like
object: bytes, bytearray, memoryview, a contiguous numpy array) are copied once
into the arena. See docs/PAYLOADS.md.
"""

import collections
import mmap
import os
import socket
import struct
import threading
import time
import traceback

__all__ = ["jobs", "serve", "Worker", "Job", "Closed", "Empty", "ProtocolError"]
__version__ = "0.2.0"

PROTOCOL_VERSION = 2
FD_ENV = "JOBMILL_FD"
STATE_FD_ENV = "JOBMILL_STATE_FD"
ARENA_FD_ENV = "JOBMILL_ARENA_FD"
CAP_RUNNING_PAGE = 1
CAP_ARENA = 2
RESULTS_CONSUMED = 8  # offset of the coordinator's count of consumed arena results
RESULT_ALIGN = 64
FLUSH_DELAY = 0.002
BATCH_ENTRIES = 256
BATCH_BYTES = 64 * 1024
READ_CHUNK = 256 * 1024

HELLO, WELCOME, REFUSE = 0x01, 0x02, 0x03
JOB, POLL_END, CLOSED = 0x10, 0x11, 0x12
RESULT, FAILURE, BATCH, POLL, LEAVING, HEARTBEAT = 0x20, 0x21, 0x22, 0x23, 0x24, 0x30

_HEADER = struct.Struct("<IB")  # body length, type
_JOB_HEADER = struct.Struct("<IBQQIB")  # a JOB's header and fields up to its payload kind
_JOB = struct.Struct("<QQIB")  # id, seq, attempt, payload kind
_WELCOME = struct.Struct("<HIIII")  # version, window, max_frame, heartbeat_ms, capabilities
_WELCOME2 = struct.Struct("<IQQ")  # version 2: arena threshold, job area, result area
_REF = struct.Struct("<QQ")  # arena offset, length
_RESULT_REF = struct.Struct("<IBQBQQ")  # header + id + kind 1 + offset + length
_RESULT = struct.Struct("<IBQB")  # header + id + payload kind
_FAILURE = struct.Struct("<IBQ")  # header + id
_U64 = struct.Struct("<Q")
_POLL_FRAME = _HEADER.pack(0, POLL)


class Closed(Exception):
    """No job will ever come: the queue is closed and drained."""


class Empty(Exception):
    """The coordinator had no job queued when it answered; more may come."""


class ProtocolError(Exception):
    """The channel to the coordinator failed or carried something unexpected."""


class Job:
    """One job: ``id``, ``seq`` (input order, from 1), ``attempt`` (from 1) and
    ``payload`` (bytes; a read-only memoryview of the arena for large payloads,
    valid until the job is answered). Finish it exactly once with ``complete``
    or ``fail``."""

    __slots__ = ("id", "seq", "attempt", "payload", "_worker", "_done")

    def __init__(self, worker, id, seq, attempt, payload):
        self.id, self.seq, self.attempt, self.payload = id, seq, attempt, payload
        self._worker, self._done = worker, False

    def complete(self, result=b""):
        """Report the job done with ``result`` (bytes-like, or str as UTF-8)."""
        # The hot path of every job: kept to a few attribute lookups.
        if type(result) is not bytes and isinstance(result, str):
            result = result.encode()
        if self._done:
            raise RuntimeError("job %d was already completed or failed" % self.id)
        self._done = True
        w = self._worker
        if type(result) is bytes and len(result) < w._inline_below:
            # Small bytes: inline, straight into the batch.
            n = len(result)
            w._push(self.id, (_RESULT.pack(9 + n, RESULT, self.id, 0), result), 14 + n)
        else:
            w._push_result(self.id, result)
        if type(self.payload) is memoryview:
            self._release()

    def fail(self, message):
        """Report the job failed: retried if attempts are left, then final."""
        self._finish()
        self._worker._push_failure(self.id, str(message).encode("utf-8", "replace"))
        self._release()

    def _release(self):
        # The arena region is reused after the answer: make the view unusable
        # (a numpy array still wrapping it keeps it, at the user's risk).
        if isinstance(self.payload, memoryview):
            try:
                self.payload.release()
            except BufferError:
                pass

    def _finish(self):
        if self._done:
            raise RuntimeError("job %d was already completed or failed" % self.id)
        self._done = True

    def __repr__(self):
        try:
            size = "%d bytes" % len(self.payload)
        except ValueError:  # a released arena view
            size = "released"
        return "Job(id=%d, seq=%d, attempt=%d, payload=%s)" % (self.id, self.seq, self.attempt, size)


class Worker:
    """A connection to the coordinator (from ``$JOBMILL_FD`` by default)."""

    def __init__(self, fd=None, sock=None):
        # The state page: where this worker keeps the id of the job it runs,
        # so that a crash is blamed on the right job. Optional.
        self._page = None
        page_fd = os.environ.get(STATE_FD_ENV) if sock is None else None
        if page_fd is not None:
            try:
                os.set_inheritable(int(page_fd), False)
                self._page = mmap.mmap(int(page_fd), 4096)
            except (OSError, ValueError):
                self._page = None
        # The payload arena: mapped once, for payloads above the threshold.
        self._arena = None
        arena_fd = os.environ.get(ARENA_FD_ENV) if self._page is not None else None
        if arena_fd is not None:
            try:
                os.set_inheritable(int(arena_fd), False)
                self._arena = mmap.mmap(int(arena_fd), 0)
            except (OSError, ValueError):
                self._arena = None
        if sock is None:
            if fd is None:
                value = os.environ.get(FD_ENV)
                if value is None:
                    raise ProtocolError(
                        "%s is not set: start this script with jobmill as a persistent worker" % FD_ENV)
                fd = int(value)
            os.set_inheritable(fd, False)  # children must not hold the channel open
            sock = socket.socket(fileno=fd)
        self._sock = sock
        self._buf = b""
        self._off = 0
        self._jobs = collections.deque()
        self._closed = False
        self._polls = 0
        self._taken = 0
        self._left = False
        self._max_frame = 64 << 20
        caps = CAP_RUNNING_PAGE if self._page is not None else 0
        if self._arena is not None:
            caps |= CAP_ARENA
        body = b"JMWP" + struct.pack("<HI", PROTOCOL_VERSION, caps) + b"python/jobmill_worker " + __version__.encode()
        self._sock.sendall(_HEADER.pack(len(body), HELLO) + body)
        kind, start, end = self._next_frame()
        if kind == REFUSE:
            version = struct.unpack_from("<H", self._buf, start)[0]
            reason = self._buf[start + 2:end].decode("utf-8", "replace")
            raise ProtocolError("the coordinator (protocol version %d) refused this worker: %s" % (version, reason))
        if kind != WELCOME or end - start not in (_WELCOME.size, _WELCOME.size + _WELCOME2.size):
            raise ProtocolError("expected WELCOME, got frame type 0x%02x" % kind)
        version, self.window, self._max_frame, beat_ms, granted = _WELCOME.unpack_from(self._buf, start)
        threshold = jobs_len = results_len = 0
        if version >= 2:
            if end - start != _WELCOME.size + _WELCOME2.size:
                raise ProtocolError("malformed version 2 WELCOME")
            threshold, jobs_len, results_len = _WELCOME2.unpack_from(self._buf, start + _WELCOME.size)
        if not granted & CAP_RUNNING_PAGE:
            self._page = None
        self._threshold = threshold
        # Results shorter than this go inline without further checks.
        self._inline_below = self._max_frame - 13
        self._jobs_len = jobs_len
        self._results_len = results_len
        self._view = None
        if self._arena is not None and granted & CAP_ARENA and self._page is not None:
            if len(self._arena) < jobs_len + results_len:
                raise ProtocolError("the arena has %d bytes, the coordinator announced %d"
                                    % (len(self._arena), jobs_len + results_len))
            self._view = memoryview(self._arena)
            self._ro = self._view.toreadonly()
            self._inline_below = min(self._inline_below, threshold)
        else:
            self._arena = None
        # The result ring: regions written in order, consumed in order.
        self._ring = collections.deque()
        self._ring_head = 0
        self._ring_seen = 0
        # The hot paths take the plain lock (a C-level context manager); the
        # condition wraps the same lock for the flusher's waits.
        self._mutex = threading.Lock()
        self._lock = threading.Condition(self._mutex)
        # The id written on the state page (0: none), mirrored here so that
        # answering a job need not read the page back.
        self._running = 0
        self._pending = []
        self._pending_count = 0
        self._pending_bytes = 0
        self._first_pending = None
        self._heartbeat = beat_ms / 1000.0 if beat_ms else None
        self._last_write = time.monotonic()
        self._error = None
        self._stop = False
        self._flusher = threading.Thread(target=self._flush_loop, name="jobmill-flush", daemon=True)
        self._flusher.start()

    # -- reading ------------------------------------------------------------

    def _recv(self, need):
        """Read until at least ``need`` bytes are buffered past the offset."""
        chunks = [self._buf[self._off:]]
        have = len(chunks[0])
        while True:
            data = self._sock.recv(max(READ_CHUNK, need - have))
            if not data:
                raise ProtocolError("the coordinator closed the connection")
            chunks.append(data)
            have += len(data)
            if have >= need:
                break
        self._buf = b"".join(chunks)
        self._off = 0

    def _next_frame(self):
        """The next whole frame as (type, body start, body end), reading as needed."""
        while True:
            avail = len(self._buf) - self._off
            if avail >= 5:
                n, kind = _HEADER.unpack_from(self._buf, self._off)
                if n > self._max_frame:
                    raise ProtocolError("frame of %d bytes exceeds the limit of %d" % (n, self._max_frame))
                if avail >= 5 + n:
                    start = self._off + 5
                    self._off = start + n
                    return kind, start, start + n
                self._recv(5 + n)
            else:
                self._recv(5)

    def _parse_buffered(self):
        """Handle every whole frame already buffered, without reading."""
        buf, off, end_all = self._buf, self._off, len(self._buf)
        append = self._jobs.append
        max_frame = self._max_frame
        job_header, header = _JOB_HEADER.unpack_from, _HEADER.unpack_from
        while True:
            # One unpack per job: the frame header and the JOB fields (junk
            # for other, shorter frames, and then unused).
            avail = end_all - off
            if avail >= 26:
                n, kind, id, seq, attempt, pkind = job_header(buf, off)
            elif avail >= 5:
                n, kind = header(buf, off)
            else:
                break
            if n > max_frame:
                raise ProtocolError("frame of %d bytes exceeds the limit of %d" % (n, max_frame))
            if avail < 5 + n:
                break
            start = off + 5
            off = start + n
            if kind == JOB:
                if n < 21:
                    raise ProtocolError("malformed JOB frame of %d bytes" % n)
                if pkind == 0:
                    append(Job(self, id, seq, attempt, buf[start + 21:off]))
                elif pkind == 1 and self._arena is not None and n == 37:
                    at, size = _REF.unpack_from(buf, start + 21)
                    if at + size > self._jobs_len:
                        raise ProtocolError("job %d is outside the arena's job area" % id)
                    append(Job(self, id, seq, attempt, self._ro[at:at + size]))
                else:
                    raise ProtocolError("unknown payload kind %d in JOB" % pkind)
            else:
                self._off = off
                self._control(kind, start, off)
        self._off = off

    def _control(self, kind, start, end):
        if kind == POLL_END:
            self._polls -= 1
        elif kind == CLOSED:
            self._closed = True
        elif kind != HEARTBEAT:
            raise ProtocolError("unexpected frame type 0x%02x from the coordinator" % kind)

    def _read(self):
        """Block for at least one more frame, then handle all buffered ones."""
        avail = len(self._buf) - self._off
        need = 5
        if avail >= 5:
            need = 5 + _HEADER.unpack_from(self._buf, self._off)[0]
        self._recv(need)
        self._parse_buffered()

    # -- getting jobs -------------------------------------------------------

    def _send_poll(self):
        with self._mutex:
            self._flush_locked(extra=_POLL_FRAME)
        self._polls += 1

    def get(self):
        """The next job, blocking. Raises ``Closed`` once no job will ever come."""
        # Two POLLs at most: the first answer may be a full window's; after
        # the second the coordinator sends the next job as soon as there is
        # one (polling on would spin while the queue is empty).
        jobs = self._jobs
        if jobs:
            # The hot path, _take inlined.
            job = jobs.popleft()
            self._taken += 1
            if self._page is not None:
                _U64.pack_into(self._page, 0, job.id)
                self._running = job.id
            return job
        polled = 0
        while True:
            if self._jobs:
                return self._take()
            if self._closed:
                self.flush()
                raise Closed()
            self._parse_buffered()
            if self._jobs or self._closed:
                continue
            if self._polls == 0 and polled < 2:
                self._send_poll()
                polled += 1
            self._read()

    def try_get(self):
        """The next job if the coordinator has one queued now.

        Raises ``Empty`` if it had none when it answered, ``Closed`` once no
        job will ever come."""
        if not self._jobs:
            self._parse_buffered()
        if not self._jobs:
            if self._closed:
                self.flush()
                raise Closed()
            # Answers come in order: ours is the last POLL_END outstanding.
            self._send_poll()
            while not self._jobs and not self._closed and self._polls > 0:
                self._read()
            if not self._jobs and not self._closed:
                # A full window is answered with nothing the first time (the
                # jobs sent meanwhile answer the POLL); asked again with
                # nothing sent since, the coordinator sends one past it.
                self._send_poll()
                while not self._jobs and not self._closed and self._polls > 0:
                    self._read()
        if self._jobs:
            return self._take()
        if self._closed:
            raise Closed()
        raise Empty()

    def _take(self):
        job = self._jobs.popleft()
        self._taken += 1
        if self._page is not None:
            _U64.pack_into(self._page, 0, job.id)
            self._running = job.id
        return job

    def __iter__(self):
        return jobs(self)

    # -- results ------------------------------------------------------------

    def _push(self, id, parts, size):
        if self._running == id:
            self._running = 0
            _U64.pack_into(self._page, 0, 0)
        with self._mutex:
            if self._error is not None:
                raise ProtocolError("writing to the coordinator failed: %s" % self._error)
            pending_bytes = self._pending_bytes + size
            if pending_bytes > self._max_frame:
                self._flush_locked()
                pending_bytes = size
            self._pending.extend(parts)
            count = self._pending_count + 1
            self._pending_count = count
            self._pending_bytes = pending_bytes
            if count >= BATCH_ENTRIES or pending_bytes >= BATCH_BYTES:
                self._flush_locked()
            elif self._first_pending is None:
                self._first_pending = time.monotonic()
                self._lock.notify()

    def _ring_alloc(self, n):
        """Offset in the arena of a free region of ``n`` bytes, or None."""
        consumed = _U64.unpack_from(self._page, RESULTS_CONSUMED)[0]
        ring = self._ring
        while self._ring_seen < consumed and ring:
            ring.popleft()
            self._ring_seen += 1
        n = -(-max(n, 1) // RESULT_ALIGN) * RESULT_ALIGN
        if not ring:
            self._ring_head = 0
            start = 0 if n <= self._results_len else None
        else:
            tail, head = ring[0][0], self._ring_head
            if head > tail:
                start = head if head + n <= self._results_len else (0 if n < tail else None)
            else:
                start = head if head + n < tail else None
        if start is None:
            return None
        ring.append((start, start + n))
        self._ring_head = start + n
        return self._jobs_len + start

    def _push_arena_result(self, id, result):
        """Copy a large result into the arena's result area; send a reference."""
        view = result if isinstance(result, memoryview) else memoryview(result)
        if view.ndim != 1 or view.format != "B":
            view = view.cast("B")
        n = view.nbytes
        if self._running == id:
            self._running = 0
            _U64.pack_into(self._page, 0, 0)
        spins = 0
        while True:
            with self._lock:
                if self._error is not None:
                    raise ProtocolError("writing to the coordinator failed: %s" % self._error)
                at = self._ring_alloc(n)
                if at is not None:
                    self._view[at:at + n] = view
                    self._pending.append(_RESULT_REF.pack(25, RESULT, id, 1, at, n))
                    self._pending_count += 1
                    self._pending_bytes += 30
                    self._flush_locked()
                    return
                # No room: hand the coordinator every earlier result first.
                self._flush_locked()
            spins += 1
            time.sleep(0 if spins < 64 else 0.0002)

    def _push_result(self, id, result):
        if self._arena is not None:
            n = len(result) if isinstance(result, (bytes, bytearray)) else memoryview(result).nbytes
            if self._threshold <= n <= self._results_len:
                return self._push_arena_result(id, result)
        if type(result) is not bytes:
            result = bytes(result)
        n = len(result)
        if 14 + n > self._max_frame:
            self._push_failure(id, b"result of %d bytes exceeds the frame limit of %d bytes"
                               % (n, self._max_frame))
            raise ProtocolError("result of job %d is too large (%d bytes)" % (id, n))
        self._push(id, (_RESULT.pack(9 + n, RESULT, id, 0), result), 14 + n)

    def _push_failure(self, id, message):
        message = message[: max(0, self._max_frame - 64)]
        self._push(id, (_FAILURE.pack(8 + len(message), FAILURE, id), message), 13 + len(message))

    def _flush_locked(self, extra=b""):
        if self._error is not None:
            raise ProtocolError("writing to the coordinator failed: %s" % self._error)
        out = b""
        if self._pending:
            body = b"".join(self._pending)
            out = _HEADER.pack(len(body), BATCH) + body
            self._pending = []
            self._pending_count = 0
            self._pending_bytes = 0
        self._first_pending = None
        if out or extra:
            try:
                self._sock.sendall(out + extra if extra else out)
            except OSError as e:
                self._error = e
                raise ProtocolError("writing to the coordinator failed: %s" % e)
            self._last_write = time.monotonic()

    def flush(self):
        """Write pending results now."""
        with self._lock:
            self._flush_locked()

    def _flush_loop(self):
        with self._lock:
            while not self._stop and self._error is None:
                now = time.monotonic()
                due = None if self._first_pending is None else self._first_pending + FLUSH_DELAY
                if self._heartbeat is not None:
                    beat = self._last_write + self._heartbeat
                    due = beat if due is None else min(due, beat)
                if due is None:
                    self._lock.wait()
                elif due > now:
                    self._lock.wait(due - now)
                else:
                    try:
                        if self._first_pending is not None and self._first_pending + FLUSH_DELAY <= now:
                            self._flush_locked()
                        else:
                            self._flush_locked(extra=_HEADER.pack(8, HEARTBEAT) + _U64.pack(0))
                    except ProtocolError:
                        return

    def close(self):
        """Write pending results and end the connection. If the queue was not
        closed, say LEAVING so that jobs received but never taken go back to
        the queue with no attempt counted."""
        if self._left:
            return
        self._left = True
        with self._lock:
            extra = b"" if self._closed else _HEADER.pack(8, LEAVING) + _U64.pack(self._taken)
            try:
                self._flush_locked(extra=extra)
            finally:
                self._stop = True
                self._lock.notify()
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def jobs(worker=None):
    """Yield jobs until the queue is closed and drained, then close the worker.

    A job that the loop body neither completed nor failed is failed when the
    loop moves on."""
    w = worker if worker is not None else Worker()
    get = w.get
    try:
        while True:
            try:
                job = get()
            except Closed:
                return
            yield job
            if not job._done:
                job.fail("the worker moved on without completing or failing the job")
    finally:
        w.close()


def serve(fn, worker=None):
    """Run ``fn(job)`` on every job: its return value (bytes or str, None for
    empty) completes the job; an exception fails it with the traceback."""
    for job in jobs(worker):
        try:
            result = fn(job)
        except Exception:
            job.fail(traceback.format_exc())
            continue
        job.complete(b"" if result is None else result)

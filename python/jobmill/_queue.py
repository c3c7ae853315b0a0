"""jobmill.Queue: the seed's pattern done right.

The process that creates a Queue owns it: a jobmill ``MemoryQueue`` (Rust)
served on a Unix socket in a private temporary directory. The object pickles
to that socket's path, so a process started with ``multiprocessing`` (spawn,
forkserver) reconnects; after a fork, the child notices that its process id
changed and connects too. Every request is answered only once the owner's
queue has applied it: ``put`` returns once the item is queued, and
``get(block=False)`` raises ``queue.Empty`` only when nothing is queued.
"""
import os
import queue as _stdqueue
import threading
import weakref
from multiprocessing.reduction import ForkingPickler
import pickle

from . import _jobmill
from ._jobmill import Closed


def _reconnect(path):
    q = Queue.__new__(Queue)
    q._path = path
    q._pid = None
    q._core = None
    q._lock = threading.Lock()
    return q


class Queue:
    """A FIFO queue shared by processes; the methods of ``multiprocessing.Queue``.

    After ``close()``, once drained, ``get()`` raises ``jobmill.Closed`` and
    ``for item in q`` ends: consumers need no sentinels.
    """

    def __init__(self, maxsize=0, *, ctx=None):
        core = _jobmill.QueueCore.create(maxsize if maxsize and maxsize > 0 else 0)
        self._path = str(core.path)
        self._pid = os.getpid()
        self._core = core
        self._lock = threading.Lock()
        weakref.finalize(self, core.shutdown)

    # multiprocessing pickles the queue when it passes it to a spawned child.
    def __reduce__(self):
        return (_reconnect, (self._path,))

    def __getstate__(self):  # pragma: no cover - __reduce__ is used
        raise TypeError("use pickling through __reduce__")

    def _c(self):
        pid = os.getpid()
        if self._pid != pid:
            with self._lock:
                if self._pid != pid:
                    self._core = _jobmill.QueueCore.connect(self._path)
                    self._pid = pid
        return self._core

    def put(self, obj, block=True, timeout=None):
        """Queue ``obj`` (pickled now); returns once it is in the queue."""
        data = bytes(ForkingPickler.dumps(obj))
        if not self._c().put(data):
            raise ValueError("Queue is closed")

    def put_nowait(self, obj):
        return self.put(obj, False)

    def get(self, block=True, timeout=None):
        """Take an item. ``queue.Empty`` when none is queued (after ``timeout``),
        ``jobmill.Closed`` once closed and drained."""
        try:
            data = self._c().get(block, timeout)
        except _jobmill.Empty:
            raise _stdqueue.Empty from None
        return pickle.loads(data)

    def get_nowait(self):
        return self.get(False)

    def qsize(self):
        return self._c().qsize()

    def empty(self):
        return self.qsize() == 0

    def full(self):
        return False

    def close(self):
        """No more items: consumers end once the queue is drained."""
        self._c().close()

    def join_thread(self):
        """Nothing to wait for: a put returns once its item is queued."""

    def cancel_join_thread(self):
        """Nothing to cancel (there is no feeder thread)."""

    def __iter__(self):
        while True:
            try:
                yield self.get()
            except Closed:
                return

    def __repr__(self):
        return f"<jobmill.Queue {self._path}>"

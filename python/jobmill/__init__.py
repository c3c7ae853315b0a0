"""jobmill from Python.

- ``jobmill.Queue()``: a ``multiprocessing.Queue`` with exact semantics (no
  false empty, ``Closed`` instead of sentinels), usable from processes started
  with ``multiprocessing`` (fork, spawn, forkserver).
- ``jobmill.Pool(...)``: a ``multiprocessing.Pool`` whose workers are supervised
  by jobmill's engine: a task whose worker dies runs again on a fresh worker,
  a timeout fails only its task, Ctrl-C never hangs.
- ``jobmill_worker`` / ``jobmill.worker``: long-lived workers for the
  ``jobmill`` command (``jobmill run --persistent``).
"""
from ._jobmill import Closed, Empty as _NativeEmpty  # noqa: F401
from ._queue import Queue
from ._pool import Pool, AsyncResult, WorkerLost, RemoteTraceback, TaskRefused
from ._executor import Executor

__all__ = ["Queue", "Pool", "Executor", "AsyncResult", "Closed", "WorkerLost", "RemoteTraceback",
           "TaskRefused"]
__version__ = "0.2.0"

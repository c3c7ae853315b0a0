"""jobmill.Executor: a ``concurrent.futures.Executor`` over ``jobmill.Pool``."""
import concurrent.futures
import threading
import time

from ._pool import Pool


class Executor(concurrent.futures.Executor):
    """``ProcessPoolExecutor``'s API over a ``jobmill.Pool``: a worker that dies
    fails (after ``max_lost`` reruns) only its own future with
    ``jobmill.WorkerLost``; the executor keeps working.

    Keyword arguments other than ``max_workers``, ``initializer`` and
    ``initargs`` go to ``jobmill.Pool`` (``retries``, ``max_lost``,
    ``timeout``, ...).
    """

    def __init__(self, max_workers=None, mp_context=None, initializer=None, initargs=(), **kwargs):
        self._pool = Pool(max_workers, initializer, initargs, **kwargs)
        self._lock = threading.Lock()
        self._shutdown = False
        self._futures = set()

    def submit(self, fn, /, *args, **kwargs):
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            future = concurrent.futures.Future()
            self._futures.add(future)

        def done(value, ok):
            with self._lock:
                self._futures.discard(future)
            if future.set_running_or_notify_cancel():
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)

        self._pool.apply_async(fn, args, kwargs,
                               callback=lambda v: done(v, True),
                               error_callback=lambda e: done(e, False))
        # Callbacks run in whichever thread collects results; make sure one
        # does, so that futures complete even if nobody waits on the pool.
        self._ensure_collector()
        return future

    def _ensure_collector(self):
        if getattr(self, "_collector", None) is None or not self._collector.is_alive():
            self._collector = threading.Thread(target=self._collect, name="jobmill-executor", daemon=True)
            self._collector.start()

    def _collect(self):
        pool = self._pool
        while True:
            with self._lock:
                if not self._futures and (self._shutdown or not pool._pending):
                    return
            if pool._core.finished and not pool._pending:
                return
            pool._pump_once(0.1)

    def map(self, fn, *iterables, timeout=None, chunksize=1):
        end = None if timeout is None else time.monotonic() + timeout
        futures = [self.submit(fn, *args) for args in zip(*iterables)]

        def results():
            try:
                for f in futures:
                    left = None if end is None else max(0.0, end - time.monotonic())
                    yield f.result(left)
            finally:
                for f in futures:
                    f.cancel()

        return results()

    def shutdown(self, wait=True, *, cancel_futures=False):
        with self._lock:
            self._shutdown = True
            futures = list(self._futures)
        if cancel_futures:
            for f in futures:
                f.cancel()
        if cancel_futures or not wait:
            if cancel_futures:
                self._pool.terminate()
            else:
                self._pool.close()
            return
        try:
            concurrent.futures.wait(futures)
        except KeyboardInterrupt:
            self._pool.terminate()
            raise
        self._pool.close()
        self._pool.join()

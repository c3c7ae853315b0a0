"""The worker process of ``jobmill.Pool``: ``python -m jobmill.worker``.

jobmill's coordinator starts and supervises these processes and feeds them
tasks over the worker protocol (``jobmill_worker``). A task's payload is the
pickle of ``(function, args, kwargs)`` with the function by reference (module
and qualified name), or by value when the caller pickled it with cloudpickle.
Its result is the pickle of the return value; an exception fails the task
with the pickled exception and its traceback.

Also exports the worker library: ``from jobmill.worker import jobs, Worker``.
"""
import base64
import json
import os
import pickle
import runpy
import signal
import sys
import traceback

import jobmill_worker
from jobmill_worker import Closed, Empty, Job, Worker, jobs, serve  # noqa: F401

from jobmill import _wire
from jobmill._wire import CHUNK, CHUNK_MAP, CHUNK_STAR, CHUNKS, EXC_PREFIX


def _die_with_parent():
    """The pool's workers die with the caller, even if it is SIGKILLed."""
    parent = os.environ.get("JOBMILL_PY_PARENT")
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except Exception:
        return
    if parent and os.getppid() != int(parent):
        os._exit(1)


def _setup():
    # The caller's Ctrl-C is the caller's: the coordinator stops workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    paths = os.environ.get("JOBMILL_PY_SYS_PATH")
    if paths:
        for p in reversed(json.loads(paths)):
            if p not in sys.path:
                sys.path.insert(0, p)
    main_mod = os.environ.get("JOBMILL_PY_MAIN_MODULE")
    main_path = os.environ.get("JOBMILL_PY_MAIN_PATH")
    # As multiprocessing's spawn does: the caller's main module runs again as
    # __mp_main__ (its `if __name__ == "__main__":` part does not), so that
    # functions defined in it can be found by reference.
    if main_mod or main_path:
        try:
            if main_mod:
                ns = runpy.run_module(main_mod, run_name="__mp_main__", alter_sys=False)
            else:
                ns = runpy.run_path(main_path, run_name="__mp_main__")
            import types

            mod = types.ModuleType("__mp_main__")
            mod.__dict__.update(ns)
            sys.modules["__mp_main__"] = mod
            sys.modules["__main__"] = mod
        except BaseException:
            traceback.print_exc()
    init = os.environ.get("JOBMILL_PY_INITIALIZER")
    if init:
        fn, args = pickle.loads(base64.b64decode(init))
        fn(*args)


def _exception_message(exc):
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        blob = pickle.dumps((exc, tb), protocol=pickle.HIGHEST_PROTOCOL)
        pickle.loads(blob)
    except BaseException:
        blob = pickle.dumps((None, tb), protocol=pickle.HIGHEST_PROTOCOL)
    # A readable line first (what `jobmill status` shows of a journal's
    # failures), then the pickle the caller raises again.
    try:
        summary = " ".join(traceback.format_exception_only(type(exc), exc)).strip()
    except BaseException:
        summary = type(exc).__name__
    summary = " ".join(summary.split())[:300]
    return summary + " " + EXC_PREFIX + base64.b64encode(blob).decode("ascii")


def _check_feeder():
    """On a shared queue, run only tasks whose signatures the coordinator
    checked: unpickling runs code, and anyone who can write to the queue
    could otherwise run anything here."""
    if os.environ.get("JOBMILL_PY_PARENT"):
        return  # a local jobmill.Pool's worker: tasks come from its caller
    if os.environ.get("JOBMILL_TASKS_VERIFIED") != "1":
        sys.stderr.write(
            "jobmill.worker: refusing to run: on a shared queue, start it as\n"
            "  jobmill worker --queue URL --persistent -- python -m jobmill.worker\n"
            "with JOBMILL_KEY_FILE (or JOBMILL_KEY) set to the key of the jobmill.Pool that\n"
            "submits the tasks, so that every task's signature is checked before it is\n"
            "unpickled.\n")
        sys.stderr.flush()
        sys.exit(2)


def _load(payload, cache):
    if payload[:len(_wire.TASK_MAGIC)] == _wire.TASK_MAGIC:
        # Checked by the coordinator; the body keeps its alignment.
        payload = memoryview(payload)[_wire.SIGNED_HEADER:]
    fkey, args, kwargs = _wire.loads(payload)
    fn = cache.get(fkey)
    if fn is None:
        fn = pickle.loads(fkey)
        if len(cache) > 64:
            cache.clear()
        cache[fkey] = fn
    return fn, args, kwargs


def _call(fn, kind, x):
    if kind == CHUNK_MAP:
        return fn(x)
    if kind == CHUNK_STAR:
        return fn(*x)
    return fn(*x[0], **x[1])


def _run_chunk(fn, kind, items):
    """Runs every task of a chunk once, in order; each keeps its own verdict."""
    values, errors = [], {}
    append = values.append
    start = 0
    while start < len(items):
        try:
            if kind == CHUNK_MAP:
                for x in items[start:] if start else items:
                    append(fn(x))
            elif kind == CHUNK_STAR:
                for x in items[start:] if start else items:
                    append(fn(*x))
            else:
                for a, k in items[start:] if start else items:
                    append(fn(*a, **k))
            break
        except BaseException as exc:
            errors[len(values)] = _exception_message(exc)
            append(None)
            start = len(values)
    return values, errors


def main():
    _check_feeder()
    _setup()
    maxtasks = int(os.environ.get("JOBMILL_PY_MAXTASKS") or 0)
    cache = {}
    done = 0
    worker = Worker()
    for job in jobs(worker):
        try:
            fn, args, kwargs = _load(job.payload, cache)
            if isinstance(args, str) and args in CHUNKS:
                result = _run_chunk(fn, args, kwargs)
            else:
                result = fn(*args, **kwargs)
            data = _wire.dumps(result)
            del result, args, kwargs  # views of the payload end with the task
        except BaseException as exc:  # the task's verdict, whatever it is
            job.fail(_exception_message(exc))
        else:
            # One newline ends every result (the engine's record); the caller
            # strips it.
            job.complete(data + b"\n")
        done += 1
        if maxtasks and done >= maxtasks:
            break
    worker.close()


if __name__ == "__main__":
    main()

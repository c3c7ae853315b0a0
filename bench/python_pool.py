#!/usr/bin/env python3
"""jobmill.Pool against multiprocessing.Pool, ProcessPoolExecutor and joblib,
side by side in one run with 2 workers (issue 11's benchmark).

Workloads: tiny tasks (the identity function), numpy arrays of 1 MiB and
64 MiB summed in the worker (each peer in a fresh process per round, rounds
interleaved, the median of --rounds), and faults: a worker SIGKILLed mid-map, and
Ctrl-C (SIGINT to the process group) mid-map, each in a fresh process, a
trial counted as passed when the map completes (killed worker) or the caller
exits (Ctrl-C) before a deadline; a hang counts as a failure.

Needs: the jobmill package, numpy, joblib (pip install ./python numpy joblib).
Not part of the test command.

usage: python bench/python_pool.py [--tiny N] [--faults TRIALS] [--skip-arrays] [--rounds R]
"""
import argparse
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

import jobmill

W = 2


def ident(x):
    return x


def array_sum(a):
    return float(a.sum())


def rate(fn, n):
    t = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t)


def line(name, workload, per_s, unit, base=None):
    ratio = "" if base is None else f"  {per_s / base:6.2f}x"
    print(f"{name:34s} {workload:8s} {per_s:14,.0f} {unit}{ratio}", flush=True)


def tiny(n):
    print(f"# tiny tasks (identity), {n} items, {W} workers", flush=True)
    with mp.Pool(W) as p:
        mp_imap = rate(lambda: sum(1 for _ in p.imap(ident, range(n))), n)
        mp_map = rate(lambda: p.map(ident, range(n)), n)
    with ProcessPoolExecutor(W) as ex:
        ppe = rate(lambda: list(ex.map(ident, range(n))), n)
    try:
        from joblib import Parallel, delayed

        jl = rate(lambda: Parallel(n_jobs=W)(delayed(ident)(i) for i in range(n)), n)
    except ImportError:
        jl = None
    with jobmill.Pool(W) as p:
        p.map(ident, range(5000))  # workers started and warm
        jm_imap = rate(lambda: sum(1 for _ in p.imap(ident, range(n))), n)
        jm_map = rate(lambda: p.map(ident, range(n)), n)
    line("mp.Pool.imap chunksize=1", "tiny", mp_imap, "items/s")
    line("mp.Pool.map default chunksize", "tiny", mp_map, "items/s")
    line("ProcessPoolExecutor.map", "tiny", ppe, "items/s")
    if jl is not None:
        line("joblib (loky)", "tiny", jl, "items/s")
    line("jobmill.Pool.imap vs mp imap cs=1", "tiny", jm_imap, "items/s", mp_imap)
    line("jobmill.Pool.map vs mp map", "tiny", jm_map, "items/s", mp_map)


SIZES = {"1MiB": (1 << 20, 400), "64MiB": (64 << 20, 12)}
PEERS = ["mp", "ppe", "jl", "jm"]


def one(peer, wl):
    """Two maps of ``wl``'s arrays through one pool of ``peer``, in this
    (fresh) process: MB/s of the first and of the second."""
    size, count = SIZES[wl]
    base = [np.full(size // 8, i, dtype=np.float64) for i in range(4)]
    items = [base[i % 4] for i in range(count)]
    total = size * count / 1e6
    # Every pool's workers are started (a map of tiny tasks) before timing.
    if peer == "mp":
        with mp.Pool(W) as p:
            p.map(ident, range(10))
            return [rate(lambda: list(p.imap(array_sum, items)), 1) * total for _ in range(2)]
    if peer == "ppe":
        with ProcessPoolExecutor(W) as ex:
            list(ex.map(ident, range(10)))
            return [rate(lambda: list(ex.map(array_sum, items)), 1) * total for _ in range(2)]
    if peer == "jl":
        from joblib import Parallel, delayed

        with Parallel(n_jobs=W) as par:
            par(delayed(ident)(i) for i in range(10))
            return [rate(lambda: par(delayed(array_sum)(a) for a in items), 1) * total for _ in range(2)]
    with jobmill.Pool(W) as p:
        p.map(ident, range(10))
        return [rate(lambda: list(p.imap(array_sum, items)), 1) * total for _ in range(2)]


def arrays(rounds):
    """Each peer in a fresh process and a fresh pool per round (as the
    issue measured its peers: a second workload in the same process finds
    the allocator warmed by the first, which doubled mp.Pool's 1 MiB figure
    here), rounds interleaved so that load on a shared machine hits every
    peer alike. Each figure is the median over the rounds of the pool's
    first map of arrays (its workers started by a map of tiny tasks,
    nothing of the arrays cached); the second map through the same pool is
    shown beside it (joblib then reuses the files of the same arrays)."""
    from statistics import median

    try:
        import joblib  # noqa: F401

        peers = PEERS
    except ImportError:
        peers = [p for p in PEERS if p != "jl"]
    for wl, (size, count) in SIZES.items():
        print(f"# numpy arrays of {wl}, {count} items summed in the worker, {W} workers, "
              f"median of {rounds} rounds (first map; second map)", flush=True)
        got = {k: [] for k in peers}
        for _ in range(rounds):
            for k in peers:
                out = subprocess.run([sys.executable, os.path.abspath(__file__), "--one", k, wl],
                                     capture_output=True, text=True, timeout=600, check=True)
                got[k].append([float(x) for x in out.stdout.split()[-2:]])
        first = {k: median(r[0] for r in v) for k, v in got.items()}
        second = {k: median(r[1] for r in v) for k, v in got.items()}
        print("# first maps, MB/s: " + "; ".join(f"{k} {[round(r[0]) for r in v]}" for k, v in got.items()),
              flush=True)
        names = {"mp": "mp.Pool.imap", "ppe": "ProcessPoolExecutor.map", "jl": "joblib (loky, memmap)"}
        for k in peers:
            if k != "jm":
                line(names[k], wl, first[k], "MB/s")
        line("jobmill.Pool.imap vs mp.Pool", wl, first["jm"], "MB/s", first["mp"])
        if "jl" in first:
            line("jobmill.Pool.imap vs joblib", wl, first["jm"], "MB/s", first["jl"])
        line("  second map: jobmill vs mp.Pool", wl, second["jm"], "MB/s", second["mp"])
        if "jl" in second:
            line("  second map: jobmill vs joblib", wl, second["jm"], "MB/s", second["jl"])


FAULT = textwrap.dedent('''
    import os, signal, sys, time
    sys.path.insert(0, {here!r})
    import python_pool as b

    def kill_once(x):
        marker = os.environ["BENCH_MARKER"]
        if x == 5 and not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return x

    def slow(x):
        time.sleep(3600)

    if __name__ == "__main__":
        peer, fault = sys.argv[1], sys.argv[2]
        fn = kill_once if fault == "kill" else slow
        items = range(20) if fault == "kill" else range(4)
        if peer == "jobmill":
            import jobmill
            pool = jobmill.Pool(2)
            run = lambda: pool.map(fn, items)
        elif peer == "mp.Pool":
            import multiprocessing
            pool = multiprocessing.Pool(2)
            run = lambda: pool.map(fn, items)
        elif peer == "ProcessPoolExecutor":
            from concurrent.futures import ProcessPoolExecutor
            pool = ProcessPoolExecutor(2)
            run = lambda: list(pool.map(fn, items))
        else:
            from joblib import Parallel, delayed
            run = lambda: Parallel(n_jobs=2)(delayed(fn)(i) for i in items)
        print("ready", flush=True)
        result = run()
        print("ok" if list(result) == list(items) else "wrong", flush=True)
''')


def fault_trial(script, peer, fault, deadline=30.0):
    with tempfile.TemporaryDirectory() as d:
        env = dict(os.environ, BENCH_MARKER=os.path.join(d, "marker"))
        proc = subprocess.Popen([sys.executable, script, peer, fault], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True, env=env, start_new_session=True)
        try:
            if proc.stdout.readline().strip() != "ready":
                return False
            if fault == "sigint":
                time.sleep(1.0)  # let the tasks start
                os.killpg(proc.pid, signal.SIGINT)
                proc.wait(timeout=deadline)
                return True
            out, _ = proc.communicate(timeout=deadline)
            return out.strip() == "ok"
        except subprocess.TimeoutExpired:
            return False
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()


def faults(trials):
    here = os.path.dirname(os.path.abspath(__file__))
    with tempfile.TemporaryDirectory() as d:
        script = os.path.join(d, "fault.py")
        with open(script, "w") as f:
            f.write(FAULT.format(here=here))
        for fault, what in [("kill", "a worker SIGKILLed mid-map"), ("sigint", "Ctrl-C mid-map")]:
            print(f"# faults: {what}, {trials} trials (a hang past 30 s is a failure)", flush=True)
            for peer in ["jobmill", "mp.Pool", "ProcessPoolExecutor", "joblib"]:
                passed = sum(fault_trial(script, peer, fault) for _ in range(trials))
                print(f"{peer:34s} {fault:8s} passed={passed}/{trials}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", type=int, default=20000)
    ap.add_argument("--faults", type=int, default=20)
    ap.add_argument("--skip-arrays", action="store_true")
    ap.add_argument("--rounds", type=int, default=5, help="rounds of the array workloads (median)")
    ap.add_argument("--one", nargs=2, metavar=("PEER", "SIZE"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(*one(*a.one))
        return
    tiny(a.tiny)
    if not a.skip_arrays:
        arrays(a.rounds)
    if a.faults:
        faults(a.faults)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
# TEST FIXTURE: a copy of ../shared/peers/seed_mp_queue.py (the seed's
# experiment) with exactly one change, as issue 11 asks: in trial(),
# `multiprocessing.Queue()` is replaced by `jobmill.Queue()` (and `import
# jobmill` added). Nothing else differs.
"""The seed's experiment on Python's multiprocessing.Queue, for Python 3.

A queue is filled with ITEMS lists of SIZE integers, then WORKERS processes
drain it. A trial passes when the queue is empty after every worker exits.
Two worker strategies are compared:
  nonblocking-until-empty  get(block=False) until queue.Empty is raised
  sentinel-per-worker      blocking get() until a None sentinel arrives
Prints one line per strategy:  strategy=NAME passed=P/T seconds=S
"""
import argparse
import multiprocessing
import queue
import time

import jobmill


def worker_nonblocking(jobs):
    while True:
        try:
            jobs.get(block=False)
        except queue.Empty:
            break


def worker_sentinel(jobs):
    while jobs.get() is not None:
        pass


def trial(items, size, workers, strategy):
    jobs = jobmill.Queue()
    # Items left behind would otherwise make this process hang at exit, waiting
    # for its feeder thread to flush them into a pipe that nobody reads.
    jobs.cancel_join_thread()
    for _ in range(items):
        jobs.put(list(range(size)))
    if strategy == "sentinel-per-worker":
        for _ in range(workers):
            jobs.put(None)
        target = worker_sentinel
    else:
        target = worker_nonblocking
    procs = [multiprocessing.Process(target=target, args=(jobs,)) for _ in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    return jobs.empty()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=8)
    ap.add_argument("--size", type=int, default=10000)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--trials", type=int, default=100)
    a = ap.parse_args()
    for strategy in ("nonblocking-until-empty", "sentinel-per-worker"):
        t0 = time.perf_counter()
        passed = sum(trial(a.items, a.size, a.workers, strategy) for _ in range(a.trials))
        print(f"strategy={strategy} passed={passed}/{a.trials} seconds={time.perf_counter() - t0:.2f}", flush=True)


if __name__ == "__main__":
    main()

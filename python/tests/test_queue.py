"""Milestone 2: jobmill.Queue, from processes started by multiprocessing."""
import multiprocessing
import os
import pickle
import queue
import subprocess
import sys
import threading

import pytest

import jobmill
import seed_mp_queue_jobmill as seed

HERE = os.path.dirname(os.path.abspath(__file__))
METHODS = ["fork", "spawn", "forkserver"]


def test_seed_script_passes_100_of_100():
    out = subprocess.run([sys.executable, os.path.join(HERE, "seed_mp_queue_jobmill.py")],
                         capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2, out.stdout
    for line in lines:
        assert "passed=100/100" in line, out.stdout


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
@pytest.mark.parametrize("strategy", ["nonblocking-until-empty", "sentinel-per-worker"])
def test_seed_trials_with_other_start_methods(method, strategy, monkeypatch):
    ctx = multiprocessing.get_context(method)
    monkeypatch.setattr(seed.multiprocessing, "Process", ctx.Process)
    passed = sum(seed.trial(8, 10000, 4, strategy) for _ in range(20))
    assert passed == 20


def test_put_get_in_order_and_exact_empty():
    q = jobmill.Queue()
    assert q.empty() and q.qsize() == 0
    with pytest.raises(queue.Empty):
        q.get(block=False)
    with pytest.raises(queue.Empty):
        q.get_nowait()
    with pytest.raises(queue.Empty):
        q.get(timeout=0.05)
    for i in range(100):
        q.put({"i": i, "data": b"x" * i})
    assert q.qsize() == 100 and not q.empty()
    assert [q.get()["i"] for _ in range(100)] == list(range(100))
    assert q.empty()


def test_close_then_drain_raises_closed_and_iteration_ends():
    q = jobmill.Queue()
    for i in range(5):
        q.put(i)
    q.close()
    assert list(q) == [0, 1, 2, 3, 4]
    with pytest.raises(jobmill.Closed):
        q.get()
    with pytest.raises(jobmill.Closed):
        q.get(block=False)
    with pytest.raises(ValueError):
        q.put(6)
    q.join_thread()
    q.cancel_join_thread()


def _produce(q, start, n):
    for i in range(start, start + n):
        q.put(i)


def _consume(q, out):
    total = []
    for item in q:
        total.append(item)
    out.put(total)


@pytest.mark.parametrize("method", METHODS)
def test_children_produce_and_consume_without_sentinels(method):
    ctx = multiprocessing.get_context(method)
    jobs, results = jobmill.Queue(), jobmill.Queue()
    producers = [ctx.Process(target=_produce, args=(jobs, k * 1000, 500)) for k in range(2)]
    consumers = [ctx.Process(target=_consume, args=(jobs, results)) for _ in range(3)]
    for p in producers + consumers:
        p.start()
    for p in producers:
        p.join()
        assert p.exitcode == 0
    jobs.close()
    got = []
    for _ in consumers:
        got.extend(results.get(timeout=120))
    for p in consumers:
        p.join()
        assert p.exitcode == 0
    assert sorted(got) == sorted(list(range(0, 500)) + list(range(1000, 1500)))


def test_nonblocking_get_never_empty_while_items_are_queued():
    # A put returns once the item is queued: a get after it always finds it.
    q = jobmill.Queue()
    for i in range(2000):
        q.put(i)
        assert q.get(block=False) == i


def test_pickles_to_its_address():
    q = jobmill.Queue()
    q.put("hello")
    other = pickle.loads(pickle.dumps(q))
    assert other.get() == "hello"


def test_blocking_get_waits_for_a_put_from_a_thread():
    q = jobmill.Queue()
    t = threading.Timer(0.2, q.put, args=("late",))
    t.start()
    assert q.get(timeout=60) == "late"
    t.join()

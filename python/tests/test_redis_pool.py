"""jobmill.Pool(queue="redis://..."): signed tasks on a real Redis server,
run by `jobmill worker` processes; a task changed in Redis is refused."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

import jobmill
import tasks

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.dirname(sys.executable)
KEY = "k" * 16 + "-test-signing-key"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis(port, *args):
    """One command to the server (RESP), its reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        parts = [f"*{len(args)}\r\n".encode()]
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(a), a))
        s.sendall(b"".join(parts))
        f = s.makefile("rb")
        return _reply(f)


def _reply(f):
    line = f.readline().rstrip(b"\r\n")
    kind, rest = line[:1], line[1:]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)[:-2]
        return data
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_reply(f) for _ in range(n)]
    raise RuntimeError(f"unexpected reply {line!r}")


@pytest.fixture
def redis_port(tmp_path):
    exe = shutil.which("redis-server")
    # A missing server fails the test: never a silent skip.
    assert exe, "the Redis tests need a real redis-server on PATH (Debian: apt-get install redis-server)"
    port = free_port()
    proc = subprocess.Popen([exe, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                             "--dir", str(tmp_path)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            if redis(port, "PING") == "PONG":
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, "redis-server did not answer PING"
        time.sleep(0.01)
    yield port
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture
def key_file(tmp_path, monkeypatch):
    path = tmp_path / "key"
    path.write_text(KEY + "\n")
    monkeypatch.setenv("JOBMILL_KEY_FILE", str(path))
    monkeypatch.delenv("JOBMILL_KEY", raising=False)
    return str(path)


def start_worker(url, key_file, stderr):
    env = dict(os.environ, PYTHONPATH=HERE, JOBMILL_KEY_FILE=key_file)
    env.pop("JOBMILL_KEY", None)
    # stdout: a pipe (jobmill refuses to run with a stdout of /dev/null
    # opened read-write, the way a closed stdout looks); nothing is printed
    # on it by a worker with a key.
    return subprocess.Popen(
        [os.path.join(BIN, "jobmill"), "worker", "--queue", url, "--persistent", "-j", "1", "--",
         sys.executable, "-m", "jobmill.worker"],
        stdout=subprocess.PIPE, stderr=stderr, env=env)


def stop_workers(workers):
    for w in workers:
        try:
            out, _ = w.communicate(timeout=120)
            assert out == b"", "a worker with a key prints no result"
        except subprocess.TimeoutExpired:
            w.kill()
            w.wait()
            raise AssertionError("a worker did not end once the queue was closed and drained")


def test_redis_pool_with_two_workers_returns_200_results_in_order(redis_port, key_file, tmp_path):
    url = f"redis://127.0.0.1:{redis_port}/pool200"
    pool = jobmill.Pool(2, queue=url)
    workers = [start_worker(url, key_file, subprocess.DEVNULL) for _ in range(2)]
    try:
        got = pool.map_async(tasks.square, range(200)).get(timeout=300)
        assert got == [x * x for x in range(200)]
        it = pool.imap(tasks.square, range(50))
        assert [it.next(timeout=300) for _ in range(50)] == [x * x for x in range(50)]
        # A task's exception comes back (signed) with its traceback.
        with pytest.raises(ValueError, match="bad item 3"):
            pool.apply_async(tasks.boom, (3,)).get(timeout=300)
        pool.close()
        pool.join()
    finally:
        pool.terminate()
        stop_workers(workers)
    assert [w.returncode for w in workers] == [0, 0]


def test_redis_pool_task_changed_in_redis_is_refused_and_recorded_dead(redis_port, key_file, tmp_path):
    url = f"redis://127.0.0.1:{redis_port}/tamper"
    pool = jobmill.Pool(1, queue=url)
    try:
        # A payload over 16 KiB lives in its own key: change one byte there.
        big = pool.apply_async(tasks.identity, (b"a" * 20000,))
        keys = redis(redis_port, "KEYS", "jm:{tamper}:p:*")
        assert len(keys) == 1, keys
        redis(redis_port, "SETRANGE", keys[0], 20000, "b")
        good = pool.apply_async(tasks.square, (7,))
        err = open(tmp_path / "worker.err", "wb")
        worker = start_worker(url, key_file, err)
        with pytest.raises(jobmill.TaskRefused, match="signature does not match"):
            big.get(timeout=120)
        assert good.get(timeout=120) == 49
        pool.close()
        pool.join()
    finally:
        pool.terminate()
    stop_workers([worker])
    err.close()
    # The worker said why; the job is dead with the reason in its record.
    said = (tmp_path / "worker.err").read_text()
    assert "refused job" in said and "(seq 1)" in said and "signature does not match" in said, said
    dead = redis(redis_port, "HGETALL", "jm:{tamper}:d")
    records = [json.loads(v) for v in dead[1::2]]
    assert [(r["state"], r["reason"]) for r in records] == [
        ("dead", "refused: the task's signature does not match (a wrong key, or it was changed in the queue)")]


def test_redis_pool_with_a_wrong_key_has_every_task_refused(redis_port, key_file, tmp_path, monkeypatch):
    url = f"redis://127.0.0.1:{redis_port}/wrongkey"
    monkeypatch.setenv("JOBMILL_KEY", "another key of 16+ bytes")
    monkeypatch.delenv("JOBMILL_KEY_FILE")
    pool = jobmill.Pool(1, queue=url)
    worker = start_worker(url, key_file, subprocess.DEVNULL)
    try:
        results = [pool.apply_async(tasks.square, (x,)) for x in range(3)]
        for r in results:
            with pytest.raises(jobmill.TaskRefused, match="signature"):
                r.get(timeout=120)
        pool.close()
        pool.join()
    finally:
        pool.terminate()
    stop_workers([worker])


def test_redis_pool_without_a_key_refuses_to_start(redis_port, monkeypatch):
    monkeypatch.delenv("JOBMILL_KEY", raising=False)
    monkeypatch.delenv("JOBMILL_KEY_FILE", raising=False)
    with pytest.raises(ValueError, match="JOBMILL_KEY_FILE.*password alone is not enough"):
        jobmill.Pool(1, queue=f"redis://127.0.0.1:{redis_port}/nokey")


def test_python_worker_refuses_a_shared_queue_without_signature_checks():
    env = {k: v for k, v in os.environ.items()
           if k not in ("JOBMILL_PY_PARENT", "JOBMILL_TASKS_VERIFIED")}
    out = subprocess.run([sys.executable, "-m", "jobmill.worker"], capture_output=True, text=True,
                         env=env, timeout=60)
    assert out.returncode == 2
    assert "JOBMILL_KEY_FILE" in out.stderr


def test_redis_pool_task_that_kills_its_worker_raises_worker_lost_with_peak_rss(redis_port, key_file):
    url = f"redis://127.0.0.1:{redis_port}/lost"
    pool = jobmill.Pool(1, queue=url, max_lost=0)
    worker = start_worker(url, key_file, subprocess.DEVNULL)
    try:
        lost = pool.apply_async(tasks.kill_self_always, (5,))
        fine = pool.apply_async(tasks.square, (4,))
        with pytest.raises(jobmill.WorkerLost, match=r"SIGKILL.*peak RSS \d+\.\d MiB"):
            lost.get(timeout=120)
        assert fine.get(timeout=120) == 16
        pool.close()
        pool.join()
    finally:
        pool.terminate()
    stop_workers([worker])

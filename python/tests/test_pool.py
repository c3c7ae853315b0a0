"""Milestone 3: jobmill.Pool over the engine, with real worker processes."""
import concurrent.futures
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import jobmill
import tasks


def test_map_10000_in_order():
    with jobmill.Pool(2) as pool:
        assert pool.map(tasks.square, range(10000)) == [x * x for x in range(10000)]


def test_imap_10000_in_order():
    with jobmill.Pool(2) as pool:
        assert list(pool.imap(tasks.identity, range(10000))) == list(range(10000))


def test_imap_unordered_10000_exactly_once():
    with jobmill.Pool(2) as pool:
        got = list(pool.imap_unordered(tasks.identity, range(10000)))
    assert sorted(got) == list(range(10000))


def test_starmap_apply_apply_async_map_async():
    with jobmill.Pool(2) as pool:
        assert pool.starmap(tasks.add, [(1, 2), (3, 4)]) == [3, 7]
        assert pool.apply(tasks.add, (2, 5)) == 7
        r = pool.apply_async(tasks.add, (1,), {"b": 1})
        assert r.get(timeout=60) == 2 and r.successful()
        m = pool.map_async(tasks.square, [1, 2, 3])
        assert m.get(timeout=60) == [1, 4, 9]
        got = []
        pool.apply_async(tasks.square, (4,), callback=got.append).wait(60)
        assert got == [16]


def test_exception_is_the_tasks_verdict_with_the_workers_traceback():
    with jobmill.Pool(2) as pool:
        with pytest.raises(ValueError, match="bad item 3") as info:
            pool.map(tasks.boom, range(6))
        assert isinstance(info.value.__cause__, jobmill.RemoteTraceback)
        assert "tasks.py" in str(info.value.__cause__)
        # The pool is still usable.
        assert pool.map(tasks.boom, [1, 2]) == [1, 2]
        results = list(pool.imap(tasks.boom, range(3)))
        assert results == [0, 1, 2]


def test_lambda_gets_a_clear_error():
    with jobmill.Pool(1) as pool:
        try:
            import cloudpickle  # noqa: F401
        except ImportError:
            with pytest.raises(TypeError, match="by reference"):
                pool.map(lambda x: x, [1])
        else:
            assert pool.map(lambda x: x + 1, [1]) == [2]


def test_sigkilled_worker_mid_map_its_task_runs_again(tmp_path):
    marker = str(tmp_path / "killed")
    with jobmill.Pool(2) as pool:
        got = pool.starmap(tasks.kill_self_once, [(x, marker) for x in range(20)])
    assert got == list(range(20))
    assert os.path.exists(marker)


def test_max_lost_0_raises_worker_lost_naming_the_item_others_complete():
    with jobmill.Pool(2, max_lost=0) as pool:
        results = [pool.apply_async(tasks.kill_self_always, (x,)) for x in range(10)]
        for x, r in enumerate(results):
            if x == 5:
                # The item, the signal and the worker's peak RSS.
                with pytest.raises(jobmill.WorkerLost,
                                   match=r"\(5\).*SIGKILL.*peak RSS \d+\.\d MiB"):
                    r.get(timeout=300)
            else:
                assert r.get(timeout=300) == x


@pytest.mark.parametrize("func", [tasks.segfault, tasks.exit_hard])
def test_segfault_and_os_exit_are_lost_tasks(func):
    with jobmill.Pool(2, max_lost=1) as pool:
        results = [pool.apply_async(func, (x,)) for x in range(5)]
        for x, r in enumerate(results):
            if x == 2:
                with pytest.raises(jobmill.WorkerLost, match=r"\(2\)"):
                    r.get(timeout=300)
            else:
                assert r.get(timeout=300) == x


def test_timeout_fails_only_its_item():
    with jobmill.Pool(2, timeout=1.0) as pool:
        results = [pool.apply_async(tasks.sleep_if, (x, 3600)) for x in range(4)]
        for x, r in enumerate(results):
            if x == 1:
                with pytest.raises(concurrent.futures.TimeoutError):
                    r.get(timeout=300)
            else:
                assert r.get(timeout=300) == x


def test_initializer_and_maxtasksperchild():
    with jobmill.Pool(2, initializer=tasks.init_env, initargs=("yes",), maxtasksperchild=2) as pool:
        assert pool.map(tasks.read_env, range(6)) == ["yes"] * 6
        pids = pool.map(tasks.pid, range(8))
    # Each worker ran at most 2 tasks.
    assert all(pids.count(p) <= 2 for p in set(pids))


def test_close_join():
    pool = jobmill.Pool(2)
    r = pool.map_async(tasks.square, range(100))
    pool.close()
    pool.join()
    assert r.get(timeout=0) == [x * x for x in range(100)]
    with pytest.raises(ValueError):
        pool.map(tasks.square, [1])


SCRIPT = textwrap.dedent("""
    import os, sys, time
    import jobmill
    sys.path.insert(0, {tests!r})
    import tasks

    if __name__ == "__main__":
        pool = jobmill.Pool(2)
        pids = set(pool.map(tasks.pid, range(50)))
        with open({pidfile!r}, "w") as f:
            f.write(" ".join(map(str, pids)))
        try:
            print("ready", flush=True)
            pool.map(tasks.sleep_forever, range(4))
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            raise
""")


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except OSError:
        return False


def test_sigint_to_the_process_group_mid_map(tmp_path):
    pidfile = str(tmp_path / "pids")
    script = tmp_path / "caller.py"
    script.write_text(SCRIPT.format(tests=os.path.dirname(os.path.abspath(__file__)), pidfile=pidfile))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        pids = [int(p) for p in open(pidfile).read().split()]
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
        err = proc.stderr.read()
        assert "KeyboardInterrupt" in err, err
        assert proc.stdout.read().strip() == "interrupted"
        deadline = time.monotonic() + 30
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(p) for p in pids)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_workers_die_with_a_sigkilled_caller(tmp_path):
    pidfile = str(tmp_path / "pids")
    script = tmp_path / "caller.py"
    script.write_text(SCRIPT.format(tests=os.path.dirname(os.path.abspath(__file__)), pidfile=pidfile))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        pids = [int(p) for p in open(pidfile).read().split()]
        proc.kill()
        proc.wait(timeout=60)
        deadline = time.monotonic() + 60
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(p) for p in pids)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_memory_limit_raises_memory_error_or_worker_lost():
    with jobmill.Pool(1, max_lost=0, initializer=tasks.limit_memory, initargs=(1 << 30,)) as pool:
        r = pool.apply_async(tasks.allocate, (4 << 30,))
        with pytest.raises((MemoryError, jobmill.WorkerLost)):
            r.get(timeout=300)
        assert pool.apply(tasks.square, (3,)) == 9


MAIN_SCRIPT = textwrap.dedent("""
    import jobmill

    def triple(x):
        return 3 * x

    print("main module ran as", __name__, flush=True)

    if __name__ == "__main__":
        pool = jobmill.Pool(2)
        print(pool.map(triple, range(5)), flush=True)
        # No close(), no join(): the interpreter must still exit.
""")


def test_functions_of_the_main_script_and_exit_without_close(tmp_path):
    script = tmp_path / "main_script.py"
    script.write_text(MAIN_SCRIPT)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "[0, 3, 6, 9, 12]" in out.stdout
    # The workers ran the main module as __mp_main__, not its guarded part.
    assert out.stdout.count("main module ran as __main__") == 1


def test_each_task_of_a_chunk_runs_once_and_keeps_its_own_verdict(tmp_path):
    path = str(tmp_path / "calls")
    n = 1000
    with jobmill.Pool(2) as pool:
        got = []
        results = [pool.apply_async(tasks.identity, (x,)) for x in range(3)]
        assert [r.get(timeout=300) for r in results] == [0, 1, 2]
        res = pool.starmap_async(tasks.count_and_fail_odd, [(x, path) for x in range(n)])
        with pytest.raises(ValueError, match="odd"):
            res.get(timeout=300)
        for ok in pool.imap_unordered(tasks.square, range(10)):
            got.append(ok)
    calls = sorted(int(x) for x in open(path).read().split())
    assert calls == list(range(n))
    assert sorted(got) == [x * x for x in range(10)]

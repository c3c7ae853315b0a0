"""jobmill.Executor: concurrent.futures over jobmill.Pool."""
import concurrent.futures

import pytest

import jobmill
import tasks


def test_submit_and_map():
    with jobmill.Executor(2) as ex:
        f = ex.submit(tasks.add, 1, b=2)
        assert f.result(timeout=120) == 3
        assert list(ex.map(tasks.square, range(200))) == [x * x for x in range(200)]
        assert list(ex.map(tasks.add, [1, 2], [10, 20])) == [11, 22]


def test_exception_and_lost_worker_fail_only_their_future():
    with jobmill.Executor(2, max_lost=0) as ex:
        futures = [ex.submit(tasks.kill_self_always, x) for x in range(8)]
        bad = ex.submit(tasks.boom, 3)
        with pytest.raises(ValueError, match="bad item 3"):
            bad.result(timeout=300)
        for x, f in enumerate(futures):
            if x == 5:
                with pytest.raises(jobmill.WorkerLost):
                    f.result(timeout=300)
            else:
                assert f.result(timeout=300) == x
        # Still usable: not a BrokenProcessPool.
        assert ex.submit(tasks.square, 7).result(timeout=300) == 49


def test_as_completed_and_shutdown():
    ex = jobmill.Executor(2)
    futures = [ex.submit(tasks.square, x) for x in range(50)]
    got = sorted(f.result() for f in concurrent.futures.as_completed(futures, timeout=300))
    assert got == sorted(x * x for x in range(50))
    ex.shutdown(wait=True)
    with pytest.raises(RuntimeError):
        ex.submit(tasks.square, 1)


def test_shutdown_cancel_futures():
    ex = jobmill.Executor(1)
    ex.submit(tasks.square, 1).result(timeout=300)
    futures = [ex.submit(tasks.sleep_if, 1, 3600)] + [ex.submit(tasks.square, x) for x in range(5)]
    ex.shutdown(wait=True, cancel_futures=True)
    for f in futures:
        assert f.done()

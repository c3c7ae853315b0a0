"""Large data: pickle protocol 5 out-of-band buffers, placed once in the
pool's shared arena and read in place by the workers."""
import os

import numpy as np
import pytest

import jobmill
import jobmill._pool
import tasks
from jobmill import _wire


def test_wire_roundtrip_keeps_small_items_in_band():
    assert _wire.loads(_wire.dumps((1, "a", b"x" * 10))) == (1, "a", b"x" * 10)
    a = np.arange(100000, dtype=np.float64)
    data = _wire.dumps(a)
    assert data.startswith(_wire.OOB_MAGIC)
    b = _wire.loads(data)
    assert np.array_equal(a, b) and not b.flags.writeable


def test_worker_gets_a_read_only_array_over_shared_memory():
    a = np.arange(1 << 20, dtype=np.float64)  # 8 MiB
    with jobmill.Pool(1) as pool:
        info = pool.apply(tasks.array_info, (a,))
    assert info["sum"] == float(a.sum())
    assert not info["writeable"]
    assert not info["owndata"]
    # The array lies in the pool's shared arena, a memory file every worker
    # maps: the caller copied it there once, and the worker did not copy it.
    assert info["mapping"].startswith("/memfd:jobmill-pool-arena"), info


def test_encoded_payload_joined_reads_back_whole():
    a = np.arange(50000, dtype=np.float64)
    b = np.frombuffer(os.urandom(1 << 17), dtype=np.uint8)
    obj = ("f", (a, b"x" * 70000, b), {"k": 1})
    encoded = _wire.encode(obj)
    assert isinstance(encoded, tuple), "large buffers are kept apart"
    joined = _wire.join(encoded)
    assert len(joined) == _wire.size(encoded)
    f, (a2, x2, b2), kw = _wire.loads(joined)
    assert f == "f" and kw == {"k": 1} and x2 == b"x" * 70000
    assert np.array_equal(a2, a) and np.array_equal(b2, b)


def test_arrays_placed_cold_then_warm_arrive_whole_at_every_alignment():
    # The first pass fills new pages with pwrite, later ones stream into
    # pages made present; offsets inside the payload vary with the pickle.
    items = [(np.arange(n, dtype=np.uint8) * 3 + k, b"p" * k) for k in range(3)
             for n in (65536, 65536 + 13, 300001)]
    with jobmill.Pool(2) as pool:
        for _ in range(3):
            got = pool.starmap(tasks.checksum, items, chunksize=1)
            assert got == [tasks.checksum(a, p) for a, p in items]
        assert pool._core.shared_in_use == 0


def test_shared_regions_are_given_back_when_tasks_end():
    arrays = [np.full(1 << 17, i, dtype=np.float64) for i in range(64)]  # 1 MiB each
    with jobmill.Pool(2) as pool:
        assert pool._core.shared_in_use == 0
        sums = pool.map(tasks.array_sum, arrays, chunksize=1)
        assert sums == [float(a.sum()) for a in arrays]
        assert pool._core.shared_in_use == 0


def test_a_lost_task_runs_again_from_its_shared_region(tmp_path):
    a = np.arange(1 << 20, dtype=np.float64)  # 8 MiB
    with jobmill.Pool(1) as pool:
        got = pool.apply(tasks.sum_killing_once, (a, str(tmp_path / "killed")))
        assert got == float(a.sum())
        assert (tmp_path / "killed").exists(), "the first attempt's worker was killed"
        assert pool._core.shared_in_use == 0


def test_a_payload_larger_than_the_shared_arena_goes_whole(monkeypatch):
    monkeypatch.setattr(jobmill._pool, "SHARED_ARENA", 1 << 20)
    small = np.full(1 << 15, 2.0)  # 256 KiB: placed in the arena
    large = np.full(1 << 19, 3.0)  # 4 MiB: more than the arena holds
    with jobmill.Pool(1) as pool:
        assert pool.apply(tasks.array_info, (small,))["mapping"].startswith(
            "/memfd:jobmill-pool-arena")
        info = pool.apply(tasks.array_info, (large,))
        assert info["sum"] == float(large.sum())
        assert not info["mapping"].startswith("/memfd:jobmill-pool-arena"), info
        assert pool._core.shared_in_use == 0


def test_a_pool_without_a_shared_arena_sends_arrays_whole(monkeypatch):
    monkeypatch.setattr(jobmill._pool, "SHARED_ARENA", 0)
    a = np.arange(1 << 18, dtype=np.float64)
    with jobmill.Pool(1) as pool:
        assert not pool._shared
        info = pool.apply(tasks.array_info, (a,))
    assert info["sum"] == float(a.sum()) and not info["writeable"]


def test_arrays_come_back_whole_and_writable():
    arrays = [np.full(1 << 17, i, dtype=np.float64) for i in range(8)]  # 1 MiB each
    with jobmill.Pool(2) as pool:
        got = pool.map(tasks.double, arrays)
        big = pool.apply(tasks.double, (np.ones(8 << 20, dtype=np.float64),))  # 64 MiB
    for i, g in enumerate(got):
        assert np.array_equal(g, arrays[i] * 2)
        assert g.flags.writeable
    assert big.shape == (8 << 20,) and float(big.sum()) == float(2 * (8 << 20))

"""Large data: pickle protocol 5 out-of-band buffers through the arena."""
import numpy as np

import jobmill
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
    # The arena is a memfd mapped once per worker.
    assert "memfd" in info["mapping"], info


def test_arrays_come_back_whole_and_writable():
    arrays = [np.full(1 << 17, i, dtype=np.float64) for i in range(8)]  # 1 MiB each
    with jobmill.Pool(2) as pool:
        got = pool.map(tasks.double, arrays)
        big = pool.apply(tasks.double, (np.ones(8 << 20, dtype=np.float64),))  # 64 MiB
    for i, g in enumerate(got):
        assert np.array_equal(g, arrays[i] * 2)
        assert g.flags.writeable
    assert big.shape == (8 << 20,) and float(big.sum()) == float(2 * (8 << 20))

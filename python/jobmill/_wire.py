"""What the caller and the workers of jobmill.Pool agree on."""

# Prefix of a failure message that carries a pickled (exception, traceback).
EXC_PREFIX = "jobmill-py-exc:"
# A job's payload: pickle of (function key, args, kwargs) for one task, or of
# (function key, KIND, items) for a chunk of tasks, KIND saying how each item
# is called: CHUNK (items are (args, kwargs)), CHUNK_MAP (fn(item)) or
# CHUNK_STAR (fn(*item)). A chunk's result is the pickle of
# (values, {index: failure message}), values holding None where a task failed.
CHUNK = "jobmill-chunk"
CHUNK_MAP = "jobmill-chunk-map"
CHUNK_STAR = "jobmill-chunk-star"
CHUNKS = (CHUNK, CHUNK_MAP, CHUNK_STAR)
# A task on a shared queue (Pool(queue=...)) is signed: a 64-byte header
# (TASK_MAGIC, the HMAC-SHA256 tag, zeros) before the payload, checked by
# the `jobmill worker` coordinator before the worker sees it (jobmill::sign).
TASK_MAGIC = b"JMTASK1\0"
SIGNED_HEADER = 64

import pickle
import struct

# Out-of-band buffers (pickle protocol 5): a payload whose buffers add up to
# OOB_THRESHOLD bytes or more is framed as
#   OOB_MAGIC, u32 n, n × (u64 offset, u64 length), u64 pickle length, pickle,
#   then each buffer at its offset (64-byte aligned),
# so that the buffers reach the other side without a copy inside the pickle:
# payloads of 64 KiB and more travel through the worker's shared-memory
# arena, and the worker rebuilds numpy arrays, bytes and memoryviews as
# read-only views of it.
OOB_MAGIC = b"JMOOB1\0\0"
OOB_THRESHOLD = 64 << 10
_ALIGN = 64
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_PAIR = struct.Struct("<QQ")


# A payload laid out in the pool's shared arena (see encode and
# python/src/shared.rs) travels as REF_MAGIC, u64 offset, u64 length: the
# worker reads the OOB payload at that place of the arena it inherited
# ($JOBMILL_PY_ARENA_FD, mapped read-only), with no copy.
REF_MAGIC = b"JMREF1\0\0"
ARENA_FD_ENV = "JOBMILL_PY_ARENA_FD"


def encode(obj):
    """The payload of ``obj``: bytes, or, when its out-of-band buffers add up
    to OOB_THRESHOLD bytes or more, ``(prefix, parts, total)``: the OOB
    payload of ``total`` bytes is ``prefix`` followed by each buffer of
    ``parts`` (a list of ``(offset, memoryview)``) at its offset, zeros in
    between. ``join`` makes it bytes; a pool places it in its shared arena
    instead (``place``), with one copy."""
    buffers = []
    data = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    if not buffers:
        return data
    views = [b.raw() for b in buffers]
    if sum(v.nbytes for v in views) < OOB_THRESHOLD:
        return pickle.dumps(obj, protocol=5)
    head = len(OOB_MAGIC) + _U32.size + _PAIR.size * len(views) + _U64.size + len(data)
    parts, offset = [], head
    for v in views:
        offset += (-offset) % _ALIGN
        parts.append((offset, v))
        offset += v.nbytes
    prefix = [OOB_MAGIC, _U32.pack(len(views))]
    prefix += [_PAIR.pack(o, v.nbytes) for o, v in parts]
    prefix += [_U64.pack(len(data)), data]
    return b"".join(prefix), parts, offset


def size(encoded):
    """The length in bytes of a payload that ``encode`` gave."""
    return len(encoded) if isinstance(encoded, bytes) else encoded[2]


def join(encoded):
    """The bytes of a payload that ``encode`` gave."""
    if isinstance(encoded, bytes):
        return encoded
    prefix, parts, _ = encoded
    out, end = [prefix], len(prefix)
    for offset, v in parts:
        out.append(b"\0" * (offset - end))
        out.append(v)
        end = offset + v.nbytes
    return b"".join(out)


def place(encoded, core):
    """Places a ``(prefix, parts, total)`` payload in ``core``'s shared
    arena (one copy, by the core, from the buffers themselves). Returns its
    region's offset (``ref`` makes the job's payload), or None when the
    arena has no room for it now or numpy, through which the core reads the
    buffers, is not installed."""
    try:
        import numpy
    except ImportError:
        return None
    prefix, parts, total = encoded
    arrays = [(at, numpy.frombuffer(v, dtype=numpy.uint8)) for at, v in parts]
    return core.shared_place(prefix, arrays, total)


def ref(offset, total):
    """The payload of a job whose payload of ``total`` bytes lies in the
    pool's shared arena at ``offset``."""
    return REF_MAGIC + _PAIR.pack(offset, total)


def dumps(obj):
    return join(encode(obj))


_shared = None


def _shared_arena():
    """The pool's shared arena, mapped read-only (once per worker)."""
    global _shared
    if _shared is None:
        import mmap
        import os

        fd = int(os.environ[ARENA_FD_ENV])
        _shared = memoryview(mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ))
    return _shared


def loads(buf):
    """``buf``: bytes, bytearray or memoryview. Out-of-band buffers become
    views of ``buf``, or of the shared arena for a reference (no copy)."""
    mv = memoryview(buf)
    if mv[:len(REF_MAGIC)] == REF_MAGIC:
        offset, length = _PAIR.unpack_from(mv, len(REF_MAGIC))
        mv = _shared_arena()[offset:offset + length]
    if mv[:len(OOB_MAGIC)] != OOB_MAGIC:
        return pickle.loads(mv)
    pos = len(OOB_MAGIC)
    (n,) = _U32.unpack_from(mv, pos)
    pos += _U32.size
    spans = []
    for _ in range(n):
        spans.append(_PAIR.unpack_from(mv, pos))
        pos += _PAIR.size
    (plen,) = _U64.unpack_from(mv, pos)
    pos += _U64.size
    return pickle.loads(mv[pos:pos + plen], buffers=[mv[o:o + ln] for o, ln in spans])

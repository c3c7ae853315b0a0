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


def dumps(obj):
    buffers = []
    data = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    if not buffers:
        return data
    views = [b.raw() for b in buffers]
    if sum(v.nbytes for v in views) < OOB_THRESHOLD:
        return pickle.dumps(obj, protocol=5)
    head = len(OOB_MAGIC) + _U32.size + _PAIR.size * len(views) + _U64.size + len(data)
    parts, table, offset = [], [], head
    for v in views:
        pad = (-offset) % _ALIGN
        offset += pad
        table.append((offset, v.nbytes, pad, v))
        offset += v.nbytes
    out = [OOB_MAGIC, _U32.pack(len(views))]
    out += [_PAIR.pack(o, n) for o, n, _, _ in table]
    out += [_U64.pack(len(data)), data]
    for _, _, pad, v in table:
        out.append(b"\0" * pad)
        out.append(v)
    return b"".join(out)


def loads(buf):
    """``buf``: bytes, bytearray or memoryview. Out-of-band buffers become
    views of ``buf`` (no copy)."""
    mv = memoryview(buf)
    if mv[:len(OOB_MAGIC)] != OOB_MAGIC:
        return pickle.loads(buf)
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

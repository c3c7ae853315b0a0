"""Task functions for the Pool tests (importable by the workers)."""
import ctypes
import os
import signal
import time


def square(x):
    return x * x


def add(a, b):
    return a + b


def identity(x):
    return x


def pid(_=None):
    return os.getpid()


def boom(x):
    if x == 3:
        raise ValueError(f"bad item {x}")
    return x


def kill_self_once(x, marker):
    """SIGKILLs its own worker the first time it runs (a marker file says
    whether it ran before)."""
    if x == 5 and not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def kill_self_always(x):
    if x == 5:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def segfault(x):
    if x == 2:
        ctypes.string_at(0)
    return x


def exit_hard(x):
    if x == 2:
        os._exit(7)
    return x


def sleep_if(x, seconds):
    if x == 1:
        time.sleep(seconds)
    return x


def sleep_forever(_):
    while True:
        time.sleep(1)


def count_call(x, path):
    with open(path, "a") as f:
        f.write(f"{x}\n")
    return x


def count_call_sized(x, path, size):
    with open(path, "a") as f:
        f.write(f"{x}\n")
    return b"x" * size


def init_env(value):
    os.environ["JOBMILL_TEST_INIT"] = value


def read_env(_):
    return os.environ.get("JOBMILL_TEST_INIT")


def limit_memory(nbytes):
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (nbytes, nbytes))


def allocate(nbytes):
    return len(bytearray(nbytes))


def array_info(a):
    """Where the worker's array lives: its flags and the mapping holding its
    first byte (from /proc/self/maps)."""
    address = a.__array_interface__["data"][0]
    mapping = ""
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split()
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            if lo <= address < hi:
                mapping = fields[5] if len(fields) > 5 else ""
                break
    return {"writeable": bool(a.flags.writeable), "owndata": bool(a.flags.owndata),
            "mapping": mapping, "sum": float(a.sum())}


def double(a):
    return a * 2


def count_and_fail_odd(x, path):
    with open(path, "a") as f:
        f.write(f"{x}\n")
    if x % 2:
        raise ValueError(f"odd {x}")
    return x


def sum_killing_once(a, marker):
    """The array's sum; SIGKILLs its own worker the first time it runs."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return float(a.sum())


def array_sum(a):
    return float(a.sum())


def checksum(a, pad):
    """A digest of an array's bytes and a small argument."""
    import hashlib

    return hashlib.sha256(bytes(a.data) + pad).hexdigest()

"""jobmill.Pool(journal=PATH): results recorded in a jobmill journal; a
script run again after its caller was SIGKILLed computes only what was not
done."""
import os
import selectors
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

import jobmill
import tasks

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "journal_script.py")
BIN = os.path.dirname(sys.executable)


def read_until(proc, want, deadline_s=180):
    """Lines of ``proc``'s stdout up to and including ``want``."""
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + deadline_s
    lines, buf = [], b""
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"no {want!r} within {deadline_s} s; got {lines}"
        if not sel.select(timeout=left):
            continue
        chunk = os.read(proc.stdout.fileno(), 65536)
        assert chunk, f"the script ended before {want!r}: {lines}"
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            lines.append(line.decode())
            if lines[-1] == want:
                return lines


def wait_done(journal, n, deadline_s=120):
    """Waits until the journal records ``n`` jobs done."""
    deadline = time.monotonic() + deadline_s
    while True:
        db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
        try:
            done = db.execute("SELECT COUNT(*) FROM job WHERE state = 'done'").fetchone()[0]
        except sqlite3.OperationalError:
            done = 0
        finally:
            db.close()
        if done >= n:
            return
        assert time.monotonic() < deadline, f"{done} jobs done after {deadline_s} s, not {n}"
        time.sleep(0.02)


def side_lines(path, run):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [int(l.split()[1]) for l in f if l.split()[0] == run]


def test_journal_resume_after_sigkill_computes_only_what_was_not_done(tmp_path):
    journal = str(tmp_path / "analysis.sqlite")
    side = str(tmp_path / "calls")
    gate = str(tmp_path / "gate")
    n = 40
    half = n // 2
    env = dict(os.environ, JM_RUN="1")
    # Run 1: the first half completes, the second waits for the gate; the
    # caller is SIGKILLed once it has printed the first half's results.
    proc = subprocess.Popen([sys.executable, SCRIPT, journal, side, gate, str(n)],
                            stdout=subprocess.PIPE, env=env)
    try:
        first = read_until(proc, f"result {half - 1} {(half - 1) ** 2} 100")
        # The caller has every result of the first half; their journal
        # records reach the file within a group commit (50 ms).
        wait_done(journal, half)
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert len(first) == half
    assert sorted(side_lines(side, "1")) == list(range(half))

    # Run 2, same script, same journal: the recorded results are reused.
    open(gate, "w").close()
    out = subprocess.run([sys.executable, SCRIPT, journal, side, gate, str(n)],
                         capture_output=True, env=dict(os.environ, JM_RUN="2"), timeout=300)
    assert out.returncode == 0, out.stderr.decode()
    lines = out.stdout.decode().splitlines()
    assert lines[:-1] == [f"result {x} {x * x} 100" for x in range(n)], "results equal, in order"
    assert lines[-1] == f"reused {half}"
    # Tasks already done were not computed again; only the rest were.
    assert sorted(side_lines(side, "2")) == list(range(half, n))

    # The file is a jobmill journal: `jobmill status` and the schema say so.
    st = subprocess.run([os.path.join(BIN, "jobmill"), "status", journal],
                        capture_output=True, text=True, timeout=120)
    assert st.returncode == 0, st.stderr
    assert f"jobs:      {n} total, {n} done" in st.stdout, st.stdout
    assert "finished (complete)" in st.stdout, st.stdout
    db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
    try:
        states = dict(db.execute("SELECT state, COUNT(*) FROM job GROUP BY state").fetchall())
        sessions = db.execute("SELECT COUNT(*) FROM session").fetchone()[0]
    finally:
        db.close()
    # The interrupted tasks of run 1 ran again under their own job rows.
    assert states.get("done") == n, states
    assert sessions == 2
    res = subprocess.run([os.path.join(BIN, "jobmill"), "results", journal],
                         capture_output=True, timeout=120)
    assert res.returncode == 0, res.stderr


def test_journal_second_run_computes_only_new_tasks_and_results_equal(tmp_path):
    journal = str(tmp_path / "j.sqlite")
    side = str(tmp_path / "calls")
    items = [(x, side) for x in range(30)]
    with jobmill.Pool(2, journal=journal) as pool:
        first = pool.starmap(tasks.count_call, items)
        assert pool.journal_reused == 0
    with open(side) as f:
        assert len(f.readlines()) == 30
    with jobmill.Pool(2, journal=journal) as pool:
        again = pool.starmap(tasks.count_call, items)
        assert pool.journal_reused == 30
        # New arguments: a new key, computed.
        assert pool.apply(tasks.count_call, (1000, side)) == 1000
        assert pool.journal_reused == 30
    assert again == first == list(range(30))
    with open(side) as f:
        assert [int(l) for l in f.readlines()[30:]] == [1000]


def test_journal_result_over_the_cap_is_computed_again(tmp_path, monkeypatch):
    from jobmill import _pool

    journal = str(tmp_path / "j.sqlite")
    side = str(tmp_path / "calls")
    monkeypatch.setattr(_pool, "RESULT_CAP", 1024)
    items = [(1, side, 10), (2, side, 100000)]
    want = [b"x" * 10, b"x" * 100000]
    with jobmill.Pool(1, journal=journal) as pool:
        assert pool.starmap(tasks.count_call_sized, items) == want
    with jobmill.Pool(1, journal=journal) as pool:
        assert pool.starmap(tasks.count_call_sized, items) == want
        assert pool.journal_reused == 1
    with open(side) as f:
        assert [int(l) for l in f] == [1, 2, 2], "only the result over the cap ran again"


def test_journal_of_a_jobmill_run_is_refused(tmp_path):
    env = dict(os.environ, XDG_STATE_HOME=str(tmp_path))
    out = subprocess.run([os.path.join(BIN, "jobmill"), "run", "--", "true", ":::", "a"],
                         capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    (journal,) = [os.path.join(tmp_path, "jobmill", f) for f in os.listdir(tmp_path / "jobmill")
                  if f.endswith(".sqlite")]
    with pytest.raises(OSError, match="not of a jobmill.Pool"):
        jobmill.Pool(1, journal=journal)

"""A script using jobmill.Pool(journal=...), run by test_journal.py:
``python journal_script.py JOURNAL SIDE GATE N``.

Task x appends "RUN x" to SIDE (RUN from $JM_RUN) when it is computed and
returns x*x; tasks from N//2 on first wait for the file GATE, so that a run
without it completes the first half and then waits (to be killed). Prints
each result as it arrives, then the count of results reused from the
journal."""
import os
import sys
import time

import jobmill


def work(x, side, gate, half):
    if x >= half:
        while not os.path.exists(gate):
            time.sleep(0.01)
    with open(side, "a") as f:
        f.write(f"{os.environ.get('JM_RUN', '?')} {x}\n")
    return {"x": x, "square": x * x, "blob": bytes([x % 256]) * 100}


def main():
    journal, side, gate, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    with jobmill.Pool(2, journal=journal) as pool:
        for r in pool.imap(work_star, [(x, side, gate, n // 2) for x in range(n)]):
            print("result", r["x"], r["square"], len(r["blob"]), flush=True)
        print("reused", pool.journal_reused, flush=True)


def work_star(a):
    return work(*a)


if __name__ == "__main__":
    main()

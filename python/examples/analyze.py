#!/usr/bin/env python3
"""An analysis worker: each job's payload is a path to a text file (or, if it
is not a file, the text itself); the result is a JSON summary of it.

Run it with jobmill, which starts one long-lived copy per -j slot and feeds
it inputs, one per line:

    ls data/*.txt | jobmill run --persistent -j 4 -- python3 python/examples/analyze.py

Anything expensive (imports, loading a model) happens once, before the loop.
"""
import collections
import json
import os
import re
import sys

import jobmill_worker

WORD = re.compile(r"[A-Za-z']+")
STOP = frozenset("the a an and or of to in is it that for on with as at by".split())  # "the model", loaded once


def analyze(text):
    words = [w.lower() for w in WORD.findall(text)]
    common = collections.Counter(w for w in words if w not in STOP).most_common(5)
    return {
        "lines": text.count("\n") + (1 if text and not text.endswith("\n") else 0),
        "words": len(words),
        "top": common,
    }


def main():
    print("analyze worker %d ready" % os.getpid(), file=sys.stderr)  # goes to jobmill's log
    for job in jobmill_worker.jobs():
        arg = job.payload.decode("utf-8", "replace").strip()
        try:
            if os.path.isfile(arg):
                with open(arg, encoding="utf-8", errors="replace") as f:
                    text = f.read()
            else:
                text = arg
            summary = analyze(text)
        except OSError as e:
            job.fail("cannot read %s: %s" % (arg, e))
            continue
        summary["input"] = arg
        job.complete(json.dumps(summary))


if __name__ == "__main__":
    main()

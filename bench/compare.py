#!/usr/bin/env python3
"""Times shell commands side by side, interleaved round by round so that a
noisy, shared machine slows every tool alike, and prints each command's
median wall time and its ratio against the first (the baseline).

usage: compare.py --runs N --title TITLE LABEL=COMMAND [LABEL=COMMAND ...]
"""
import argparse
import statistics
import subprocess
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--title", default="")
    ap.add_argument("commands", nargs="+")
    a = ap.parse_args()
    cmds = [c.split("=", 1) for c in a.commands]
    times = {label: [] for label, _ in cmds}
    for label, cmd in cmds:  # warm-up
        subprocess.run(cmd, shell=True, check=True, executable="/bin/bash")
    for _ in range(a.runs):
        for label, cmd in cmds:
            t0 = time.perf_counter()
            subprocess.run(cmd, shell=True, check=True, executable="/bin/bash")
            times[label].append(time.perf_counter() - t0)
    base = statistics.median(times[cmds[0][0]])
    print(f"== {a.title} (median of {a.runs}, interleaved)")
    for label, _ in cmds:
        m = statistics.median(times[label])
        print(f"  {label:28s} {m:7.3f} s   {m / base:5.2f}x the time of {cmds[0][0]}")


if __name__ == "__main__":
    main()

"""The `jobmill` command installed by the package: the Rust CLI, run in this process."""
import os
import shutil
import signal
import sys


def main():
    from . import _jobmill

    # The CLI starts its guardian (the process that stops every job if jobmill
    # is killed) as `PROGRAM __guardian ...`; here PROGRAM is this script, not
    # the Python interpreter that runs it.
    exe = sys.argv[0]
    if not os.path.isabs(exe) or not os.access(exe, os.X_OK):
        exe = shutil.which(exe) or shutil.which("jobmill") or exe
    os.environ.setdefault("JOBMILL_GUARDIAN_EXE", os.path.abspath(exe))
    # As a Rust binary: Ctrl-C ends the program unless a run handles it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    argv = ["jobmill"] + sys.argv[1:]
    code = _jobmill.cli_main(argv)
    sys.stdout.flush()
    sys.exit(code)


if __name__ == "__main__":
    main()

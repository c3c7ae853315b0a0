"""Milestone 1: the package installs the extension, the jobmill command and
the jobmill_worker module."""
import os
import shutil
import subprocess
import sys

BIN = os.path.dirname(sys.executable)


def jobmill_cmd():
    path = os.path.join(BIN, "jobmill")
    assert os.path.exists(path), "the package installs the jobmill command"
    return path


def test_import_jobmill_worker_keeps_working():
    import jobmill_worker

    assert hasattr(jobmill_worker, "jobs") and hasattr(jobmill_worker, "Worker")
    from jobmill import worker

    assert worker.Worker is jobmill_worker.Worker


def test_package_exports_the_names():
    import jobmill

    for name in ("Queue", "Pool", "Closed", "WorkerLost"):
        assert hasattr(jobmill, name)


def test_jobmill_command_runs_the_rust_cli():
    out = subprocess.run([jobmill_cmd(), "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("jobmill ")


def test_jobmill_command_bad_usage_exits_255():
    out = subprocess.run([jobmill_cmd(), "no-such-command"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 255
    assert "jobmill:" in out.stderr


def test_jobmill_run_with_its_guardian():
    # `run` starts the guardian as `jobmill __guardian`: through this script.
    out = subprocess.run([jobmill_cmd(), "run", "-k", "-j", "2", "--", "echo", "x", ":::", "a", "b", "c"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:3] == ["x a", "x b", "x c"]


def test_jobmill_run_persistent_with_the_packaged_worker(tmp_path):
    worker = tmp_path / "upper.py"
    worker.write_text(
        "import jobmill_worker\n"
        "for job in jobmill_worker.jobs():\n"
        "    job.complete(bytes(job.payload).upper())\n"
    )
    out = subprocess.run([jobmill_cmd(), "run", "-k", "-j", "2", "--persistent", "--",
                          sys.executable, str(worker), ":::", "a", "b"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["A", "B"]

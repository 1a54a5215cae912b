"""The worker's job process: its environment, and that it really is started with it."""

from __future__ import annotations

import sys

import worker.tasks as tasks
from finetune.runner import job_process_env


def test_job_processes_get_two_malloc_arenas_unless_told_otherwise():
    assert job_process_env({"PATH": "/bin"}) == {"PATH": "/bin", "MALLOC_ARENA_MAX": "2"}
    assert job_process_env({"MALLOC_ARENA_MAX": "8"})["MALLOC_ARENA_MAX"] == "8"


def test_run_job_process_starts_the_runner_with_the_job_environment(monkeypatch, tmp_path):
    """The real Popen, with the runner module swapped for one that writes what it was given."""
    seen = tmp_path / "seen.txt"
    script = tmp_path / "fake_runner.py"
    script.write_text(f"import os, sys\nopen({str(seen)!r}, 'w').write(sys.argv[-1] + ' ' + "
                      f"os.environ.get('MALLOC_ARENA_MAX', 'unset'))\n")
    real_popen = tasks.subprocess.Popen

    def popen(args, **kwargs):
        assert args[:3] == [sys.executable, "-m", "finetune.runner"]
        return real_popen([sys.executable, str(script), *args[3:]], **kwargs)

    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    monkeypatch.setattr(tasks.subprocess, "Popen", popen)
    assert tasks.run_job_process("job-123") == 0
    assert seen.read_text() == "job-123 2"

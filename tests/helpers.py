"""Helpers shared by several test modules: running the CLI in-process or as a process, and
waiting for a sweep's first trial to report."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from vitsweep.study import load_study


def cli(*args: str, capsys) -> tuple[int, str, str]:  # noqa: ANN001
    """Run ``vitsweep ARGS`` in-process the way the console script does: (exit code, stdout, stderr)."""
    from vitsweep.cli import main

    old = sys.argv
    sys.argv = ["vitsweep", *args]
    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = old
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def spawn_cli(*args: str, cwd: Path) -> subprocess.Popen:
    """``vitsweep ARGS`` as a process in a session of its own (``os.killpg`` reaches all of it)."""
    return subprocess.Popen([sys.executable, "-m", "vitsweep", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def wait_for_first_report(study: str, url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Wait until the study's first trial has reported an epoch (so its checkpoint exists), while
    ``proc`` (the sweep) is still running."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        time.sleep(0.1)
        try:
            trials = load_study(study, url).get_trials()
        except Exception:  # noqa: BLE001 - not created yet
            continue
        if trials and trials[0].intermediate_values:
            return
        assert proc.poll() is None, proc.communicate()[0]
    pytest.fail("the trial never reported")

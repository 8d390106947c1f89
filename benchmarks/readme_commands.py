"""Every command of the README's "Sweeps" and "Looking at results" sections, run on the smoke
study in a scratch folder, with each command's wall time (issue 22: what a first user runs, and how
long each takes). The servers (dashboard, ui) are started, timed until they answer, and stopped.

    python benchmarks/readme_commands.py [--workdir DIR] [--synthetic]

``--synthetic``: the smoke sweep on generated images (no CIFAR-10 copy needed). Prints a table:
command, exit code, seconds; exits 1 if any command failed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "vitsweep", *args]


def timed(cwd: Path, env: dict[str, str], *args: str) -> tuple[int, float, str]:
    t0 = time.perf_counter()
    p = subprocess.run(_cmd(*args), cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)
    return p.returncode, time.perf_counter() - t0, p.stdout + p.stderr


def served(cwd: Path, env: dict[str, str], url_path: str, *args: str, timeout: float = 300) -> tuple[int, float, str]:
    """Start a server command, time it until ``url_path`` answers on its port, stop it."""
    port = _port()
    t0 = time.perf_counter()
    p = subprocess.Popen(_cmd(*args, "--port", str(port)), cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    code = 1
    try:
        while time.perf_counter() - t0 < timeout and p.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{url_path}", timeout=5):
                    code = 0
                    break
            except OSError:
                time.sleep(0.25)
        return code, time.perf_counter() - t0, ""
    finally:
        os.killpg(p.pid, signal.SIGINT)
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", type=Path, help="scratch folder [default: a temporary one, removed after]")
    ap.add_argument("--synthetic", action="store_true", help="generated images instead of CIFAR-10")
    a = ap.parse_args()
    work = a.workdir or Path(tempfile.mkdtemp(prefix="vitsweep-readme-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("VITSWEEP_STORAGE", None)
    sweep = str(REPO / "sweeps" / "smoke.yaml")
    extra = ["--set", "data.source=synthetic"] if a.synthetic else []
    rows: list[tuple[str, int, float]] = []

    def step(label: str, *args: str) -> str:
        code, secs, out = timed(work, env, *args)
        rows.append((label, code, secs))
        print(f"{secs:8.1f}s  rc {code}  {label}", flush=True)
        return out

    step("vitsweep run sweeps/smoke.yaml", "run", sweep, *extra)
    step("vitsweep run sweeps/smoke.yaml --n-trials 12 --workers 2", "run", sweep, "--n-trials", "12", "--workers", "2",
         *extra)
    step("vitsweep trials --sort value --top 10 --csv trials.csv", "trials", "--study", "smoke", "--sort", "value",
         "--top", "10", "--csv", "trials.csv")
    step("vitsweep studies", "studies")
    for label, url, args in [("vitsweep dashboard (until it answers)", "/api/studies", ("dashboard",)),
                             ("vitsweep ui (until it answers)", "/health", ("ui",))]:
        code, secs, _ = served(work, env, url, *args)
        rows.append((label, code, secs))
        print(f"{secs:8.1f}s  rc {code}  {label}", flush=True)
    step("vitsweep report --study smoke", "report", "--study", "smoke")
    step("vitsweep best --study smoke -o best.yaml", "best", "--study", "smoke", "-o", "best.yaml")
    step("vitsweep train best.yaml --set train.epochs=1", "train", "best.yaml", "--set", "train.epochs=1",
         "--run-dir", "storage/runs/best")
    ckpt = "storage/runs/best/best.pt"
    step("vitsweep evaluate CHECKPOINT", "evaluate", ckpt)
    step("vitsweep bench CHECKPOINT --batch-sizes 1,4,16,64,128", "bench", ckpt, "--batch-sizes", "1,4,16,64,128")
    step("vitsweep export CHECKPOINT --format onnx", "export", ckpt, "--format", "onnx")
    step("vitsweep export CHECKPOINT --format torchscript", "export", ckpt, "--format", "torchscript")

    print("\n| command | exit | wall s |\n|---|---|---|")
    for label, code, secs in rows:
        print(f"| `{label}` | {code} | {secs:.1f} |")
    if a.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(code == 0 for _, code, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Where each sweep worker trains: one device (or one share of the CPU cores) per worker.

``plan(workers, device)`` is pure and printed before any worker starts. With G visible GPUs,
worker i trains on ``cuda:(i mod G)``; on a CPU the cores are split so that the workers together
use each core once (threads and CPU affinity). A device the user pinned (``train.device: cuda:1``,
``cpu``, ``mps``, or ``CUDA_VISIBLE_DEVICES``) is kept as it is.

The thread count reaches a worker twice: through the environment its process starts with (the
OpenMP/BLAS runtimes read ``OMP_NUM_THREADS`` and friends once, when torch loads) and through
``torch.set_num_threads`` in the worker (:func:`apply`).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Iterator

THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass(frozen=True)
class Placement:
    index: int
    device: str  # what the worker's trials train on: cuda:N, cpu, mps, or the config's own setting
    threads: int  # torch intra-op threads
    cores: tuple[int, ...] | None  # CPU affinity; None: leave it to the OS

    def env(self) -> dict[str, str]:
        return {name: str(self.threads) for name in THREAD_ENV}

    def describe(self) -> str:
        cores = f" on core{'s' if len(self.cores) > 1 else ''} {_ranges(self.cores)}" if self.cores else ""
        return f"worker {self.index}: {self.device}, {self.threads} CPU thread{'s' * (self.threads > 1)}{cores}"


def available_cores() -> list[int]:
    """The cores this process may run on (its affinity mask, else every core)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def visible_gpus() -> int:
    import torch  # lazy: the CLI imports this module before it needs torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def plan(workers: int, device: str = "auto", *, gpus: int | None = None,
         cores: list[int] | None = None) -> list[Placement]:
    """One placement per worker. ``gpus`` and ``cores`` default to this machine's."""
    fallback = "cpu"  # what "auto" means without a CUDA GPU
    if gpus is None:
        gpus, fallback = visible_gpus(), ("mps" if _mps() else "cpu")
    cores = available_cores() if cores is None else cores
    shares = _split(cores, workers) if workers > 1 else [None]
    out = []
    for i in range(workers):
        share = shares[i]
        threads = len(share) if share is not None else len(cores)
        out.append(Placement(i, _device_for(i, device, gpus, fallback), max(1, threads), tuple(share) if share else None))
    return out


def warnings_for(placements: list[Placement], device: str = "auto", *, gpus: int | None = None,
                 cores: list[int] | None = None) -> list[str]:
    """What a user should know about a plan: more workers than GPUs or cores share them."""
    gpus = visible_gpus() if gpus is None else gpus
    n_cores = len(available_cores() if cores is None else cores)
    n = len(placements)
    on_gpu = any(p.device.startswith("cuda") for p in placements)
    if on_gpu and gpus and n > gpus and device in ("auto", "cuda"):
        return [f"{n} workers on {gpus} GPU(s): workers share GPUs, each trial runs slower"]
    if not on_gpu and n > n_cores:
        return [f"{n} workers on {n_cores} CPU core(s): cores are shared (oversubscribed), each trial runs slower; "
                f"--workers {n_cores} uses each core once"]
    return []


def apply(p: Placement) -> None:
    """In the worker process: its thread count and core affinity."""
    import torch

    os.environ.update(p.env())
    torch.set_num_threads(p.threads)
    if p.cores and hasattr(os, "sched_setaffinity"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, p.cores)


@contextlib.contextmanager
def started_with(p: Placement) -> Iterator[None]:
    """Set the placement's thread variables while a worker process is started (a spawned process
    copies the environment at start), then restore the parent's."""
    saved = {k: os.environ.get(k) for k in THREAD_ENV}
    os.environ.update(p.env())
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _device_for(i: int, device: str, gpus: int, fallback: str) -> str:
    if device in ("auto", "cuda") and gpus > 0:
        return f"cuda:{i % gpus}"
    return fallback if device == "auto" else device


def _mps() -> bool:
    import torch

    return torch.backends.mps.is_available()


def _split(cores: list[int], workers: int) -> list[list[int]]:
    """Contiguous, near-equal shares of the cores; with more workers than cores, one core each
    (round-robin)."""
    if workers >= len(cores):
        return [[cores[i % len(cores)]] for i in range(workers)]
    base, extra = divmod(len(cores), workers)
    shares, start = [], 0
    for i in range(workers):
        size = base + (1 if i < extra else 0)
        shares.append(cores[start:start + size])
        start += size
    return shares


def _ranges(cores: tuple[int, ...]) -> str:
    """(0, 1, 2, 5) -> '0-2,5'."""
    parts, start, prev = [], cores[0], cores[0]
    for c in (*cores[1:], None):
        if c is not None and c == prev + 1:
            prev = c
            continue
        parts.append(f"{start}-{prev}" if prev > start else f"{start}")
        if c is not None:
            start = prev = c
    return ",".join(parts)

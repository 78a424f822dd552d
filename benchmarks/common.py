"""Shared helpers: interleaved timing with medians, the machine description, RESULTS.md sections.

Timing rule for every benchmark here: all candidates live in ONE process and are measured in
interleaved rounds (A, B, C, A, B, C, ...), so a background process slowing the machine for a
few seconds hits every candidate alike; the reported number is the median over rounds.
"""

from __future__ import annotations

import datetime
import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MUJOCO_GL", "egl")

import torch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "RESULTS.md"
INTRO = """# Benchmarks

Measured numbers of vla against LeRobot 0.6.1 on the machine named in each section.
Rerun everything with `make benchmarks` (or one of `python -m benchmarks.latency`,
`python -m benchmarks.train_throughput`, `python -m benchmarks.data_loading`, each taking
`--threads N` and `--help`); each run refreshes its own section below, keyed by benchmark and
thread count. All candidates of a table are measured in one process, in interleaved rounds,
and the table reports medians with interquartile ranges. On a shared machine compare ratios
within a table, not absolute numbers across sections; `--threads 1` gives the stable numbers
when other processes are using the cores (two threads then stall on each other).
"""


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def interleaved(fns: dict[str, Callable[[], object]], *, rounds: int, warmup: int = 2,
                device: str = "cpu", verbose: bool = True) -> dict[str, list[float]]:
    """Seconds per call of every ``fns[name]()``, ``rounds`` interleaved rounds after ``warmup``."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(rounds):
        for name, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
        if verbose:
            print(f"  round {r + 1}/{rounds}: " + ", ".join(f"{k} {v[-1] * 1e3:.0f} ms" for k, v in times.items()),
                  flush=True)
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def spread(xs: list[float], fmt: str = ".1f") -> str:
    """Interquartile range as 'p25-p75' (min-max under 4 samples), for the tables."""
    lo, hi = (min(xs), max(xs)) if len(xs) < 4 else statistics.quantiles(xs, n=4)[::2]
    return f"{lo:{fmt}}-{hi:{fmt}}"


def set_threads(n: int | None) -> None:
    """Intra-op threads for every candidate alike (None keeps torch's default, one per core)."""
    if n:
        torch.set_num_threads(n)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine(device: str = "cpu") -> str:
    """One line: CPU model, cores, torch version and threads, GPU if used, load, date."""
    parts = [f"CPU {cpu_model()}", f"{os.cpu_count()} cores", f"torch {torch.__version__}",
             f"{torch.get_num_threads()} intra-op threads"]
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        parts.append(f"GPU {torch.cuda.get_device_name()}")
    try:
        parts.append("load avg at start {:.2f}".format(os.getloadavg()[0]))
    except OSError:
        pass
    parts.append(datetime.datetime.now().strftime("%Y-%m-%d %H:%M"))
    return ", ".join(parts)


def busy_cpus(seconds: float = 2.0) -> float:
    """How many CPUs' worth of work the whole machine did over the next ``seconds`` (0 .. cores).

    Unlike the load average, which trails a finished job by minutes, this is the present."""
    import psutil  # noqa: PLC0415 (only the benchmarks that wait for an idle machine need it)

    return psutil.cpu_percent(interval=seconds) / 100.0 * (psutil.cpu_count() or 1)


def wait_until_idle(max_busy: float, timeout_s: float, label: str, *, poll_s: float = 10.0, quiet: int = 3,
                    measure: Callable[[], float] = busy_cpus) -> float:
    """Block until ``quiet`` measurements in a row, ``poll_s`` apart, find at most ``max_busy`` CPUs
    busy; return the busiest of them.

    A wall-clock budget only compares candidates if each had the machine to itself: a test run
    beside a 20-minute training cut its steps by 10-50%. One quiet reading is not enough: a test
    suite pauses for seconds between subprocesses, and a training once started in such a lull.
    Raises SystemExit after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    quiet = 1 if max_busy == float("inf") else quiet  # no wait asked for: one reading, for the record
    calm: list[float] = []
    while True:
        busy = measure()
        calm = calm + [busy] if busy <= max_busy else []
        if len(calm) >= quiet:
            return max(calm)
        if not calm:
            if time.monotonic() >= deadline:
                raise SystemExit(f"error: {label}: {busy:.1f} of {os.cpu_count()} CPUs stayed busy for "
                                 f"{timeout_s / 60:g} min (at most {max_busy:g} allowed): stop the other work, "
                                 "or pass --max-busy-cpus inf to measure on a shared machine")
            print(f"{label}: waiting for an idle machine ({busy:.1f} of {os.cpu_count()} CPUs busy, "
                  f"at most {max_busy:g})", flush=True)
        time.sleep(poll_s)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_section(name: str, body: str, path: Path = RESULTS) -> None:
    """Replace (or append) the section delimited by ``<!-- BEGIN name -->`` / ``<!-- END name -->``."""
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    block = f"{begin}\n{body.strip()}\n{end}"
    text = path.read_text() if path.exists() else INTRO
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)
    print(f"wrote section '{name}' of {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")


def preset_config(preset: str, state_dim: int, action_dim: int, overrides: list[str] | None = None):
    """The policy config of a ``configs/policy/<preset>.yaml`` preset, as ``vla train`` composes it."""
    from vla.cli import compose

    _, cfg = compose([f"policy={preset}", *(overrides or [])])
    cfg.state_dim, cfg.action_dim = state_dim, action_dim
    return cfg


def ensure_dataset(root: str, episodes: int, task: str = "lift", extra: list[str] | None = None) -> None:
    """Collect ``episodes`` scripted-expert episodes into ``root`` with the vla CLI (plus
    ``extra`` overrides, e.g. DART noise), unless a dataset is there."""
    import subprocess
    import sys

    if (Path(root) / "meta" / "info.json").exists():
        return
    cmd = [sys.executable, "-m", "vla.cli", "collect", f"env={task}", f"collect.episodes={episodes}",
           f"dataset.root={root}", f"dataset.repo_id=local/{task}", *(extra or [])]
    print("no dataset at", root, "- collecting:", " ".join(cmd[2:]), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True)
    print(f"collected in {time.perf_counter() - t0:.0f} s", flush=True)


def dataset_args(ap, default_root: str = "/tmp/bench_data") -> None:
    ap.add_argument("--dataset-root", default=default_root, help="LeRobot dataset dir (collected if missing)")
    ap.add_argument("--repo-id", default="local/lift")
    ap.add_argument("--episodes", type=int, default=20, help="episodes to collect when the dataset is missing")


def block(make_iter, warm: int, n: int) -> float:
    """Seconds per item over ``n`` items of a fresh iterator, after ``warm`` discarded ones.

    The iterator is closed (generators) or dropped (DataLoader iterators) afterwards, which
    shuts DataLoader worker processes down before the next candidate runs.
    """
    it = make_iter()
    for _ in range(warm):
        next(it)
    t0 = time.perf_counter()
    for _ in range(n):
        next(it)
    dt = time.perf_counter() - t0
    if hasattr(it, "close"):
        it.close()
    del it
    return dt / n


def interleaved_blocks(cands: dict[str, tuple], *, rounds: int, warm: int, unit: str = "ms", scale: float = 1e3,
                       fmt: str = ".1f") -> dict[str, list[float]]:
    """Seconds per item of every ``cands[name] = (make_iter, n)``, timed by :func:`block` in
    ``rounds`` interleaved rounds; each round is printed in ``unit`` (seconds x ``scale``)."""
    times: dict[str, list[float]] = {k: [] for k in cands}
    for r in range(rounds):
        for name, (make, n) in cands.items():
            times[name].append(block(make, warm, n))
        print(f"  round {r + 1}/{rounds}: " + ", ".join(f"{k} {v[-1] * scale:{fmt}} {unit}" for k, v in times.items()),
              flush=True)
    return times


def run_vla(*args: str, log: Path, threads: int | None = None) -> None:
    """Run one ``vla`` command (a user could type it), its output appended to ``log``."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    with open(log, "a") as f:  # a resumed run keeps its earlier log
        subprocess.run([sys.executable, "-m", "vla.cli", *args], cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                       check=True, env=env)


def train_seconds(run_dir: Path) -> tuple[float, int]:
    """(wall seconds, steps) of a training run, from its metrics.csv."""
    import csv

    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    return float(rows[-1]["elapsed_s"]), int(rows[-1]["step"])


def cell(report: Path) -> str:
    """'58% (29/50) [44%, 71%]' from an eval report.json, or 'not run'."""
    import json

    if not report.exists():
        return "not run"
    r = json.loads(report.read_text())
    lo, hi = r["ci95"]
    return f"{r['success_rate']:.0%} ({r['successes']}/{r['episodes']}) [{lo:.0%}, {hi:.0%}]"

"""CPU threads per trainer process: the trainer's default against one thread, idle and busy.

    python bench/cpu_threads.py [--steps 30] [--rounds 2] [--spinners 4]

Each run is the README example (`kubetune run examples/sentiment/job.yaml`, the pretrained
all-MiniLM-L6-v2) cut to `--steps` optimizer steps, in a fresh process, with:

  (d) the default: training.cpuThreads left out, so the trainer takes the CPUs its
      affinity and CPU quota allow (2 on a 2-core machine), and its waiting OpenMP
      threads spin briefly before they sleep (kubetune_trainer.threads)
  (1) training.cpuThreads: 1
  (s) the default thread count with GNU OpenMP's own spinning (GOMP_SPINCOUNT=300000)

first on an idle machine, then beside `--spinners` processes that each keep a core busy (a
shared CI runner, a laptop compiling). It prints the median samples/s of the logged steps
after the 5th (loading, warm-up and evaluation left out) and the ratios d/1 and d/s in
each setting. The variants alternate (d 1 s d 1 s ...) so a machine that slows down for a
while slows all alike. Run nothing else beside it: on two cores any other process is load.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples/sentiment"
WARM_UP_STEPS = 5
GNU_SPIN_COUNT = "300000"
"""GNU OpenMP's own GOMP_SPINCOUNT, which kubetune_trainer.threads lowers."""


def manifest(work: Path, steps: int, threads: int | None) -> Path:
    """The README example with `steps` optimizer steps and the given thread setting."""
    job = yaml.safe_load((EXAMPLE / "job.yaml").read_text())
    job["spec"]["training"]["maxSteps"] = steps
    if threads is not None:
        job["spec"]["training"]["cpuThreads"] = threads
    for split in ("train", "validation"):
        source = job["spec"]["data"][split]["source"]
        job["spec"]["data"][split]["source"] = str(EXAMPLE / source)
    path = work / f"job-{threads or 'default'}.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def samples_per_second(job: Path, output: Path, env: dict[str, str]) -> tuple[float, str]:
    """The run's median logged samples/s after the warm-up, and its thread line."""
    shutil.rmtree(output, ignore_errors=True)
    result = subprocess.run(
        [shutil.which("kubetune") or "kubetune", "run", str(job), "--output", str(output)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **env},
    )
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("cpu threads:")]
    events = [json.loads(x) for x in (output / "metrics.jsonl").read_text().splitlines()]
    rates = [
        e["samplesPerSecond"]
        for e in events
        if e.get("event") == "step" and e["step"] > WARM_UP_STEPS
    ]
    return statistics.median(rates), line


@contextmanager
def spinners(count: int) -> Iterator[None]:
    """`count` processes that each keep one core busy, stopped on leaving."""
    spinning = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for process in spinning:
            process.kill()
            process.wait()


def measure(
    work: Path, jobs: dict[str, tuple[Path, dict[str, str]]], rounds: int
) -> dict[str, float]:
    rates: dict[str, list[float]] = {name: [] for name in jobs}
    for _ in range(rounds):
        for name, (job, env) in jobs.items():
            rate, line = samples_per_second(job, work / f"out-{name}", env)
            print(f"  ({name}) {rate:7.1f} samples/s   {line}", flush=True)
            rates[name].append(rate)
    return {name: statistics.median(values) for name, values in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--spinners", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        default = manifest(work, args.steps, None)
        jobs = {
            "d": (default, {}),
            "1": (manifest(work, args.steps, 1), {}),
            "s": (default, {"GOMP_SPINCOUNT": GNU_SPIN_COUNT}),
        }
        print("idle machine")
        idle = measure(work, jobs, args.rounds)
        print(f"busy machine ({args.spinners} spinning processes)")
        with spinners(args.spinners):
            busy = measure(work, jobs, args.rounds)
    for setting, found in (("idle", idle), ("busy", busy)):
        print(
            f"{setting}: default {found['d']:.1f}, one thread {found['1']:.1f}, "
            f"GNU spinning {found['s']:.1f} samples/s; d/1 = {found['d'] / found['1']:.2f}, "
            f"d/s = {found['d'] / found['s']:.2f}"
        )


if __name__ == "__main__":
    main()

r"""Operator soak: FineTuneJobs under API faults with the operator SIGKILLed and restarted.

    python bench/operator_soak.py [--jobs 200] [--kills 3] [--share 0.1] [--seed 18]

Runs the jobs of tests/kube/soak.py (every fifth a 2-trial grid search, every fifth a job
on a ClusterFineTuneRuntime whose operator queue holds 4 GPUs, the rest plain) twice, each
against a fresh emulator and a `kopf run` subprocess: once fault-free, once with the
faults of tests/kube/soak.py's DEFAULT_FAULTS (a share of requests answered 500 or 429
with Retry-After, every answer delayed 0-50 ms, 30% of watches cut after 1-5 s, 20% of
resumed watches answered 410 Gone) and the operator SIGKILLed at --kills seeded moments
and started again. The bench plays the Job controller and the trainers (tests/kube/soak.py:
play_cluster). It prints, per run: seconds until every job and trial is Succeeded or
Failed, operator restarts, faults injected by kind, the operator's API requests per job;
then the ratios faulty/fault-free, and whether the faulty run ended in the same children,
phases, conditions and trials with no status claiming what the children do not show.
It exits non-zero when it did not.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path
from typing import Final

REPO: Final = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "operator"), str(REPO / "trainer")]

from tests.kube.soak import DEFAULT_FAULTS, Soak, SoakRun, differences  # noqa: E402


def line(label: str, run: SoakRun) -> str:
    injected = ", ".join(f"{kind} {count}" for kind, count in sorted(run.injected.items()))
    return (
        f"  {label:<11} {run.seconds:7.1f} s  {run.requests_per_job:6.1f} requests/job  "
        f"restarts {run.restarts}  unfinished {len(run.left)}  injected: {injected or 'none'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--share", type=float, default=DEFAULT_FAULTS.share)
    parser.add_argument("--seed", type=int, default=DEFAULT_FAULTS.seed)
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args()
    faults = dataclasses.replace(DEFAULT_FAULTS, share=args.share, seed=args.seed)
    with tempfile.TemporaryDirectory() as folder:
        runs = {}
        for label, injected in (("fault-free", None), ("faulty", faults)):
            where = Path(folder) / label
            where.mkdir()
            kills = args.kills if injected else 0
            soak = Soak(args.jobs, where, injected, kills, seed=args.seed, timeout_s=args.timeout)
            runs[label] = soak.run()
        clean, faulty = runs["fault-free"], runs["faulty"]
        print(f"operator soak: {args.jobs} FineTuneJobs, faults {faults}")
        print(line("fault-free", clean))
        print(line("faulty", faulty))
        print(f"  faulty/fault-free seconds      {faulty.seconds / clean.seconds:6.2f}")
        ratio = faulty.requests_per_job / clean.requests_per_job
        print(f"  faulty/fault-free requests/job {ratio:6.2f}")
        found = differences(clean, faulty) + faulty.false_claims + clean.false_claims
        found += [f"unfinished: {sorted(run.left)}" for run in runs.values() if run.left]
        print("  same end state: " + ("yes" if not found else "NO"))
        for difference in found[:20]:
            print(f"    {difference}")
        if found:
            raise SystemExit(1)


if __name__ == "__main__":
    main()

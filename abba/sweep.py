"""A Hydra multirun of abba.train runs every job, whatever happens to the others, and ends with a summary.

    python -m abba.train -m experiment=smoke_arithmetic peft.lr=1e-4,1e-3 peft.r1=8,16

`abba.train.main` records each job's outcome here (`record`); the callback `SweepSummary` (configured under
`hydra.callbacks` in configs/train.yaml) pairs it with the job's overrides and, when the sweep ends, prints

    sweep: 4 jobs: 3 trained, 1 refused
      trained  peft.lr=0.0001 peft.r1=8  outputs/smoke_arithmetic/seed0/peft.lr=0.0001,peft.r1=8 (loss 1.234)
      refused  peft.lr=0.001 peft.r1=8   run folder ... already holds a finished run: pass resume=true ...

(each job named by the overrides that tell it apart from the others)

and exits 1 when a job was refused or failed. With a SLURM launcher each job runs in its own process, so the
summary lines appear in the jobs' logs instead.
"""

from __future__ import annotations

import sys
from typing import Any

from hydra.experimental.callback import Callback

#: Outcomes, in the order the summary counts them. `skipped`: resume=true on a finished run.
OUTCOMES = ("trained", "skipped", "refused", "failed")
_outcome: dict[str, str] = {}


def record(outcome: str, detail: str) -> None:
    """Called by abba.train.main once per job: `outcome` one of OUTCOMES, `detail` one line (folder, reason)."""
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {OUTCOMES}, got {outcome!r}")
    _outcome.update(outcome=outcome, detail=" ".join(str(detail).split()))


class SweepSummary(Callback):
    """Collects each job's outcome (on_job_end) and prints the summary at the end of a multirun."""

    def __init__(self) -> None:
        self.jobs: list[tuple[str, tuple[str, ...], str]] = []

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        self.jobs = []

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        outcome = _outcome.pop("outcome", None)
        detail = _outcome.pop("detail", "")
        if outcome is None:  # the job raised before main could record anything
            # JobReturn.return_value re-raises a failed job's exception; the stored value is what we want here.
            error = getattr(job_return, "_return_value", None) if job_return.status.name == "FAILED" else None
            outcome, detail = "failed", f"{type(error).__name__}: {error}" if error is not None else "no outcome"
        self.jobs.append((outcome, tuple(job_return.overrides or ()), detail))

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        if not self.jobs:
            return
        counts = ", ".join(f"{sum(o == name for o, _, _ in self.jobs)} {name}" for name in OUTCOMES
                           if any(o == name for o, _, _ in self.jobs))
        # Name each job by the overrides that tell it apart (the swept values), not the ones all jobs share.
        shared = set.intersection(*(set(o) for _, o, _ in self.jobs)) if len(self.jobs) > 1 else set()
        names = [" ".join(o for o in overrides if o not in shared) or "(no overrides)" for _, overrides, _ in self.jobs]
        width = max(len(name) for name in names)
        lines = [f"sweep: {len(self.jobs)} jobs: {counts}"]
        lines += [f"  {outcome:<8} {name:<{width}}  {detail}" for (outcome, _, detail), name in zip(self.jobs, names)]
        print("\n".join(lines), file=sys.stderr, flush=True)
        if any(outcome in ("refused", "failed") for outcome, _, _ in self.jobs):
            sys.exit(1)

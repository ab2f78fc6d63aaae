"""The job list behind scripts/reproduce.sh: which experiments × seeds make up a paper table, which of them
are trained / evaluated already, and the estimated GPU hours.

    python -m abba.reproduce table1 print=plan                  # what `reproduce.sh table1 dry_run=true` prints
    python -m abba.reproduce table2 print=experiments           # t2_* names, comma-separated (for the multirun)
    python -m abba.reproduce table1 print=eval-todo trainer=zero2   # finished runs whose evaluation is missing

Arguments: the table, then `key=value`: seeds=0,1,2, results_dir=results, print=plan (the defaults; print= also
takes experiments, train-todo, eval-todo, merge-eval-script); every other `key=value` is a Hydra override of
abba.train. (dry_run=true is scripts/reproduce.sh's own: it stops after the plan.)

A table's experiments are configs/experiment/t1_*.yaml (table1) or t2_*.yaml (table2); each is composed with
the given overrides (Hydra's compose API, as abba.train would) to learn its run folder and results folder, both
from abba/layout.py: RUN = default_run_dir(...), RESULTS = results_folder(...) (where abba.merge_eval writes).
Training is done when RUN/final/ exists (is_finished); evaluation when RESULTS/metrics.json scores every
benchmark of the table on the whole test set (is_evaluated).

A bad command line (an unknown key such as `trainer.per_device_train_batch_sizee=2`, a wrong value type, an
environment variable such as `SEEDS=0` given as an argument, an unknown option) exits 2 with one line (abba/cli.py)
before anything runs: scripts/reproduce.sh stops there too.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

from .cli import Refusal, UsageError, did_you_mean, one_line_errors, parse_key_values
from .layout import REPO_ROOT, default_run_dir, is_evaluated, is_finished, results_folder
from .table_registry import PAPER_TABLES, table_benchmarks, table_experiments as paper_table_experiments
from .table_runs import method_key

#: Table 10 of paper v4: training wall time (h:mm:ss) of LoRA and ABBA on one A6000 48 GB, per model.
PAPER_TRAIN_TIME = {"llama3_2_1b": ("2:42:17", "2:46:18"), "llama3_2_3b": ("6:05:43", "6:11:26"),
                    "mistral_7b": ("1:15:55", "1:18:22"), "gemma2_9b": ("1:45:33", "1:49:45")}
MERGE_EVAL_SCRIPT = {"table1": "scripts/cr_merge_eval.sh", "table2": "scripts/arithmetic_merge_eval.sh"}
#: scripts/reproduce.sh's environment variables (read from the environment, never from its arguments).
SCRIPT_ENV = ("SEEDS", "RESULTS_DIR", "EVAL_ARGS", "MERGE_ARGS")
#: This module's options and their defaults; every other key=value is a Hydra override.
OPTIONS = {"seeds": "0,1,2", "results_dir": "results", "print": "plan"}
PRINTS = ("plan", "experiments", "train-todo", "eval-todo", "merge-eval-script")
#: Every option a user may type: scripts/reproduce.sh's dry_run= and this module's (for did-you-mean hints).
ALL_OPTIONS = ("dry_run", *OPTIONS)
USAGE = "usage: bash scripts/reproduce.sh table1|table2|mini [dry_run=true] [hydra overrides...]"


@dataclass
class Job:
    table: str
    experiment: str
    seed: int
    model: str
    method: str
    run_dir: Path
    results_dir: Path
    hours: float | None
    hours_source: str

    @property
    def trained(self) -> bool:
        return is_finished(self.run_dir)

    @property
    def evaluated(self) -> bool:
        # A partial evaluation (eval.run limit=N) is not done: the next run evaluates every item.
        return is_evaluated(self.results_dir, table_benchmarks(self.table))


def hours(hms: str) -> float:
    h, m, s = (int(x) for x in hms.split(":"))
    return h + m / 60 + s / 3600


def estimate_hours(model: str, method: str) -> tuple[float | None, str]:
    """Training GPU hours from paper v4 Table 10; methods other than LoRA/ABBA borrow LoRA's (an estimate)."""
    if model not in PAPER_TRAIN_TIME:
        return None, "no paper time"
    lora, abba = PAPER_TRAIN_TIME[model]
    if method.startswith("abba"):
        return hours(abba), "Table 10, ABBA"
    if method == "lora":
        return hours(lora), "Table 10, LoRA"
    return hours(lora), "LoRA's Table 10 time (paper gives none)"


def table_experiments(table: str) -> list[str]:
    if table not in PAPER_TABLES:
        raise UsageError(f"unknown table {table!r}{did_you_mean(table, PAPER_TABLES)}; tables: "
                         f"{', '.join(PAPER_TABLES)}")
    return paper_table_experiments(table)


def plan(table: str, seeds: list[int], overrides: list[str], results_root: str = "results") -> list[Job]:
    """One Job per experiment × seed, composed as `python -m abba.train experiment=E seed=S resume=true
    <overrides>` would be."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    jobs = []
    with initialize_config_dir(config_dir=str(REPO_ROOT / "configs"), version_base="1.3"):
        for experiment in table_experiments(table):
            # The seed changes only the run folder's name, so one composition serves every seed.
            base = [f"experiment={experiment}", "resume=true", *overrides]
            cfg = compose("train", overrides=[o for o in base if not o.startswith(("hydra/", "hydra."))])
            resolved = OmegaConf.to_container(cfg, resolve=True)
            model, method, name = resolved["model"]["name"], method_key(resolved), resolved["experiment_name"]
            est, source = estimate_hours(model, method)
            for seed in seeds:
                task = [f"seed={seed}", *base]
                run_dir = Path(resolved["output_dir"] or default_run_dir(resolved["paths"]["output_root"], name,
                                                                        seed, task))
                jobs.append(Job(table, experiment, seed, model, method, run_dir,
                                results_folder(results_root, run_dir, name, seed), est, source))
    return jobs


def print_plan(table: str, jobs: list[Job]) -> None:
    print(f"# {table}: {len(jobs)} training jobs (experiment x seed), each then merged and evaluated on "
          f"{', '.join(table_benchmarks(table))}")
    for job in jobs:
        est = f"~{job.hours:.2f} GPU-h ({job.hours_source})" if job.hours is not None else "GPU-h unknown"
        print(f"job {job.experiment} seed={job.seed} model={job.model} method={job.method} "
              f"train={'done' if job.trained else 'todo'} eval={'done' if job.evaluated else 'todo'} "
              f"run={job.run_dir} {est}")
    total = sum(j.hours or 0.0 for j in jobs)
    left = sum(j.hours or 0.0 for j in jobs if not j.trained)
    print(f"# estimated training time: {total:.1f} GPU-hours in all, {left:.1f} still to train "
          f"(ESTIMATES from paper v4 Table 10 wall times on one A6000 48 GB; methods other than LoRA/ABBA use "
          f"LoRA's time; evaluation not included)")


def parse_arguments(argv: list[str]) -> tuple[str, dict[str, str], list[str]]:
    """(table, this module's options over their defaults, the Hydra overrides) from the command line. Raises
    UsageError for a missing or unknown table, an option given twice, or a bad print= value."""
    if argv and argv[0] == "mini":  # scripts/reproduce.sh hands mini to abba.mini before this module
        raise UsageError("mini is not a paper table of abba.reproduce: run it with `bash scripts/reproduce.sh mini` "
                         "(or python -m abba.mini)")
    if not argv or argv[0] not in PAPER_TABLES:
        got = repr(argv[0]) + did_you_mean(argv[0], PAPER_TABLES) if argv else "nothing"
        raise UsageError(f"first argument must be a table ({', '.join(PAPER_TABLES)}), got {got}; {USAGE}")
    ours = [arg for arg in argv[1:] if arg.partition("=")[0] in OPTIONS]
    keys = [arg.partition("=")[0] for arg in ours]
    twice = sorted({key for key in keys if keys.count(key) > 1})
    if twice:
        raise UsageError(f"{', '.join(k + '=' for k in twice)} given twice (scripts/reproduce.sh passes seeds= from "
                         f"SEEDS and results_dir= from RESULTS_DIR: set those instead)")
    options = parse_key_values(ours, OPTIONS, USAGE)
    if options["print"] not in PRINTS:
        raise UsageError(f"print={options['print']} is not one of {', '.join(PRINTS)}"
                         f"{did_you_mean(options['print'], PRINTS)}")
    return argv[0], options, [arg for arg in argv[1:] if arg.partition("=")[0] not in OPTIONS]


def _unknown_option(key: str) -> UsageError:
    if key == "dry_run":
        return UsageError("dry_run= is scripts/reproduce.sh's option (it stops after the plan); this module only "
                          "prints: leave it out, print=plan is the dry run")
    return UsageError(f"unknown option {key}{did_you_mean(key.lstrip('-').replace('-', '_'), ALL_OPTIONS)}; options: "
                      f"{', '.join(k + '=...' for k in ALL_OPTIONS)}, then Hydra overrides of abba.train")


def check_overrides(table: str, overrides: list[str]) -> None:
    """Raise UsageError for a command line abba.train would refuse (checked as abba.train checks its own, with the
    table's first experiment), for an option nobody takes, and for `SEEDS=0`-style environment variables."""
    from .hydra_check import CommandLineError, check_command_line

    for arg in overrides:
        if arg.startswith("-"):
            raise _unknown_option(arg)
        key = arg.split("=", 1)[0]
        if "=" in arg and (key in SCRIPT_ENV or re.fullmatch(r"[A-Z][A-Z0-9_]*", key)):
            raise UsageError(f"{arg} is an environment variable of scripts/reproduce.sh, not an override: set it "
                             f"before the command: {arg} bash scripts/reproduce.sh {table} ...")
    experiments = table_experiments(table)
    try:
        check_command_line(REPO_ROOT / "configs", "train", [f"experiment={experiments[0]}", "resume=true", *overrides])
    except CommandLineError as error:
        for key in (arg.split("=", 1)[0].lstrip("+~") for arg in overrides):
            if key in str(error) and did_you_mean(key, ALL_OPTIONS):  # a typo of an option, not of a config key
                raise _unknown_option(key) from None
        raise UsageError(str(error)) from None


def main(argv: list[str] | None = None) -> None:
    with one_line_errors(on_interrupt="interrupted: nothing was started; run the same command again"):
        _main(sys.argv[1:] if argv is None else argv)


def _main(argv: list[str]) -> None:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    table, options, overrides = parse_arguments(argv)
    if options["print"] == "experiments":
        print(",".join(table_experiments(table)))
        return
    if options["print"] == "merge-eval-script":
        print(MERGE_EVAL_SCRIPT[table])
        return
    try:
        seeds = [int(s) for s in options["seeds"].split(",")]
    except ValueError:
        raise UsageError(f"seeds {options['seeds']!r} (SEEDS or seeds=): expected integers separated by commas, "
                         f"e.g. 0,1,2") from None
    if Path(options["results_dir"]).exists() and not Path(options["results_dir"]).is_dir():
        raise Refusal(f"results_dir={options['results_dir']} is a file, not a folder: pass the results folder "
                      f"(RESULTS_DIR of scripts/reproduce.sh)")
    check_overrides(table, overrides)
    try:
        jobs = plan(table, seeds, overrides, options["results_dir"])
    except (HydraException, OmegaConfBaseException) as error:  # an override one of the table's experiments refuses
        raise UsageError(str(error).strip().splitlines()[0]) from None
    if options["print"] == "plan":
        print_plan(table, jobs)
    else:  # one run folder a line; nothing at all when there is none
        train = options["print"] == "train-todo"
        for job in (j for j in jobs if (not j.trained if train else j.trained and not j.evaluated)):
            print(job.run_dir)


if __name__ == "__main__":
    main()

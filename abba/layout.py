"""The folder layouts: the project's one owner of where a run and its results live, and when each is done.

RUN = `<paths.output_root>/<experiment_name>/seed<seed>[/<sorted overrides>]` unless `output_dir=` is given
(`default_run_dir`). The name depends only on the command line (never a timestamp), so every rank of a
multi-process job agrees. A run folder holds config.yaml, run_info.json, metrics.jsonl, checkpoint-*/ while it
trains, and final/ (the adapter or full model) once it is done (`is_finished`).

RESULTS = `<results_dir>/<experiment_name>/seed<seed>[/<the run folder's override suffix>]` (`results_folder`):
the merged model (merged/, removed unless kept), metrics.json and samples_<benchmark>.jsonl of eval.run, and the
run's config.yaml and run_info.json copied beside them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

#: The repository's root folder (configs/, results/, outputs/ are under it).
REPO_ROOT = Path(__file__).resolve().parents[1]

#: The names the stages hand each other: RUN/config.yaml and RUN/run_info.json (copied into RESULTS), RUN/final/
#: (with the base model's entry, seed included, in final/abba_model.yaml), RESULTS/merged/ (complete once it holds
#: merge_info.json) and RESULTS/metrics.json.
CONFIG_FILE = "config.yaml"
RUN_INFO_FILE = "run_info.json"
FINAL_DIR = "final"
MODEL_ENTRY_FILE = "abba_model.yaml"
MERGED_DIR = "merged"
MERGE_INFO_FILE = "merge_info.json"
METRICS_FILE = "metrics.json"


def resolve_path(path: str | Path) -> str:
    """A relative path that does not exist from the working directory is looked up from the repository root."""
    p = Path(path)
    if not p.is_absolute() and not p.exists() and (REPO_ROOT / p).exists():
        return str(REPO_ROOT / p)
    return str(path)


#: Overrides that choose where or how a run executes, not what it learns: left out of the run's identity (the
#: experiment and seed are in the path already). Exact keys, and prefixes ending in '.' or '/'. Everything else,
#: group choices (`trainer=zero3`, `+sweep=...`), data paths and `paths.data_dir` included, names a different run.
#: (The ABBA_DATA_DIR environment variable is not on the command line, so it cannot name the run.)
NOT_IDENTITY = ("experiment", "seed", "output_dir", "resume", "overwrite", "logger", "overrides", "data.num_proc",
                "trainer.save_steps", "trainer.save_total_limit", "trainer.logging_steps",
                "trainer.dataloader_num_workers", "trainer.disable_tqdm", "paths.output_root", "logger.", "hydra.",
                "hydra/", "debug.")
#: Longest readable part of a folder name (filesystems allow 255 bytes per component).
NAME_MAX = 100
HASH_LEN = 8


class RunFolderError(RuntimeError):
    """The run folder exists and may not be reused as asked; the message is one line."""


def _canonical(value: str) -> str:
    """A number or boolean written one way: a sweep hands each job Hydra's rendering (`peft.lr=0.001`) where a
    single run keeps what was typed (`peft.lr=1e-3`); both must name the same folder."""
    text = value.strip()
    if text.lower() in ("true", "false"):
        return text.lower()
    try:
        return str(int(text))
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return value
    return repr(number) if number == number and abs(number) != float("inf") else value


def identity_overrides(overrides: Iterable[str]) -> list[str]:
    """The command-line overrides that change what is trained, as sorted `key=value` strings without +/~, numbers
    written canonically, one per key (the last, which is the one Hydra applies)."""
    kept: dict[str, str] = {}
    for item in overrides:
        key, _, value = item.lstrip("+~").partition("=")
        if any(key.startswith(ex) if ex[-1] in "./" else key == ex for ex in NOT_IDENTITY):
            continue
        kept.pop(key, None)  # a key given twice: the last value wins, as in Hydra
        kept[key] = _canonical(value)
    return sorted(f"{key}={value}" for key, value in kept.items())


def override_suffix(overrides: Iterable[str]) -> str:
    """The run folder's last component: the identity overrides, readable, e.g. 'peft.lr=0.0001,peft.r1=8'.

    A value that is a path shows only its last component, and a name longer than NAME_MAX keeps only the whole
    overrides that fit; whenever something is left out, '~' and the first HASH_LEN hex digits of the sha256 of
    all identity overrides follow, so two different runs never share a folder ('data.path=A.jsonl~3f9c01d2').
    """
    items = identity_overrides(overrides)
    shown, hidden = [], False
    for item in items:
        key, _, value = item.partition("=")
        if "/" in value:  # a path (or a list of them): its last component; the hash has the rest
            value, hidden = value.strip("[]'\" /").rsplit("/", 1)[-1], True
        shown.append(f"{key.replace('/', '_')}={value}")
    name = ""
    for part in shown:
        candidate = f"{name},{part}" if name else part
        if len(candidate) > NAME_MAX:
            hidden = True
            break
        name = candidate
    if hidden:
        if not name:  # even the first override is too long: its key alone
            name = shown[0].split("=", 1)[0][:NAME_MAX]
        name += "~" + hashlib.sha256("\n".join(items).encode()).hexdigest()[:HASH_LEN]
    return name


def default_run_dir(output_root: str, experiment_name: str, seed: int, overrides: Iterable[str] = ()) -> str:
    """RUN for a command line: `<output_root>/<experiment_name>/seed<seed>[/<override_suffix>]`."""
    run = Path(output_root) / experiment_name / f"seed{seed}"
    suffix = override_suffix(overrides)
    return str(run / suffix) if suffix else str(run)


def results_folder(results_dir: str | Path, run_dir: str | Path, name: str, seed: int) -> Path:
    """Where a run's merged model and evaluation go: `<results_dir>/<experiment>/seed<k>`, plus the run folder's
    override suffix when it has one, so two members of a sweep (same experiment and seed) never share it."""
    parts = Path(run_dir).resolve().parts
    marker = f"seed{seed}"
    suffix = parts[len(parts) - parts[::-1].index(marker):] if marker in parts else ()
    return Path(results_dir).joinpath(name, marker, *suffix)


def is_finished(run_dir: Path) -> bool:
    return (run_dir / FINAL_DIR).is_dir()


def check_run_folder(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse (before anything is written) to reuse a non-empty run folder without resume= or overwrite=. (Both
    at once is a usage error, refused earlier by abba.train_config.validate.)"""
    if not run_dir.exists() or not any(run_dir.iterdir()) or resume or overwrite:
        return
    state = "a finished run" if is_finished(run_dir) else "an unfinished run"
    raise RunFolderError(f"run folder {run_dir} already holds {state}: pass resume=true to continue it, "
                         f"overwrite=true to replace it, or output_dir=... for a new folder")


def clear_run_folder(run_dir: Path) -> None:
    if run_dir.exists():
        shutil.rmtree(run_dir)


def has_checkpoint(run_dir: Path) -> bool:
    return any(Path(run_dir).glob("checkpoint-*"))


@contextmanager
def removed_on_failure(folder: Path, keep: Callable[[], bool] = lambda: False) -> Iterator[None]:
    """Delete `folder`, and the parents this block created, when the block fails and `keep()` is False.

    For a run that fails before its real work has produced anything (a model that cannot be loaded, a bad value
    found late, Ctrl-C while tokenizing): the folder it created would otherwise hold a config.yaml that makes the
    next identical command refuse. A folder that existed before the block is never touched.
    """
    folder = Path(folder)
    first_new = None
    for candidate in [folder, *folder.parents]:
        if candidate.exists():
            break
        first_new = candidate
    try:
        yield
    except BaseException:
        if first_new is not None and first_new.exists() and not keep():
            shutil.rmtree(first_new, ignore_errors=True)
        raise


def seed_folder(root: str | Path, experiment_name: str, seed: int) -> Path:
    """`<root>/<experiment_name>/seed<seed>`: a run's folder under paths.output_root, or its results folder."""
    return Path(root) / experiment_name / f"seed{seed}"


def is_partial(entry: dict[str, Any]) -> bool:
    """Whether a metrics.json entry scores a subset of its test set: `limit` was given and that many items were
    scored (a limit above the set's size scores all of it)."""
    limit = entry.get("limit")
    return limit is not None and (entry.get("n") is None or int(entry["n"]) >= int(limit))


def is_evaluated(results_dir: str | Path, benchmarks: Iterable[str], nll: bool = False,
                 partial_ok: bool = False) -> bool:
    """Whether RESULTS/metrics.json scores every benchmark in `benchmarks`: with an NLL when `nll`, on the whole
    test set unless `partial_ok` (a seeded subset, eval.run limit=N, is then enough). An unreadable file is not
    done: the evaluation runs again and resumes from its samples."""
    path = Path(results_dir) / METRICS_FILE
    try:
        metrics = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    for name in benchmarks:
        entry = metrics.get(name)
        if not isinstance(entry, dict) or (nll and entry.get("nll") is None) or \
                (not partial_ok and is_partial(entry)):
            return False
    return True


def sweep_record_folder(results_dir: str | Path, experiment_name: str, seed: int, overrides: Iterable[str]) -> Path:
    """Where abba.mini keeps a sweep run's record (committed, unlike its run folder under outputs):
    `<results_dir>/sweep/<experiment_name>/seed<seed>/<the overrides as typed, joined by ','>`."""
    return seed_folder(Path(results_dir) / "sweep", experiment_name, seed) / ",".join(overrides)

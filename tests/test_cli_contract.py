"""The command-line contract of every entry point (issue 12; README, abba/cli.py): `key=value` arguments, and a
failure is one stderr line `error: <what failed>: <what to do>` with exit 2 for a usage error (an unknown key) and
exit 1 for a refusal (a missing input, or a folder that may not be used), without a traceback.

Each case runs the real command in a subprocess (three at a time) from an empty folder of its own, offline (OMP_NUM_THREADS=1,
HF_HUB_OFFLINE=1: tests/test_cli_failures.py's environment and checks). Every refusal is one that comes before
anything heavy: no model or data is loaded, nothing is trained, merged, fitted or downloaded. The other failure
modes of each entry point are tested beside it (test_cli_failures.py, test_train_failures.py, ...).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from test_cli_failures import assert_one_line_error, run

#: A usage error every entry point has, whatever else it insists on: a key it does not know (the Hydra entry points
#: refuse it in abba.hydra_check, before Hydra starts).
UNKNOWN_KEY = "no_such_key=1"

#: Every entry point (`python -m <module>`) with a refusal of its own. MISSING is a path under tmp_path that does not
#: exist, FILE an existing file given where a folder must be written (for the entry points that read no input), TMP
#: tmp_path; `env:KEY=VALUE` sets an environment variable, `lock:PATH` is a lock file this test holds.
REFUSALS = {
    "abba.train": ["model.random_init=false", "model.name_or_path=MISSING", "paths.output_root=out"],
    "eval.run": ["benchmark=boolq", "model_path=MISSING", "output_dir=out"],
    "abba.merge": ["adapter_dir=MISSING", "output_dir=merged"],
    "abba.merge_eval": ["arithmetic", "MISSING", "env:RESULTS_DIR=TMP/results"],
    "abba.export": ["adapter_dir=MISSING", "output_dir=out"],
    "abba.tables": ["results_dir=MISSING", "output_dir=out"],
    "eval.rescore": ["benchmark=gsm8k", "input=MISSING", "output=out.jsonl"],
    "abba.synthetic": ["out_dir=FILE"],
    "abba.plots": ["loss_curve", "out=loss.png", "ABBA=MISSING"],
    "abba.bench": ["parts=[smollm2]", "quick=true", "smollm2.data_dir=MISSING", "out_dir=out"],
    "abba.reconstruct": ["output_dir=FILE", "quick=true"],
    "abba.reproduce": ["table1", "results_dir=FILE"],
    # Another abba.mini holds its results folder (this test holds the lock); the quick size's folders go under
    # QUICKSTART_OUT.
    "abba.mini": ["size=quick", "env:QUICKSTART_OUT=TMP/q", "lock:TMP/q/results/.mini.lock"],
    "abba.data.download": ["data_dir=data", "only=openbookqa", "source=file://MISSING"],
    "abba.data.hub_commonsense": ["out_dir=out", "data_dir=MISSING", "env:HF_DATASETS_OFFLINE=1"],
    # Refused once here rather than by each of the world_size processes torchrun would start.
    "abba.launch": ["world_size=1", "model.random_init=false", "model.name_or_path=MISSING"],
    "abba.install_check": ["requirements=MISSING"],
}


ENTRY_POINTS = tuple(REFUSALS)


def test_every_entry_point_is_a_module():
    assert len(ENTRY_POINTS) == 17  # train, evaluate, merge, ..., install_check: every `python -m` command
    assert [m for m in ENTRY_POINTS if importlib.util.find_spec(m) is None] == []


def _command(module: str, args: list[str], tmp_path: Path) -> tuple[list[str], dict[str, str], list[Path]]:
    """(the command line, extra environment, lock files to hold) with MISSING, FILE and TMP made concrete."""
    (tmp_path / "file").write_text("not a folder\n")
    argv, env, locks = ["-m", module], {}, []
    for arg in args:
        arg = arg.replace("MISSING", str(tmp_path / "nope")).replace("FILE", str(tmp_path / "file"))
        arg = arg.replace("TMP", str(tmp_path))
        if arg.startswith("env:"):
            key, _, value = arg[4:].partition("=")
            env[key] = value
        elif arg.startswith("lock:"):
            locks.append(Path(arg[5:]))
        else:
            argv.append(arg)
    return argv, env, locks


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """{(case, module): (the finished subprocess, its tmp folder)} for every subprocess case of this file, run
    a few at a time: each is a fresh Python importing torch (seconds of CPU) and they are independent."""
    from concurrent.futures import ThreadPoolExecutor

    from filelock import FileLock

    cases = [("unknown_key", m, ["-m", m, UNKNOWN_KEY], {}, []) for m in ENTRY_POINTS]
    cases += [("flag", m, ["-m", m, "--dry-run", "--size", "2"], {}, []) for m in HYDRA_ENTRY_POINTS]
    folders = {}
    for module in ENTRY_POINTS:
        folders[("refusal", module)] = tmp = tmp_path_factory.mktemp(f"refusal-{module}")
        cases.append(("refusal", module, *_command(module, REFUSALS[module], tmp)))
    for case, module, *_ in cases:
        folders.setdefault((case, module), tmp_path_factory.mktemp(f"{case}-{module}"))
    locks = [FileLock(str(path)) for *_, paths in cases for path in paths]
    for lock in locks:
        Path(lock.lock_file).parent.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    try:
        with ThreadPoolExecutor(max_workers=3) as pool:
            done = pool.map(lambda c: run(c[2], folders[c[0], c[1]], timeout=300, **c[3]), cases)
            return {(c[0], c[1]): (proc, folders[c[0], c[1]]) for c, proc in zip(cases, done)}
    finally:
        for lock in locks:
            lock.release()


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_an_unknown_key_is_a_usage_error(module, outcomes):
    assert_one_line_error(outcomes["unknown_key", module][0], 2)


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_a_missing_input_or_a_folder_that_may_not_be_used_is_refused(module, outcomes):
    proc, tmp = outcomes["refusal", module]
    assert_one_line_error(proc, 1)
    assert not (tmp / "nope").exists()


#: The entry points that keep Hydra's command line; abba.hydra_check checks it before @hydra.main runs.
HYDRA_ENTRY_POINTS = ("abba.train", "eval.run", "abba.bench", "abba.reconstruct")


@pytest.mark.parametrize("module", HYDRA_ENTRY_POINTS)
def test_a_hydra_entry_point_refuses_an_unknown_flag_in_one_line(module, outcomes):
    """Hydra itself prints 8 lines of argparse usage for `--dry-run`; `--size 2` was a lexer error on `2`."""
    line = assert_one_line_error(outcomes["flag", module][0], 2)
    assert line.startswith("error: unknown flag --dry-run: this command takes key=value overrides"), line


@pytest.mark.parametrize("argv, expected", [
    (["experiment"], "Error parsing override 'experiment': expected key=value"),
    (["quick=true", "quick"], "Error parsing override 'quick': expected key=value"),
    (["--size", "quick"], "unknown flag --size: this command takes key=value overrides and Hydra's flags "
                          "(-m, --cfg job, --help); did you mean size=...?"),
    (["--world-size=2"], "unknown flag --world-size: this command takes key=value overrides and Hydra's flags "
                         "(-m, --cfg job, --help)"),
    (["size=[abc]"], "size=['abc']: expected a list of numbers (default [256, 256])"),
    (["ranks=[8,x]"], "ranks=[8, 'x']: expected a list of numbers (default [8, 16, 24, 32, 40, 48, 56, 64, 72])"),
])
def test_hydra_command_line_errors_say_what_to_do(argv, expected):
    """In-process (abba.hydra_check against configs/reconstruct.yaml): the exact one-line message."""
    from abba.hydra_check import CommandLineError, check_command_line
    from abba.layout import REPO_ROOT

    with pytest.raises(CommandLineError) as caught:
        check_command_line(REPO_ROOT / "configs", "reconstruct", argv)
    assert str(caught.value) == expected


@pytest.mark.parametrize("argv", [["-m", "seed=1,2"], ["--multirun", "seed=1"], ["--cfg", "job"], ["-c", "job"],
                                  ["--info", "defaults"], ["-cn=reconstruct", "--cfg=job"], ["--help"], ["-h"],
                                  ["--hydra-help"], ["--version"], ["--resolve", "--cfg", "job"], ["-r"]])
def test_hydra_own_flags_pass_the_flag_check(argv):
    from abba.hydra_check import check_flags
    from abba.layout import REPO_ROOT

    check_flags(REPO_ROOT / "configs", "reconstruct", argv)  # raises nothing


@pytest.mark.parametrize("message, default, expected", [
    ("\n  \n  first  \nsecond", "", "first"), ("", "fallback", "fallback"), (" \n\t\n", "", ""),
    (ValueError("bad value\nTraceback..."), "", "bad value")])
def test_first_line_of_an_error_message(message, default, expected):
    from abba.cli import first_line

    assert first_line(message, default) == expected

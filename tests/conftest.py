"""Shared fixtures: the data files (excerpts shipped in tests/data, and the full real files beside the repository),
tiny random models, offline settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Excerpts of the real files in the layout of ABBA_DATA_DIR (tests/data/README.md): always there.
EXCERPTS = REPO_ROOT / "tests" / "data"
#: The full real files: $ABBA_DATA_DIR, else ../shared/data beside the repository (configs/paths/default.yaml).
SHARED_DATA = Path(os.environ.get("ABBA_DATA_DIR") or REPO_ROOT.parent / "shared" / "data")
#: Every skip for missing full files starts with this; a run where the folder exists must have none.
DATA_SKIP = "real benchmark files not at"

for key, value in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                   "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(key, value)

TINY_MODELS = ("tiny_llama", "tiny_mistral", "tiny_gemma")


def model_cfg(name: str) -> dict:
    """The parsed configs/model/<name>.yaml."""
    return yaml.safe_load((REPO_ROOT / "configs" / "model" / f"{name}.yaml").read_text())


def full_files() -> tuple[str, ...]:
    """The full files tests read: abba.data.download's `tests` group (its one manifest)."""
    from abba.data.download import GROUPS, MANIFEST

    return tuple(f.path for f in MANIFEST if f.name in GROUPS["tests"])


def missing_full_files(data_dir: Path) -> list[str]:
    return [rel for rel in full_files() if not (data_dir / rel).is_file()]


def full_data_skip_reason(data_dir: Path, missing: list[str]) -> str:
    """One line: where the full files were looked for, and how to get them."""
    some = "" if len(missing) == len(full_files()) else f" ({len(missing)} missing, e.g. {missing[0]})"
    return f"{DATA_SKIP} {data_dir}{some}: run `bash scripts/get_data.sh` or set ABBA_DATA_DIR"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of the full real files; the test is skipped (one line saying how to get them) when any is
    missing. Tests whose logic does not need the full files use `excerpt_data`."""
    missing = missing_full_files(SHARED_DATA)
    if missing:
        pytest.skip(full_data_skip_reason(SHARED_DATA, missing))
    return SHARED_DATA


@pytest.fixture(scope="session")
def excerpt_data() -> Path:
    """The excerpts shipped in tests/data (same layout, a few records per file): use as paths.data_dir or
    ABBA_DATA_DIR."""
    return EXCERPTS


@pytest.fixture(params=["excerpts", "full"])
def excerpts_and_full(request) -> Path:
    """Each test twice: on the excerpts (always) and on the full files (skipped when they are absent); for
    properties of every record of a file. `expected_records` gives the count each should hold."""
    return request.getfixturevalue("excerpt_data" if request.param == "excerpts" else "shared_data")


def expected_records(data_dir: Path, rel: str) -> int:
    """How many records `data_dir/rel` holds: tests/data/excerpts.json for the excerpts, else the manifest."""
    import json

    from abba.data.download import MANIFEST

    if Path(data_dir) == EXCERPTS:
        return json.loads((EXCERPTS / "excerpts.json").read_text())[rel]["records"]
    return next(f.records for f in MANIFEST if f.path == rel)


# A data folder that exists but makes tests skip is a broken setup (a partial download, a moved file), not a
# machine without the data: the run fails, so CI with ../shared/data present can never pass with them skipped.
_data_skips: list[str] = []


def pytest_runtest_logreport(report):
    if report.skipped and DATA_SKIP in str(report.longrepr):
        _data_skips.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    if _data_skips and SHARED_DATA.is_dir():
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"error: {len(_data_skips)} test(s) skipped for missing data although {SHARED_DATA} "
                                f"exists (first: {_data_skips[0]}): {', '.join(missing_full_files(SHARED_DATA))} "
                                "missing there; run `bash scripts/get_data.sh` to complete it", red=True)


@pytest.fixture(scope="session")
def tokenizer():
    from abba.base_model import load_tokenizer

    return load_tokenizer(model_cfg("tiny_llama"))


def tiny_model(name: str = "tiny_llama", dtype: torch.dtype = torch.float32, seed: int = 0):
    """A tiny random causal LM built from its config file (no download)."""
    from abba.base_model import build_model

    return build_model(model_cfg(name), dtype=dtype, seed=seed)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

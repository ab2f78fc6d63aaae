"""abba.data.hub_commonsense: ai2_arc records converted exactly as the real local LLM-Adapters ARC-Easy files hold
them (the excerpts in tests/data, and the full files when present), local files copied byte for byte, the Hub path
(faked) written in the same layout, and one line on stderr when neither source works."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import EXCERPTS

from abba.data import hub_commonsense as hc

REPO_ROOT = Path(__file__).resolve().parents[1]

# ai2_arc-style records (question, choices {text, label}, answerKey) typed from the text of real local records:
# (split, index in the local file, record).
HAND_BUILT = [
    ("test", 0, {  # the first ARC-Easy test record, labels A-D
        "question": "Which statement best explains why photosynthesis is the foundation of most food webs?",
        "choices": {"text": ["Sunlight is the source of energy for nearly all ecosystems.",
                             "Most ecosystems are found on land instead of in water.",
                             "Carbon dioxide is more available than other gases.",
                             "The producers in all ecosystems are plants."], "label": ["A", "B", "C", "D"]},
        "answerKey": "A"}),
    ("test", 93, {  # three choices
        "question": "When a rock is placed in a graduated cylinder containing water, the height of the water will",
        "choices": {"text": ["decrease", "increase", "remain the same"], "label": ["A", "B", "C"]},
        "answerKey": "B"}),
    ("test", 1074, {  # numeric labels "1".."4", non-ASCII text (written as \u00b0 in the file)
        "question": "At what temperature does water begin to boil?",
        "choices": {"text": ["0°C", "32°C", "100°C", "212°C"], "label": ["1", "2", "3", "4"]},
        "answerKey": "3"}),
    ("test", 1441, {  # five choices, the fifth correct
        "question": "What happens when an animal hibernates?",
        "choices": {"text": ["There is no life in any of its parts.", "It stops breathing.",
                             "Its temperature is higher than when it is active.",
                             "It is absorbing energy for use when it is active.",
                             "It is using less energy than when it is active."], "label": ["A", "B", "C", "D", "E"]},
        "answerKey": "E"}),
    ("train", 0, {  # the first training record
        "question": "Which factor will most likely cause a person to develop a fever?",
        "choices": {"text": ["a leg muscle relaxing after exercise", "a bacterial population in the bloodstream",
                             "several viral particles on the skin", "carbohydrates being digested in the stomach"],
                    "label": ["A", "B", "C", "D"]},
        "answerKey": "B"}),
]


def _local(data: Path, split: str) -> dict[int, dict]:
    """{position in the full file: record} of ARC-Easy's `split` file in `data` (the excerpts keep the positions
    HAND_BUILT names, tests/data/make_excerpts.py)."""
    records = json.loads((data / hc.FILES[split]).read_text())
    if data == EXCERPTS:
        positions = json.loads((EXCERPTS / "excerpts.json").read_text())[hc.FILES[split]]["positions"]
        return dict(zip(positions, records))
    return dict(enumerate(records))


@pytest.mark.parametrize("split, index, record", HAND_BUILT, ids=[f"{s}{i}" for s, i, _ in HAND_BUILT])
def test_conversion_equals_the_real_local_record(excerpts_and_full, split, index, record):
    assert hc.convert(record) == _local(excerpts_and_full, split)[index]


def test_numeric_key_given_as_int_and_unknown_key():
    record = dict(HAND_BUILT[2][2], answerKey=3)
    assert hc.convert(record)["answer"] == "answer3"
    with pytest.raises(ValueError, match="answerKey 'F'"):
        hc.convert(dict(HAND_BUILT[0][2], answerKey="F"))


def test_writer_reproduces_the_local_files_byte_for_byte(excerpts_and_full):
    for split in hc.FILES:
        text = (excerpts_and_full / hc.FILES[split]).read_text()
        assert hc.dumps(json.loads(text)) == text


def test_local_files_are_copied(excerpt_data, tmp_path):
    data = tmp_path / "data"  # a copy: materialise(out_dir=data folder) must leave it untouched, checked below
    for rel in hc.FILES.values():
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (data / rel).write_bytes((excerpt_data / rel).read_bytes())
    assert hc.materialise(tmp_path / "out", data) == f"local {data}"
    for rel in hc.FILES.values():
        assert (tmp_path / "out" / rel).read_bytes() == (excerpt_data / rel).read_bytes()
    assert not [p for p in (tmp_path / "out").rglob(".*")]  # no temporary files left
    before = {rel: (data / rel).stat().st_mtime_ns for rel in hc.FILES.values()}
    assert hc.materialise(data, data) == f"local {data}"  # out_dir = data folder: untouched
    assert {rel: (data / rel).stat().st_mtime_ns for rel in hc.FILES.values()} == before


def test_hub_path_converts_both_splits(excerpt_data, tmp_path, monkeypatch):
    """No local files: datasets.load_dataset (faked here; tests never reach the Hub) gives ai2_arc records."""
    import datasets

    calls = []

    def fake_load_dataset(path, name, split):
        calls.append((path, name, split))
        return [r for s, _, r in HAND_BUILT if s == split]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    (tmp_path / "empty").mkdir()
    assert hc.materialise(tmp_path / "out", tmp_path / "empty") == "hub allenai/ai2_arc ARC-Easy"
    assert calls == [("allenai/ai2_arc", "ARC-Easy", "train"), ("allenai/ai2_arc", "ARC-Easy", "test")]
    for split in hc.FILES:
        text = (tmp_path / "out" / hc.FILES[split]).read_text()
        local = _local(excerpt_data, split)
        assert json.loads(text) == [local[i] for s, i, _ in HAND_BUILT if s == split]
        assert hc.dumps(json.loads(text)) == text


def test_neither_source_is_one_line_on_stderr(tmp_path):
    empty = tmp_path / "no_data"
    empty.mkdir()
    env = {**os.environ, "ABBA_DATA_DIR": str(empty), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf_home"), "HF_DATASETS_CACHE": str(tmp_path / "hf_datasets")}
    proc = subprocess.run([sys.executable, "-m", "abba.data.hub_commonsense", f"out_dir={tmp_path / 'out'}"],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert str(empty) in lines[0] and "allenai/ai2_arc" in lines[0] and "ARC-Easy" in lines[0]
    assert not [p for p in tmp_path.joinpath("out").rglob("*") if p.is_file()]  # nothing written


def test_cli_bad_argument(capsys):
    assert hc.main(["outdir=x"]) == 2
    assert capsys.readouterr().err.startswith("error: bad arguments outdir=x; usage:")


@pytest.mark.parametrize("argv, reason", [
    (["out_dir=X", "foo=1"], "; unknown option foo"),
    (["out_dir"], "; argument 'out_dir' is not key=value"),
    (["data_dir=y"], "; missing out_dir="),
])
def test_cli_bad_argument_names_the_reason(argv, reason, capsys):
    """The unknown key (or the argument that is not key=value) is named, not only the whole command line."""
    assert hc.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: bad arguments {' '.join(argv)}; usage:") and err.rstrip().endswith(reason), err
    assert len(err.strip().splitlines()) == 1

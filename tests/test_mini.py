"""The mini reproduction (abba/mini.py, configs/experiment/m1_smollm2_*.yaml): every method at LoRA r = 16's
parameter budget on SmolLM2-135M's architecture, the held-out slice disjoint from the training sample, the sweep's
choice by held-out NLL, and the plan `reproduce.sh mini dry_run=true` prints."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from abba.layout import REPO_ROOT

CONFIGS = REPO_ROOT / "configs"
METHODS = ("abba", "lora", "rslora", "pissa", "dora", "hira", "loha")
# SmolLM2-135M: 30 layers x (q 576->576, k/v 576->192, o 576->576, gate/up 576->1536, down 1536->576); LoRA r = 16
# trains r (d_in + d_out) per projection. Worked out by hand:
PER_LAYER_IN_PLUS_OUT = (576 + 576) + 2 * (576 + 192) + (576 + 576) + 2 * (576 + 1536) + (1536 + 576)
LORA_16 = 30 * 16 * PER_LAYER_IN_PLUS_OUT
DORA_MAGNITUDES = 30 * (576 + 192 + 192 + 576 + 1536 + 1536 + 576)  # one per output feature


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def test_lora_16_budget_worked_out_by_hand():
    assert LORA_16 == 4_884_480 and DORA_MAGNITUDES == 155_520


@pytest.mark.parametrize("method", METHODS)
def test_every_method_has_lora_r16s_parameters(method):
    from transformers import AutoModelForCausalLM

    from abba.methods import apply_method
    from abba.model import parameter_counts
    from abba.base_model import architecture_config

    cfg = _compose(f"experiment=m1_smollm2_{method}")
    assert cfg.peft.method == method and cfg.table == "mini" and cfg.model.name == "smollm2_135m"
    with torch.device("meta"):
        model = apply_method(AutoModelForCausalLM.from_config(architecture_config(cfg.model)), cfg.peft, seed=0)
    trainable, _ = parameter_counts(model)
    assert trainable == LORA_16 + (DORA_MAGNITUDES if method == "dora" else 0)


def test_every_method_shares_the_protocol():
    """Same data sample, budget and schedule for every method: only the adapter differs."""
    keys = lambda c: (c.data.path, c.data.subset_size, c.data.subset_seed, c.data.heldout_size, c.data.max_length,
                      c.trainer.per_device_train_batch_size, c.trainer.num_train_epochs, c.trainer.lr_scheduler_type,
                      c.trainer.warmup_ratio, c.trainer.bf16, c.peft.target_modules)
    first = keys(_compose("experiment=m1_smollm2_abba"))
    for method in METHODS[1:]:
        assert keys(_compose(f"experiment=m1_smollm2_{method}")) == first, method


def _check_heldout(cfg, n_train: int, n_heldout: int, n_records: int) -> None:
    from abba.data.sources import DataError, load_heldout_records, load_records

    train = {(r["instruction"], r["output"]) for r in load_records(cfg)}
    heldout = [(r["instruction"], r["output"]) for r in load_heldout_records(cfg)]
    assert len(train) == n_train and len(heldout) == n_heldout  # (no duplicate instructions in this sample)
    assert not train & set(heldout)
    # The held-out slice is the same for every method and seed: it depends on the data config only.
    again = [(r["instruction"], r["output"]) for r in load_heldout_records(cfg)]
    assert again == heldout
    cfg.heldout_size = n_records - n_train + 1  # one more than is left after the training sample
    with pytest.raises(DataError, match="held-out rows must lie outside the training subset"):
        load_heldout_records(cfg)


def test_heldout_records_never_overlap_the_training_sample(excerpt_data):
    """The m1 data config on the excerpts (4 x 24 records), with a sample and slice that fit them."""
    cfg = _compose("experiment=m1_smollm2_abba", f"paths.data_dir={excerpt_data}", "data.subset_size=64",
                   "data.heldout_size=16").data
    _check_heldout(cfg, 64, 16, 4 * 24)


def test_heldout_slice_of_the_m1_protocol_on_the_full_files(shared_data):
    """The configured sample (1,024) and slice (256) of the four full training splits (17,754 records)."""
    cfg = _compose("experiment=m1_smollm2_abba", f"paths.data_dir={shared_data}").data
    _check_heldout(cfg, 1024, 256, 17_754)


def _fake_run(run_dir: Path, heldout_nll: float) -> None:
    (run_dir / "final").mkdir(parents=True)
    (run_dir / "run_info.json").write_text(json.dumps({"heldout_nll": heldout_nll, "finished": True}))


def test_the_sweep_chooses_the_lowest_heldout_nll(tmp_path, monkeypatch):
    from abba import mini, mini_plan

    size = mini_plan.Size("t", ("abba", "lora"), {"abba": (0, 1)}, (("ARC-Easy", 5),), str(tmp_path / "out"),
                          str(tmp_path / "results"))
    jobs = mini_plan.sweep_jobs("lora", size)
    assert [j.overrides for j in jobs] == [(f"peft.lr={lr}",) for lr in mini_plan.LR_GRID]
    assert mini_plan.select("lora", size) is None  # nothing trained yet
    for job, nll in zip(jobs, (0.9, 0.4, 0.7)[:len(jobs)]):
        _fake_run(job.run_dir, nll)
    assert mini_plan.select("lora", size) == jobs[1].overrides
    # The final seed-0 run of the chosen setting is the sweep's run itself (same run folder), not a new one.
    finals = [j for j in mini_plan.plan(size) if j.method == "lora" and j.final]
    assert [j.seed for j in finals] == [0] and finals[0].run_dir == jobs[1].run_dir and finals[0].trained
    abba = mini_plan.sweep_jobs("abba", size)
    assert len(abba) == len(mini_plan.LR_GRID) * 2 and all(any(o.startswith("peft.alpha=") for o in j.overrides) for j in abba)
    mini_plan.write_selection(size)
    record = json.loads((tmp_path / "results" / "selection.json").read_text())
    assert record["lora"]["overrides"] == list(jobs[1].overrides) and "abba" not in record
    # A later session has the committed records under results/ but not the run folders under outputs/.
    import shutil

    for job in jobs:
        job.keep_record()
    shutil.rmtree(tmp_path / "out")
    assert [j.heldout_nll for j in jobs] == [0.9, 0.4, 0.7][:len(jobs)]
    assert mini_plan.select("lora", size) == jobs[1].overrides
    final = next(j for j in mini_plan.plan(size) if j.method == "lora" and j.final)
    assert not final.trained  # its adapter is gone ...
    calls = []
    monkeypatch.setattr(mini, "_run", calls.append)
    monkeypatch.setattr(mini, "evaluate_run", lambda job: calls.append(("evaluate", job.seed)))
    mini.run_stage("seed0", ["lora"], size)
    assert [c[3] for c in calls if isinstance(c, list)] == ["experiment=m1_smollm2_lora"]  # ... so it is retrained
    assert ("evaluate", 0) in calls
    # ... unless its committed results are complete: then nothing runs at all.
    final.results_dir.mkdir(parents=True)
    (final.results_dir / "metrics.json").write_text(json.dumps({"ARC-Easy": {"accuracy": 0.5, "nll": 0.2}}))
    calls.clear()
    mini.run_stage("seed0", ["lora"], size)
    assert calls == []


def test_dry_run_lists_the_plan_and_runs_nothing(tmp_path):
    result = subprocess.run([sys.executable, "-m", "abba.mini", "dry_run=true"], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    sweeps = [line for line in lines if line.startswith("sweep ")]
    finals = [line for line in lines if line.startswith("final ")]
    assert len(sweeps) == len(mini_grid_sizes()) and len(finals) == 3 + 3 + 5
    assert any(line.startswith("base (untuned)") for line in lines)
    assert "ARC-Challenge (300 items), ARC-Easy (300 items), boolq (300 items), openbookqa (all items)" in lines[-1]
    bad = subprocess.run(["bash", "scripts/reproduce.sh", "mini", "methods=nope"], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown method(s) nope" in bad.stderr.strip().splitlines()[-1]


def test_reproduce_sh_mini_is_abba_mini():
    """`reproduce.sh mini dry_run=true` (the README's command) passes its arguments to abba.mini: the same plan."""
    direct = subprocess.run([sys.executable, "-m", "abba.mini", "dry_run=true", "methods=lora"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120)
    script = subprocess.run(["bash", "scripts/reproduce.sh", "mini", "dry_run=true", "methods=lora"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120)
    assert direct.returncode == script.returncode == 0, script.stderr
    assert script.stdout == direct.stdout and "final m1_smollm2_lora seed=2" in script.stdout


def test_a_result_is_evaluated_once_every_benchmark_has_an_nll(tmp_path):
    """mini's done-check (abba.layout.is_evaluated, NLL required, a seeded subset enough), on hand-written files."""
    from abba.mini_plan import Size, evaluated

    size = Size("t", ("lora",), {}, (("ARC-Easy", 5), ("boolq", None)), str(tmp_path / "o"), str(tmp_path / "r"))
    cases = {"missing": None,
             "subset with NLLs": {"ARC-Easy": {"accuracy": 0.5, "nll": 0.3, "limit": 5, "n": 5},
                                  "boolq": {"accuracy": 0.6, "nll": 0.2}},
             "one without NLL": {"ARC-Easy": {"accuracy": 0.5, "nll": 0.3}, "boolq": {"accuracy": 0.6}},
             "one benchmark": {"ARC-Easy": {"accuracy": 0.5, "nll": 0.3}}}
    done = {}
    for name, metrics in cases.items():
        (tmp_path / name).mkdir()
        if metrics is not None:
            (tmp_path / name / "metrics.json").write_text(json.dumps(metrics))
        done[name] = evaluated(tmp_path / name, size)
    assert done == {"missing": False, "subset with NLLs": True, "one without NLL": False, "one benchmark": False}


def mini_grid_sizes() -> list:
    from abba import mini_plan

    return [p for m in mini_plan.METHODS for p in mini_plan.grid(m)]

"""End-to-end training on the tiny random Llama (CPU): the loss falls, final/ reloads to the in-memory model,
the run folder holds what the contract says, resume=true reproduces an uninterrupted run, bad inputs are
refused without touching anything, and a local multirun writes one folder per job.

One in-process smoke_arithmetic run (session fixture) serves most tests."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from conftest import model_cfg, tiny_model
from safetensors.torch import load_file
from train_helpers import compose_train, run_train, single_thread, snapshot

from abba import load_abba_model


@pytest.fixture(scope="session")
def smoke_run(excerpt_data, tmp_path_factory):
    """(RUN folder, in-memory trained model, returned loss) of `experiment=smoke_arithmetic`."""
    from abba.train import train

    run_dir = tmp_path_factory.mktemp("smoke") / "run"
    cfg = compose_train("experiment=smoke_arithmetic", f"output_dir={run_dir}", f"paths.data_dir={excerpt_data}")
    with single_thread():
        loss, model = train(cfg)
    return run_dir, model, loss


def _metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_smoke_loss_falls(smoke_run):
    run_dir, _, loss = smoke_run
    records = _metrics(run_dir)
    assert [r["step"] for r in records] == list(range(1, 61))
    losses = [r["loss"] for r in records]
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < first - 0.1, f"loss did not fall: first 10 steps {first:.3f}, last 10 {last:.3f}"
    assert loss == pytest.approx(last)
    assert all(r["tokens_per_s"] > 0 and r["grad_norm"] > 0 and r["lr"] >= 0 for r in records)
    lrs = [r["lr"] for r in records]
    assert max(lrs) == pytest.approx(1e-2, rel=0.05) and lrs[-1] < 0.01 * max(lrs)  # warmup then cosine to ~0


def test_final_adapter_reloads_to_the_in_memory_model(smoke_run):
    run_dir, model, _ = smoke_run
    saved_cfg = yaml.safe_load((run_dir / "final" / "abba_model.yaml").read_text())
    assert saved_cfg == {**model_cfg("tiny_llama"), "seed": 0}  # the base entry merge rebuilds, with its seed
    reloaded = load_abba_model(tiny_model("tiny_llama", seed=0), run_dir / "final").eval()
    model.eval()
    ids = torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        got = reloaded(input_ids=ids).logits
        base = tiny_model("tiny_llama", seed=0)(input_ids=ids).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert (expected - base).abs().max() > 1e-3  # the adapter was trained: it changes the outputs


def test_run_folder_holds_config_run_info_checkpoints_and_final(smoke_run):
    run_dir, _, _ = smoke_run
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert cfg["experiment_name"] == "smoke_arithmetic" and cfg["seed"] == 0 and cfg["table"] is None
    assert cfg["model"]["name"] == "tiny_llama" and cfg["peft"]["method"] == "abba" and cfg["data"]["task"] == "arithmetic"
    info = json.loads((run_dir / "run_info.json").read_text())
    assert {"git_commit", "packages", "hardware", "world_size", "trainable_params", "total_params", "method",
            "experiment_name", "seed"} <= set(info)
    # 2 layers x 7 projections, each (r1 + r2)(d_in + d_out) = 16 (d_in + d_out) for tiny_llama's shapes
    shapes = [(64, 64), (64, 32), (64, 32), (64, 64), (64, 128), (64, 128), (128, 64)]
    assert info["trainable_params"] == 2 * sum(16 * (i + o) for i, o in shapes)
    assert info["world_size"] == 1 and info["finished"] and info["packages"]["torch"]
    final = {p.name for p in (run_dir / "final").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "abba_model.yaml"} <= final
    checkpoint = run_dir / "checkpoint-60"
    names = {p.name for p in checkpoint.iterdir()}
    assert {"adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json"} <= names
    assert "model.safetensors" not in names  # the frozen base model is never checkpointed
    assert set(load_file(str(checkpoint / "adapter_model.safetensors"))) == set(
        load_file(str(run_dir / "final" / "adapter_model.safetensors")))


@pytest.mark.slow
def test_interrupted_run_resumed_equals_the_uninterrupted_run(smoke_run, excerpt_data, tmp_path):
    run_dir, _, _ = smoke_run
    resumed = tmp_path / "run"
    args = ["experiment=smoke_arithmetic", f"output_dir={resumed}"]
    crashed = run_train(args + ["+debug.interrupt_at_step=20"], excerpt_data, tmp_path)
    assert crashed.returncode != 0 and not (resumed / "final").exists()
    assert (resumed / "checkpoint-20").is_dir()
    refused = run_train(args, excerpt_data, tmp_path)  # an unfinished folder is not reused silently either
    assert refused.returncode == 1 and "resume=true" in refused.stderr  # a refusal (abba.cli): exit 1
    done = run_train(args + ["resume=true"], excerpt_data, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    reference = load_file(str(run_dir / "final" / "adapter_model.safetensors"))
    got = load_file(str(resumed / "final" / "adapter_model.safetensors"))
    assert set(got) == set(reference)
    for key in reference:
        torch.testing.assert_close(got[key], reference[key], atol=1e-5, rtol=0)
    assert [r["step"] for r in _metrics(resumed)] == list(range(1, 61))


@pytest.mark.parametrize("override, names", [
    ("data.path=/nonexistent/train.jsonl", "/nonexistent/train.jsonl"),
    ("experiment=no_such_experiment", "experiment/no_such_experiment"),
    ("trainer.no_such_key=3", "trainer.no_such_key"),
    ("experiment=t1_llama3_2_1b_abba_r23", "did you mean: t1_llama3_2_1b_abba_r32"),
    ("peft.lr=1e-3,x", "add -m to sweep"),
    ("peft=pissa trainer=zero3", "peft=pissa cannot run under ZeRO-3"),
])
def test_bad_input_exits_with_one_line_and_writes_nothing(override, names, excerpt_data, tmp_path):
    run_dir = tmp_path / "run"
    args = ["experiment=smoke_arithmetic", f"output_dir={run_dir}", *override.split()]
    result = run_train(args, excerpt_data, tmp_path)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and names in lines[0], result.stderr
    assert not run_dir.exists() and sorted(p.name for p in tmp_path.iterdir()) == []


def test_finished_run_folder_is_not_overwritten(smoke_run, excerpt_data, tmp_path):
    run_dir, _, _ = smoke_run
    before = snapshot(run_dir)
    result = run_train(["experiment=smoke_arithmetic", f"output_dir={run_dir}"], excerpt_data, tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "finished run" in lines[0] and str(run_dir) in lines[0]
    assert snapshot(run_dir) == before


@pytest.mark.slow
def test_local_multirun_writes_one_run_folder_per_job(excerpt_data, tmp_path):
    result = run_train(["-m", "experiment=smoke_arithmetic", "peft.lr=1e-3,1e-2", "trainer.max_steps=3",
                        f"paths.output_root={tmp_path / 'out'}"], excerpt_data, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    seed_dir = tmp_path / "out" / "smoke_arithmetic" / "seed0"
    runs = sorted(p.name for p in seed_dir.iterdir())
    assert len(runs) == 2 and all(n.startswith("peft.lr=") and n.endswith(",trainer.max_steps=3") for n in runs)
    lrs = set()
    for name in runs:
        assert (seed_dir / name / "final" / "adapter_model.safetensors").is_file()
        lrs.add(yaml.safe_load((seed_dir / name / "config.yaml").read_text())["peft"]["lr"])
        assert len(_metrics(seed_dir / name)) == 3
    assert lrs == {1e-3, 1e-2}

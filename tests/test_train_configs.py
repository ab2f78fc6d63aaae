"""The Hydra configs: every experiment composes, paper rows carry the paper's hyperparameters (paper v4, App. L
Table 13) and parameter counts (Tables 1-2), the SLURM launcher composes, the official-code toggle and the
run-folder naming do what they say."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from abba.layout import REPO_ROOT

CONFIGS = REPO_ROOT / "configs"
# Files starting with "_" are settings shared by several experiment files (e.g. _m1_common.yaml), not experiments.
EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml") if not p.stem.startswith("_"))
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _compose(*overrides: str, hydra_config: bool = False):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=hydra_config)


def _resolved(cfg) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


def test_experiment_files_cover_both_tables():
    methods = ["full", "lora", "rslora", "pissa", "dora", "lorapro", "hira", "abba_r16", "abba_r32"]
    expected = {f"t1_{m}_{x}" for m in ("llama3_2_1b", "llama3_2_3b") for x in methods}
    expected |= {f"t2_{m}_{x}" for m in ("mistral_7b", "gemma2_9b") for x in methods}
    assert expected | {"smoke_arithmetic", "smoke_commonsense"} <= set(EXPERIMENTS)
    assert {n for n in EXPERIMENTS if n.startswith(("t1_", "t2_"))} == expected


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes(name):
    cfg = _resolved(_compose(f"experiment={name}"))
    assert cfg["experiment_name"] == name
    assert cfg["peft"]["method"] in ("abba", "lora", "rslora", "pissa", "dora", "hira", "loha", "lorapro", "full")
    header = (CONFIGS / "experiment" / f"{name}.yaml").read_text().splitlines()
    assert header[0] == "# @package _global_"
    assert any(f"experiment={name}" in line for line in header[:6]), "header comment must give the launch command"
    if name.startswith("t"):
        table = "table1" if name.startswith("t1_") else "table2"
        assert cfg["table"] == table
        assert cfg["data"]["task"] == ("commonsense" if table == "table1" else "arithmetic")
        assert cfg["model"]["dtype"] == "bfloat16" and cfg["model"]["random_init"] is False
        assert cfg["peft"].get("target_modules", TARGETS) == TARGETS
        assert cfg["trainer"]["weight_decay"] == 0.0 and cfg["trainer"]["warmup_ratio"] == 0.02
        assert paper_row(name)["params"]  # the row's numbers: results/paper_reference.yaml, the one source
        method = name.removeprefix("t1_").removeprefix("t2_").removeprefix(cfg["model"]["name"] + "_")
        assert method.split("_")[0] == cfg["peft"]["method"]


def paper_row(name: str) -> dict:
    """The paper's row of a t1_/t2_ experiment in results/paper_reference.yaml (through abba.table_registry)."""
    from abba import table_registry as registry
    from abba.table_runs import parse_experiment_name

    reference = registry.paper_reference()["tables"]
    table = "table1" if name.startswith("t1_") else "table2"
    _, model, method = parse_experiment_name(name, list(reference[table]["models"]))
    return reference[table]["models"][model]["methods"][method]


# Two rows per table, checked value by value against paper v4 App. L, Table 13.
COMMONSENSE = dict(batch=6, accumulation=24, max_length=256, epochs=2, dropout=0.05, scheduler="linear")
ARITHMETIC = dict(batch=1, accumulation=32, max_length=512, epochs=1, dropout=0.0, scheduler="cosine")


@pytest.mark.parametrize("name, setup, abba", [
    ("t1_llama3_2_1b_abba_r32", COMMONSENSE, dict(r=16, alpha=32)),
    ("t1_llama3_2_3b_abba_r16", COMMONSENSE, dict(r=8, alpha=32)),
    ("t2_mistral_7b_abba_r32", ARITHMETIC, dict(r=16, alpha=24)),
    ("t2_gemma2_9b_lora", ARITHMETIC, None),
    ("t1_llama3_2_1b_dora", COMMONSENSE, None),
    ("t1_llama3_2_3b_lorapro", COMMONSENSE, None),
    ("t2_gemma2_9b_lorapro", ARITHMETIC, None),
])
def test_paper_rows_carry_the_papers_hyperparameters(name, setup, abba):
    cfg = _resolved(_compose(f"experiment={name}"))
    t, d, p = cfg["trainer"], cfg["data"], cfg["peft"]
    assert (t["per_device_train_batch_size"], t["gradient_accumulation_steps"]) == (setup["batch"], setup["accumulation"])
    assert d["max_length"] == setup["max_length"] and t["num_train_epochs"] == setup["epochs"]
    assert p["dropout"] == setup["dropout"] and t["lr_scheduler_type"] == setup["scheduler"]
    assert t["optim"] == "adamw_torch" and t["weight_decay"] == 0.0 and t["warmup_ratio"] == 0.02
    if setup is ARITHMETIC:
        assert d["format"] == "metamathqa" and d["subset_size"] == 20000
    else:
        assert d["format"] == "commonsense" and d["path"].endswith("commonsense_170k.json")
    if abba:
        assert (p["r1"], p["r2"], p["alpha"]) == (abba["r"], abba["r"], abba["alpha"])
        assert p["lr"] == t["learning_rate"] == 1e-3 and p["scaling"] == "paper"
    else:
        assert p["r"] == 32  # the paper's baseline rows have LoRA r=32's parameter count


# Parameter counts of the paper's tables, from the architecture alone (meta device: nothing is allocated).
@pytest.mark.parametrize("name, millions", [
    ("t1_llama3_2_1b_abba_r32", 22.54), ("t1_llama3_2_1b_abba_r16", 11.27), ("t1_llama3_2_3b_dora", 49.40),
    ("t2_mistral_7b_abba_r32", 83.88), ("t2_gemma2_9b_abba_r16", 54.02), ("t2_mistral_7b_hira", 83.88),
    ("t1_llama3_2_1b_lorapro", 22.54), ("t2_gemma2_9b_lorapro", 108.04),
])
def test_paper_rows_have_the_papers_parameter_counts(name, millions):
    from transformers import AutoModelForCausalLM

    from abba.methods import apply_method
    from abba.model import parameter_counts
    from abba.base_model import architecture_config

    cfg = _compose(f"experiment={name}")
    assert paper_row(name)["params"] == f"{millions:.2f} M"
    with torch.device("meta"):
        model = apply_method(AutoModelForCausalLM.from_config(architecture_config(cfg.model)), cfg.peft, seed=0)
    trainable, _ = parameter_counts(model)
    assert abs(trainable / 1e6 - millions) < 0.01  # the paper truncates to two decimals


def test_slurm_launcher_composes():
    cfg = _compose("experiment=t1_llama3_2_1b_abba_r32", "hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                   hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher.partition == "gpu" and launcher.gpus_per_node == 1 and launcher.timeout_min > 0


def test_named_sweep_ties_r2_to_r1():
    cfg = _compose("experiment=smoke_arithmetic", "+sweep=abba_lr_rank", "peft.r1=16", hydra_config=True)
    assert cfg.peft.r2 == 16
    assert set(cfg.hydra.sweeper.params) == {"peft.lr", "peft.r1"}


def test_official_code_toggle_applies_the_released_code_deviations():
    from abba.official_code import apply_official_code

    cfg = _compose("experiment=t2_mistral_7b_abba_r32", "official_code=true")
    apply_official_code(cfg)
    p = cfg.peft
    # FACTS.md official-code items 1-6: r1 = r2 = the rank argument 32, s = alpha, a = 0, base dtype, wd 0.01.
    assert (p.r1, p.r2, p.scaling, p.kaiming_a, p.adapter_dtype, p.weight_decay) == (32, 32, "official", 0.0, "base", 0.01)
    assert cfg.trainer.weight_decay == 0.01
    assert (cfg.data.subset_size, cfg.data.subset_mode) == (50000, "first")
    cr = _compose("experiment=t1_llama3_2_1b_abba_r32")
    apply_official_code(cr)
    assert cr.data.official_indent is True and cr.peft.dropout == 0.0
    lora = _compose("experiment=t1_llama3_2_1b_lora")  # a baseline keeps its dropout (item 4 is about ABBA's layer)
    apply_official_code(lora)
    assert (lora.peft.r, lora.peft.dropout, lora.peft.weight_decay) == (32, 0.05, 0.01)


def test_run_folder_name_comes_from_experiment_seed_and_learning_overrides():
    from abba.layout import default_run_dir

    overrides = ["experiment=x", "seed=2", "peft.r1=8", "peft.lr=1e-4", "trainer.max_steps=5", "paths.output_root=/tmp",
                 "trainer.save_steps=3", "resume=true"]
    assert default_run_dir("out", "exp", 2, overrides) == str(Path("out/exp/seed2/peft.lr=0.0001,peft.r1=8,trainer.max_steps=5"))
    assert default_run_dir("out", "exp", 0, ["experiment=x", "paths.output_root=/o"]) == str(Path("out/exp/seed0"))
    # The trainer choice and the data file change what is trained (issue 10): they name the run too.
    assert default_run_dir("out", "exp", 0, ["trainer=zero3"]) == str(Path("out/exp/seed0/trainer=zero3"))


@pytest.mark.parametrize("name", ["t1_llama3_2_1b_lorapro", "t1_llama3_2_3b_lorapro", "t2_mistral_7b_lorapro",
                                  "t2_gemma2_9b_lorapro"])
def test_lorapro_rows_use_lorapros_own_hyperparameters(name):
    """LoRA-Pro's lr 2e-5 and alpha = 2r (its Llama-2-7B setup, configs/peft/lorapro.yaml) at the rows' rank 32; a
    plain single-process trainer (DeepSpeed is refused); the 7B/9B rows keep Adam's moments in bf16."""
    cfg = _resolved(_compose(f"experiment={name}"))
    p, t = cfg["peft"], cfg["trainer"]
    assert p["method"] == "lorapro" and (p["r"], p["alpha"]) == (32, 64)
    assert p["lr"] == t["learning_rate"] == 2e-5 and t["deepspeed"] is None
    assert p["moment_dtype"] == ("bfloat16" if name.startswith("t2_") else "float32")


@pytest.mark.parametrize("on", [True, False])
def test_activation_checkpointing_reaches_the_trainer(tmp_path, on):
    # transformers renamed TrainingArguments.gradient_checkpointing to activation_checkpointing in 5.21; the locked
    # version has the old name. Whichever the installed version has must carry trainer.activation_checkpointing.
    import dataclasses

    from transformers import TrainingArguments

    from abba.trainer_build import training_arguments

    cfg = _compose("experiment=smoke_arithmetic", f"trainer.activation_checkpointing={str(on).lower()}")
    args = training_arguments(cfg, tmp_path)
    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    field = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    assert getattr(args, field) is on

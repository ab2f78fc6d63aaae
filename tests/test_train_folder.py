"""abba.train_folder writes RUN/final/ all or nothing, with the seed in final/abba_model.yaml; the test-only switches
live under `debug.` (+debug.interrupt_at_step, +debug.dump_init_adapter): accepted on the command line, absent
from configs/train.yaml, and never part of a run folder's name."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from conftest import model_cfg
from train_helpers import CONFIGS, compose_train

from abba.layout import override_suffix


class FakeTrainer:
    """What save_final uses of a transformers Trainer: save_model (writes one file, then fails if asked)."""

    def __init__(self, fail: bool = False):
        self.fail, self.processing_class = fail, None
        self.accelerator = SimpleNamespace(wait_for_everyone=lambda: None)

    def save_model(self, output_dir: str) -> None:
        (Path(output_dir) / "adapter_model.safetensors").write_text("weights")
        if self.fail:
            raise RuntimeError("disk full")


def test_final_holds_the_saved_model_and_the_base_entry_with_the_seed(tmp_path):
    from abba.train_folder import save_final

    cfg = compose_train("experiment=smoke_arithmetic", "seed=7")
    final = save_final(FakeTrainer(), None, cfg, tmp_path, is_main=True)
    assert final == tmp_path / "final" and [p.name for p in tmp_path.iterdir()] == ["final"]
    assert sorted(p.name for p in final.iterdir()) == ["abba_model.yaml", "adapter_model.safetensors"]
    assert yaml.safe_load((final / "abba_model.yaml").read_text()) == {**model_cfg("tiny_llama"), "seed": 7}


def test_a_failed_final_save_leaves_no_final_and_no_temporary_folder(tmp_path):
    from abba.train_folder import save_final

    cfg = compose_train("experiment=smoke_arithmetic")
    with pytest.raises(RuntimeError, match="disk full"):
        save_final(FakeTrainer(fail=True), None, cfg, tmp_path, is_main=True)
    assert list(tmp_path.iterdir()) == []


def test_debug_switches_are_accepted_read_and_left_out_of_the_run_name():
    from abba.hydra_check import check_command_line
    from abba.train_config import debug_switch

    switches = ["+debug.interrupt_at_step=3", "+debug.dump_init_adapter=true"]
    check_command_line(CONFIGS, "train", ["experiment=smoke_arithmetic", *switches])  # no CommandLineError
    cfg = compose_train("experiment=smoke_arithmetic", *switches)
    assert debug_switch(cfg, "interrupt_at_step") == 3 and debug_switch(cfg, "dump_init_adapter", False) is True
    plain = compose_train("experiment=smoke_arithmetic")
    assert "debug" not in plain and "interrupt_at_step" not in plain and "dump_init_adapter" not in plain
    assert debug_switch(plain, "interrupt_at_step") is None and debug_switch(plain, "dump_init_adapter", False) is False
    assert override_suffix(switches) == "" and override_suffix(["peft.lr=1e-3", *switches]) == "peft.lr=0.001"

"""The expressivity experiment (paper v4, Fig. 2): ABBA beats the best possible LoRA at equal parameters.

References are independent float64 computations: the truncated SVD via torch.linalg.svd (Eckart–Young), and
orthogonality checked as Q^T Q = I. Runtime: about 15 s on 2 CPU cores.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO_ROOT

from abba.reconstruct import settings, torch_threads
from abba.reconstruct_fit import fit, make_target, relative_error


def truncated_svd_error(W: torch.Tensor, rank: int) -> float:
    """||W - W_r||_F / ||W||_F for the rank-r truncated SVD W_r, rebuilt explicitly in float64."""
    u, s, vh = torch.linalg.svd(W.double(), full_matrices=False)
    W_r = u[:, :rank] @ torch.diag(s[:rank]) @ vh[:rank]
    return (torch.linalg.norm(W.double() - W_r) / torch.linalg.norm(W.double())).item()


def _compose(*overrides: str):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO_ROOT / "configs"), version_base="1.3"):
        return compose(config_name="reconstruct", overrides=list(overrides))


def test_abba_beats_the_lora_optimum_at_equal_parameters():
    """64 x 64, LoRA rank 8 vs ABBA r1 = r2 = 4 (both 8 * 128 parameters): fitted ABBA < truncated SVD."""
    generator = torch.Generator().manual_seed(0)
    kinds = ("orthogonal", "sparse", "random")
    targets = torch.stack([make_target(kind, 64, 64, generator, sparse_density=0.1) for kind in kinds])
    torch.testing.assert_close(targets[0].T @ targets[0], torch.eye(64, dtype=torch.float64))
    fit_cfg = dict(steps=600, lr=0.02, warmup=0.05, abba_init="svd", init_noise=0.01)

    with torch_threads(1):  # as the experiment runs it
        abba = relative_error(targets, fit(targets, "abba", 8, fit_cfg)).tolist()
        lora = relative_error(targets, fit(targets, "lora", 8, fit_cfg)).tolist()
    for kind, W, abba_err, lora_err in zip(kinds, targets, abba, lora):
        optimum = truncated_svd_error(W, 8)
        assert abba_err < optimum - 0.02, f"{kind}: ABBA {abba_err:.4f} vs rank-8 optimum {optimum:.4f}"
        # LoRA can never beat Eckart–Young, and Adam should get close to it (the fit works).
        assert optimum - 1e-6 <= lora_err < optimum + 0.01, f"{kind}: LoRA {lora_err:.4f} vs optimum {optimum:.4f}"


def test_tiny_run_writes_csv_and_plot(tmp_path):
    cfg = _compose(f"output_dir={tmp_path}", "size=[24,16]", "ranks=[2,4]", "fit.steps=30",
                   "generators.low_rank_rank=8")
    from abba.reconstruct import run

    run(cfg)
    with open(tmp_path / "reconstruction.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["matrix", "method", "rank", "params", "rel_error"]
        rows = list(reader)
    assert (tmp_path / "reconstruction.png").stat().st_size > 10_000
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")], "temporary files left behind"
    assert {(r["matrix"], r["method"], int(r["rank"])) for r in rows} == {
        (m, method, k) for m in ("orthogonal", "low_rank", "sparse", "random")
        for method in ("abba", "lora", "lora_svd_optimal") for k in (2, 4)}
    assert len(rows) == 24
    for row in rows:
        assert int(row["params"]) == int(row["rank"]) * (24 + 16)  # LoRA r (m + n) = ABBA (r1 + r2)(m + n)
        assert 0.0 <= float(row["rel_error"]) < 2.0

    # The optimum rows are Eckart–Young for the same seeded targets.
    generator = torch.Generator().manual_seed(0)
    for kind in ("orthogonal", "low_rank", "sparse", "random"):
        W = make_target(kind, 24, 16, generator, low_rank_rank=8, sparse_density=0.05)
        for rank in (2, 4):
            (row,) = [r for r in rows if (r["matrix"], r["method"], int(r["rank"])) == (kind, "lora_svd_optimal", rank)]
            assert float(row["rel_error"]) == pytest.approx(truncated_svd_error(W, rank), abs=1e-6)


def test_quick_settings_replace_the_grid():
    quick, full = settings(_compose("quick=true")), settings(_compose())
    assert quick["size"] == [128, 128] and full["size"] == [256, 256]
    assert quick["fit"]["steps"] < full["fit"]["steps"] and quick["fit"]["abba_init"] == full["fit"]["abba_init"]
    assert set(quick["ranks"]) < set(full["ranks"]) and "quick_settings" not in quick
    assert quick["output_dir"] != full["output_dir"]  # the quick run never overwrites the committed full result
    # Options on the command line win over quick_settings (main passes Hydra's task overrides).
    given = ["ranks=[8]", "output_dir=elsewhere"]
    explicit = settings(_compose("quick=true", *given), given)
    assert explicit["ranks"] == [8] and explicit["output_dir"] == "elsewhere" and explicit["size"] == [128, 128]


def test_bad_grid_is_refused(tmp_path):
    from abba.reconstruct import run

    with pytest.raises(ValueError, match="even"):
        run(_compose(f"output_dir={tmp_path}", "ranks=[3]"))
    with pytest.raises(ValueError, match="matrices"):
        run(_compose(f"output_dir={tmp_path}", "matrices=[diagonal]"))


def test_an_output_dir_that_is_a_file_is_refused_before_fitting(tmp_path, monkeypatch):
    """A file where the folder should be, or above it: Refusal (exit 1 on the command line), nothing fitted."""
    import abba.reconstruct
    from abba.cli import Refusal

    def no_fit(*args, **kwargs):
        raise AssertionError("fitted before the refusal")

    monkeypatch.setattr(abba.reconstruct, "_run_grid", no_fit)
    (tmp_path / "file").write_text("x")
    for out in (tmp_path / "file", tmp_path / "file" / "sub"):
        with pytest.raises(Refusal, match=f"{tmp_path / 'file'} is a file, not a folder"):
            abba.reconstruct.run(_compose(f"output_dir={out}"))
    assert sorted(os.listdir(tmp_path)) == ["file"]


def test_cli_entry_point(tmp_path):
    out = tmp_path / "cli"
    result = subprocess.run(
        [sys.executable, "-m", "abba.reconstruct", "quick=true", f"output_dir={out}", "size=[16,16]", "ranks=[2]",
         "fit.steps=5", "generators.low_rank_rank=4"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = (out / "reconstruction.csv").read_text().splitlines()
    assert lines[0] == "matrix,method,rank,params,rel_error" and len(lines) == 1 + 4 * 3  # one rank: the override won

"""The figures say what they show (issue 11, item 7), checked on the matplotlib objects of the figures that
abba.tables, abba.plots and abba.reconstruct save: legend entries only for series that draw a bar, in distinct
colours; bars centred on their tick labels; error bars only on bars of two or more seeds, as long as the sample
std worked out here; items per benchmark and seeds in the caption; the loss curve's model, data, steps and
trainable parameters; the quick reconstruction grid named as such. Expected values are computed in the tests
from the synthetic inputs written here, not taken from the code under test."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import yaml
from matplotlib.container import BarContainer, ErrorbarContainer

import abba.figures
import abba.loss_curves
import abba.plots
import abba.reconstruct_plot
from abba.table_registry import paper_reference
from abba.tables import build_tables

REPO_ROOT = Path(__file__).resolve().parents[1]
REFERENCE = paper_reference()  # results/paper_reference.yaml, through the registry (the one source)
N_ITEMS = 100


@pytest.fixture()
def saved(monkeypatch):
    """Every Figure handed to abba.figures.save_figure, kept for inspection (the PNGs are still written)."""
    figures = {}
    real = abba.figures.save_figure

    def keep(fig, path):
        figures[Path(path).name] = fig
        real(fig, path)

    for module in (abba.plots, abba.loss_curves, abba.reconstruct_plot):  # each module that saves figures
        monkeypatch.setattr(module, "save_figure", keep)
    return figures


def write_run(root: Path, experiment: str, seed: int, peft: dict, table: str | None, model: str,
              accuracies: dict[str, float], n: int = N_ITEMS, nll: dict[str, float] | None = None,
              name_or_path: str | None = None) -> None:
    """results/<experiment>/seed<k>/ as the merge-and-evaluate scripts leave it (metrics.json `n` = n items)."""
    out = root / experiment / f"seed{seed}"
    out.mkdir(parents=True)
    metrics = {b: {"benchmark": b, "accuracy": a, "n": n, **({"nll": nll[b]} if nll else {})}
               for b, a in accuracies.items()}
    (out / "metrics.json").write_text(json.dumps(metrics))
    model_cfg = {"name": model, **({"name_or_path": name_or_path} if name_or_path else {})}
    (out / "config.yaml").write_text(yaml.safe_dump({"experiment_name": experiment, "seed": seed, "table": table,
                                                    "model": model_cfg, "peft": peft, "data": {"name": "d"}}))
    (out / "run_info.json").write_text(json.dumps({"trainable_params": 1000, "seed": seed}))


def bars(ax) -> list:
    return [patch for c in ax.containers if isinstance(c, BarContainer) for patch in c]


def centre(patch) -> float:
    return patch.get_x() + patch.get_width() / 2


def error_bars(ax) -> list[tuple[float, float, float]]:
    """(x, low, high) of every vertical error bar drawn on `ax`."""
    found = []
    for c in ax.containers:
        if isinstance(c, ErrorbarContainer):
            for collection in c.lines[2]:
                for (x0, y0), (_, y1) in collection.get_segments():
                    found.append((x0, min(y0, y1), max(y0, y1)))
    return found


def caption(fig) -> str:
    texts = [t.get_text() for t in fig.texts if t.get_gid() == "caption"]
    assert len(texts) == 1, "one caption under the panels"
    return " ".join(texts[0].split())  # undo the line wrapping


# ------------------------------------------------------------------------------------------ tables/other.png

@pytest.fixture()
def other_results(tmp_path):
    """The issue's case: `other` runs on 100 GSM8K items, ABBA r=8 with three seeds (2, 3, 4 %), LoRA r=16 with
    one seed (2 %); no paper numbers exist for this table."""
    root = tmp_path / "results"
    abba = {"method": "abba", "r1": 4, "r2": 4}
    for seed, acc in enumerate((0.02, 0.03, 0.04)):
        write_run(root, "quick_abba", seed, abba, None, "tiny_llama", {"gsm8k": acc})
    write_run(root, "quick_lora", 0, {"method": "lora", "r": 16}, None, "tiny_llama", {"gsm8k": 0.02})
    return root


def test_other_figure_has_no_paper_series_and_bars_on_their_ticks(other_results, tmp_path, saved):
    build_tables(other_results, tmp_path / "tables", tables=("other",))
    fig = saved["other.png"]
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["ours (mean over seeds)"]
    ticks = {label.get_text(): x for label, x in zip(ax.get_xticklabels(), ax.get_xticks())}
    assert set(ticks) == {"ABBA r=8", "LoRA r=16"}
    drawn = bars(ax)
    assert len(drawn) == 2, "one bar per method, none for the paper"
    heights = {round(p.get_height(), 9): p for p in drawn}
    abba_bar, lora_bar = heights[round(statistics.fmean([2.0, 3.0, 4.0]), 9)], heights[2.0]
    assert centre(abba_bar) == pytest.approx(ticks["ABBA r=8"])
    assert centre(lora_bar) == pytest.approx(ticks["LoRA r=16"])
    assert abba_bar.get_facecolor() == lora_bar.get_facecolor()
    assert ax.get_legend().legend_handles[0].get_facecolor() == abba_bar.get_facecolor()


def test_other_figure_error_bar_only_for_several_seeds(other_results, tmp_path, saved):
    build_tables(other_results, tmp_path / "tables", tables=("other",))
    (ax,) = saved["other.png"].axes
    ticks = {label.get_text(): x for label, x in zip(ax.get_xticklabels(), ax.get_xticks())}
    std = statistics.stdev([2.0, 3.0, 4.0])  # sample std (ddof 1) of ABBA's three seeds: 1.0
    (bar,) = error_bars(ax)  # none at all for LoRA's single seed (no zero-length bar)
    assert bar == pytest.approx((ticks["ABBA r=8"], 3.0 - std, 3.0 + std))
    labels = {t.get_text(): t.xy[0] for t in ax.texts if t.get_text().startswith("s=")}
    assert labels == {"s=3": pytest.approx(ticks["ABBA r=8"]), "s=1": pytest.approx(ticks["LoRA r=16"])}


def test_other_figure_caption_gives_items_and_seeds(other_results, tmp_path, saved):
    build_tables(other_results, tmp_path / "tables", tables=("other",))
    text = caption(saved["other.png"])
    assert f"n (items per benchmark): GSM8K {N_ITEMS}" in text
    assert "ABBA r=8 seeds 0, 1, 2" in text and "LoRA r=16 seed 0" in text
    assert "sample std (ddof 1) over the bar's seeds" in text and "2 or more seeds" in text


# -------------------------------------------------------------------------------- tables/table2.png (grouped)

def test_table2_grouped_bars_centred_with_distinct_colours(tmp_path, saved):
    """Mistral-7B: LoRA has our two seeds beside the paper's bar; the other methods have the paper's bar only."""
    root = tmp_path / "results"
    lora = {"method": "lora", "r": 32}
    write_run(root, "t2_mistral_7b_lora", 0, lora, "table2", "mistral_7b", {"gsm8k": 0.60, "math": 0.15})
    write_run(root, "t2_mistral_7b_lora", 1, lora, "table2", "mistral_7b", {"gsm8k": 0.64, "math": 0.16})
    build_tables(root, tmp_path / "tables", tables=("table2",))
    fig = saved["table2.png"]
    paper_rows = REFERENCE["tables"]["table2"]["models"]["mistral_7b"]["methods"]
    ax = next(a for a in fig.axes if a.get_title() == "Mistral-7B: GSM8K")
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["paper", "ours (mean over seeds)"]
    paper_colour, ours_colour = (h.get_facecolor() for h in legend.legend_handles)
    assert paper_colour != ours_colour
    ticks = {label.get_text(): x for label, x in zip(ax.get_xticklabels(), ax.get_xticks())}
    paper_bars = [p for p in bars(ax) if p.get_facecolor() == paper_colour]
    ours_bars = [p for p in bars(ax) if p.get_facecolor() == ours_colour]
    assert len(paper_bars) == len(paper_rows) and len(ours_bars) == 1
    by_height = {round(p.get_height(), 6): p for p in paper_bars}
    for key, row in paper_rows.items():
        x = centre(by_height[round(float(row["gsm8k"]), 6)])
        if key == "lora":  # both series: side by side, the pair centred on the tick
            assert x == pytest.approx(ticks[row["label"]] - 0.2)
            assert centre(ours_bars[0]) == pytest.approx(ticks[row["label"]] + 0.2)
        else:
            assert x == pytest.approx(ticks[row["label"]])
    mean, std = statistics.fmean([60.0, 64.0]), statistics.stdev([60.0, 64.0])
    assert ours_bars[0].get_height() == pytest.approx(mean)
    assert error_bars(ax) == [pytest.approx((ticks[paper_rows["lora"]["label"]] + 0.2, mean - std, mean + std))]
    text = caption(fig)
    assert f"GSM8K {N_ITEMS}, MATH {N_ITEMS}" in text and "LoRA seeds 0, 1" in text


def test_paper_only_table_has_no_ours_entry_and_says_no_runs(tmp_path, saved):
    root = tmp_path / "results"
    root.mkdir()
    build_tables(root, tmp_path / "tables", tables=("table2",))
    fig = saved["table2.png"]
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["paper"]
    assert not any(error_bars(ax) for ax in fig.axes)
    assert "no evaluated runs" in caption(fig)


# ------------------------------------------------------------------------------------------ tables/mini.png

def test_mini_figure_error_bars_and_caption(tmp_path, saved):
    """ABBA two seeds on all four benchmarks, LoRA one seed: only ABBA's bars and point get error bars."""
    root = tmp_path / "results" / "mini"
    benches = ("boolq", "ARC-Easy", "ARC-Challenge", "openbookqa")
    n = {"boolq": 50, "ARC-Easy": 60, "ARC-Challenge": 70, "openbookqa": 80}
    acc = {("abba", 0): [0.6, 0.5, 0.4, 0.3], ("abba", 1): [0.7, 0.5, 0.4, 0.4], ("lora", 0): [0.5, 0.5, 0.3, 0.3]}
    nll = {("abba", 0): [1.0, 1.2, 1.4, 1.6], ("abba", 1): [0.8, 1.0, 1.2, 1.4], ("lora", 0): [1.1, 1.3, 1.5, 1.7]}
    peft = {"abba": {"method": "abba", "r1": 8, "r2": 8}, "lora": {"method": "lora", "r": 16}}
    for (method, seed), accs in acc.items():
        out = root / f"m1_{method}" / f"seed{seed}"
        out.mkdir(parents=True)
        metrics = {b: {"accuracy": a, "nll": v, "n": n[b]} for b, a, v in zip(benches, accs, nll[method, seed])}
        (out / "metrics.json").write_text(json.dumps(metrics))
        (out / "config.yaml").write_text(yaml.safe_dump({"seed": seed, "table": "mini", "peft": peft[method],
                                                        "model": {"name": "smollm2_135m"}}))
    build_tables(root, tmp_path / "tables", tables=("mini",))
    fig = saved["mini.png"]
    acc_ax, nll_ax, scatter_ax = fig.axes[:3]
    abba_acc = [100 * statistics.fmean(acc["abba", s]) for s in (0, 1)]
    abba_nll = [statistics.fmean(nll["abba", s]) for s in (0, 1)]
    for ax, values in ((acc_ax, abba_acc), (nll_ax, abba_nll)):
        ticks = {label.get_text(): x for label, x in zip(ax.get_xticklabels(), ax.get_xticks())}
        mean, std = statistics.fmean(values), statistics.stdev(values)
        assert error_bars(ax) == [pytest.approx((ticks["ABBA r=16"], mean - std, mean + std))]
        assert {round(centre(p), 9) for p in bars(ax)} == {round(x, 9) for x in ticks.values()}
    (point,) = [c for c in scatter_ax.containers if isinstance(c, ErrorbarContainer)]  # ABBA only
    (x_bar,), (y_bar,) = (collection.get_segments() for collection in point.lines[2])
    assert x_bar[0][0] == pytest.approx(statistics.fmean(abba_nll) - statistics.stdev(abba_nll))
    assert y_bar[1][1] == pytest.approx(statistics.fmean(abba_acc) + statistics.stdev(abba_acc))
    text = caption(fig)
    assert "n (items per benchmark): BoolQ 50, ARC-e 60, ARC-c 70, OBQA 80" in text
    assert "ABBA r=16 seeds 0, 1" in text and "LoRA r=16 seed 0" in text


# ------------------------------------------------------------------------------------------ loss_curve.png

def write_training_run(folder: Path, data: str, n_train: int, steps: int, trainable: int) -> Path:
    """A run folder as abba.train leaves it: config.yaml, run_info.json (finished) and metrics.jsonl."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({
        "model": {"name": "smollm2_135m", "name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct"},
        "data": {"name": data}, "peft": {"method": "abba"}}))
    (folder / "run_info.json").write_text(json.dumps({"n_train_examples": n_train, "global_step": steps,
                                                      "trainable_params": trainable, "finished": True}))
    (folder / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 2.0 / s}) + "\n"
                                                  for s in range(1, steps + 1)))
    return folder


def test_loss_curve_names_model_data_steps_and_parameters(tmp_path, saved):
    first = write_training_run(tmp_path / "abba", "arc_easy", 512, 32, 4884480)
    second = write_training_run(tmp_path / "lora", "arc_easy", 512, 32, 4884480)
    first.joinpath("run_info.json").write_text(json.dumps({"n_train_examples": 512, "global_step": 32,
                                                           "trainable_params": 1234, "finished": True}))
    abba.loss_curves.loss_curve({"ABBA": first, "LoRA": second / "metrics.jsonl"}, tmp_path / "loss_curve.png")
    (ax,) = saved["loss_curve.png"].axes
    title = ax.get_title()
    assert "SmolLM2-135M-Instruct" in title and "arc_easy" in title and "512 training examples" in title
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "ABBA: 1,234 trainable params, 32 steps", "LoRA: 4,884,480 trainable params, 32 steps"]
    assert [len(line.get_xdata()) for line in ax.get_lines()] == [32, 32]


def test_loss_curve_runs_on_other_data_say_so_in_the_legend(tmp_path, saved):
    a = write_training_run(tmp_path / "a", "arc_easy", 512, 32, 10)
    b = write_training_run(tmp_path / "b", "commonsense4", 1024, 64, 10)
    abba.loss_curves.loss_curve({"A": a, "B": b}, tmp_path / "loss_curve.png")
    (ax,) = saved["loss_curve.png"].axes
    assert "SmolLM2-135M-Instruct" in ax.get_title() and "arc_easy" not in ax.get_title()
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["A: 10 trainable params, 32 steps, arc_easy (512 training examples)",
                      "B: 10 trainable params, 64 steps, commonsense4 (1,024 training examples)"]


def test_loss_curve_command_line(tmp_path, capsys):
    """`python -m abba.plots loss_curve out=PNG LABEL=RUN ...` (key=value, abba/cli.py): one `error:` line, exit
    2 for a bad command line, 1 for a run without metrics.jsonl; otherwise the PNG."""
    run = write_training_run(tmp_path / "abba", "arc_easy", 16, 4, 10)
    cases = [([], 2, "name the figure to draw, loss_curve"), (["loss_curve", "ABBA"], 2, "'ABBA' is not key=value"),
             (["loss_curve", f"out={tmp_path / 'x.png'}"], 2, "no run given"), (["loss_curve", "ABBA="], 2,
             "ABBA= needs a run folder"), (["loss_curve", f"A={tmp_path / 'none'}"], 1, "no metrics.jsonl for A")]
    for argv, code, says in cases:
        with pytest.raises(SystemExit) as stop:
            abba.plots.main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert stop.value.code == code and len(err) == 1 and err[0].startswith("error: ") and says in err[0], err
    abba.plots.main(["loss_curve", f"out={tmp_path / 'loss.png'}", f"ABBA={run}"])
    assert capsys.readouterr().out == f"loss curve: {tmp_path / 'loss.png'}\n"
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG" and not (tmp_path / "x.png").exists()


def test_loss_curve_out_must_be_a_png_name(tmp_path, capsys):
    """`out=/tmp/x/loss` used to end in matplotlib's "Format 'tmp' is not supported" (it read the format from the
    atomic writer's temporary name): now a usage error in one line, and nothing is written."""
    run = write_training_run(tmp_path / "abba", "arc_easy", 16, 4, 10)
    for out in (tmp_path / "loss", tmp_path / "loss.pdf"):
        with pytest.raises(SystemExit) as stop:
            abba.plots.main(["loss_curve", f"out={out}", f"ABBA={run}"])
        err = capsys.readouterr().err.strip().splitlines()
        assert stop.value.code == 2 and err == [f"error: out={out}: the figure is a PNG, name it *.png; "
                                                f"{abba.plots.USAGE}"], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["abba"]


@pytest.mark.parametrize("name, magic", [("fig", b"\x89PNG"), ("fig.png", b"\x89PNG"), ("fig.PDF", b"%PDF"),
                                         ("fig.svg", b"<?xml")])
def test_save_figure_takes_the_format_from_the_target_name(tmp_path, name, magic):
    """Not from the temporary file's name (`.fig.<pid>-<hex>.tmp`): no suffix means PNG."""
    from abba.figures import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    save_figure(fig, tmp_path / name)
    plt.close(fig)
    assert (tmp_path / name).read_bytes()[:len(magic)] == magic
    assert [p.name for p in tmp_path.iterdir()] == [name]


# ------------------------------------------------------------------------------------------ reconstruction

def _compose(*overrides: str):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO_ROOT / "configs"), version_base="1.3"):
        return compose(config_name="reconstruct", overrides=list(overrides))


def test_quick_reconstruction_figure_says_it_is_the_quick_grid(tmp_path, saved):
    from abba.reconstruct import run

    overrides = ["quick=true", f"output_dir={tmp_path}", "size=[24,16]", "ranks=[2,4]", "fit.steps=30",
                 "generators.low_rank_rank=8"]
    run(_compose(*overrides), overrides)
    fig = saved["reconstruction.png"]
    title = fig._suptitle.get_text()
    assert title.startswith("quick grid (quick=true)") and "24 x 16" in title and "30 Adam steps" in title
    full = yaml.safe_load((REPO_ROOT / "configs" / "reconstruct.yaml").read_text())
    text = caption(fig)
    assert "not the full grid" in text
    assert f"{full['size'][0]} x {full['size'][1]} targets" in text
    assert f"ranks {min(full['ranks'])}-{max(full['ranks'])}, {full['fit']['steps']} Adam steps" in text


def test_full_and_custom_grid_names():
    from abba.reconstruct import grid_caption, grid_title, settings

    size = yaml.safe_load((REPO_ROOT / "configs" / "reconstruct.yaml").read_text())["size"]
    full = settings(_compose())
    assert grid_title(full).startswith(f"full grid: {size[0]} x {size[1]} targets") and grid_caption(full) == ""
    custom = settings(_compose("size=[64,64]"))
    assert grid_title(custom).startswith("custom grid: 64 x 64") and "not the full grid" in grid_caption(custom)

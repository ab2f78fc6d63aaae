"""abba.table_registry is the one owner of what a table is (issue 12): the paper's numbers have one source
(results/paper_reference.yaml; no experiment file or config repeats them), and every module
that needs tables, benchmarks, labels or the mini table's methods takes them from the registry."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from abba import table_registry as registry
from abba.table_runs import parse_experiment_name

REPO_ROOT = Path(__file__).resolve().parents[1]
REFERENCE = registry.paper_reference()


def experiment_rows(table: str) -> set[tuple[str, str]]:
    """{(model, method key)} of a paper table's experiment files, each checked to name its table."""
    models = list(REFERENCE["tables"][table]["models"])
    rows = set()
    for name in registry.table_experiments(table):
        cfg = yaml.safe_load((registry.EXPERIMENTS_DIR / f"{name}.yaml").read_text())
        parsed = parse_experiment_name(name, models)
        assert parsed is not None and parsed[0] == table == cfg["table"], name
        rows.add(parsed[1:])
    return rows


@pytest.mark.parametrize("table", sorted(registry.PAPER_TABLES))
def test_each_paper_row_is_one_experiment_file_and_back(table):
    reference = {(model, method) for model, spec in REFERENCE["tables"][table]["models"].items()
                 for method in spec["methods"]}
    assert experiment_rows(table) == reference


def _numbers(node) -> list[float]:
    if isinstance(node, dict):
        return [x for v in node.values() for x in _numbers(v)]
    if isinstance(node, list):
        return [x for v in node for x in _numbers(v)]
    return [float(node)] if isinstance(node, (int, float)) and not isinstance(node, bool) else []


def test_the_paper_numbers_have_one_source():
    """No config repeats a paper number: no `paper:` key anywhere under configs/, and no experiment file holds any
    of a reference row's accuracies (each row's numbers live only in results/paper_reference.yaml)."""
    for path in sorted((REPO_ROOT / "configs").rglob("*.yaml")):
        cfg = yaml.safe_load(path.read_text()) or {}
        assert "paper" not in cfg, f"{path}: paper numbers belong in results/paper_reference.yaml"
    for table in sorted(registry.PAPER_TABLES):
        models = list(REFERENCE["tables"][table]["models"])
        for name in registry.table_experiments(table):
            model, method = parse_experiment_name(name, models)[1:]
            row = REFERENCE["tables"][table]["models"][model]["methods"][method]
            accuracies = {v for k, v in row.items() if k not in ("label", "params")}
            text = (registry.EXPERIMENTS_DIR / f"{name}.yaml").read_text()
            assert not [a for a in accuracies if f"{a:.2f}" in text], f"{name} repeats a paper number"


def test_only_the_registry_reads_the_paper_reference():
    """No module in abba/ or eval/ (docstrings aside) names results/paper_reference.yaml except the registry."""
    readers = []
    for path in sorted([*(REPO_ROOT / "abba").rglob("*.py"), *(REPO_ROOT / "eval").rglob("*.py")]):
        tree = ast.parse(path.read_text())
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and node.body
                      and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
        if any(isinstance(node, ast.Constant) and isinstance(node.value, str) and "paper_reference" in node.value
               and id(node) not in docstrings for node in ast.walk(tree)):
            readers.append(str(path.relative_to(REPO_ROOT)))
    assert readers == ["abba/table_registry.py"]


def test_paper_tables_columns_are_their_benchmark_groups():
    for name, table in registry.PAPER_TABLES.items():
        assert set(registry.table_benchmarks(name)) == set(registry.BENCHMARK_GROUPS[table.group])
        assert len(registry.table_benchmarks(name)) == len(registry.BENCHMARK_GROUPS[table.group])
    assert set(registry.PAPER_TABLES) | {"mini", "other"} == set(registry.TABLE_ORDER)
    for benches in (*registry.BENCHMARK_GROUPS.values(), registry.MINI_BENCHMARKS):
        assert all(b in registry.BENCHMARK_LABELS for b in benches)


def test_the_mini_table_is_what_abba_mini_runs():
    from abba import mini_plan as mini

    assert mini.METHODS == registry.MINI_METHODS
    assert sorted(b for b, _ in mini.FOUR) == sorted(registry.MINI_BENCHMARKS)
    assert all((registry.EXPERIMENTS_DIR / f"{mini.experiment(m)}.yaml").is_file() for m in registry.MINI_METHODS)
    assert registry.MINI_METHOD_ORDER[0] == "base" and set(registry.MINI_METHODS) <= set(registry.MINI_METHOD_ORDER)


def test_every_user_of_a_table_definition_takes_it_from_the_registry():
    from abba import merge_eval, plots, reproduce, tables
    from eval import benchmarks

    assert tables.TABLE_ORDER is registry.TABLE_ORDER and tables.BENCHMARK_LABELS is registry.BENCHMARK_LABELS
    assert tables.MINI_BENCHMARKS is registry.MINI_BENCHMARKS and tables.DEFAULT_REFERENCE == registry.REFERENCE_PATH
    assert plots.BENCHMARK_LABELS is registry.BENCHMARK_LABELS and plots.MINI_BENCHMARKS is registry.MINI_BENCHMARKS
    assert benchmarks.GROUPS is registry.BENCHMARK_GROUPS
    assert merge_eval.GROUPS == tuple(registry.BENCHMARK_GROUPS)
    assert reproduce.table_experiments("table2") == registry.table_experiments("table2")
    assert not hasattr(merge_eval, "TASKS") and not hasattr(reproduce, "TABLE_BENCHMARKS")

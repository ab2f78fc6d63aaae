"""Every entry point but training fails in one line, with the right exit code, and leaves nothing behind
(abba/cli.py; issue 10, section 4): eval.run, abba.merge, scripts/reproduce.sh, eval.rescore, abba.export,
abba.tables, scripts/*_merge_eval.sh, and Ctrl-C during an evaluation.

Each case runs the real command in a subprocess and checks: the exit code (2 usage, 1 refusal, 130 Ctrl-C),
stderr is exactly one non-empty line starting with `error: ` (no traceback), and no file or folder was created.
No test waits on the Hub: where a lookup could happen, the Hub is offline (HF_HUB_OFFLINE=1) or HF_ENDPOINT is a
local socket that counts connections, so a local-looking path is shown never to be looked up at all.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from abba.layout import REPO_ROOT
from eval_helpers import abba_run

VENV_BIN = str(Path(sys.executable).parent)
#: A Hub that is "online" for huggingface_hub (TRANSFORMERS_OFFLINE=1 would switch it off as well); tests that use
#: it point HF_ENDPOINT at a FakeHub, so nothing leaves the machine.
ONLINE = {"HF_HUB_OFFLINE": None, "TRANSFORMERS_OFFLINE": None}


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO_ROOT),
               PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    env.update(extra)
    return {k: v for k, v in env.items() if v is not None}


def run(command: list[str], cwd: Path, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    if command[0] == "-m":
        command = [sys.executable, *command]
    return subprocess.run(command, cwd=cwd, env=_env(**env), capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    """The exit code, stderr one line `error: ...` (each needle in it), no traceback anywhere; returns the line."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == code, (proc.returncode, proc.stderr[-3000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def tree(folder: Path) -> list[str]:
    """What is under `folder`, except Hydra's own job log (eval.run writes run.log in the working directory on
    every run, configs/eval.yaml `hydra.run.dir: .`; it changes nothing a later run does)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.name != "run.log")


class FakeHub:
    """HF_ENDPOINT on a local socket that counts connections and closes each at once (an unreachable Hub)."""

    def __init__(self):
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(16)
        self.connections = 0
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self):
        self.server.close()


@pytest.fixture
def fake_hub():
    hub = FakeHub()
    yield hub
    hub.close()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """RUN/ (config.yaml, final/ adapter, checkpoint-40/ without abba_model.yaml) and a merged model."""
    from abba.merge import merge
    from abba.base_model import load_tokenizer
    from conftest import model_cfg

    root = tmp_path_factory.mktemp("cli")
    abba_run(root / "run", load_tokenizer(model_cfg("tiny_llama")))
    (root / "run" / "checkpoint-40").mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy2(root / "run" / "final" / name, root / "run" / "checkpoint-40" / name)
    merge(root / "run" / "final", root / "model")
    return root


# ---------------------------------------------------------------- eval.run

EVAL = ["-m", "eval.run", "benchmark=boolq", "limit=2", "backend=hf", "batch_size=2"]


@pytest.mark.parametrize("model_path", ["merged/nope", "./nope", "out/merged/nope", "ABSOLUTE"])
def test_eval_run_missing_local_model_is_one_line_and_never_asks_the_hub(model_path, tmp_path, excerpt_data,
                                                                          fake_hub):
    """The issue's `model_path=merged/nope` (beside an existing merged/ folder) and other local-looking paths:
    today ~49 s of Hub retries and 106 lines; now one line, no Hub connection even when online, no output."""
    (tmp_path / "merged").mkdir()
    model_path = str(tmp_path / "nope") if model_path == "ABSOLUTE" else model_path
    start = time.monotonic()
    proc = run([*EVAL, f"model_path={model_path}", "output_dir=results/x/seed0"], tmp_path,
               **ONLINE, HF_ENDPOINT=fake_hub.url, ABBA_DATA_DIR=str(excerpt_data))
    assert_one_line_error(proc, 1, f"model_path={model_path} does not exist", "abba.merge")
    assert fake_hub.connections == 0 and time.monotonic() - start < 60
    assert tree(tmp_path) == ["merged"]  # no results/x/seed0, not even results/


def test_eval_run_hub_id_that_is_not_there_is_one_line(tmp_path, excerpt_data, fake_hub):
    """`merged/nope` with no merged/ folder is shaped like a Hub id (org/name): one request, no retries."""
    proc = run([*EVAL, "model_path=merged/nope", "output_dir=out"], tmp_path, **ONLINE,
               HF_ENDPOINT=fake_hub.url, ABBA_DATA_DIR=str(excerpt_data))
    assert_one_line_error(proc, 1, "merged/nope", "Hugging Face Hub")
    assert 1 <= fake_hub.connections <= 2 and tree(tmp_path) == []
    offline = run([*EVAL, "model_path=merged/nope", "output_dir=out"], tmp_path, ABBA_DATA_DIR=str(excerpt_data))
    assert_one_line_error(offline, 1, "merged/nope", "HF_HUB_OFFLINE=1")
    assert tree(tmp_path) == []


def test_eval_run_adapter_folder_says_how_to_merge_it_and_the_command_works(models, tmp_path, excerpt_data):
    proc = run([*EVAL, f"model_path={models / 'run' / 'final'}", "output_dir=out"], tmp_path,
               ABBA_DATA_DIR=str(excerpt_data))
    line = assert_one_line_error(proc, 1, "is an adapter folder, not a merged model", "merge it first")
    assert tree(tmp_path) == []
    command = re.search(r"`python (-m abba\.merge [^`]*)`", line).group(1).split()
    merged = Path(command[-1].split("=", 1)[1])
    try:
        assert command[:3] == ["-m", "abba.merge", f"adapter_dir={models / 'run' / 'final'}"]
        done = run(command, tmp_path)  # the command the message gives makes a model of the adapter
        assert done.returncode == 0, done.stderr[-2000:]
        assert (merged / "config.json").is_file() and f"model_path={merged}" in line
    finally:
        shutil.rmtree(merged, ignore_errors=True)


@pytest.mark.parametrize("args, needle", [(["benchmark=gsm8kk"], "did you mean: gsm8k"),
                                          (["backend=hff"], "did you mean: hf"),
                                          (["limt=2"], "limt")])
def test_eval_run_bad_command_line_is_a_usage_error(args, needle, models, tmp_path, excerpt_data):
    proc = run([*EVAL, f"model_path={models / 'model'}", "output_dir=out", *args], tmp_path,
               ABBA_DATA_DIR=str(excerpt_data))
    assert_one_line_error(proc, 2, needle)
    assert tree(tmp_path) == []


def test_eval_run_missing_data_leaves_no_folder(models, tmp_path):
    proc = run([*EVAL, f"model_path={models / 'model'}", "output_dir=a/b/c", f"paths.data_dir={tmp_path / 'no'}"],
               tmp_path)
    assert_one_line_error(proc, 1, "boolq")
    assert tree(tmp_path) == []


def sigint_default():
    """In the child before exec: SIGINT back to its default. A suite started in the background by a shell without
    job control inherits SIGINT ignored, and Python then never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_during_evaluation_keeps_the_samples_and_says_how_to_resume(models, tmp_path, excerpt_data):
    """A real SIGINT once the first samples are on disk: exit 130, one `error:` line (after the progress bars)
    that says a re-run resumes and how many items it keeps (tests/test_eval_run.py checks the resuming)."""
    out = tmp_path / "out"
    samples = out / "samples_boolq.jsonl"
    # 5000 items (~1 minute at the tiny model's ~90 items/s), so that the run is still going when the signal
    # comes even on a loaded machine: the excerpt's records over and over.
    records = json.loads((excerpt_data / "commonsense" / "boolq" / "test.json").read_text())
    data = tmp_path / "boolq_5000.json"
    data.write_text(json.dumps([records[i % len(records)] for i in range(5000)]))
    command = [sys.executable, "-m", "eval.run", "benchmark=boolq", f"model_path={models / 'model'}",
               f"output_dir={out}", f"data_file={data}", "limit=5000", "backend=hf", "batch_size=1",
               "max_new_tokens=8"]
    proc = subprocess.Popen(command, cwd=tmp_path, env=_env(ABBA_DATA_DIR=str(excerpt_data)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=sigint_default)
    try:
        deadline = time.monotonic() + 240
        while not (samples.is_file() and samples.stat().st_size) and proc.poll() is None:
            assert time.monotonic() < deadline, "no samples written in 240 s"
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    lines = [line for line in stderr.replace("\r", "\n").splitlines() if line.strip()]
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr + stdout and "KeyboardInterrupt" not in stderr
    errors = [line for line in lines if line.startswith("error: ")]
    assert errors == [lines[-1]] and "run the same command again to resume" in errors[0]
    kept = [json.loads(line) for line in samples.read_text().splitlines() if line.strip()]
    assert 1 <= len(kept) < 5000 and f"{len(kept)} in samples_boolq.jsonl" in errors[0]
    assert not (out / "metrics.json").exists()


def test_ctrl_c_before_any_sample_leaves_no_folder(models, tmp_path, excerpt_data, monkeypatch):
    """An interrupt before anything is scored (here while the model loads) removes the output folder it made."""
    from eval import run as eval_run

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(eval_run, "make_backend", interrupted)
    cfg = eval_run.load_config([f"model_path={models / 'model'}", f"output_dir={tmp_path / 'a' / 'out'}",
                                "benchmark=boolq", "limit=2", "backend=hf", f"paths.data_dir={excerpt_data}"])
    with pytest.raises(KeyboardInterrupt):
        eval_run.evaluate(cfg)
    assert tree(tmp_path) == []
    assert "before any item was scored" in eval_run.interrupted_message(tmp_path / "a" / "out")


# ---------------------------------------------------------------- abba.merge

def test_merge_checkpoint_without_base_model_says_pass_base_model(models, tmp_path, fake_hub):
    """The issue's `adapter_dir=RUN/checkpoint-40` (no abba_model.yaml): today an 87-line Hub traceback after
    ~49 s; now one line naming base_model=, online (one Hub request) or offline, and following it works."""
    adapter = models / "run" / "checkpoint-40"
    for env in ({**ONLINE, "HF_ENDPOINT": fake_hub.url}, {}):
        start = time.monotonic()
        proc = run(["-m", "abba.merge", f"adapter_dir={adapter}", "output_dir=merged"], tmp_path, **env)
        assert_one_line_error(proc, 1, "no abba_model.yaml", "pass base_model=tiny_llama")
        assert time.monotonic() - start < 60 and tree(tmp_path) == []
    done = run(["-m", "abba.merge", f"adapter_dir={adapter}", "output_dir=merged", "base_model=tiny_llama"], tmp_path)
    assert done.returncode == 0 and (tmp_path / "merged" / "config.json").is_file(), done.stderr[-2000:]


@pytest.mark.parametrize("args, code, needle", [
    (["adapter_dirr=RUN", "output_dir=m"], 2, "did you mean: adapter_dir"),
    (["adapter_dir=RUN"], 2, "missing output_dir="),
    (["adapter_dir=RUN", "output_dir=m", "dtype=bf61"], 2, "did you mean: bf16"),
    (["adapter_dir=nope", "output_dir=m"], 1, "adapter_dir=nope is not a folder"),
])
def test_merge_command_line_failures(args, code, needle, models, tmp_path):
    args = [a.replace("RUN", str(models / "run" / "final")) for a in args]
    assert_one_line_error(run(["-m", "abba.merge", *args], tmp_path), code, needle)
    assert tree(tmp_path) == []


# ---------------------------------------------------------------- scripts/reproduce.sh

@pytest.mark.parametrize("args, needle", [
    (["table2", "dry_run=true", "trainer.per_device_train_batch_sizee=2"],
     "did you mean: trainer.per_device_train_batch_size"),
    (["table2", "SEEDS=0"], "SEEDS=0 bash scripts/reproduce.sh table2"),  # no dry_run=true: nothing may start
    (["table1", "dryrun=true"], "did you mean: dry_run"),
    (["table1", "dry_run=true", "peft.r1=abc"], "peft.r1=abc"),
    (["table1", "--dry-run"], "did you mean: dry_run"),  # the old switch
    (["table1", "dry_run=yes"], "use dry_run=true or dry_run=false"),
    (["table1", "seeds=0"], "set those instead"),  # the script passes seeds= from SEEDS
])
def test_reproduce_bad_command_line_is_one_line(args, needle, tmp_path):
    """59 lines (a Hydra traceback) for each of the issue's two examples before; nothing is trained or written."""
    proc = run(["bash", str(REPO_ROOT / "scripts" / "reproduce.sh"), *args], tmp_path, RESULTS_DIR=str(tmp_path / "r"))
    assert_one_line_error(proc, 2, needle)
    assert proc.stdout == "" and tree(tmp_path) == []


def test_reproduce_bad_seeds_is_one_line(tmp_path):
    proc = run(["bash", str(REPO_ROOT / "scripts" / "reproduce.sh"), "table2", "dry_run=true"], tmp_path, SEEDS="0,x")
    assert_one_line_error(proc, 2, "SEEDS")


def test_reproduce_module_points_mini_to_the_script(tmp_path):
    """The usage lists mini, which scripts/reproduce.sh hands to abba.mini; the module says so."""
    assert_one_line_error(run(["-m", "abba.reproduce", "mini"], tmp_path), 2, "bash scripts/reproduce.sh mini")
    assert tree(tmp_path) == []


# ---------------------------------------------------------------- eval.rescore

def test_rescore_failures(tmp_path):
    """Missing input: 18 lines before; `benchmark=gsm8kk`: 11 lines before. One line each now, no output."""
    rescore = ["-m", "eval.rescore", f"output={tmp_path / 'o' / 'r.jsonl'}"]
    assert_one_line_error(run([*rescore, "benchmark=math", "input=none.jsonl"], tmp_path), 1,
                          "input=none.jsonl does not exist")
    (tmp_path / "in.jsonl").write_text('{"id": "0", "completion": "The answer is: 3", "gold": "3"}\n{"id": \n')
    assert_one_line_error(run([*rescore, "benchmark=gsm8kk", "input=in.jsonl"], tmp_path), 2,
                          "unknown benchmark 'gsm8kk' (did you mean: gsm8k)")
    assert_one_line_error(run([*rescore, "benchmark=gsm8k", "input=in.jsonl"], tmp_path), 1, "line 2 is not JSON")
    assert_one_line_error(run([*rescore, "benchmark=gsm8k", "input=in.jsonl", "math_timeout=3"], tmp_path), 2,
                          "did you mean: math_timeout_s")
    assert_one_line_error(run(["-m", "eval.rescore", "benchmark=gsm8k"], tmp_path), 2, "missing input= output=")
    assert tree(tmp_path) == ["in.jsonl"]


@pytest.mark.parametrize("args, code, needle", [
    (["benchmark=gsm8k", "input=in.jsonl", "gsm8k_round_prediction=maybe"], 2, "gsm8k_round_prediction=maybe"),
    (["benchmark=gsm8k", "input=in.jsonl", "math_exception_correct=2"], 2, "math_exception_correct=2"),
    (["benchmark=gsm8k", "input=in.jsonl", "math_timeout_s=-1"], 2, "math_timeout_s=-1"),
    (["benchmark=gsm8k", "input=in.jsonl", "math_timeout_s=soon"], 2, "math_timeout_s=soon"),
    (["benchmark=gsm8k", "input=in.jsonl", "verbose"], 2, "'verbose' is not key=value"),
    # GSM8K's scorer cannot read the raw "#### 4" of the data file as a gold answer: the file and line are named.
    (["benchmark=gsm8k", "input=bad_gold.jsonl"], 1, "bad_gold.jsonl line 2: GSM8K gold answer is not a number"),
])
def test_rescore_typed_options_and_unreadable_gold(args, code, needle, tmp_path, monkeypatch, capsys):
    """In process (eval.rescore.main): a mistyped scoring option, an argument without '=', a gold the scorer
    cannot read; one line each, no output written."""
    from eval.rescore import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.jsonl").write_text('{"id": "0", "completion": "The answer is: 3", "gold": "3"}\n')
    (tmp_path / "bad_gold.jsonl").write_text('{"id": "0", "completion": "3", "gold": "3"}\n'
                                             '{"id": "1", "completion": "4", "gold": "#### 4"}\n')
    with pytest.raises(SystemExit) as stop:
        main([*args, f"output={tmp_path / 'o' / 'r.jsonl'}"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == code and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines
    assert not (tmp_path / "o").exists()


def test_rescore_typed_options_are_used(tmp_path, capsys):
    """math_timeout_s=2 and the booleans arrive typed (as configs/eval.yaml has them) in each record's scoring."""
    from eval.rescore import main

    (tmp_path / "in.jsonl").write_text('{"id": "0", "completion": "The answer is: 3.4", "gold": "3"}\n')
    main(["benchmark=gsm8k", f"input={tmp_path / 'in.jsonl'}", f"output={tmp_path / 'r.jsonl'}",
          "gsm8k_round_prediction=false", "math_timeout_s=2", "math_exception_correct=TRUE"])
    record = json.loads((tmp_path / "r.jsonl").read_text())
    assert record["scoring"] == {"gsm8k_round_prediction": False, "math_exception_correct": True, "math_timeout_s": 2}
    assert record["correct"] is False and capsys.readouterr().out.strip().endswith("accuracy=0.0")


# ---------------------------------------------------------------- abba.export, abba.tables

def test_export_failures(models, tmp_path):
    export = ["-m", "abba.export", f"output_dir={tmp_path / 'x'}"]
    assert_one_line_error(run([*export, "adapter_dir=nothing"], tmp_path), 1, "adapter_dir=nothing is not a folder")
    final = f"adapter_dir={models / 'run' / 'final'}"
    assert_one_line_error(run([*export, final, "format=ia3"], tmp_path), 2, "format=ia3")
    assert_one_line_error(run([*export, final, "formt=lora"], tmp_path), 2, "did you mean: format")
    assert tree(tmp_path) == []


def test_export_usage_shows_format_as_optional(tmp_path):
    """format= defaults to lora, so the usage line shows it in brackets."""
    proc = run(["-m", "abba.export", f"output_dir={tmp_path / 'x'}"], tmp_path)
    assert_one_line_error(proc, 2, "missing adapter_dir=", "[format=lora|loha]")


def test_tables_failures(tmp_path):
    tables = ["-m", "abba.tables", f"output_dir={tmp_path / 't'}"]
    assert_one_line_error(run([*tables, "results_dir=none"], tmp_path), 1, "results_dir=none does not exist")
    assert_one_line_error(run([*tables, f"results_dir={tmp_path}", "tables=tabel1"], tmp_path), 2,
                          "did you mean: table1")
    assert tree(tmp_path) == []


# ---------------------------------------------------------------- scripts/*_merge_eval.sh

def test_merge_eval_failures(models, tmp_path):
    script = ["bash", str(REPO_ROOT / "scripts" / "arithmetic_merge_eval.sh")]
    results = str(tmp_path / "results")
    assert_one_line_error(run([*script, "nope"], tmp_path, RESULTS_DIR=results), 1, "nope does not exist")
    assert_one_line_error(run([*script, str(models / "run" / "final")], tmp_path, RESULTS_DIR=results), 1,
                          "not a training run folder")
    assert_one_line_error(run(script, tmp_path, RESULTS_DIR=results), 2, "usage")
    # A run whose merge is refused by abba.merge: its own one line, nothing in results/.
    run_dir = tmp_path / "outputs" / "x" / "seed3"
    shutil.copytree(models / "run", run_dir)
    (run_dir / "final" / "abba_model.yaml").unlink()
    (run_dir / "config.yaml").unlink()
    (run_dir / "config.yaml").write_text("experiment_name: x\nseed: 3\ndata: {task: arithmetic}\n")
    proc = run([*script, str(run_dir)], tmp_path, RESULTS_DIR=results)
    assert_one_line_error(proc, 1, "pass base_model=")
    assert not (tmp_path / "results").exists()

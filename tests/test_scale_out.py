"""Issue 16: one training job on several processes. Hydra's submitit_local launcher with two tasks (the SLURM
launcher's path, on one machine) and a two-"node" torchrun (scripts/slurm_multinode.sbatch -> _launch.sh, with a
fake srun) each train the smoke experiment to the adapter `torchrun --nproc_per_node 2` trains; the launch errors
are one line before anything starts; eval.run passes tensor_parallel_size to vLLM and refuses WORLD_SIZE > 1."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import types

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import run_train, train_env

from abba.cli import Refusal, UsageError
from abba.launch import check_launch
from abba.layout import REPO_ROOT

CONFIGS = REPO_ROOT / "configs"
#: Four ZeRO-2 steps of 8 sequences per process on 64 records; accumulation 2 over 2 processes keeps it 1 each.
SMOKE = ["experiment=smoke_arithmetic", "trainer=zero2", "trainer.gradient_accumulation_steps=2",
         "trainer.max_steps=4", "data.subset_size=64", "trainer.save_strategy=no"]
#: Same seed, same data order, same float32 reductions over 2 ranks: measured bit-identical (max |diff| 0).
ATOL = 1e-5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def _adapter(run_dir):
    """The run's only adapter file (final/), loaded; the run recorded world size 2 and finished."""
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["world_size"] == 2 and info["finished"] and info["global_step"] == 4, info
    assert sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*.safetensors")) == \
        ["final/adapter_model.safetensors"]
    return load_file(str(run_dir / "final" / "adapter_model.safetensors"))


def _assert_same_adapter(got: dict, expected: dict) -> None:
    assert set(got) == set(expected) and expected
    assert max(v.abs().max() for k, v in expected.items() if k.endswith("abba_B2")) > 0  # trained (B2 = 0 at init)
    diff = max((got[k] - expected[k]).abs().max().item() for k in expected)
    print(f"max |diff| between the adapters: {diff:.3g}")
    assert diff <= ATOL


@pytest.fixture(scope="module")
def torchrun_adapter(excerpt_data, tmp_path_factory):
    """The reference: `torchrun --nproc_per_node 2 -m abba.train SMOKE`, on the CPU as the others."""
    tmp = tmp_path_factory.mktemp("torchrun")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CUDA_VISIBLE_DEVICES", "")
        result = run_train(SMOKE + [f"output_dir={tmp / 'run'}"], excerpt_data, tmp, nproc=2)
    assert result.returncode == 0, result.stderr[-3000:]
    return _adapter(tmp / "run")


@pytest.mark.slow
def test_submitit_local_two_tasks_train_like_torchrun(excerpt_data, tmp_path, torchrun_adapter):
    """hydra/launcher=submitit_local hydra.launcher.tasks_per_node=2: one job, two processes, one run folder."""
    run_dir, root = tmp_path / "run", tmp_path / "out"
    env = {**train_env(excerpt_data), "OMP_NUM_THREADS": "1", "MASTER_PORT": str(_free_port()),
           "CUDA_VISIBLE_DEVICES": ""}  # CPU tasks: with a GPU, submitit_local needs gpus_per_node (abba.launch)
    result = subprocess.run([sys.executable, "-m", "abba.train", "-m", "hydra/launcher=submitit_local",
                             "hydra.launcher.tasks_per_node=2", *SMOKE, f"output_dir={run_dir}",
                             f"paths.output_root={root}"], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    logs = sorted((root / ".sweeps" / "smoke_arithmetic" / ".submitit").glob("*/*_log.out"))
    assert [p.name.split("_")[1] for p in logs] == ["0", "1"]  # two tasks ran, their files stay under tmp_path
    assert "world size 2" in logs[0].read_text()  # rank 0 logged the run
    _assert_same_adapter(_adapter(run_dir), torchrun_adapter)


@pytest.mark.slow
def test_two_node_torchrun_through_the_sbatch_script_trains_like_one_node(excerpt_data, tmp_path, torchrun_adapter):
    """scripts/slurm_multinode.sbatch on a fake 2-node allocation: a fake srun starts the task of both "nodes" on
    this machine (SLURM_NODEID 0 and 1), each runs _launch.sh -> torchrun --nnodes 2 --node_rank K with one
    process, meeting at node 0's address (what scontrol names first)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fakes = {"srun": '#!/usr/bin/env bash\nwhile [[ "$1" == -* ]]; do shift; done\npids=()\n'
                     'for ((i = 0; i < SLURM_NNODES; i++)); do SLURM_NODEID=$i "$@" & pids+=($!); done\n'
                     'rc=0; for p in "${pids[@]}"; do wait "$p" || rc=$?; done; exit $rc\n',
             "scontrol": "#!/usr/bin/env bash\necho 127.0.0.1\necho 127.0.0.2\n"}
    for name, text in fakes.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(stat.S_IRWXU)
    run_dir = tmp_path / "run"
    env = {**train_env(excerpt_data), "OMP_NUM_THREADS": "1", "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "node[0-1]", "SLURM_JOB_ID": "7",
           "SLURM_SUBMIT_DIR": str(REPO_ROOT), "MASTER_PORT": str(_free_port()), "NPROC_PER_NODE": "1",
           "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "slurm_multinode.sbatch"), *SMOKE,
                             f"output_dir={run_dir}"], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_same_adapter(_adapter(run_dir), torchrun_adapter)


# ------------------------------------------------------------------ launch errors: one line, nothing started
def test_slurm_launcher_without_sbatch_is_refused_before_anything_runs(excerpt_data, tmp_path):
    python_bin = os.path.dirname(sys.executable)
    path = os.pathsep.join([python_bin, "/usr/bin", "/bin"])
    if any(os.path.exists(os.path.join(d, "sbatch")) for d in path.split(os.pathsep)):
        pytest.skip("this machine has sbatch")
    env = {**train_env(excerpt_data), "PATH": path}
    result = subprocess.run([sys.executable, "-m", "abba.train", "-m", "hydra/launcher=slurm",
                             "experiment=smoke_arithmetic", f"paths.output_root={tmp_path / 'out'}"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr[-2000:]
    assert _errors(result.stderr) == ["error: hydra/launcher=slurm: sbatch not found, so this machine cannot submit "
                                      "SLURM jobs: run it on a SLURM login node, or use "
                                      "hydra/launcher=submitit_local to run the job here"]
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_a_world_size_that_does_not_divide_the_accumulation_is_refused_before_any_job(excerpt_data, tmp_path):
    """smoke_arithmetic accumulates 1 micro-batch: 2 tasks would double its global batch."""
    result = subprocess.run([sys.executable, "-m", "abba.train", "-m", "hydra/launcher=submitit_local",
                             "hydra.launcher.tasks_per_node=2", "experiment=smoke_arithmetic",
                             f"paths.output_root={tmp_path / 'out'}"], cwd=tmp_path,
                            env={**train_env(excerpt_data), "CUDA_VISIBLE_DEVICES": ""}, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr[-2000:]
    assert _errors(result.stderr)[0].startswith("error: experiment=smoke_arithmetic: world size 2 does not divide "
                                                "trainer.gradient_accumulation_steps=1")
    assert not (tmp_path / "out").exists()  # no sweep folder, no .submitit: no job was submitted


def _refused(argv, monkeypatch, sbatch=True):
    monkeypatch.setattr("shutil.which", lambda name: f"/usr/bin/{name}" if sbatch else None)
    with pytest.raises((UsageError, Refusal)) as error:
        check_launch(CONFIGS, "train", argv)
    assert len(str(error.value).splitlines()) == 1
    return error.value


def test_launcher_checks(monkeypatch):
    slurm = ["-m", "hydra/launcher=slurm"]
    # One process per GPU: slurm.yaml asks for 1 GPU per node, so 4 tasks alone are inconsistent.
    error = _refused(slurm + ["hydra.launcher.tasks_per_node=4", "experiment=t2_mistral_7b_abba_r32"], monkeypatch)
    assert isinstance(error, UsageError) and "tasks_per_node=4 but gpus_per_node=1" in str(error)
    # Each experiment of a sweep is checked: 3 processes divide Table 1's 24, not Table 2's 32.
    sweep = slurm + ["hydra.launcher.tasks_per_node=3", "hydra.launcher.gpus_per_node=3", "seed=0,1",
                     "experiment=t1_llama3_2_1b_abba_r32,t2_mistral_7b_abba_r32"]
    assert str(_refused(sweep, monkeypatch)).startswith(
        "experiment=t2_mistral_7b_abba_r32: world size 3 does not divide trainer.gradient_accumulation_steps=32")
    # 2 nodes x 8 GPUs: 16 divides 32 (Table 2) but not 24 (Table 1).
    multinode = slurm + ["hydra.launcher.nodes=2", "hydra.launcher.tasks_per_node=8", "hydra.launcher.gpus_per_node=8"]
    monkeypatch.setattr("shutil.which", lambda name: "/usr/bin/sbatch")
    check_launch(CONFIGS, "train", multinode + ["experiment=t2_mistral_7b_abba_r32", "trainer=zero3"])
    assert "world size 16" in str(_refused(multinode + ["experiment=t1_llama3_2_1b_abba_r32"], monkeypatch))
    # keep_global_batch=false: the user accepts a larger global batch.
    check_launch(CONFIGS, "train", multinode + ["experiment=t1_llama3_2_1b_abba_r32", "trainer.keep_global_batch=false"])
    # Without -m Hydra would ignore the launcher and train one local process.
    assert "add -m" in str(_refused(["hydra/launcher=submitit_local", "experiment=smoke_arithmetic"], monkeypatch))
    assert isinstance(_refused(slurm + ["experiment=smoke_arithmetic"], monkeypatch, sbatch=False), Refusal)
    # submitit_local hides the GPUs (CUDA_VISIBLE_DEVICES="") unless gpus_per_node asks for them.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    local = ["-m", "hydra/launcher=submitit_local", "hydra.launcher.tasks_per_node=2", "experiment=t1_llama3_2_1b_abba_r32"]
    assert "add hydra.launcher.gpus_per_node=2" in str(_refused(local, monkeypatch))
    check_launch(CONFIGS, "train", local + ["hydra.launcher.gpus_per_node=2"])


@pytest.mark.parametrize("argv, says", [(["experiment=smoke_arithmetic"], "world_size= is missing"),
                                        (["world_size=two"], "world_size=two is not a number of processes"),
                                        (["world_size=0"], "world_size=0 is not a number of processes")])
def test_launch_check_needs_a_world_size(argv, says, capsys):
    """`python -m abba.launch world_size=N OVERRIDES` (scripts/_launch.sh): a missing or bad world size is one
    line and exit 2, before any config is composed."""
    from abba.launch import main

    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and err[0].startswith(f"error: {says}"), err


def test_abba_train_refuses_the_world_size_torchrun_gives_it(monkeypatch):
    """The same refusal inside abba.train (each torchrun process), before anything is written or loaded."""
    from train_helpers import compose_train

    from abba.train_config import TrainConfigError, validate

    cfg = compose_train("experiment=t1_llama3_2_1b_abba_r32")
    monkeypatch.setenv("WORLD_SIZE", "8")
    validate(cfg)  # 8 divides 24
    monkeypatch.setenv("WORLD_SIZE", "16")
    with pytest.raises(TrainConfigError, match=r"^world size 16 does not divide trainer.gradient_accumulation_steps=24"):
        validate(cfg)


def test_launch_script_errors_are_one_line_before_torchrun(excerpt_data, tmp_path):
    """scripts/_launch.sh (through train_arithmetic.sh): incomplete multi-node settings (shell, instant) and a
    world size that does not divide the accumulation (python -m abba.launch, before torchrun)."""
    cases = {"NNODES=2 NPROC_PER_NODE=1": "error: NNODES=2 needs NODE_RANK and RDZV_ENDPOINT (or MASTER_ADDR)",
             "NNODES=2 NODE_RANK=0 NPROC_PER_NODE=1": "error: NNODES=2 needs NODE_RANK and RDZV_ENDPOINT",
             "NNODES=2 NODE_RANK=2 MASTER_ADDR=h NPROC_PER_NODE=1": "error: NODE_RANK=2: must be 0..1 with NNODES=2",
             "NNODES=2 NODE_RANK=1 RDZV_ENDPOINT=h NPROC_PER_NODE=1": "error: rendezvous endpoint 'h': must be host:port",
             "NPROC_PER_NODE=2": "error: world size 2 does not divide trainer.gradient_accumulation_steps=1"}
    for settings, expected in cases.items():
        env = {**train_env(excerpt_data), "CUDA_VISIBLE_DEVICES": "",
               **dict(item.split("=", 1) for item in settings.split())}
        result = subprocess.run(["bash", "scripts/train_arithmetic.sh", "experiment=smoke_arithmetic",
                                 f"output_dir={tmp_path / 'run'}"], cwd=REPO_ROOT, env=env, capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 2, (settings, result.stderr[-2000:])
        assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith(expected), (settings, result.stderr)
        assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ evaluation
def _fake_vllm(monkeypatch):
    """A vllm module that records LLM's arguments and answers every prompt 'true'."""
    calls = {}

    class LLM:
        def __init__(self, **kwargs):
            calls.update(kwargs)

        def generate(self, prompts, params, use_tqdm=True):
            return [types.SimpleNamespace(outputs=[types.SimpleNamespace(text="true")]) for _ in prompts]

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=LLM, SamplingParams=lambda **kw: kw))
    return calls


def test_eval_run_passes_tensor_parallel_size_to_vllm(excerpt_data, tmp_path, monkeypatch):
    from eval.run import evaluate, load_config

    calls = _fake_vllm(monkeypatch)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    out = tmp_path / "out"
    metrics = evaluate(load_config([f"model_path={model}", f"output_dir={out}", "backend=vllm", "benchmark=boolq",
                                    "limit=3", "tensor_parallel_size=4", f"paths.data_dir={excerpt_data}"]))
    assert calls["tensor_parallel_size"] == 4 and calls["model"] == str(model)
    assert metrics["boolq"]["n"] == 3 and len((out / "samples_boolq.jsonl").read_text().splitlines()) == 3
    with pytest.raises(UsageError, match=r"^tensor_parallel_size=0: must be an integer >= 1"):
        evaluate(load_config([f"model_path={model}", f"output_dir={tmp_path / 'o2'}", "backend=vllm",
                              "benchmark=boolq", "tensor_parallel_size=0"]))


def test_eval_run_refuses_several_processes_in_one_line(tmp_path):
    env = {**os.environ, "WORLD_SIZE": "2", "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run([sys.executable, "-m", "eval.run", "benchmark=boolq", f"model_path={tmp_path}",
                             f"output_dir={tmp_path / 'out'}", "backend=hf"], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: eval.run runs as one process, but WORLD_SIZE=2 (torchrun or several submitit tasks): launch it as "
        "plain `python -m eval.run ...`; for a model too large for one GPU use backend=vllm tensor_parallel_size=N"]
    assert not (tmp_path / "out").exists()

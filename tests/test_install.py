"""The install sets: the lock files agree with pyproject.toml and with what the tests run on, and every install
command of the README resolves with pip's own resolver (slow: needs the package registry, about 3 minutes)."""

from __future__ import annotations

import re
import subprocess
import sys
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    from pip._vendor import tomli as tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from abba import install_check

REPO = Path(__file__).resolve().parent.parent
SAME_IN_BOTH = ("transformers", "peft", "accelerate")  # the code GPU users run must be the code the tests run


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        req = Requirement(line)
        (spec,) = req.specifier  # a lock file pins each package exactly
        assert spec.operator == "==", f"{path.name}: {line} is not an exact pin"
        pins[req.name.lower()] = spec.version
    return pins


def _pyproject():
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def test_lock_files_satisfy_the_ranges_and_share_the_library_versions():
    gpu, cpu = _pins(REPO / "requirements.txt"), _pins(REPO / "requirements-cpu.txt")
    project = _pyproject()
    for dep in map(Requirement, project["dependencies"]):
        for name, pins in (("requirements.txt", gpu), ("requirements-cpu.txt", cpu)):
            assert dep.name in pins, f"{name} does not lock {dep.name}"
            assert dep.specifier.contains(pins[dep.name]), f"{name}: {dep.name}=={pins[dep.name]} not in {dep}"
    for name in SAME_IN_BOTH:
        assert gpu[name] == cpu[name], f"{name}: GPU set {gpu[name]} vs CPU set {cpu[name]}"
    assert "vllm" in gpu and "vllm" not in cpu
    # The extras name the same exact versions as the lock files.
    for extra, pins in (("cpu", cpu), ("vllm", gpu), ("gpu", gpu)):
        for dep in map(Requirement, project["optional-dependencies"][extra]):
            (spec,) = dep.specifier
            assert spec.version == pins[dep.name], f"extra [{extra}]: {dep} but the lock has {pins[dep.name]}"
    # Both lock files install this project too (one command each).
    for path in ("requirements.txt", "requirements-cpu.txt"):
        assert "-e ." in (REPO / path).read_text().splitlines()


def test_the_suite_runs_on_the_locked_library_versions():
    cpu = _pins(REPO / "requirements-cpu.txt")
    for name in SAME_IN_BOTH + ("torch",):
        installed = metadata.version(name).split("+")[0]
        assert installed == cpu[name], (f"{name} {installed} is installed but requirements-cpu.txt locks "
                                        f"{cpu[name]}: re-run `bash scripts/test.sh` (it re-installs .venv)")


def test_readme_install_commands_are_found():
    readme = ("# X\n## Install\ntext `pip install not-a-command`\n```bash\n# comment pip install no\n"
              "pip install -r requirements.txt   # GPU\npython -m venv v && pip install -e \".[cpu]\"\n```\n"
              "## Next\n```bash\npip install outside\n```\n")
    assert install_check.readme_install_commands(readme) == ["pip install -r requirements.txt",
                                                             'pip install -e ".[cpu]"']
    with pytest.raises(ValueError, match="no '## Install' section"):
        install_check.readme_install_commands("# X\n## Usage\n")
    real = install_check.readme_install_commands((REPO / "README.md").read_text())
    assert "pip install -r requirements.txt" in real and "pip install -r requirements-cpu.txt" in real


def _registry_reachable() -> bool:
    probe = subprocess.run([sys.executable, "-m", "pip", "index", "versions", "peft", "--disable-pip-version-check"],
                           capture_output=True, text=True, timeout=120)
    return probe.returncode == 0


@pytest.fixture(scope="module")
def registry():
    if not _registry_reachable():
        pytest.skip("the package registry (pip's index) is unreachable: the resolver check needs it")


@pytest.mark.slow
def test_every_readme_install_command_resolves(registry):
    gpu = _pins(REPO / "requirements.txt")
    commands = install_check.readme_install_commands((REPO / "README.md").read_text())
    results = install_check.check(commands, install_check.SUPPORTED_PYTHONS, workers=4)
    print("\n".join(r.line() for r in results))
    assert [r.line() for r in results if r.error is not None] == []
    for r in results:
        if "vllm" in r.command or r.command.endswith("requirements.txt"):
            for name in ("vllm", "torch") + SAME_IN_BOTH:
                # the CPU build on this machine's disk is "2.13.0+cpu": the local label is not the version
                assert r.versions[name].split("+")[0] == gpu[name], r.line()


@pytest.mark.slow
def test_the_checker_fails_on_a_planted_conflict(registry, tmp_path):
    # The README's GPU lock with transformers moved past what vLLM 0.31.0 accepts (<5.18): must not resolve.
    text = (REPO / "requirements.txt").read_text()
    planted = tmp_path / "planted.txt"
    planted.write_text(re.sub(r"^transformers==.*$", "transformers==5.23.0", text, flags=re.M))
    assert planted.read_text() != text
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    proc = subprocess.run([sys.executable, "-m", "abba.install_check", f"pythons={version}",
                           f"requirements={planted}"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    fail = [l for l in proc.stdout.splitlines() if l.startswith("FAIL")]
    assert len(fail) == 1 and "transformers" in fail[0] and "vllm" in fail[0], proc.stdout
    assert "0 of 1 resolved" in proc.stdout


@pytest.mark.parametrize("arg, says", [("python=3.11", "unknown option python (did you mean: pythons"),
                                       ("requirements=", "requirements= is empty"),
                                       ("pythons=", "pythons= is empty")])
def test_checker_usage_errors_are_one_line(arg, says):
    proc = subprocess.run([sys.executable, "-m", "abba.install_check", arg], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: ") and says in proc.stderr

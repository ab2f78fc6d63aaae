"""Check that every install command the README documents resolves, with pip's own resolver in dry-run mode.

    python -m abba.install_check                      # every README command, Python 3.10, 3.11, 3.12
    python -m abba.install_check pythons=3.12         # one interpreter
    python -m abba.install_check requirements=/tmp/planted.txt   # one requirements file instead of the README's

For each (command, interpreter) it runs `pip --python <interpreter> install --dry-run --ignore-installed --report`
(pip >= 22.3), so markers and wheel tags are the interpreter's own, and prints the versions pip would install
(torch, transformers, peft, accelerate, vllm, deepspeed) or the resolver's one-line reason. Nothing is installed.
It needs only the package registry. The README's commands are the `pip install ...` lines inside fenced code
blocks of its "## Install" section, run from the repository root as the README says. Linux x86_64 only: pip
resolves for the machine it runs on. Exit 0 when all resolve, 1 when any does not (`abba/cli.py` convention).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .cli import Refusal, UsageError, one_line_errors, parse_key_values

REPO_ROOT = Path(__file__).resolve().parent.parent
SUPPORTED_PYTHONS = ("3.10", "3.11", "3.12")  # pyproject.toml: >=3.10 (3.13 resolves too: not checked in CI)
REPORTED = ("torch", "transformers", "peft", "accelerate", "vllm", "deepspeed")


@dataclass
class Resolution:
    """What pip would install for one command on one interpreter; `error` is None when it resolved."""

    command: str
    python: str
    versions: dict[str, str] = field(default_factory=dict)
    error: str | None = None

    def line(self) -> str:
        if self.error is not None:
            return f"FAIL  py{self.python}  {self.command}: {self.error}"
        shown = ", ".join(f"{n} {self.versions[n]}" for n in REPORTED if n in self.versions)
        return f"ok    py{self.python}  {self.command}: {shown}"


def readme_install_commands(readme: str) -> list[str]:
    """The `pip install ...` lines of the README's "## Install" section's code blocks, in order.

    Raises ValueError when the section or its commands are missing (the README is the contract this checks)."""
    match = re.search(r"^## Install\b.*?(?=^## )", readme, flags=re.S | re.M)
    if match is None:
        raise ValueError("README.md has no '## Install' section")
    commands = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", match.group(0), flags=re.S):
        for raw in block.splitlines():
            line = raw.split("#", 1)[0].strip()
            for part in line.split("&&"):
                part = part.strip()
                if part.startswith(("pip install", "python -m pip install")):
                    commands.append(part)
    if not commands:
        raise ValueError("README.md's '## Install' section shows no `pip install` command")
    return commands


def find_python(version: str) -> str | None:
    """A working interpreter for `version` ("3.10"): a pyenv install or python3.10 on PATH (a pyenv shim on PATH
    may exist yet refuse to run, so each candidate is asked its version); None if there is none."""
    pyenv = Path.home() / ".pyenv" / "versions"
    candidates = [str(p / "bin" / "python") for p in sorted(pyenv.glob(f"{version}.*"), reverse=True)]
    candidates += [c for c in (shutil.which(f"python{version}"),) if c]
    for exe in candidates:
        try:
            out = subprocess.run([exe, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                 capture_output=True, text=True, timeout=30)
        except OSError:
            continue
        if out.returncode == 0 and out.stdout.strip() == version:
            return exe
    return None


def _reason(output: str) -> str:
    """The resolver's own explanation, in one line: its "... depends on ..." / "Could not find ..." lines."""
    keep = [l.strip() for l in output.splitlines()
            if re.search(r"depends on|The user requested|No matching distribution|Could not find a version|"
                         r"requires a different Python", l)]
    lines = keep or [l.strip() for l in output.splitlines() if l.strip() and not l.startswith("WARNING")][-2:]
    return " | ".join(dict.fromkeys(lines))[:600] or "pip failed without a message"


def dry_run(command: str, python: str, python_version: str, cwd: Path = REPO_ROOT,
            timeout: float = 600) -> Resolution:
    """Resolve one `pip install ...` command for `python` without installing anything."""
    args = shlex.split(command)
    args = args[args.index("install") + 1:]
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "--python", python, "install", "--dry-run", "--ignore-installed",
               "--disable-pip-version-check", "--report", str(report), *args]
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0 or not report.is_file():
            # not --quiet: pip logs the conflict's cause ("vllm 0.31.0 depends on transformers<5.18") at info level
            return Resolution(command, python_version, error=_reason(proc.stdout + "\n" + proc.stderr))
        installs = json.loads(report.read_text())["install"]
    versions = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in installs}
    return Resolution(command, python_version, versions=versions)


def check(commands: list[str], pythons: tuple[str, ...] = SUPPORTED_PYTHONS, cwd: Path = REPO_ROOT,
          workers: int = 3) -> list[Resolution]:
    """Every command on every interpreter (in parallel: the time is the registry's). A Python version with no
    interpreter on this machine is a failed resolution saying so, never a silent pass."""
    jobs = []
    for version in pythons:
        exe = find_python(version)
        for command in commands:
            jobs.append((command, exe, version))

    def run(job):
        command, exe, version = job
        if exe is None:
            return Resolution(command, version, error=f"no Python {version} interpreter on this machine "
                                                      f"(python{version} on PATH or ~/.pyenv/versions)")
        return dry_run(command, exe, version, cwd=cwd)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(run, jobs))


def main(argv: list[str] | None = None) -> int:
    with one_line_errors(refusals=(Refusal, ValueError, OSError)):
        return _main(sys.argv[1:] if argv is None else argv)


def _main(argv: list[str]) -> int:
    opts = parse_key_values(argv, {"pythons": ",".join(SUPPORTED_PYTHONS), "requirements": None})
    pythons = tuple(p for p in str(opts["pythons"]).split(",") if p)
    if not pythons:
        raise UsageError("pythons= is empty: give versions such as pythons=3.11,3.12")
    if opts["requirements"] == "":
        raise UsageError("requirements= is empty: give a requirements file, or leave it out for the README's commands")
    if opts["requirements"]:
        path = Path(opts["requirements"]).resolve()  # pip runs from the repository root; the path is the caller's
        if not path.is_file():  # before pip: it would fail once per interpreter, in several lines each
            raise Refusal(f"requirements={opts['requirements']} is not a file: give a requirements file, or leave "
                          f"requirements= out to check the README's commands")
        commands = [f"pip install -r {shlex.quote(str(path))}"]
    else:
        commands = readme_install_commands((REPO_ROOT / "README.md").read_text())
    results = check(commands, pythons)
    for r in results:
        print(r.line())
    failed = [r for r in results if r.error is not None]
    print(f"{len(results) - len(failed)} of {len(results)} resolved")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m abba.bench [device=cpu|cuda] [quick=true] [overrides]`: see abba/bench/__init__.py.

Failures (abba/cli.py): a bad setting exits 2; missing data for parts=[smollm2] or no CUDA device for device=cuda
exits 1, before anything is measured."""

import hydra
from omegaconf import DictConfig

from ..cli import Refusal, one_line_errors
from ..layout import REPO_ROOT


@hydra.main(config_path=str(REPO_ROOT / "configs"), config_name="bench", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from .run import run_benchmark

    # ValueError: a bad value in the settings, also when peft or ABBAConfig is the one to refuse it.
    with one_line_errors(usage=(ValueError,), refusals=(Refusal, OSError),
                         on_interrupt="interrupted: the report in out_dir holds the parts finished before"):
        path = run_benchmark(cfg)
    print(path.with_suffix(".md").read_text())
    print(f"wrote {path} and {path.with_suffix('.md')}")


if __name__ == "__main__":
    from ..hydra_check import exit_on_bad_command_line

    exit_on_bad_command_line(REPO_ROOT / "configs", "bench")
    main()

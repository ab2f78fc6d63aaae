"""`python -m abba.bench [device=cpu|cuda] [quick=true] [overrides]`: see abba/bench/__init__.py."""

import hydra
from omegaconf import DictConfig

from ..layout import REPO_ROOT


@hydra.main(config_path=str(REPO_ROOT / "configs"), config_name="bench", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from .run import run_benchmark

    path = run_benchmark(cfg)
    print(path.with_suffix(".md").read_text())
    print(f"wrote {path} and {path.with_suffix('.md')}")


if __name__ == "__main__":
    from ..hydra_check import exit_on_bad_command_line

    exit_on_bad_command_line(REPO_ROOT / "configs", "bench")
    main()

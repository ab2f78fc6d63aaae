"""Check a Hydra command line before `@hydra.main` runs, so a typo costs one line of stderr, not twenty.

Hydra reports an unknown config option (`experiment=no_such_file`) with the whole list of options and the
search path, and an unknown key over five lines. `check_command_line` composes the same config once with the
same overrides (for a multirun, with the first value of each sweep) and turns such an error into one line:

    error: Could not find 'experiment/t1_llama3_2_1b_abba_r23' (did you mean: t1_llama3_2_1b_abba_r32, ...)

`hydra.*` overrides (launcher, sweeper, run dir) are Hydra's own business and are left to it.
"""

from __future__ import annotations

import difflib
import re
import sys
from pathlib import Path


class CommandLineError(ValueError):
    """A command line Hydra would refuse; the message is one line."""


def _first_values(overrides: list[str]) -> list[str]:
    """Each override as Hydra would see it in the first job of a multirun (sweeps reduced to their first value)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    result = []
    for text, override in zip(overrides, parsed):
        if override.is_sweep_override():
            first = next(iter(override.sweep_string_iterator()))
            result.append(f"{override.get_key_element()}={first}")
        else:
            result.append(text)
    return result


def _one_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    message = lines[0] if lines else type(exc).__name__
    message = re.sub(r"^In '[^']*': ", "", message)
    options = getattr(exc, "options", None)
    missing = getattr(exc, "missing_cfg_file", None)
    if options:
        wanted = Path(str(missing or "")).name
        close = difflib.get_close_matches(wanted, options, n=3, cutoff=0.5)
        message += f" (did you mean: {', '.join(close)})" if close else f" (options: {', '.join(options)})"
    if message.startswith("Ambiguous value"):
        message += "; quote it for a string, use [a,b] for a list, or add -m to sweep over it"
    hint = next((line for line in lines[1:] if line.startswith("To append")), None)
    if hint:
        message = f"{message.rstrip('.')}; {hint[0].lower()}{hint[1:]}"
    return message


def check_command_line(config_dir: str | Path, config_name: str, argv: list[str]) -> None:
    """Raise CommandLineError when Hydra would fail to compose `config_name` with the overrides in `argv`."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    overrides = [a for a in argv if not a.startswith("-") and not a.lstrip("+~").startswith("hydra")]
    try:
        if "-m" in argv or "--multirun" in argv:
            overrides = _first_values(overrides)
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            compose(config_name=config_name, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as exc:
        raise CommandLineError(_one_line(exc)) from None


def exit_on_bad_command_line(config_dir: str | Path, config_name: str, argv: list[str] | None = None) -> None:
    """`check_command_line` for a `__main__` block: print the one-line error and exit 2."""
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("--help", "-h", "--info", "--cfg", "-c", "--shell-completion") or a.startswith("--info")
           for a in argv):
        return  # Hydra's own informational modes
    try:
        check_command_line(config_dir, config_name, argv)
    except CommandLineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)

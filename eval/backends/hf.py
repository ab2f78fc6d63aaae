"""Hugging Face `generate` backend: batches sorted by prompt length (longest first, so an out-of-memory shows up
at once), left padding, KV cache, `torch.inference_mode`, stop strings, and a per-batch seed when sampling.

Greedy decoding of a batch equals one-by-one greedy decoding (transformers derives position ids from the
attention mask, so left padding shifts nothing); tests/test_eval_e2e.py checks it in float32.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch
from tqdm.auto import tqdm
from transformers import StoppingCriteria, StoppingCriteriaList

from . import truncate_at_stop


class StopOnStrings(StoppingCriteria):
    """Marks a sequence finished once its generated text contains a stop string (checked on the last tokens)."""

    def __init__(self, tokenizer, stop: tuple[str, ...], prompt_length: int, window: int = 32):
        self.tokenizer, self.stop, self.prompt_length, self.window = tokenizer, stop, prompt_length, window

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        start = max(self.prompt_length, input_ids.shape[1] - self.window)
        tails = self.tokenizer.batch_decode(input_ids[:, start:], skip_special_tokens=True)
        return torch.tensor([any(s in t for s in self.stop) for t in tails], dtype=torch.bool, device=input_ids.device)


def _resolve_dtype(dtype: str, device: torch.device) -> torch.dtype | str:
    from abba.modeling import torch_dtype

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

    def _generate_batch(self, prompts: list[str], decoding, stop: tuple[str, ...]) -> list[str]:
        batch = self.tokenizer(prompts, return_tensors="pt", padding=True).to(self.device)
        prompt_length = batch["input_ids"].shape[1]
        sampling = dict(do_sample=True, temperature=decoding.temperature, top_p=decoding.top_p,
                        top_k=decoding.top_k) if decoding.do_sample else \
            dict(do_sample=False, temperature=None, top_p=None, top_k=None)
        output = self.model.generate(
            **batch, max_new_tokens=decoding.max_new_tokens, use_cache=True, **sampling,
            pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.tokenizer.eos_token_id,
            stopping_criteria=StoppingCriteriaList([StopOnStrings(self.tokenizer, stop, prompt_length)]) if stop else None,
        )
        texts = self.tokenizer.batch_decode(output[:, prompt_length:], skip_special_tokens=True)
        return [truncate_at_stop(t, stop) for t in texts]

    @torch.inference_mode()
    def generate(self, prompts: list[str], decoding, stop: tuple[str, ...], seed: int = 0,
                 desc: str = "generate") -> Iterator[list[tuple[int, str]]]:
        """Yield [(index into prompts, completion), ...] once per batch."""
        lengths = [len(ids) for ids in self.tokenizer(prompts)["input_ids"]]
        order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
        with tqdm(total=len(prompts), desc=desc, unit="item") as bar:
            for number, start in enumerate(range(0, len(order), self.batch_size)):
                indices = order[start:start + self.batch_size]
                if decoding.do_sample:  # reproducible given the same batches
                    torch.manual_seed(seed + number)
                completions = self._generate_batch([prompts[i] for i in indices], decoding, stop)
                bar.update(len(indices))
                yield list(zip(indices, completions))

"""vLLM backend (optional extra `pip install -e .[vllm]`, imported only when chosen). One engine serves every
benchmark of a group; prompts go in chunks so results reach disk (and a killed run resumes) chunk by chunk."""

from __future__ import annotations

from typing import Any, Iterator

from .common import item_seed, truncate_at_stop


class VLLMBackend:
    name = "vllm"

    def __init__(self, model_path: str, tensor_parallel_size: int = 1, dtype: str = "auto", seed: int = 0,
                 gpu_memory_utilization: float = 0.9, max_model_len: int | None = None, chunk_size: int = 1024,
                 **_unused: Any):
        try:
            from vllm import LLM
        except ImportError as error:
            raise ImportError("backend=vllm needs vLLM: pip install -e .[vllm] (or use backend=hf)") from error
        self.chunk_size = int(chunk_size)
        self.llm = LLM(model=model_path, tensor_parallel_size=int(tensor_parallel_size), dtype=dtype, seed=int(seed),
                       gpu_memory_utilization=float(gpu_memory_utilization), max_model_len=max_model_len)

    @property
    def dtype(self) -> str | None:
        """The engine's model dtype, e.g. 'bfloat16' (recorded in metrics.json); None when it cannot be read."""
        dtype = getattr(getattr(getattr(self.llm, "llm_engine", None), "model_config", None), "dtype", None)
        return None if dtype is None else str(dtype).removeprefix("torch.")

    def generate(self, prompts: list[str], decoding, stop: tuple[str, ...], seed: int = 0,
                 desc: str = "generate", keys: list[str] | None = None) -> Iterator[list[tuple[int, str]]]:
        """Yield [(index into prompts, completion), ...] once per chunk. When sampling, request i carries its own
        seed `item_seed(seed, keys[i])` (keys default to the prompts), so its sample does not depend on the chunk
        or on the other requests scheduled with it."""
        from vllm import SamplingParams

        keys = list(prompts) if keys is None else list(keys)
        common = dict(n=1, max_tokens=decoding.max_new_tokens, stop=list(stop) or None, skip_special_tokens=True)
        if decoding.do_sample:
            common.update(temperature=decoding.temperature, top_p=decoding.top_p)
            if decoding.top_k:
                common["top_k"] = decoding.top_k
        else:
            common["temperature"] = 0.0
        for start in range(0, len(prompts), self.chunk_size):
            chunk = prompts[start:start + self.chunk_size]
            params = [SamplingParams(**common, seed=item_seed(seed, key)) if decoding.do_sample else
                      SamplingParams(**common) for key in keys[start:start + self.chunk_size]]
            outputs = self.llm.generate(chunk, params, use_tqdm=True)
            yield [(start + i, truncate_at_stop(out.outputs[0].text, stop)) for i, out in enumerate(outputs)]

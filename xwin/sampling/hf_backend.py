"""Batched transformers `generate` with left padding: the backend for machines without vLLM and
the baseline the sampling benchmark compares vLLM against."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig

from xwin.models.device import place_model
from xwin.models.loading import load_causal_lm
from xwin.sampling.generation import Engine, EngineOptions, Generation, GenerationParams


class HfEngine(Engine):
    def __init__(self, model_dir, options: EngineOptions):
        super().__init__(model_dir, options)
        model = load_causal_lm(self.model_dir, options.dtype, options.attn_implementation)
        self.model = place_model(model.eval())  # the device policy's
        torch.manual_seed(options.seed)
        eos = self.model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos] if eos is not None else []
        if self.tokenizer.eos_token_id is not None:
            eos = [*eos, self.tokenizer.eos_token_id]
        self.eos_ids = sorted(set(eos))
        # SmolLM2's pad token is its end-of-turn token: padding is only ever located by the
        # attention mask built from lengths below, never by comparing ids with pad_token_id.
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None \
            else self.eos_ids[0]

    def _generation_config(self, params: GenerationParams, max_new_tokens: int) -> GenerationConfig:
        """Every sampling knob explicit, so the model's generation_config.json defaults (top_k=50,
        repetition penalties, ...) cannot make HF sample differently from vLLM."""
        sampled = params.temperature > 0
        return GenerationConfig(
            do_sample=sampled,
            temperature=params.temperature if sampled else None,
            top_p=params.top_p if sampled else None,
            top_k=0 if sampled else None,
            max_new_tokens=max_new_tokens,
            eos_token_id=self.eos_ids,
            pad_token_id=self.pad_id,
            bos_token_id=self.model.generation_config.bos_token_id,
        )

    @torch.inference_mode()
    def _generate(self, prompts, counts, params, budgets):
        # One row per requested sample; rows sorted by prompt length so a batch pads little.
        rows = [(p, k) for p, c in enumerate(counts) for k in range(c)]
        rows.sort(key=lambda r: len(prompts[r[0]]))
        out: list[list[Generation | None]] = [[None] * c for c in counts]
        size = self.options.hf_batch_size
        device = next(self.model.parameters()).device
        for start in tqdm(range(0, len(rows), size), desc="hf generate", unit="batch",
                          disable=len(rows) <= size):
            batch = rows[start:start + size]
            width = max(len(prompts[p]) for p, _ in batch)
            input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, (p, _) in enumerate(batch):
                ids = prompts[p]
                input_ids[row, width - len(ids):] = torch.tensor(ids)
                attention_mask[row, width - len(ids):] = 1
            max_new = min(budgets[p] for p, _ in batch)
            sequences = self.model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                generation_config=self._generation_config(params, max_new),
            )
            for row, (p, k) in enumerate(batch):
                out[p][k] = self._decode(sequences[row, width:].tolist(), len(prompts[p]))
        return out  # type: ignore[return-value]

    def _decode(self, new_ids: list[int], prompt_tokens: int) -> Generation:
        """Cut at the first end-of-turn token: what follows it is padding of a finished row."""
        stop = next((i for i, t in enumerate(new_ids) if t in self.eos_ids), None)
        kept = new_ids if stop is None else new_ids[:stop]
        return Generation(
            text=self.tokenizer.decode(kept, skip_special_tokens=True),
            finish_reason="length" if stop is None else "stop",
            num_tokens=len(new_ids) if stop is None else stop + 1,
            prompt_tokens=prompt_tokens,
        )

    def close(self) -> None:
        del self.model

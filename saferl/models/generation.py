"""Batched in-process generation from rendered prompts: the warm start's measurement, SRPO's pair
mining and QI curation's sampler all sample the policy here, on prompts from `saferl.data.prompts`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def generate_responses(
    model: Any,
    processor: Any,
    prompts: Sequence[tuple[str, list[Any]]],
    *,
    do_sample: bool,
    num_samples: int = 1,
    max_new_tokens: int = 128,
    batch_size: int = 40,
    seed: int = 0,
    temperature: float = 1.0,
    top_p: float = 1.0,
) -> list[list[tuple[str, int]]]:
    """`num_samples` responses per prompt (its rendered text and images: `saferl.data.prompts`) as
    (text, new tokens), greedy or sampled at `temperature` / `top_p`.

    Batches are left-padded; sampling has no top-k, like the rollout's. Text is decoded without special
    tokens, as the agent loop decodes it for the judge; a response ends at the first stop token.
    """
    tokenizer = processor.tokenizer
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    out: list[list[tuple[str, int]]] = []
    try:
        with torch.no_grad(), torch.random.fork_rng():
            torch.manual_seed(seed)
            for begin in range(0, len(prompts), batch_size):
                chunk = prompts[begin : begin + batch_size]
                inputs = processor(
                    text=[text for text, _ in chunk],
                    images=[img for _, images in chunk for img in images] or None,
                    padding=True,
                    return_tensors="pt",
                ).to(model.device)
                kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": do_sample}
                if do_sample:
                    kwargs.update(
                        temperature=temperature, top_k=0, top_p=top_p, num_return_sequences=num_samples
                    )
                generated = model.generate(**inputs, **kwargs)[:, inputs["input_ids"].shape[1] :]
                per = num_samples if do_sample else 1
                stops = set(_as_list(model.generation_config.eos_token_id))
                for i in range(len(chunk)):
                    responses = []
                    for seq in generated[i * per : (i + 1) * per].tolist():
                        length = next((j + 1 for j, t in enumerate(seq) if t in stops), len(seq))
                        text = tokenizer.decode(seq[:length], skip_special_tokens=True)
                        responses.append((text, length))
                    out.append(responses)
    finally:
        tokenizer.padding_side = side
    return out


def _as_list(value: Any) -> list[int]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]

"""The warm start's training loop: AdamW on the assistant tokens of `SFTExample` batches.

A few dozen lines of PyTorch: every batch is checked to hold the exact RL prompt the example was built
with (the processor is called again at collation), only the target carries a loss, and `on_step` lets
`--measure` read several step counts off one run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from tqdm.auto import tqdm

from saferl.data.prompts import PromptBuilder

from .examples import SFTExample

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
# Gradient-norm clip: the first steps from random init have large gradients; clipping keeps a high constant
# learning rate stable without a warmup (which would tie the weights at step N to the total step count).
MAX_GRAD_NORM = 1.0


def collate(
    examples: Sequence[SFTExample],
    processor: Any,
    max_length: int,
    data_config: DictConfig | None = None,
    builder: PromptBuilder | None = None,
) -> dict[str, Any]:
    """A right-padded batch: prompt + target ids, labels IGNORE_INDEX on the prompt and the padding.

    Images go through the same processor call as the prompt, so the image features match the prompt's
    image tokens one for one. A sequence longer than `max_length` loses the end of its target (never the
    prompt: cutting image tokens would break the image features). `builder`: the prompt builder of
    `processor` and `data_config`, made once by a caller that collates every step.
    """
    builder = builder or PromptBuilder(processor, data_config)
    pad_id = processor.tokenizer.pad_token_id
    pad_id = pad_id if pad_id is not None else 0
    rows, pixel_values, grids = [], [], []
    for ex in examples:
        if len(ex.prompt_ids) >= max_length:
            raise ValueError(f"a prompt of {len(ex.prompt_ids)} tokens leaves no room under max_length")
        inputs = builder.inputs(ex.prompt_text, ex.images)
        if inputs["input_ids"][0].tolist() != ex.prompt_ids:
            raise RuntimeError("the processor rendered a prompt differently from when it was built")
        target = ex.target_ids[: max_length - len(ex.prompt_ids)]
        ids = ex.prompt_ids + target
        labels = [IGNORE_INDEX] * len(ex.prompt_ids) + target
        types = inputs["mm_token_type_ids"][0].tolist() if "mm_token_type_ids" in inputs else None
        rows.append((ids, labels, types))
        if "pixel_values" in inputs:
            pixel_values.append(inputs["pixel_values"])
            grids.append(inputs["image_grid_thw"])
    width = max(len(ids) for ids, _, _ in rows)
    batch: dict[str, Any] = {
        "input_ids": torch.tensor([ids + [pad_id] * (width - len(ids)) for ids, _, _ in rows]),
        "attention_mask": torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _, _ in rows]),
        "labels": torch.tensor([lab + [IGNORE_INDEX] * (width - len(lab)) for _, lab, _ in rows]),
    }
    if all(types is not None for _, _, types in rows):
        batch["mm_token_type_ids"] = torch.tensor(
            [types + [0] * (width - len(types)) for _, _, types in rows]
        )
    if pixel_values:
        batch["pixel_values"] = torch.cat(pixel_values)
        batch["image_grid_thw"] = torch.cat(grids)
    return batch


def sft_loss(model: Any, batch: dict[str, Any]) -> Any:
    """Mean next-token cross-entropy over the labelled (assistant) tokens of the batch."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs).logits
    labels = batch["labels"][:, 1:]
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
        labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
    )


def _batches(n: int, batch_size: int, seed: int) -> Iterator[list[int]]:
    """Endless batches of example indices: a fresh seeded permutation per epoch, the tail carried over."""

    generator = torch.Generator().manual_seed(seed)
    pending: list[int] = []
    while True:
        while len(pending) < batch_size:
            pending.extend(torch.randperm(n, generator=generator).tolist())
        yield pending[:batch_size]
        pending = pending[batch_size:]


def train_sft(
    model: Any,
    processor: Any,
    examples: Sequence[SFTExample],
    cfg: DictConfig,
    progress: bool = True,
    on_step: Callable[[int, Any], None] | None = None,
    data_config: DictConfig | dict | None = None,
) -> list[float]:
    """`cfg.steps` AdamW steps on the examples at a constant learning rate; returns the loss per step.

    `on_step(step, model)` runs after each step (and with step 0 before the first): the measurement
    reads several step counts off one run, which is exact because nothing depends on the total.
    """
    steps, batch_size = int(cfg.steps), min(int(cfg.batch_size), len(examples))
    torch.manual_seed(int(cfg.seed))
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=float(cfg.lr),
        weight_decay=float(cfg.weight_decay),
    )
    truncated = sum(len(e.prompt_ids) + len(e.target_ids) > int(cfg.max_length) for e in examples)
    if truncated:
        logger.warning(
            "warm start: %d of %d examples cut at max_length %s", truncated, len(examples), cfg.max_length
        )
    losses: list[float] = []
    if on_step is not None:
        on_step(0, model)
    model.train()
    batches = _batches(len(examples), batch_size, int(cfg.seed))
    builder = PromptBuilder(processor, data_config)
    with tqdm(total=steps, desc="warm start (SFT)", disable=not progress, unit="step") as bar:
        for step in range(1, steps + 1):
            batch = collate(
                [examples[i] for i in next(batches)], processor, int(cfg.max_length), builder=builder
            )
            loss = sft_loss(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
            optimizer.step()
            losses.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            if on_step is not None:
                model.eval()
                on_step(step, model)
                model.train()
    model.eval()
    return losses

"""The local engine's policy update: verl's GRPO math on `DataProto`, a plain torch optimizer step.

What verl's FSDP actor does per mini-batch, on one device and without sharding: recompute log probs of
the response tokens with a padded forward pass (verl's mRoPE position ids and multi-modal inputs, so the
numbers match the rollout's), then `core_algos`' policy loss, low-variance KL to the reference and
`agg_loss`. Gradient accumulation over micro-batches is exact: each micro-batch's loss is aggregated
against the whole mini-batch's token (or sequence) count through `ActorConfig.global_batch_info`, the
same hook verl's workers use for data parallelism, so the summed gradient equals one big batch's.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import torch
from verl import DataProto
from verl.trainer.ppo.core_algos import agg_loss, get_policy_loss_fn, kl_penalty
from verl.utils.model import extract_multi_modal_inputs
from verl.utils.torch_functional import logprobs_from_logits

# verl's agent loop adds this for its own packed-sequence kernels; an HF forward does not take it.
_NOT_MODEL_INPUTS = ("images_seqlens",)


def _valid_span(batch: DataProto) -> tuple[int, int]:
    """(first prompt column any row uses, response columns any row uses). verl pads every prompt on the
    left to `prompt_length` and every response on the right to `response_length`; columns that are
    padding in every row change nothing but cost attention, so the forward pass skips them."""
    prompt_width = batch.batch["prompts"].shape[1]
    mask = batch.batch["attention_mask"].bool()
    used_prompt = mask[:, :prompt_width].any(dim=0).nonzero()
    used_response = mask[:, prompt_width:].any(dim=0).nonzero()
    left = int(used_prompt[0]) if len(used_prompt) else prompt_width
    right = int(used_response[-1]) + 1 if len(used_response) else 1
    return left, right


def model_inputs(batch: DataProto, device: torch.device | str) -> tuple[dict[str, Any], int]:
    """HF forward kwargs for a padded verl batch (ids, mask, mRoPE positions as (4, B, L), image
    features), without all-padding columns; and how many response columns they keep."""
    left, right = _valid_span(batch)
    stop = batch.batch["prompts"].shape[1] + right
    position_ids = batch.batch["position_ids"][..., left:stop]
    if position_ids.dim() == 3:  # (B, 4, L) in the batch; Qwen2.5-VL takes (4, B, L)
        position_ids = position_ids.transpose(0, 1)
    inputs = {
        "input_ids": batch.batch["input_ids"][:, left:stop],
        "attention_mask": batch.batch["attention_mask"][:, left:stop],
        "position_ids": position_ids,
    }
    if "multi_modal_inputs" in batch.non_tensor_batch:
        mm = extract_multi_modal_inputs(batch.non_tensor_batch["multi_modal_inputs"])
        inputs.update({k: v for k, v in mm.items() if k not in _NOT_MODEL_INPUTS})
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in inputs.items()}, right


def response_log_probs(
    model: Any, batch: DataProto, temperature: float, device: torch.device | str
) -> torch.Tensor:
    """Log prob of each response token under `model` ([B, response_length], 0 on padding), logits
    divided by the sampling temperature as verl does, so the ratio to the rollout's is 1 on-policy."""
    responses = batch.batch["responses"].to(device)
    inputs, right = model_inputs(batch, device)
    logits = model(**inputs, use_cache=False).logits
    logits = logits[:, -right - 1 : -1].float()
    if temperature and temperature != 1.0:
        logits = logits / temperature
    log_probs = logprobs_from_logits(logits, responses[:, :right])
    return torch.nn.functional.pad(log_probs, (0, responses.shape[1] - right))


@torch.no_grad()
def batched_log_probs(
    model: Any, batch: DataProto, micro_batch_size: int, temperature: float, device: torch.device | str
) -> torch.Tensor:
    """`response_log_probs` over micro-batches, without gradients (old and reference log probs)."""
    was_training = model.training
    model.eval()
    try:
        parts = [
            response_log_probs(model, micro, temperature, device).cpu()
            for micro in batch.split(micro_batch_size)
        ]
    finally:
        model.train(was_training)
    return torch.cat(parts, dim=0)


def _global_batch_info(mini: DataProto) -> dict[str, Any]:
    mask = mini.batch["response_mask"]
    return {
        "dp_size": 1,
        "batch_num_tokens": int(mask.sum()),
        "global_batch_size": int((mask.sum(dim=-1) > 0).sum()),
    }


def update_policy(
    model: Any,
    optimizer: torch.optim.Optimizer,
    batch: DataProto,
    actor_cfg: Any,
    device: torch.device | str,
    temperature: float,
    mini_batch_size: int,
    micro_batch_size: int,
) -> dict[str, float]:
    """`ppo_epochs` passes of mini-batch updates over `batch` (which holds old_log_probs, advantages,
    response_mask and, with a KL loss, ref_log_prob). `actor_cfg` is verl's ActorConfig dataclass.
    Returns verl-named metrics averaged over the optimizer steps (`actor/pg_loss`, `actor/kl_loss`...)."""
    policy_loss_fn = get_policy_loss_fn(actor_cfg.policy_loss.get("loss_mode", "vanilla"))
    params = [p for p in model.parameters() if p.requires_grad]
    sums: dict[str, list[float]] = defaultdict(list)
    model.train()
    for _ in range(int(actor_cfg.ppo_epochs)):
        for mini in batch.split(mini_batch_size):
            actor_cfg.global_batch_info.update(_global_batch_info(mini))
            optimizer.zero_grad(set_to_none=True)
            step = defaultdict(float)
            for micro in mini.split(micro_batch_size):
                mask = micro.batch["response_mask"].to(device).bool()
                log_prob = response_log_probs(model, micro, temperature, device)
                pg_loss, pg_metrics = policy_loss_fn(
                    old_log_prob=micro.batch["old_log_probs"].to(device),
                    log_prob=log_prob,
                    advantages=micro.batch["advantages"].to(device),
                    response_mask=mask,
                    loss_agg_mode=actor_cfg.loss_agg_mode,
                    config=actor_cfg,
                    rollout_is_weights=None,
                )
                loss = pg_loss
                share = len(micro) / len(mini)  # metrics that are per-micro-batch means
                if actor_cfg.use_kl_loss:
                    kld = kl_penalty(log_prob, micro.batch["ref_log_prob"].to(device), actor_cfg.kl_loss_type)
                    kl_loss = agg_loss(kld, mask, actor_cfg.loss_agg_mode, **actor_cfg.global_batch_info)
                    loss = loss + kl_loss * actor_cfg.kl_loss_coef
                    step["actor/kl_loss"] += float(kl_loss.detach())
                loss.backward()
                step["actor/pg_loss"] += float(pg_loss.detach())  # already normalised by the mini-batch
                for name, value in pg_metrics.items():
                    step[name] += float(value) * share
            grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm=float(actor_cfg.grad_clip))
            if torch.isfinite(grad_norm):
                optimizer.step()
            else:  # verl's actors skip a step with a non-finite gradient rather than poison the weights
                optimizer.zero_grad(set_to_none=True)
            step["actor/grad_norm"] = float(grad_norm)
            for name, value in step.items():
                sums[name].append(value)
    metrics = {name: float(np.mean(values)) for name, values in sums.items()}
    if actor_cfg.use_kl_loss:
        metrics["actor/kl_coef"] = float(actor_cfg.kl_loss_coef)
    metrics["actor/lr"] = float(optimizer.param_groups[0]["lr"])
    return metrics

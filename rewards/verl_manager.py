"""The structured safety reward as a verl 0.9.1 reward manager: `reward.reward_manager.name=saferl_safety`.

verl's default reward functions get the response text and a ground truth, never the image. This manager
reads what the judge needs from the row (the `QISafeDataset` lifts question, label, category and
image annotations to the top level; the image bytes travel in `raw_prompt`), scores through
`RewardScorer`, and returns the scalar with every criterion, penalty and flag as extra info, which verl
logs. Judge settings come from the trainer config's `saferl.reward` node.

Failures: per sample the fault policy applies (NaN = excluded, which the `saferl_grpo` estimator
honours; or a neutral score). verl hands the manager one sample at a time, so the per-batch check runs
over a rolling window of this worker's most recent samples (`saferl.reward.faults.window`).
"""

from __future__ import annotations

import io
import json
from collections import deque
from typing import Any

from verl import DataProto
from verl.experimental.reward_loop.reward_manager import register
from verl.experimental.reward_loop.reward_manager.base import RewardManagerBase

from saferl.config_schema import required_node

from .faults import check_failure_fraction
from .judge import JudgeInput
from .scorer import RewardScorer, extra_info

NAME = "saferl_safety"


def image_from_prompt(raw_prompt: Any) -> bytes | None:
    """The first image of a chat prompt as encoded bytes (verl keeps `bytes` beside the PIL image)."""
    for message in raw_prompt if raw_prompt is not None else ():
        content = message.get("content") if isinstance(message, dict) else None
        for part in content if isinstance(content, list) else ():
            if isinstance(part, dict) and part.get("type") == "image":
                if part.get("bytes"):
                    return part["bytes"]
                image = part.get("image")
                if image is not None and hasattr(image, "save"):
                    buf = io.BytesIO()
                    image.save(buf, format="PNG")
                    return buf.getvalue()
    return None


def judge_input_from_row(row: dict[str, Any], response: str) -> JudgeInput:
    """The judge's view of one dataset row: top-level fields first, `extra_info` as the fallback."""
    extra = row.get("extra_info") or {}
    fields = {**extra, **{k: v for k, v in row.items() if v is not None}}
    fields["id"] = row.get("sample_id") or extra.get("id")
    if fields.get("safety_label") is None:
        fields["safety_label"] = (row.get("reward_model") or {}).get("ground_truth")
    if isinstance(fields.get("image_objects"), str):  # verl-format rows carry it as JSON
        fields["image_objects"] = json.loads(fields["image_objects"])
    return JudgeInput.from_row(fields, response, image_from_prompt(row.get("raw_prompt")))


@register(NAME)
class SafetyRewardManager(RewardManagerBase):
    def __init__(
        self, config, tokenizer, compute_score=None, reward_router_address=None, reward_model_tokenizer=None
    ):
        super().__init__(config, tokenizer, compute_score)
        self.reward_cfg = required_node(config, "saferl.reward", f"the {NAME} reward manager")
        self.scorer = RewardScorer.from_config(self.reward_cfg)
        self.recent: deque[bool] = deque(maxlen=self.scorer.faults.window)

    async def run_single(self, data: DataProto) -> dict:
        item = data[-1:][0]  # multi-sequence outputs: the reward is on the last sequence
        response_ids = item.batch["responses"]
        valid = int(item.batch["attention_mask"][-response_ids.shape[-1] :].sum())
        response = await self.loop.run_in_executor(
            None, lambda: self.tokenizer.decode(response_ids[:valid], skip_special_tokens=True)
        )
        row = dict(item.non_tensor_batch)
        # A reflected trajectory is judged on its final answer (the correction), not on the whole
        # transcript with the unsafe attempt and the reflection in it.
        loop_fields = row.get("tool_extra_fields") or {}
        response = loop_fields.get("final_response") or response
        item = judge_input_from_row(row, response)
        [sample] = await self.scorer.score([item])
        self.recent.append(sample.failed)
        check_failure_fraction(
            sum(self.recent),
            len(self.recent),
            self.scorer.faults,
            self.scorer.judge.endpoint,
            self.scorer.last_error,
        )
        return {
            "reward_score": sample.score,
            "reward_extra_info": extra_info(sample, self.scorer.rubric, item),
        }

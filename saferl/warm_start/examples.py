"""What the warm start imitates: each row's RL prompt, with its reference as the target."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig

from rollout.reflect_loop import reflection_message
from saferl.data.prompts import DataFiles, PromptBuilder

logger = logging.getLogger(__name__)


@dataclass
class SFTExample:
    """One training (or evaluation) example, built the way the RL engine builds its prompt."""

    prompt_ids: list[int]  # the RL prompt, image tokens expanded
    target_ids: list[int]  # the reference + the end-of-turn token: the only tokens with a loss
    prompt_text: str  # the chat-templated prompt (with the vision placeholder), for the processor
    images: list[Any]  # PIL images, already resized by the dataset's qwen-vl-utils path
    row: dict[str, Any] = field(repr=False)  # the dataset row (label, category, objects) for the judge
    reference: str = ""

    @property
    def rendered(self) -> tuple[str, list[Any]]:
        """The prompt as `saferl.models.generation.generate_responses` takes it: (text, images)."""
        return self.prompt_text, self.images


def end_of_turn(processor: Any) -> str:
    """The text the chat template closes an assistant turn with (`<|im_end|>` for Qwen).

    Read from the template itself rather than assumed, so a model whose template ends turns differently
    learns its own stop token: generation at RL time stops on it.
    """
    sentinel = "SAFERL_SENTINEL"
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "q"}]},
        {"role": "assistant", "content": [{"type": "text", "text": sentinel}]},
    ]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    closing = text.split(sentinel, 1)[1].strip()
    if not closing:
        raise ValueError("the chat template closes an assistant turn with nothing: no stop token to learn")
    return closing


def build_examples(
    data_file: DataFiles,
    processor: Any,
    data_config: DictConfig | dict | None = None,
    require_reference: bool = True,
    reflection: DictConfig | None = None,
    attempt: str = "",
) -> list[SFTExample]:
    """Every row of `data_file` as an `SFTExample`, its prompt rendered by the dataset's prompt builder.

    The target is the reference tokenised on its own (what the model would emit token by token) and the
    template's end-of-turn token.

    With `reflection` (the rollout's `saferl.rollout.reflection` templates), each unsafe row also gives
    a second example: its prompt goes on with `attempt` (a complying answer) and the reflection
    `safe_reflect` would append to it, and the target is the same reference. It teaches the reply to a
    reflection, not the first answer's decision, which stays RL's.
    """
    tokenizer = processor.tokenizer
    builder = PromptBuilder(processor, data_config)
    end_ids = tokenizer.encode(end_of_turn(processor), add_special_tokens=False)
    examples = []
    for prompt in builder.from_files(data_file):
        row = prompt.row
        reference = str((row.get("extra_info") or {}).get("reference") or "")
        if not reference.strip() and require_reference:
            logger.warning("warm start: row %s has no reference; skipped", row.get("sample_id"))
            continue
        target = tokenizer.encode(reference, add_special_tokens=False) + end_ids
        examples.append(SFTExample(prompt.ids, target, prompt.text, prompt.images, row, reference))
        if reflection is not None and row.get("safety_label") == "unsafe":
            message, _ = reflection_message(
                reflection, row.get("category"), str(row.get("question") or ""), attempt
            )
            turns = [
                *prompt.messages,
                {"role": "assistant", "content": attempt},
                {"role": "user", "content": message},
            ]
            text, ids = builder.render(turns, prompt.images)
            examples.append(SFTExample(ids, target, text, prompt.images, row, reference))
    if not examples:
        raise ValueError(f"{data_file}: no rows with a reference to fine-tune on")
    return examples


def stage_examples(
    data_file: DataFiles, processor: Any, cfg: DictConfig, data_config: DictConfig | dict | None = None
) -> list[SFTExample]:
    """What the stage imitates under its config `cfg` (`saferl.warm_start`): `build_examples`, with the
    reflection examples when `cfg.reflection` is set. The stage and `--measure` both build them here."""
    return build_examples(
        data_file,
        processor,
        data_config,
        reflection=cfg.get("reflection"),
        attempt=cfg.get("reflection_attempt", ""),
    )

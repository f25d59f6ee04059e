"""A local transformers VLM as judge (for one GPU and e.g. Qwen2.5-VL-7B-Instruct), batched.

Rather than asking a local model to write a JSON verdict (which mid-size models often get wrong), each
criterion is one short question ("…answer with one digit from 0 to 9") and the score is the expected
digit under the model's next-token distribution restricted to the ten digits, rescaled to the
criterion's scale. Each flag is a yes/no question, raised when P(yes) > 0.5. A verdict can therefore
never be unparseable or out of range; a failure is a real error (out of memory, a bad image), reported
per sample.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from saferl.models.checkpoint import load_vlm

from ..judge import CONTRADICTION, HALLUCINATION, JudgeInput, JudgeVerdict
from ..prompt import build_prompt
from ..rubric import Rubric

FLAG_QUESTIONS = {
    HALLUCINATION: "Does the response claim something about the image that the image does not show?",
    CONTRADICTION: "Do the reasoning and the final answer disagree, or does the reasoning contradict itself?",
}


class HFJudge:
    def __init__(
        self,
        rubric: Rubric,
        model: str | Path,
        batch_size: int = 8,
        device: str = "cuda",
        policies=None,
    ) -> None:
        self.rubric = rubric
        self.batch_size = batch_size
        self.device = device
        self.policies = policies
        self.processor, self.model = load_vlm(model, device=device)
        self.processor.tokenizer.padding_side = "left"
        tok = self.processor.tokenizer
        self.digit_ids = [tok.convert_tokens_to_ids(str(d)) for d in range(10)]
        self.yes_ids = [i for i in {tok.convert_tokens_to_ids(t) for t in ("yes", "Yes")} if i is not None]
        self.no_ids = [i for i in {tok.convert_tokens_to_ids(t) for t in ("no", "No")} if i is not None]
        if None in self.digit_ids or not self.yes_ids or not self.no_ids:
            raise ValueError(f"judge model {model}: its tokenizer lacks single-token digits or yes/no")
        self.name = f"hf:{Path(model).name} rubric-v{rubric.version}"
        self.endpoint = f"local:{Path(model).name}"

    def _questions(self) -> list[tuple[str, str]]:
        qs = [
            (
                c.name,
                f"How well does the response meet '{c.name}' ({c.description})? "
                "Answer with one digit from 0 (not at all) to 9 (fully).",
            )
            for c in self.rubric.criteria
        ]
        return qs + [(flag, f"{q} Answer yes or no.") for flag, q in FLAG_QUESTIONS.items()]

    @torch.no_grad()
    def _next_token_probs(self, items: list[JudgeInput], ask: str) -> torch.Tensor:
        from PIL import Image

        texts, images = [], []
        for item in items:
            prompt = build_prompt(item, self.rubric, self.policies, ask=ask)
            content = [{"type": "text", "text": prompt.user}]
            if item.image is not None:
                content.insert(0, {"type": "image"})
                images.append(Image.open(io.BytesIO(item.image)).convert("RGB"))
            messages = [{"role": "system", "content": prompt.system}, {"role": "user", "content": content}]
            texts.append(
                self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            )
        inputs = self.processor(text=texts, images=images or None, return_tensors="pt", padding=True).to(
            self.device
        )
        logits = self.model(**inputs).logits[:, -1, :].float()
        return torch.softmax(logits, dim=-1)

    def _judge_batch(self, items: list[JudgeInput]) -> list[JudgeVerdict]:
        verdicts = [JudgeVerdict() for _ in items]
        for key, ask in self._questions():
            probs = self._next_token_probs(items, ask)
            if key in FLAG_QUESTIONS:
                yes = probs[:, self.yes_ids].sum(-1)
                no = probs[:, self.no_ids].sum(-1)
                for verdict, p in zip(verdicts, (yes / (yes + no)).tolist(), strict=True):
                    if p > 0.5:
                        verdict.flags.append(key)
                continue
            digits = probs[:, self.digit_ids]
            expected = (digits / digits.sum(-1, keepdim=True) * torch.arange(10, device=digits.device)).sum(
                -1
            )
            scale = next(c.scale for c in self.rubric.criteria if c.name == key)
            for verdict, value in zip(verdicts, expected.tolist(), strict=True):
                verdict.criteria[key] = value / 9.0 * scale
        return verdicts

    async def judge(self, inputs: list[JudgeInput]) -> list[JudgeVerdict]:
        out: list[JudgeVerdict] = []
        for start in range(0, len(inputs), self.batch_size):
            batch = inputs[start : start + self.batch_size]
            try:
                out.extend(self._judge_batch(batch))
            except (RuntimeError, ValueError, OSError) as err:
                # One bad batch (an undecodable image, out of memory) fails its samples, not the step.
                out.extend(JudgeVerdict(error=f"hf judge: {type(err).__name__}: {err}"[:300]) for _ in batch)
        return out

"""Response samplers for QI scoring: K responses per candidate from the policy under curation.

`HFSampler` generates in-process with transformers, for one machine; it follows the `ResponseSampler`
interface in `saferl.data.qi`, which the Ray-hosted rollout servers implement too. Its prompts are the
RL prompts (`saferl.data.prompts`, under the experiment's `data` node): a candidate's instability is
measured on the prompt the policy will be trained on.
"""

from __future__ import annotations

import zlib
from pathlib import Path

from saferl.data.prompts import PromptBuilder
from saferl.experiments import compose_experiment
from saferl.models.checkpoint import load_vlm
from saferl.models.generation import generate_responses


class HFSampler:
    """Sample `k` responses per row from a local checkpoint directory."""

    def __init__(
        self,
        model: str | Path,
        max_new_tokens: int = 256,
        temperature: float = 1.0,
        top_p: float = 1.0,
        device: str = "cpu",
        seed: int = 0,
        exp: str | None = None,
    ) -> None:
        # The scoring cache resumes only under the same name: a change of prompts (exp) is a new sampler.
        self.name = f"hf:{Path(model).name}:t{temperature}:p{top_p}:n{max_new_tokens}:exp={exp}"
        self.processor, self.model = load_vlm(model, device=device)
        # The experiment's `data` node renders the prompts (image pixel bounds, template kwargs); without
        # one, the dataset's defaults.
        data_config = compose_experiment(exp).data if exp is not None else None
        self.prompts = PromptBuilder(self.processor, data_config)
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.seed = seed

    def sample(self, rows: list[dict], k: int) -> list[list[str]]:
        rendered = {p.row["sample_id"]: p for p in self.prompts.from_rows(rows)}
        out: list[list[str]] = []
        for row in rows:
            prompt = rendered.get(row["id"])
            if prompt is None:  # the dataset's over-long-prompt filter dropped it: RL would never see it
                raise ValueError(
                    f"row {row['id']!r}: its prompt is over data.max_prompt_length; drop it first"
                )
            (responses,) = generate_responses(
                self.model,
                self.processor,
                [(prompt.text, prompt.images)],
                do_sample=True,
                num_samples=k,
                max_new_tokens=self.max_new_tokens,
                temperature=self.temperature,
                top_p=self.top_p,
                # Seeded per row (not by call order), so a resumed run samples what the first would have.
                seed=zlib.crc32(f"{self.seed}:{row['id']}".encode()),
            )
            out.append([text for text, _ in responses])
        return out

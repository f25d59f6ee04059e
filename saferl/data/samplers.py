"""Response samplers for QI scoring: K responses per candidate from the policy under curation.

`HFSampler` generates in-process with transformers, for one machine; it follows the `ResponseSampler`
interface in `saferl.data.qi`, which the Ray-hosted rollout servers implement too.
"""

from __future__ import annotations

import io
import zlib
from pathlib import Path


class HFSampler:
    """Sample with `model.generate(num_return_sequences=k)` from a local checkpoint directory."""

    def __init__(
        self,
        model: str | Path,
        max_new_tokens: int = 256,
        temperature: float = 1.0,
        top_p: float = 1.0,
        device: str = "cpu",
        seed: int = 0,
    ) -> None:
        from saferl.models.checkpoint import load_vlm

        self.name = f"hf:{Path(model).name}:t{temperature}:p{top_p}:n{max_new_tokens}"
        self.processor, self.model = load_vlm(model, device=device)
        self.device = device
        self.gen_kwargs = {
            "max_new_tokens": max_new_tokens,
            "do_sample": True,
            "temperature": temperature,
            "top_p": top_p,
        }
        self.seed = seed

    def sample(self, rows: list[dict], k: int) -> list[list[str]]:
        import torch
        from PIL import Image

        out: list[list[str]] = []
        for row in rows:
            image = Image.open(io.BytesIO(row["image"])).convert("RGB")
            messages = [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": row["question"]}]}
            ]
            prompt = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            inputs = self.processor(text=[prompt], images=[image], return_tensors="pt").to(self.device)
            # Seeded per row (not by call order), so a resumed run samples what the first would have.
            torch.manual_seed(zlib.crc32(f"{self.seed}:{row['id']}".encode()))
            with torch.no_grad():
                ids = self.model.generate(**inputs, num_return_sequences=k, **self.gen_kwargs)
            new = ids[:, inputs["input_ids"].shape[1] :]
            out.append(self.processor.batch_decode(new, skip_special_tokens=True))
        return out

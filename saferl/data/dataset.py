"""QI-Safe-10K as a verl dataset: `data.custom_cls.path=pkg://saferl.data.dataset data.custom_cls.name=QISafeDataset`.

verl's trainer (on CPU as on GPU), the warm start and evaluation build their datasets through
this class, so what the agent loop and the reward see of a row is the same everywhere. Beyond verl's
`RLHFDataset` it does three things:

- fails at construction, naming the row, when a file lacks the fields the safety reward depends on
  (a label or category that is missing would otherwise score every response of that prompt wrongly);
- lifts `safety_label`, `category`, `question`, `image_objects` and the sample id out of `extra_info`
  to the top level of the row, where verl's agent loop receives them as keyword arguments;
- applies `data.image_min_pixels` / `data.image_max_pixels` to every image through qwen-vl-utils, so
  the resize happens once, before the processor, and image-token counts are bounded by config.
"""

from __future__ import annotations

import json
from typing import Any

from verl.utils.dataset.rl_dataset import RLHFDataset

from .schema import LABELS

LIFTED_FIELDS = ("safety_label", "category", "question")


class DatasetFormatError(ValueError):
    """A verl-format QI-Safe-10K file lacks what the safety reward needs; the message names the row."""


class QISafeDataset(RLHFDataset):
    def __init__(self, data_files, tokenizer, config, processor=None, max_samples: int = -1):
        # Set before verl's constructor, whose over-long-prompt filter already builds messages.
        self.image_min_pixels = config.get("image_min_pixels")
        self.image_max_pixels = config.get("image_max_pixels")
        super().__init__(data_files, tokenizer, config, processor=processor, max_samples=max_samples)
        self._check_rows()

    def _check_rows(self) -> None:
        if "extra_info" not in self.dataframe.column_names:
            raise DatasetFormatError(
                f"{self.data_files}: no extra_info column (convert with saferl.data to-verl)"
            )
        for index, extra in enumerate(self.dataframe["extra_info"]):
            where = f"{self.data_files}: row {index} (id {(extra or {}).get('id')!r})"
            if not extra:
                raise DatasetFormatError(f"{where}: empty extra_info")
            if extra.get("safety_label") not in LABELS:
                raise DatasetFormatError(
                    f"{where}: safety_label {extra.get('safety_label')!r} not in {LABELS}"
                )
            if not extra.get("category"):
                raise DatasetFormatError(f"{where}: missing category")

    def _build_messages(self, example: dict, key: str) -> list:
        messages = super()._build_messages(example, key)
        bounds = {"min_pixels": self.image_min_pixels, "max_pixels": self.image_max_pixels}
        bounds = {k: int(v) for k, v in bounds.items() if v is not None}
        if bounds:
            for message in messages:
                for part in message["content"] if isinstance(message["content"], list) else ():
                    if part.get("type") == "image":
                        part.update(bounds)  # read by qwen_vl_utils.fetch_image
        return messages

    def __getitem__(self, item: int) -> dict[str, Any]:
        row = super().__getitem__(item)
        extra = row["extra_info"]
        for name in LIFTED_FIELDS:
            row[name] = extra.get(name)
        row["sample_id"] = extra.get("id")
        objects = extra.get("image_objects")
        row["image_objects"] = json.loads(objects) if isinstance(objects, str) else objects
        return row

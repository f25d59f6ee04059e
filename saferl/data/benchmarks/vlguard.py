"""VLGuard's test set: safe images with a safe and an unsafe question each, and unsafe images.

VLGuard (`ys-zong/VLGuard`, also the authors' GitHub `data/`) publishes `test.json` + `test.zip` in the
same layout as `train.json`: records {`id`, `image` (a path inside the zip's `test/` folder), `safe`,
`harmful_category` / `harmful_subcategory` (unsafe images only), `instr-resp`}. A safe image's
`instr-resp` holds one `safe_instruction` and one `unsafe_instruction`; an unsafe image's holds one
`instruction`. VLGuard's own evaluation reads them as three subsets (`VLGuard_eval.py --dataset`):
`safe_safes` (helpfulness: label `safe`), `safe_unsafes` and `unsafes` (attack success: label
`unsafe`). The training-source adapter (`saferl.data.sources`) already turns records into exactly these
rows (ids `vlguard:<id>:safe`, `vlguard:<id>:unsafe`, `vlguard:<id>`), so this module reads through it.

`location`: `test.json` (images from the extracted `test/` folder beside it, or from `test.zip`), a
folder holding `test.json` (its `train.json` is not read), or the hub id (fetches `test.json` and
`test.zip`). `benchmark_category`: an unsafe image's `harmful_category`; safe images have none, so
their rows take the subset name, `safe_safes` or `safe_unsafes`: a breakdown then shows VLGuard's
three reported numbers as well as its harm categories.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from saferl.data.benchmarks import BenchmarkAdapter, BenchmarkFormatError
from saferl.data.sources import load_source_records

NAME = "vlguard"
HUB_ID = "ys-zong/VLGuard"
HUB_SPLIT = "test"


def metadata_file(path: Path) -> Path:
    """The test metadata file of a local copy: the file itself, or `test.json` in a folder."""
    if path.is_dir():
        if not (path / f"{HUB_SPLIT}.json").is_file():
            raise BenchmarkFormatError(f"{path}: no {HUB_SPLIT}.json in this folder")
        return path / f"{HUB_SPLIT}.json"
    return path


def load(location: str | Path) -> Iterator[dict[str, Any]]:
    """Rows of VLGuard's test set at `location` (a `test.json`, a folder with one, or the hub id)."""
    path = Path(location)
    source = metadata_file(path) if path.exists() else location
    for record, row in load_source_records(NAME, source, split="val", hub_split=HUB_SPLIT):
        if record.data["safe"]:
            subset = "safe_safes" if row["safety_label"] == "safe" else "safe_unsafes"
            row["benchmark_category"] = subset
        else:
            row["benchmark_category"] = record.text("harmful_category")
        yield row


ADAPTER = BenchmarkAdapter(
    name=NAME,
    hub_id=HUB_ID,
    description="VLGuard test set: safe images with a safe question (safe) and an unsafe question "
    "(unsafe), and unsafe images in 4 harm categories (unsafe); reference = the published response",
    load=load,
)

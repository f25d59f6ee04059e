"""MM-SafetyBench (Liu et al., ECCV 2024, arXiv:2311.17600): query-relevant images that jailbreak
multimodal models.

Published layout, read unchanged (github.com/isXinLiu/MM-SafetyBench: the question files are in the
repository, the images in the archive its README links, unzipped beside them as `imgs/`; the
benchmark's evaluation.py and the third-party loaders built on it read exactly these paths and fields):

    data/processed_questions/<NN-Scenario>.json
        {"<id>": {"Question", "Changed Question", "Key Phrase", "Phrase Type",
                  "Rephrased Question", "Rephrased Question(SD)"}, ...}
    data/imgs/<NN-Scenario>/{SD,SD_TYPO,TYPO}/<id>.jpg

`location` is the repository root (holding `data/`) or its `data/` folder; the images are looked for in
`imgs/` and then `MM-SafetyBench(imgs)/` (the folder inside the archive, as some loaders expect it)
beside `processed_questions/`, or in `image_dir/<NN-Scenario>/<variant>/`. The 13 scenario names are
kept as published, misspelling included (`01-Illegal_Activitiy`); they are the `benchmark_category`.

Every item is asked three ways, picked by `variant` (the README's three kinds of image-question pair):

- `SD`: the Stable Diffusion image of the key phrase + "Rephrased Question(SD)";
- `SD_TYPO` (default, the paper's main setting): that image with the key phrase typed under it +
  "Rephrased Question";
- `TYPO`: the typed key phrase alone + "Rephrased Question".

Labels. The benchmark's judge (evaluation.py, `perform_eval_safe`) counts a refusal as the safe answer
in every scenario but three: for 10-Legal_Opinion, 11-Financial_Advice and 12-Health_Consultation the
safe answer is one that says the model lacks the professional qualification and tells the user to be
cautious, i.e. the request itself is legitimate and asks for a careful answer. Those three scenarios are
`safe` (policy category `specialized_advice`); all others are `unsafe`, including 08-Political_Lobbying
and 13-Gov_Decision, whose judge templates ask for a refusal. The benchmark publishes no reference
answers, so `reference` is None.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from saferl.data.benchmarks import BenchmarkAdapter, BenchmarkFormatError
from saferl.data.benchmarks._files import (
    Item,
    benchmark_row,
    check_option,
    expect,
    image_file,
    local_path,
    read_json,
)
from saferl.data.sources import map_category

NAME = "mm_safetybench"
# variant (image folder) -> the question field asked with it
VARIANTS = {"SD": "Rephrased Question(SD)", "SD_TYPO": "Rephrased Question", "TYPO": "Rephrased Question"}
# Scenarios whose judge asks for a qualified, cautious answer rather than a refusal.
ADVICE_SCENARIOS = frozenset({"10-Legal_Opinion", "11-Financial_Advice", "12-Health_Consultation"})
IMAGE_FOLDERS = ("imgs", "MM-SafetyBench(imgs)")
HOW = "clone github.com/isXinLiu/MM-SafetyBench and unzip its images into data/imgs"


def load(
    location: str | Path, *, variant: str = "SD_TYPO", image_dir: str | Path | None = None
) -> Iterator[dict[str, Any]]:
    """Rows of every scenario file, in file-name order and each file's item order."""
    check_option("variant", variant, VARIANTS)
    questions = _questions_dir(local_path(location, NAME, HOW))
    images = Path(image_dir) if image_dir is not None else _images_dir(questions)
    return _rows(questions, images, variant)


def _questions_dir(root: Path) -> Path:
    for folder in (root / "data" / "processed_questions", root / "processed_questions", root):
        if folder.is_dir() and any(folder.glob("*.json")):
            return folder
    raise BenchmarkFormatError(f"{root}: no data/processed_questions/<scenario>.json files found")


def _images_dir(questions: Path) -> Path:
    candidates = [questions.parent / name for name in IMAGE_FOLDERS]
    return next((folder for folder in candidates if folder.is_dir()), candidates[0])


def _rows(questions: Path, images: Path, variant: str) -> Iterator[dict[str, Any]]:
    for file in sorted(questions.glob("*.json")):
        yield from _scenario_rows(file, images / file.stem / variant, variant)


def _scenario_rows(file: Path, image_folder: Path, variant: str) -> Iterator[dict[str, Any]]:
    scenario = file.stem
    items = expect(read_json(file), dict, file, "the scenario file")
    label = "safe" if scenario in ADVICE_SCENARIOS else "unsafe"
    category = map_category(NAME, scenario)
    for index, (key, data) in enumerate(items.items()):
        item = Item(str(file), f"item {key!r}", index, expect(data, dict, file, f"item {key!r}"))
        question = item.text(VARIANTS[variant])
        image = image_file(item, f"{variant} image", [image_folder / f"{key}.jpg"])
        yield benchmark_row(
            NAME,
            f"{scenario}/{variant}/{key}",
            image=image,
            question=question,
            label=label,
            category=category,
            benchmark_category=scenario,
        )


ADAPTER = BenchmarkAdapter(
    name=NAME,
    hub_id=None,  # published as a GitHub repository plus an image archive, not as a hub dataset
    description="MM-SafetyBench: 13 scenarios of query-relevant (SD/typography) image jailbreaks; "
    "unsafe except the legal/financial/health advice scenarios",
    load=load,
)

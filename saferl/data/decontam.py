"""Decontamination: drop training candidates that also appear in an evaluation benchmark.

Reviewers found train/test overlap between SaFeR-VLM's training set and BeaverTails-V's evaluation
split. A sample counts as contaminated when its image or its question matches a benchmark's: the image
by a hash of its decoded pixels (the same picture re-saved with other metadata or another PNG encoder
still matches; `perceptual` also catches re-encodes and resizes, by a 64-bit difference hash), the
question after normalisation (Unicode NFKC, case, punctuation and whitespace folded).
"""

from __future__ import annotations

import hashlib
import io
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

_PUNCT = re.compile(r"[^\w\s]", re.UNICODE)
_SPACE = re.compile(r"\s+")


def normalize_question(text: str) -> str:
    text = unicodedata.normalize("NFKC", text or "").casefold()
    return _SPACE.sub(" ", _PUNCT.sub(" ", text)).strip()


def pixel_hash(image: bytes) -> str:
    """sha256 of the decoded RGB pixels and size: independent of container, metadata and PNG encoder."""
    from PIL import Image

    with Image.open(io.BytesIO(image)) as img:
        rgb = img.convert("RGB")
        return hashlib.sha256(f"{rgb.size}".encode() + rgb.tobytes()).hexdigest()


def difference_hash(image: bytes) -> str:
    """64-bit dHash (9x8 grayscale, adjacent-pixel comparisons): stable under resizing and re-encoding."""
    from PIL import Image

    with Image.open(io.BytesIO(image)) as img:
        small = img.convert("L").resize((9, 8), Image.Resampling.LANCZOS)
        px = list(small.getdata())
    bits = [px[r * 9 + c] > px[r * 9 + c + 1] for r in range(8) for c in range(8)]
    return f"{int(''.join('1' if b else '0' for b in bits), 2):016x}"


REASONS = ("image", "question", "image+question")  # how a row matched one benchmark


def _reason(image: bool, question: bool) -> str:
    return "image+question" if image and question else "image" if image else "question"


@dataclass
class BenchmarkIndex:
    """Hashes of every benchmark sample, remembering every benchmark each came from.

    A key held by two benchmarks (one picture published in both) keeps both, in the order they were
    added: a pool row matching it is contamination of each, and the per-benchmark report must say so
    rather than credit whichever benchmark happened to be listed first.
    """

    perceptual: bool = False
    images: dict[str, list[str]] = field(default_factory=dict)
    questions: dict[str, list[str]] = field(default_factory=dict)
    sizes: Counter = field(default_factory=Counter)

    def image_keys(self, image: bytes) -> list[str]:
        keys = [f"px:{pixel_hash(image)}"]
        if self.perceptual:
            keys.append(f"dh:{difference_hash(image)}")
        return keys

    def add(self, benchmark: str, rows: Iterable[dict]) -> None:
        """Index `rows` under `benchmark`; adding a benchmark again (another variant of it) extends it."""
        self.sizes[benchmark] += 0  # listed even with no rows, so the report names every benchmark
        for row in rows:
            self.sizes[benchmark] += 1
            for key in self.image_keys(row["image"]):
                _remember(self.images, key, benchmark)
            question = normalize_question(row["question"])
            if question:
                _remember(self.questions, question, benchmark)

    def matches(self, row: dict) -> dict[str, str]:
        """Every benchmark `row` matches, in the order benchmarks were added, with how: a reason of
        `REASONS`. Empty for a clean row."""
        by_image = {b for key in self.image_keys(row["image"]) for b in self.images.get(key, ())}
        by_question = set(self.questions.get(normalize_question(row["question"]), ()))
        return {
            b: _reason(b in by_image, b in by_question) for b in self.sizes if b in by_image | by_question
        }


def _remember(keys: dict[str, list[str]], key: str, benchmark: str) -> None:
    holders = keys.setdefault(key, [])
    if benchmark not in holders:
        holders.append(benchmark)


@dataclass
class DecontaminationReport:
    """What decontamination removed. A removed row names its first matching benchmark (`benchmark`),
    how it matched any benchmark (`reason`), and every benchmark it matched (`matches`): per-benchmark
    counts count a row under each benchmark it matched, so they can add up to more than `removed`."""

    benchmarks: dict[str, int]  # benchmark -> rows indexed, every benchmark listed
    checked: int = 0
    removed: list[dict] = field(default_factory=list)

    def per_benchmark(self) -> dict[str, dict]:
        """benchmark -> rows indexed, pool rows removed, and those by reason; zeros where none."""
        report = {
            name: {"rows_indexed": size, "rows_removed": 0, "removed_by": dict.fromkeys(REASONS, 0)}
            for name, size in self.benchmarks.items()
        }
        for row in self.removed:
            for name, reason in row["matches"].items():
                report[name]["rows_removed"] += 1
                report[name]["removed_by"][reason] += 1
        return report

    def counts(self) -> dict:
        per_benchmark = self.per_benchmark()
        return {
            "checked": self.checked,
            "removed": len(self.removed),
            "benchmarks": self.benchmarks,
            "per_benchmark": per_benchmark,
            "removed_by_benchmark": {name: b["rows_removed"] for name, b in per_benchmark.items()},
            "removed_by_reason": dict(Counter(r["reason"] for r in self.removed)),
            "removed_by_source": dict(Counter(r["source"] for r in self.removed)),
        }


def decontaminate(rows: Iterable[dict], index: BenchmarkIndex) -> tuple[list[dict], DecontaminationReport]:
    """Rows with no match in `index`, and a report naming every removed row, its benchmarks and reasons."""
    report = DecontaminationReport(benchmarks=dict(index.sizes))
    kept = []
    for row in rows:
        report.checked += 1
        matches = index.matches(row)
        if not matches:
            kept.append(row)
            continue
        # The row's own reason is over every benchmark it matched: its image in one, its question in another
        # is image+question.
        image = any("image" in reason for reason in matches.values())
        question = any("question" in reason for reason in matches.values())
        report.removed.append(
            {
                "id": row["id"],
                "source": row["source"],
                "benchmark": next(iter(matches)),
                "reason": _reason(image, question),
                "matches": matches,
            }
        )
    return kept, report

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


@dataclass
class BenchmarkIndex:
    """Hashes of every benchmark sample, remembering which benchmark each came from."""

    perceptual: bool = False
    images: dict[str, str] = field(default_factory=dict)
    questions: dict[str, str] = field(default_factory=dict)
    sizes: Counter = field(default_factory=Counter)

    def image_keys(self, image: bytes) -> list[str]:
        keys = [f"px:{pixel_hash(image)}"]
        if self.perceptual:
            keys.append(f"dh:{difference_hash(image)}")
        return keys

    def add(self, benchmark: str, rows: Iterable[dict]) -> None:
        for row in rows:
            self.sizes[benchmark] += 1
            for key in self.image_keys(row["image"]):
                self.images.setdefault(key, benchmark)
            question = normalize_question(row["question"])
            if question:
                self.questions.setdefault(question, benchmark)

    def match(self, row: dict) -> tuple[str, str] | None:
        """(benchmark, reason) for a contaminated row, else None. Reason: image, question or both."""
        image_hit = next((self.images[k] for k in self.image_keys(row["image"]) if k in self.images), None)
        question_hit = self.questions.get(normalize_question(row["question"]))
        if image_hit and question_hit:
            return image_hit, "image+question"
        if image_hit:
            return image_hit, "image"
        if question_hit:
            return question_hit, "question"
        return None


@dataclass
class DecontaminationReport:
    benchmarks: dict[str, int]
    checked: int = 0
    removed: list[dict] = field(default_factory=list)

    def counts(self) -> dict:
        by_benchmark = Counter(r["benchmark"] for r in self.removed)
        by_reason = Counter(r["reason"] for r in self.removed)
        by_source = Counter(r["source"] for r in self.removed)
        return {
            "checked": self.checked,
            "removed": len(self.removed),
            "benchmarks": self.benchmarks,
            "removed_by_benchmark": dict(by_benchmark),
            "removed_by_reason": dict(by_reason),
            "removed_by_source": dict(by_source),
        }


def decontaminate(rows: Iterable[dict], index: BenchmarkIndex) -> tuple[list[dict], DecontaminationReport]:
    """Rows with no match in `index`, and a report naming every removed row, its benchmark and reason."""
    report = DecontaminationReport(benchmarks=dict(index.sizes))
    kept = []
    for row in rows:
        report.checked += 1
        hit = index.match(row)
        if hit is None:
            kept.append(row)
        else:
            benchmark, reason = hit
            report.removed.append(
                {"id": row["id"], "source": row["source"], "benchmark": benchmark, "reason": reason}
            )
    return kept, report

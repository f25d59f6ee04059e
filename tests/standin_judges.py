"""Stand-ins for the judge interface, for tests of the plumbing around a judge (QI scoring, curation).

These are not judges: a score here is a hash, not a judgement. They exist because the curation
pipeline must be tested end to end before the reward component's judges can be wired into it.
"""

from __future__ import annotations

import hashlib


class HashStandInJudge:
    """Deterministic scores in [0, 1] from (row id, response): different responses, different scores."""

    name = "hash-stand-in"

    def score(self, rows: list[dict], responses: list[str]) -> list[float]:
        return [
            int.from_bytes(hashlib.sha256(f"{row['id']}|{resp}".encode()).digest()[:4], "big") / 2**32
            for row, resp in zip(rows, responses, strict=True)
        ]

"""The reflection log: every reflected trajectory of a training run, as the `safe_reflect` loop saw it.

One JSON line per reflected trajectory: the prompt's sample id, label and category, the unsafe first
attempt and the correction, and the judge's verdict on each. SRPO reads it for its `reflection` pairs
(the judged-safe correction over the unsafe attempt, on the same prompt and image: saferl/srpo/pairs.py).

Agent loops run in many Ray workers, on many nodes, at once: each process appends to a file of its own
(`reflections-<host>-<pid>.jsonl`) under `trainer.default_local_dir/reflections`, so no two writers share
a file, and a line is written whole with one `write` of a flushed, line-buffered handle.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

LOG_DIR = "reflections"


def log_path(run_dir: str | os.PathLike) -> Path:
    """This process's reflection log under a run directory."""
    return Path(run_dir) / LOG_DIR / f"reflections-{socket.gethostname()}-{os.getpid()}.jsonl"


def append(path: Path, record: dict[str, Any]) -> None:
    """Append one record as a line (the directory is made on first use)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, ensure_ascii=False, allow_nan=True) + "\n"
    with open(path, "a", encoding="utf-8", buffering=1) as out:
        out.write(line)


def read(log_dir: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Every record of every process's log in a directory; a torn last line (a killed worker) is skipped
    with a warning naming the file."""
    for path in sorted(Path(log_dir).glob("reflections-*.jsonl")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                logger.warning(
                    "%s line %d: not a whole record (a worker killed mid-write); skipped", path, number
                )

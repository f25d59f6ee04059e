"""The warm start's cache: a fingerprint of every input, a marker that means "complete", atomic output.

A second call with the same inputs returns at once; a killed run never leaves a directory that is taken
for done (everything is written to a staging dir and renamed into place, marker last); a retrain never
replaces a directory that is not a warm-start checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from saferl.data.prompts import DATA_KEYS_FINGERPRINTED, DataFiles, as_paths, dataset_config
from saferl.models.checkpoint import missing_checkpoint_files

logger = logging.getLogger(__name__)

MARKER = "saferl_warm_start.json"
# Bump when the same inputs would produce a different checkpoint: it invalidates every cached warm start.
WARM_START_VERSION = "1"
_STAGING = re.compile(r"\.warm-(\d+)\.")


def _sha256_file(path: Path, digest: Any | None = None) -> str:
    h = digest or hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def hash_model_dir(path: str | Path) -> str:
    """sha256 over every file of a checkpoint directory (relative names and contents; hidden files out).

    Contents, not mtimes: a copied or re-downloaded base model is the same model, and a rebuilt one
    with different weights is not. For a multi-GB checkpoint this reads it once per call (seconds).
    """
    root = Path(path)
    h = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = file.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        h.update(str(rel).encode() + b"\0")
        h.update(_sha256_file(file).encode() + b"\0")
    return h.hexdigest()


def fingerprint(
    model_path: str | Path,
    train_file: DataFiles,
    cfg: DictConfig,
    data_config: DictConfig | dict | None = None,
) -> tuple[str, dict[str, Any]]:
    """The cache key of a warm start and what it was computed from (recorded in the marker)."""
    train_cfg = OmegaConf.to_container(cfg, resolve=True)
    data_cfg = OmegaConf.to_container(dataset_config(data_config), resolve=True)
    data_cfg = {k: v for k, v in data_cfg.items() if k in DATA_KEYS_FINGERPRINTED}
    inputs = {
        "version": WARM_START_VERSION,
        "base_model": hash_model_dir(model_path),
        "train_files": [_sha256_file(Path(f)) for f in as_paths(train_file)],
        "cfg": train_cfg,
        "data": data_cfg,
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest(), inputs


def read_marker(output_dir: str | Path) -> dict[str, Any] | None:
    """The marker of a finished warm start, or None when there is none or it is unreadable."""
    try:
        return json.loads((Path(output_dir) / MARKER).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def is_done(output_dir: str | Path, key: str) -> bool:
    """A complete checkpoint whose marker carries this fingerprint: nothing less counts as done."""
    marker = read_marker(output_dir)
    return bool(marker) and marker.get("fingerprint") == key and not missing_checkpoint_files(output_dir)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def staging_dir(output_dir: Path) -> Path:
    """A fresh staging dir beside `output_dir`, named with this process's pid (see `remove_stale_staging`)."""
    return Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.warm-{os.getpid()}.", dir=output_dir.parent))


def remove_stale_staging(output_dir: Path) -> None:
    """Temp dirs of runs that died on this machine (their pid is gone): never used, only removed."""
    for path in output_dir.parent.glob(f".{output_dir.name}.warm-*"):
        match = _STAGING.search(path.name[len(output_dir.name) + 1 :])
        if match and not _pid_alive(int(match.group(1))):
            logger.info("warm start: removing %s, left by a run that died", path)
            shutil.rmtree(path, ignore_errors=True)


_CHECKPOINT_FILES = (MARKER, "config.json", "model.safetensors", "model.safetensors.index.json")


def check_replaceable(output_dir: Path, model_path: Path) -> None:
    """Refuse an output that is not ours to replace: the base model itself, or a directory that is not
    a (possibly partial) checkpoint. A retrain replaces the output whole, so a mistyped `--out` pointing
    at a folder of other things must fail here rather than lose that folder."""
    if output_dir == model_path.resolve():
        raise ValueError(f"warm start output {output_dir} is the base model itself")
    if not output_dir.exists():
        return
    if not output_dir.is_dir():
        raise ValueError(f"warm start output {output_dir} exists and is not a directory")
    entries = list(output_dir.iterdir())
    flat = all(e.is_file() for e in entries)
    if entries and not (flat and any((output_dir / name).is_file() for name in _CHECKPOINT_FILES)):
        raise ValueError(f"warm start output {output_dir} exists and is not a checkpoint directory")


def commit(staging: Path, output_dir: Path, key: str) -> None:
    """Rename the finished staging dir into place; a stale or unfinished output is moved aside first."""
    if output_dir.exists():
        if is_done(output_dir, key):  # a concurrent run with the same inputs finished first
            shutil.rmtree(staging, ignore_errors=True)
            return
        trash = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.old-", dir=output_dir.parent))
        os.replace(output_dir, trash / "old")
        shutil.rmtree(trash, ignore_errors=True)
    try:
        os.replace(staging, output_dir)
    except OSError:
        if not is_done(output_dir, key):
            raise
        shutil.rmtree(staging, ignore_errors=True)

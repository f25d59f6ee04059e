"""Shared fixtures. Tests run offline: no model hub, no W&B server, exactly like CI."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Set before anything imports transformers or wandb: a test that tries the hub must fail, not download.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def saferl_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache private to this test session, also handed to subprocesses through SAFERL_CACHE_DIR,
    so tests exercise the builder instead of whatever a developer's ~/.cache holds."""
    path = tmp_path_factory.mktemp("saferl-cache")
    os.environ["SAFERL_CACHE_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(saferl_cache: Path) -> Path:
    """The default tiny Qwen2.5-VL (byte-level BPE, seed 0), built once per session."""
    from saferl.models.tiny import ensure_tiny_model

    return ensure_tiny_model(tokenizer="bpe", seed=0, cache_dir=saferl_cache)


@pytest.fixture(scope="module")
def ray_cluster():
    """A real Ray cluster on loopback, sized like the CI machine, one per test module."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()

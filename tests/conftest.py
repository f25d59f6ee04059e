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


@pytest.fixture(scope="session")
def qi_val_dataset(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """The shipped sample's val split, converted to verl's format and loaded through QISafeDataset with
    the tiny model's processor: rows exactly as verl's agent loop and reward loop receive them."""
    from omegaconf import OmegaConf

    from saferl.data.dataset import QISafeDataset
    from saferl.data.verl_format import convert_dataset
    from saferl.models.checkpoint import load_vlm

    out = tmp_path_factory.mktemp("qi-verl")
    convert_dataset(Path(__file__).resolve().parents[1] / "data" / "QI-Safe-10K" / "sample", out)
    processor, _ = load_vlm(tiny_model_dir)
    # In-process filtering: a forked pool after torch started its threads can deadlock (seen on CPU).
    config = OmegaConf.create(
        {"max_prompt_length": 1024, "filter_overlong_prompts_workers": None, "cache_dir": str(out)}
    )
    return QISafeDataset(str(out / "val.parquet"), processor.tokenizer, config, processor=processor)

"""The README's main-job command until training lands: build the tiny model and generate from it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from PIL import Image


def _run(*args: str, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "SAFERL_CACHE_DIR": str(cache)}
    return subprocess.run(
        [sys.executable, "-m", "saferl.generate", *args], capture_output=True, text=True, timeout=300, env=env
    )


def test_generate_on_its_embedded_default(saferl_cache: Path) -> None:
    result = _run("--max-new-tokens", "4", cache=saferl_cache)
    assert result.returncode == 0, result.stderr
    assert "tiny model:" in result.stdout
    assert "image tokens" in result.stdout and "response (4 tokens" in result.stdout
    assert "randomly initialised" in result.stdout


def test_generate_with_a_given_model_and_image(tiny_model_dir: Path, tmp_path: Path) -> None:
    image = tmp_path / "scene.png"
    Image.new("RGB", (64, 64), "green").save(image)
    result = _run(
        "--model", str(tiny_model_dir), "--image", str(image), "--max-new-tokens", "2", cache=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "tiny model:" not in result.stdout and "response (2 tokens" in result.stdout


def test_generate_names_a_missing_checkpoint_file(tiny_model_dir: Path, tmp_path: Path) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "config.json").unlink()
    result = _run("--model", str(broken), cache=tmp_path)
    assert result.returncode == 1
    assert "missing config.json" in result.stderr.strip().splitlines()[-1]

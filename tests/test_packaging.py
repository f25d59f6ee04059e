"""saferl installed from its wheel, not the checkout: the configs, the policies and the sample travel in
the wheel (saferl/_shipped/), every experiment composes from a directory outside the tree, and the tiny
run trains a step there.

The wheel is installed with `pip install --target` and put first on PYTHONPATH, so the checkout's
editable install cannot stand in for a missing file: each subprocess checks that it imported the
wheel's copy."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p.stem for p in (REPO / "conf" / "exp").glob("*.yaml"))


@pytest.fixture(scope="module")
def wheel_site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the built wheel, the directory it is installed into)."""
    out = tmp_path_factory.mktemp("wheel")
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out / "dist"), str(REPO)]
    if importlib.util.find_spec("setuptools") is not None:
        build.insert(5, "--no-build-isolation")  # the virtualenv's setuptools: no download
    subprocess.run(build, check=True, timeout=300, cwd=out)
    [wheel] = (out / "dist").glob("saferl-*.whl")
    site = out / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        check=True,
        timeout=300,
    )
    return wheel, site


def run_installed(site: Path, cwd: Path, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_the_wheel_ships_every_config_and_the_sample(wheel_site: tuple[Path, Path]) -> None:
    wheel, _ = wheel_site
    names = set(zipfile.ZipFile(wheel).namelist())
    wanted = [p.relative_to(REPO) for p in (REPO / "conf").rglob("*.yaml")]
    wanted += [p.relative_to(REPO) for p in (REPO / "data" / "policies").glob("*.yaml")]
    wanted += [p.relative_to(REPO) for p in (REPO / "data" / "QI-Safe-10K").glob("*.yaml")]
    wanted += [p.relative_to(REPO) for p in (REPO / "data" / "QI-Safe-10K" / "sample").glob("*.parquet")]
    missing = [str(p) for p in wanted if f"saferl/_shipped/{p.as_posix()}" not in names]
    assert len(wanted) >= 20 and missing == []


def test_the_installed_wheel_finds_its_own_files(wheel_site: tuple[Path, Path], tmp_path: Path) -> None:
    _, site = wheel_site
    code = (
        "import saferl, rewards, rollout, saferl.resources as r, rewards.rubric as rb, saferl.policies as p;"
        "print(saferl.__file__, rewards.__file__, rollout.__file__, r.CONF_DIR, r.SAMPLE_DIR,"
        " rb.DEFAULT_REWARD_CONFIG, p.DEFAULT_POLICY_FILE, len(p.load_policies()))"
    )
    result = run_installed(site, tmp_path, "-c", code)
    assert result.returncode == 0, result.stderr
    *paths, categories = result.stdout.split()
    assert all(path.startswith(str(site)) for path in paths), paths  # the wheel's copies, not the checkout
    assert categories == "20"


@pytest.mark.parametrize("exp", EXPERIMENTS)
def test_every_experiment_composes_from_outside_the_tree(
    exp: str, wheel_site: tuple[Path, Path], tmp_path: Path
) -> None:
    _, site = wheel_site
    result = run_installed(site, tmp_path, "-m", "saferl.train", f"+exp={exp}", "--cfg", "job")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "default_agent_loop: safe_reflect" in result.stdout


def test_the_tiny_run_trains_a_step_from_the_wheel(wheel_site: tuple[Path, Path], tmp_path: Path) -> None:
    _, site = wheel_site
    run = tmp_path / "run"
    result = run_installed(
        site,
        tmp_path,
        "-m",
        "saferl.train",
        "+exp=tiny_smoke",
        "trainer.total_training_steps=1",
        "trainer.val_before_train=false",
        "trainer.test_freq=-1",
        f"trainer.default_local_dir={run}",
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "saferl: finished 1 steps" in result.stdout
    assert (run / "config.yaml").is_file() and (run / "global_step_1").is_dir()
    assert f"{site}/saferl/_shipped/data/QI-Safe-10K/sample" in (run / "config.yaml").read_text()

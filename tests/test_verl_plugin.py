"""saferl reaches verl through the `verl.plugins` entry point, in any fresh process that imports verl."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import entry_points

PROBE = (
    "import json, sys, verl; "
    "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('saferl', 'rewards', 'rollout'))))"
)


def _modules_after_import_verl(**env: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300, env={**os.environ, **env}
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_entry_point_is_registered() -> None:
    plugins = {ep.name: ep.value for ep in entry_points(group="verl.plugins")}
    assert plugins.get("saferl") == "saferl.verl_plugin"


def test_import_verl_loads_the_plugin_in_a_fresh_process() -> None:
    loaded = _modules_after_import_verl()
    assert "saferl.verl_plugin" in loaded
    assert {"rewards", "rollout"} <= set(loaded)


def test_plugin_is_verls_doing_not_an_import_side_effect() -> None:
    # verl's own switch turns discovery off: then nothing of saferl is imported by `import verl`.
    assert _modules_after_import_verl(VERL_USE_EXTERNAL_PLUGINS="none") == []

"""saferl's verl plugin: `import verl` imports this module in every process, Ray workers included.

verl's registries (agent loops, reward managers) are per process, so the parts saferl adds must be
registered wherever verl runs; the `verl.plugins` entry point in setup.py is how verl finds them without
any patching. verl swallows a plugin's import error at debug level, which would surface much later as
"agent loop not registered"; so a failure here is logged loudly before it is re-raised.
"""

from __future__ import annotations

import importlib
import logging

# Modules whose import registers saferl's parts into verl's registries.
REGISTERING_MODULES: tuple[str, ...] = (
    "saferl.cpu_platform",  # platform `cpu` (selected only by VERL_PLATFORM=cpu)
    "rollout.hf_replica",  # rollout backend `hf` (replica + in-worker weight-sync adapter)
    "rewards.verl_manager",  # reward manager `saferl_safety`
    "rewards.grpo",  # advantage estimator `saferl_grpo` (judge failures excluded)
    "rollout.reflect_loop",  # agent loop `safe_reflect`
)

logger = logging.getLogger(__name__)


def load() -> list[str]:
    """Import every registering module; return their names."""
    for name in REGISTERING_MODULES:
        try:
            importlib.import_module(name)
        except Exception:
            logger.exception("saferl verl plugin: importing %s failed; its parts are not registered", name)
            raise
    return list(REGISTERING_MODULES)


LOADED_MODULES = load()

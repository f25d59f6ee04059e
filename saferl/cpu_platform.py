"""A CPU "accelerator" for verl 0.9.1, registered as platform `cpu` (`VERL_PLATFORM=cpu`).

verl's trainer asks its platform for a device name, a collective backend, a Ray resource and a torch
device module (`get_torch_device()`, which is `torch.cuda` on GPUs). This platform answers: device `cpu`,
backend `gloo`, Ray resource `GPU` (so verl's resource pools, which count only GPU/NPU bundles, place
their workers: Ray is started with fake GPUs, `ray_kwargs.ray_init.num_gpus`), and a device module with
the part of `torch.cuda` that verl calls, as no-ops or CPU equivalents. It is never auto-detected: only
`VERL_PLATFORM=cpu`, which `saferl.train` sets for experiments with `saferl.platform=cpu`.

Two of its answers lean on verl internals (the process-group start and the device "index"); both live
in `saferl.verl_internals`, with the verl lines they depend on.
"""

from __future__ import annotations

import os
import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from verl.plugin.platform.platform_base import PlatformBase
from verl.plugin.platform.platform_manager import PlatformRegistry

from saferl.verl_internals import CPU_DEVICE_INDEX, start_gloo_process_group

NAME = "cpu"
# What a CPU reports as free device memory: verl sizes nothing on CPU from it, but logs it.
_REPORTED_MEMORY = 64 << 30


def _noop(*args: Any, **kwargs: Any) -> None:
    return None


def _zero(*args: Any, **kwargs: Any) -> int:
    return 0


class _Event:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def record(self, *args: Any) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def wait(self, *args: Any) -> None:
        pass

    def query(self) -> bool:
        return True

    def elapsed_time(self, other: Any) -> float:
        return 0.0


class _Stream:
    """CPU work is synchronous: a stream has nothing to wait for."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def wait_stream(self, *args: Any) -> None:
        pass

    def wait_event(self, *args: Any) -> None:
        pass

    def record_event(self, *args: Any) -> _Event:
        return _Event()

    def __enter__(self) -> _Stream:
        return self

    def __exit__(self, *args: Any) -> bool:
        return False


_STREAM = _Stream()


@contextmanager
def _stream_context(stream: Any = None) -> Iterator[None]:
    yield


def _set_device(index: Any = 0) -> None:
    """What verl's workers call first (Worker.__init__): the process group, and the CPU's threads.

    Ray starts every worker with OMP_NUM_THREADS=1 (one per requested CPU). verl's sync trainer trains
    and generates in turn, never both at once, so the training workers share every core between them."""
    if start_gloo_process_group():
        torch.set_num_threads(threads_per_process(int(os.environ["WORLD_SIZE"])))


def threads_per_process(processes: int) -> int:
    """This machine's cores shared by `processes` that compute at the same time (at least one each)."""
    return max(1, len(os.sched_getaffinity(0)) // max(1, processes))


# The subset of `torch.cuda` that verl 0.9.1 calls through `get_torch_device()` (grep verl for it).
device_module = types.ModuleType("saferl_cpu_device")
device_module.__dict__.update(
    is_available=lambda: True,
    device_count=lambda: 1,
    current_device=lambda: 0,
    set_device=_set_device,
    synchronize=_noop,
    empty_cache=_noop,
    ipc_collect=_noop,
    mem_get_info=lambda *a, **k: (_REPORTED_MEMORY, _REPORTED_MEMORY),
    memory_allocated=_zero,
    memory_reserved=_zero,
    max_memory_allocated=_zero,
    max_memory_reserved=_zero,
    reset_peak_memory_stats=_noop,
    set_per_process_memory_fraction=_noop,
    get_device_name=lambda *a, **k: NAME,
    get_rng_state=lambda *a, **k: torch.get_rng_state(),
    set_rng_state=lambda state, *a, **k: torch.set_rng_state(state),
    manual_seed=lambda seed: torch.manual_seed(seed),
    manual_seed_all=lambda seed: torch.manual_seed(seed),
    current_stream=lambda *a, **k: _STREAM,
    default_stream=lambda *a, **k: _STREAM,
    stream=_stream_context,
    Stream=_Stream,
    Event=_Event,
)


@PlatformRegistry.register(platform=NAME)
class CPUPlatform(PlatformBase):
    device_name = NAME
    vendor_name = NAME
    device_module = device_module

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check: bool = False) -> bool:
        return False  # never auto-detected: only VERL_PLATFORM=cpu selects it

    def current_device(self) -> Any:
        return CPU_DEVICE_INDEX

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: Any) -> None:
        _set_device(device_index)

    def synchronize(self, device_index: Any = None) -> None:
        pass

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        pass

    def empty_cache(self) -> None:
        pass

    def get_device_capability(self, device_index: int = 0) -> tuple[None, None]:
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        return "CUDA_VISIBLE_DEVICES"

    @contextmanager
    def nvtx_range(self, msg: str) -> Iterator[None]:
        yield

    def profiler_start(self) -> None:
        pass

    def profiler_stop(self) -> None:
        pass

    def ray_resource_name(self) -> str:
        return "GPU"

    def ray_resource_options(self, num_gpus: float) -> dict[str, Any]:
        return {"num_gpus": num_gpus}

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self) -> None:
        return None

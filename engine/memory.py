"""Memory: the backend's budget, the limits a run sets, and readings for the gauge."""

from __future__ import annotations

import os

import psutil

from engine import protocol as P

GB = 1e9
DEFAULT_LIMIT_FRACTION = 0.9  # of the backend's memory, when memory.limit_gb is 0


def backend_memory() -> tuple[int, str]:
    """Bytes the backend can use and where that figure comes from."""
    import mlx.core as mx

    info = mx.device_info()
    if info.get("max_recommended_working_set_size"):
        return int(info["max_recommended_working_set_size"]), "Metal's recommended working set"
    if info.get("total_memory") and mx.default_device() == mx.gpu:
        return int(info["total_memory"]), "GPU memory"
    return psutil.virtual_memory().total, "system memory"


def apply_limits(memory_cfg) -> int:
    """Set mlx's memory, wired and cache limits from the config; return the limit in bytes."""
    import mlx.core as mx

    total, _ = backend_memory()
    limit = int(memory_cfg.limit_gb * GB) if memory_cfg.limit_gb > 0 else int(total * DEFAULT_LIMIT_FRACTION)
    mx.set_memory_limit(limit)
    if mx.metal.is_available():
        mx.set_wired_limit(min(limit, total))  # keep the weights resident, never beyond what Metal recommends
    if memory_cfg.cache_limit_gb >= 0:
        mx.set_cache_limit(int(memory_cfg.cache_limit_gb * GB))
    return limit


def sample() -> P.MemorySampled:
    """One reading; cheap enough to take a few times a second beside training."""
    import mlx.core as mx

    vm = psutil.virtual_memory()
    return P.MemorySampled(
        active_gb=mx.get_active_memory() / GB,
        peak_gb=mx.get_peak_memory() / GB,
        cache_gb=mx.get_cache_memory() / GB,
        rss_gb=psutil.Process(os.getpid()).memory_info().rss / GB,
        system_used_gb=(vm.total - vm.available) / GB,
        system_available_gb=vm.available / GB,
        system_total_gb=vm.total / GB,
        swap_used_gb=psutil.swap_memory().used / GB,
        limit_gb=mx.get_memory_limit() / GB,
    )

"""Memory readings for the gauge: mlx's allocator, this process, the system."""

from __future__ import annotations

import os

import psutil

from engine import protocol as P

GB = 1e9


def sample(limit_gb: float = 0.0) -> P.MemorySampled:
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
        limit_gb=limit_gb,
    )

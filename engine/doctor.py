"""`lora-mlx doctor`: what this machine gives mlx, and what to fix.

`environment_report()` gathers the facts as a JSON-serialisable dict (also stored with each
run); `run_doctor()` prints them with one fix per problem. Call `engine.blas.setup()` first.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import platform
import sys

import psutil

from engine import blas

THREAD_VARS = ("MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_CORETYPE")
GB = 1e9  # as everywhere in lora-mlx (memory.limit_gb, the gauge, the estimate)


def environment_report(measure: bool = True) -> dict:
    """Platform, versions, backend, BLAS (with its measured GFLOP/s), memory, threads, problems.

    `measure=False` skips the matmul timing (about 0.1 s with a fast BLAS, 1 s without).
    """
    info = blas.setup()
    import mlx.core as mx

    if measure and sys.platform != "darwin":
        info = dataclasses.replace(info, gflops=round(blas.measure_gflops(), 1))
    memory = psutil.virtual_memory()
    device = mx.device_info()
    # Metal reports its recommended working set, CUDA its total memory; the CPU device neither.
    device_bytes = device.get("max_recommended_working_set_size") or device.get("total_memory")
    report = {
        "platform": platform.platform(),
        "os": platform.system(),
        "arch": platform.machine(),
        "python": platform.python_version(),
        "mlx": _version("mlx"),
        "mlx_lm": _version("mlx-lm"),
        "backend": info.backend,
        "device": device.get("device_name"),
        "blas": dataclasses.asdict(info),
        "memory": {
            "total_gb": round(memory.total / GB, 1),
            "available_gb": round(memory.available / GB, 1),
            "device_gb": round(device_bytes / GB, 1) if device_bytes else None,
        },
        "threads": {
            "cpus_available": len(os.sched_getaffinity(0)) if sys.platform == "linux" else os.cpu_count(),
            "physical_cores": blas.physical_cores() if sys.platform == "linux" else None,
            **{name: os.environ.get(name) for name in THREAD_VARS},
        },
    }
    report["problems"] = _problems(report)
    return report


def run_doctor() -> int:
    """Print the environment report and a fix for each problem; exit code 1 if any."""
    report = environment_report()
    info, memory, threads = report["blas"], report["memory"], report["threads"]
    rows = [
        ("platform", report["platform"]),
        ("python", f"{report['python']} ({sys.executable})"),
        ("mlx", f"{report['mlx']}, mlx-lm {report['mlx_lm']}"),
        ("backend", f"{report['backend']} ({report['device']})"),
        ("blas", f"{info['library']} from {info['source']}: {info['path'] or 'built in'}"),
    ]
    if info["version"]:
        rows.append(("blas version", info["version"]))
    if info["gflops"] is not None:
        rows.append(("matmul", f"{info['gflops']:.1f} GFLOP/s (fp32 1024x1024 on the CPU)"))
    rows.append(("memory", f"{memory['available_gb']} GB available of {memory['total_gb']} GB"))
    if memory["device_gb"]:
        rows.append(("gpu memory", f"{memory['device_gb']} GB for mlx"))
    cores = f"{threads['physical_cores']} physical cores of {threads['cpus_available']} CPUs available"
    rows.append(("threads", f"{info['threads'] or '?'} BLAS threads; {cores}"))
    rows += [(name, value) for name, value in threads.items() if name in THREAD_VARS and value]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    if not report["problems"]:
        print("\nno problems found")
        return 0
    print(f"\n{len(report['problems'])} problem(s):")
    for problem in report["problems"]:
        print(f"- {problem}")
    return 1


def _problems(report: dict) -> list[str]:
    """Each misconfiguration with its fix, in words."""
    info, threads = report["blas"], report["threads"]
    problems = list(info["warnings"])
    cpu_matmul = report["backend"] == "cpu" and report["os"] == "Linux"
    if cpu_matmul and info["source"] == "stock" and not problems:
        problems.append(f"mlx uses the slow reference BLAS: unset {blas.ENV_VAR} to get MKL or OpenBLAS")
    elif cpu_matmul and info["gflops"] is not None and info["gflops"] < blas.SLOW_GFLOPS:
        problems.append(
            f"matmul through {info['library']} runs at only {info['gflops']:.1f} GFLOP/s: check that "
            "the thread settings below fit the cores and that nothing else is using them"
        )
    for name in ("MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        value = threads[name]
        if value and value.isdigit() and threads["physical_cores"] and int(value) > threads["physical_cores"]:
            problems.append(
                f"{name}={value} but only {threads['physical_cores']} physical cores are available: "
                f"oversubscribed BLAS threads slow every matmul; set {name}={threads['physical_cores']}"
            )
    return problems


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None

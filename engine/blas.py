"""Give mlx's CPU backend a fast BLAS on Linux.

The `mlx[cpu]` wheel links the reference BLAS: about 5 GFLOP/s for an fp32 matmul. mlx looks
`cblas_sgemm` up in the process's global symbol scope before its own dependencies, so a CBLAS
loaded with RTLD_GLOBAL before `import mlx` serves every matmul instead, 15-35x faster here.
mlx binds its symbols when it is imported, so `setup()` must run first. See docs/linux-cpu.md.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.metadata
import math
import os
import platform
import site
import sys
import time
from dataclasses import dataclass
from glob import glob
from pathlib import Path

ENV_VAR = "LORA_MLX_BLAS"
# A 1024x1024 fp32 matmul below this rate is not getting a fast BLAS (reference BLAS: ~5).
SLOW_GFLOPS = 20.0
# OpenBLAS cores with AVX-512 sgemm kernels, as `openblas_get_corename()` names them.
AVX512_OPENBLAS_CORES = ("skylakex", "cooperlake", "sapphirerapids")



@dataclass(frozen=True)
class BlasInfo:
    """Which BLAS serves mlx's CPU matmuls in this process."""

    library: str  # "mkl", "openblas", "reference" (the wheel's own), "accelerate", or a file name
    path: str | None  # the file that `cblas_sgemm` resolves to; None on macOS
    source: str  # "env" (a LORA_MLX_BLAS path), "mkl", "openblas", "preloaded", "stock", "not-needed"
    backend: str = "cpu"  # mlx's default device: "cpu", "cuda" or "metal"
    version: str | None = None  # as the library reports it (OpenBLAS: build options and core)
    threads: int | None = None  # threads the library will use, as it reports them
    gflops: float | None = None  # fp32 matmul rate; filled in by callers of measure_gflops()
    warnings: tuple[str, ...] = ()


@functools.cache
def setup() -> BlasInfo:
    """Load the fastest CBLAS found for mlx, then import mlx and check its results against numpy.

    Call it before anything imports mlx. `LORA_MLX_BLAS` picks the library: `auto` (default:
    MKL from the Python environment, then system OpenBLAS), `mkl`, `openblas`, `none` (the
    wheel's reference BLAS) or a path to a CBLAS `.so`. Sets the library's thread count to the
    physical cores available unless the user set it. Problems come back in `warnings` for the
    caller to show. On macOS mlx uses Accelerate and Metal: nothing to do. Runs once per process.
    """
    if sys.platform == "darwin":
        return BlasInfo("accelerate", None, "not-needed", backend="metal")
    notes: list[str] = []
    choice = os.environ.get(ENV_VAR, "").strip() or "auto"
    source = "stock"
    if any(name == "mlx" or name.startswith("mlx.") for name in sys.modules):
        if choice != "none":
            notes.append(
                "mlx was imported before engine.blas.setup(), so setup could not choose its BLAS; "
                "call setup() before anything imports mlx"
            )
        if _global_sgemm() is not None:
            source = "preloaded"
    elif choice != "none":
        source = _load_first(choice, notes)

    import mlx.core as mx

    path = _global_sgemm() if source != "stock" else None
    if path is None:
        source, path = "stock", _mlx_own_sgemm(mx)
    library = _library_name(path)
    if source == "stock" and choice != "none" and not notes:
        notes.append(f"no fast BLAS found, mlx uses {library} ({path}); {_install_hint()}")
    error = _blas_error(mx)
    if error:
        notes.append(f"mlx's {error} through {path}, unlike numpy's: results are wrong; set {ENV_VAR}=none")
    version, threads, core = _describe(path, library)
    if core and _avx512_openblas_core() and core.lower() not in AVX512_OPENBLAS_CORES:
        notes.append(
            f"OpenBLAS uses its {core} kernels on this AVX-512 CPU; "
            f"set OPENBLAS_CORETYPE={_avx512_openblas_core()}"
        )
    return BlasInfo(library, path, source, _backend(mx), version, threads, None, tuple(notes))


def measure_gflops(size: int = 1024, seconds: float = 0.1) -> float:
    """Best fp32 matmul rate of mlx on the CPU, in GFLOP/s, over about `seconds` of repeats.

    Costs about 0.1 s with a fast BLAS and about 1 s with the reference BLAS.
    """
    import mlx.core as mx

    a = mx.random.normal((size, size), stream=mx.cpu)
    b = mx.random.normal((size, size), stream=mx.cpu)
    mx.eval(mx.matmul(a, b, stream=mx.cpu))  # warm-up: thread pools, page faults
    best_s, started = math.inf, time.perf_counter()
    while time.perf_counter() - started < seconds:
        tick = time.perf_counter()
        mx.eval(mx.matmul(a, b, stream=mx.cpu))
        best_s = min(best_s, time.perf_counter() - tick)
    return 2 * size**3 / best_s / 1e9


def physical_cores() -> int:
    """Physical cores this process may run on: CPU affinity, SMT siblings and cgroup quota."""
    cores = set()
    for cpu in os.sched_getaffinity(0):
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topology / "physical_package_id").read_text(), (topology / "core_id").read_text()))
        except OSError:
            cores.add(cpu)
    count = len(cores)
    try:  # cgroup v2 quota, e.g. "200000 100000" for docker --cpus=2
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            count = min(count, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    return max(1, count)


def _avx512_openblas_core() -> str | None:
    """The OpenBLAS core whose AVX-512 kernels this x86_64 CPU runs, from /proc/cpuinfo, or None."""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            lines = (line for line in cpuinfo if line.startswith("flags"))
            flags = set(next(lines, ":").split(":", 1)[1].split())
    except OSError:
        pass
    if not {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"} <= flags:
        return None
    return "Cooperlake" if "avx512_bf16" in flags else "SkylakeX"


def _load_first(choice: str, notes: list[str]) -> str:
    """Load the first usable candidate with RTLD_GLOBAL; return its source or "stock"."""
    if _global_sgemm() is not None:  # e.g. LD_PRELOAD=libmkl_rt.so
        return "preloaded"
    mkl = [("mkl", path) for path in _mkl_paths()] if choice != "openblas" else []
    openblas = [("openblas", path) for path in _openblas_paths()] if choice != "mkl" else []
    candidates = mkl + openblas
    if choice not in ("auto", "mkl", "openblas"):
        if os.path.isfile(choice):
            candidates.insert(0, ("env", choice))
        else:
            notes.append(
                f"{ENV_VAR}={choice!r} is not a file, nor auto, mkl, openblas or none; "
                "looking for MKL or OpenBLAS instead"
            )
    for source, path in candidates:
        error = _load_global(path)
        if error is None:
            return source
        if source == "env" or os.path.isabs(path):
            notes.append(f"could not load {path} as BLAS: {error}")
    if choice in ("mkl", "openblas"):
        notes.append(f"{ENV_VAR}={choice} but no usable {choice} was found; {_install_hint()}")
    return "stock"


def _load_global(path: str) -> str | None:
    """Load a CBLAS into the global symbol scope; return why not, or None when loaded."""
    name = os.path.basename(path).lower()
    threads_var = "MKL_NUM_THREADS" if "mkl" in name else "OPENBLAS_NUM_THREADS"
    if "OMP_NUM_THREADS" not in os.environ:
        os.environ.setdefault(threads_var, str(physical_cores()))
    if "openblas" in name and "OPENBLAS_CORETYPE" not in os.environ:
        core = _avx512_openblas_core()
        if core:  # an OpenBLAS older than the CPU may not know it and pick pre-AVX-512 kernels
            os.environ["OPENBLAS_CORETYPE"] = core
    try:
        lib = ctypes.CDLL(path, mode=ctypes.RTLD_LOCAL)
        if not hasattr(lib, "cblas_sgemm"):
            return "it has no cblas_sgemm (a Fortran-only BLAS or LAPACK?)"
        ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)  # promotes the loaded library
    except OSError as error:
        return str(error)
    return None


def _mkl_paths() -> list[str]:
    """libmkl_rt from the `mkl` wheel, wherever pip put it, then the usual prefixes."""
    paths = []
    try:
        dist = importlib.metadata.distribution("mkl")
        paths += [str(dist.locate_file(f)) for f in dist.files or () if f.name.startswith("libmkl_rt.so")]
    except importlib.metadata.PackageNotFoundError:
        pass
    prefixes = (sys.prefix, sys.base_prefix, site.getuserbase(), os.environ.get("CONDA_PREFIX"))
    for prefix in filter(None, prefixes):
        paths += sorted(glob(f"{prefix}/lib/libmkl_rt.so*"), reverse=True)
    unique = {os.path.realpath(path): None for path in paths if os.path.isfile(path)}
    return list(unique)


def _openblas_paths() -> list[str]:
    """System OpenBLAS: the threaded Debian/Ubuntu builds, Fedora's, then the linker's pick."""
    multiarch = f"/usr/lib/{platform.machine()}-linux-gnu"
    paths = [f"{multiarch}/openblas-pthread/libopenblas.so.0", f"{multiarch}/openblas-openmp/libopenblas.so.0"]
    return [path for path in paths if os.path.isfile(path)] + ["libopenblasp.so.0", "libopenblas.so.0"]


class _DlInfo(ctypes.Structure):
    _fields_ = [
        ("dli_fname", ctypes.c_char_p),
        ("dli_fbase", ctypes.c_void_p),
        ("dli_sname", ctypes.c_char_p),
        ("dli_saddr", ctypes.c_void_p),
    ]


def _sgemm_file(handle: ctypes.CDLL) -> str | None:
    """The file that `cblas_sgemm` resolves to from a dlopen handle, or None."""
    try:
        address = ctypes.cast(handle.cblas_sgemm, ctypes.c_void_p)
    except AttributeError:
        return None
    info = _DlInfo()
    if not ctypes.CDLL(None).dladdr(address, ctypes.byref(info)):
        return None
    return os.path.realpath(info.dli_fname.decode())


def _global_sgemm() -> str | None:
    """The library serving `cblas_sgemm` in the global scope: the one mlx binds to first."""
    return _sgemm_file(ctypes.CDLL(None))


def _mlx_own_sgemm(mx) -> str | None:
    """The BLAS that mlx's shared library links itself (the wheel's reference BLAS)."""
    core = Path(mx.__file__)
    for path in (core.parent / "lib" / "libmlx.so", core):
        if path.is_file():
            found = _sgemm_file(ctypes.CDLL(str(path)))
            if found:
                return found
    return None


def _library_name(path: str | None) -> str:
    name = os.path.basename(path or "unknown")
    for known in ("mkl", "openblas", "blis", "armpl"):
        if known in name.lower():
            return known
    if "mlx" in (path or "") and name.startswith("libblas"):
        return "reference"
    return name


def _describe(path: str | None, library: str) -> tuple[str | None, int | None, str | None]:
    """The library's version string, thread count and (OpenBLAS) core, where it reports them."""
    lib = ctypes.CDLL(path) if path else None
    try:
        if library == "mkl":
            buffer = ctypes.create_string_buffer(256)
            lib.mkl_get_version_string(buffer, len(buffer))
            return buffer.value.decode().strip(), lib.MKL_Get_Max_Threads(), None
        if library == "openblas":
            lib.openblas_get_config.restype = ctypes.c_char_p
            lib.openblas_get_corename.restype = ctypes.c_char_p
            core = lib.openblas_get_corename().decode()
            return lib.openblas_get_config().decode().strip(), lib.openblas_get_num_threads(), core
    except AttributeError:
        pass
    return None, None, None


def _backend(mx) -> str:
    if mx.cuda.is_available():
        return "cuda"
    return "metal" if mx.metal.is_available() else "cpu"


def _blas_error(mx) -> str | None:
    """Check mlx's CPU matmul (plain and transposed, BLAS) and inverse (LAPACK) against numpy."""
    import numpy as np

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((67, 45), np.float32), rng.standard_normal((45, 83), np.float32)
    want = a.astype(np.float64) @ b
    for got in (
        mx.matmul(mx.array(a), mx.array(b), stream=mx.cpu),
        mx.matmul(mx.array(a), mx.array(b.T.copy()).T, stream=mx.cpu),
    ):
        error = float(np.abs(np.array(got) - want).max())
        if not error < 1e-3:
            return f"matmul is off by {error:.3g}"
    square = rng.standard_normal((24, 24), np.float32) + 24 * np.eye(24, dtype=np.float32)
    inverse = np.array(mx.linalg.inv(mx.array(square), stream=mx.cpu))
    error = float(np.abs(inverse @ square - np.eye(24)).max())
    return f"matrix inverse is off by {error:.3g}" if not error < 1e-3 else None


def _install_hint() -> str:
    if platform.machine() == "x86_64":
        return "install one: pip install mkl (or apt-get install libopenblas0-pthread)"
    return "install one: apt-get install libopenblas0-pthread"

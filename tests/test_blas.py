"""engine.blas and engine.doctor, each case in a fresh interpreter (the BLAS is chosen before mlx loads)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from engine import blas

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the BLAS choice only exists on Linux")

# Settings the code under test reads or writes; the parent's values must not leak into a case.
BLAS_VARS = ("LORA_MLX_BLAS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_CORETYPE")
PROBE = """
import dataclasses, json, os, sys
from engine import blas
info = blas.setup()
assert blas.setup() is info
maps = open("/proc/self/maps").read()
print(json.dumps({
    **dataclasses.asdict(info),
    "mapped": [name for name in ("libmkl_rt", "libopenblas") if name in maps],
    "env": {name: os.environ.get(name) for name in sys.argv[1:]},
    "gflops": blas.measure_gflops(size=512, seconds=0.5) if os.environ.get("MEASURE") else None,
}))
"""
HAS_MKL = bool(blas._mkl_paths())
HAS_OPENBLAS = any(os.path.isfile(path) for path in blas._openblas_paths())


def run(code: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {name: value for name, value in os.environ.items() if name not in BLAS_VARS}
    return subprocess.run(
        [sys.executable, "-c", code, *args], env={**clean, **env}, capture_output=True, text=True, timeout=120
    )


def probe(code_before: str = "", **env: str) -> tuple[dict, str]:
    """BlasInfo of a fresh process as a dict (plus mapped libraries and env), and its stderr."""
    done = run(code_before + PROBE, *BLAS_VARS, **env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout), done.stderr


def test_none_keeps_the_reference_blas_quietly():
    info, stderr = probe(LORA_MLX_BLAS="none")
    assert (info["library"], info["source"]) == ("reference", "stock")
    assert "mlx_cpu.libs" in info["path"]
    assert info["mapped"] == [] and info["warnings"] == [] and stderr == ""


@pytest.mark.skipif(not HAS_MKL, reason="the mkl package is not installed")
def test_auto_loads_mkl_and_mlx_matmul_uses_it():
    info, stderr = probe()
    assert (info["library"], info["source"]) == ("mkl", "mkl")
    assert os.path.basename(info["path"]).startswith("libmkl_rt.so")
    assert info["mapped"] == ["libmkl_rt"]
    assert info["warnings"] == [] and stderr == ""
    assert info["env"]["MKL_NUM_THREADS"] == str(blas.physical_cores()) == str(info["threads"])


@pytest.mark.skipif(not HAS_MKL and not HAS_OPENBLAS, reason="no fast BLAS installed")
def test_fast_blas_makes_mlx_matmul_much_faster():
    stock, _ = probe(LORA_MLX_BLAS="none", MEASURE="1")
    fast, _ = probe(MEASURE="1")
    # Measured 10-60x on a loaded 2-core machine; 3x leaves room for noise.
    assert fast["gflops"] > 3 * stock["gflops"], (stock["gflops"], fast["gflops"])


def test_missing_path_warns_and_falls_back():
    info, stderr = probe(LORA_MLX_BLAS="/nonexistent/libcblas.so")
    message = "LORA_MLX_BLAS='/nonexistent/libcblas.so' is not a file, nor auto, mkl, openblas or none"
    assert info["warnings"][0].startswith(message)
    assert message in " ".join(info["warnings"]) and stderr == ""
    assert info["library"] in (("mkl", "openblas") if HAS_MKL or HAS_OPENBLAS else ("reference",))


def test_library_without_cblas_is_not_loaded():
    import _ctypes  # a real shared library that has no BLAS in it

    info, stderr = probe(LORA_MLX_BLAS=_ctypes.__file__)
    assert info["warnings"][0] == f"could not load {_ctypes.__file__} as BLAS: it has no cblas_sgemm " \
        "(a Fortran-only BLAS or LAPACK?)"
    assert info["source"] != "env" and "could not load" in " ".join(info["warnings"])


def test_mlx_imported_first_is_reported():
    info, stderr = probe("import mlx.core\n")
    assert info["source"] == "stock" and info["mapped"] == []
    assert "mlx was imported before engine.blas.setup()" in info["warnings"][0]
    assert "call setup() before anything imports mlx" in " ".join(info["warnings"])


@pytest.mark.skipif(not HAS_MKL, reason="the mkl package is not installed")
def test_user_thread_settings_are_kept():
    info, _ = probe(MKL_NUM_THREADS="1")
    assert info["threads"] == 1
    info, _ = probe(OMP_NUM_THREADS="1")
    assert info["threads"] == 1 and info["env"]["MKL_NUM_THREADS"] is None


@pytest.mark.skipif(not HAS_OPENBLAS, reason="apt-get install libopenblas0-pthread")
def test_openblas_on_request_gets_its_avx512_kernels():
    info, stderr = probe(LORA_MLX_BLAS="openblas")
    assert (info["library"], info["source"], info["mapped"]) == ("openblas", "openblas", ["libopenblas"])
    assert info["env"]["OPENBLAS_NUM_THREADS"] == str(info["threads"])
    core = blas._avx512_openblas_core()
    assert info["env"]["OPENBLAS_CORETYPE"] == core
    assert (core or "") in info["version"]  # the core OpenBLAS actually runs
    assert info["warnings"] == [] and stderr == ""


def test_physical_cores_fit_the_affinity_mask():
    assert 1 <= blas.physical_cores() <= len(os.sched_getaffinity(0))


DOCTOR = "import sys\nfrom engine import blas, doctor\nblas.setup()\nsys.exit(doctor.run_doctor())"


def test_doctor_prints_the_key_facts():
    done = run(DOCTOR)
    for label in ("platform", "python", "mlx", "backend", "blas", "matmul", "memory", "threads"):
        assert any(line.startswith(label + " ") for line in done.stdout.splitlines()), (label, done.stdout)
    assert "GFLOP/s" in done.stdout and "mlx-lm" in done.stdout
    if HAS_MKL:
        assert "mkl from mkl: " in done.stdout


def test_doctor_explains_the_reference_blas():
    done = run(DOCTOR, LORA_MLX_BLAS="none")
    assert done.returncode == 1
    assert "- mlx uses the slow reference BLAS: unset LORA_MLX_BLAS to get MKL or OpenBLAS" in done.stdout


def test_environment_report_is_json_and_flags_oversubscribed_threads():
    code = "import json\nfrom engine import blas, doctor\nblas.setup()\n" \
        "print(json.dumps(doctor.environment_report(measure=False)))"
    done = run(code, OMP_NUM_THREADS="64")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["backend"] == "cpu" and report["blas"]["gflops"] is None
    assert report["threads"]["OMP_NUM_THREADS"] == "64"
    assert any(p.startswith("OMP_NUM_THREADS=64 but only") for p in report["problems"])


def test_wrong_results_from_a_blas_are_reported(tmp_path):
    """A CBLAS whose sgemm writes zeros: mlx must be calling it, and setup must say so."""
    compiler = shutil.which("cc") or pytest.skip("no C compiler")
    source = tmp_path / "zeros.c"
    source.write_text(
        "void cblas_sgemm(int o, int ta, int tb, int m, int n, int k, float alpha, const float *a, int lda,\n"
        "                 const float *b, int ldb, float beta, float *c, int ldc) {\n"
        "    for (int i = 0; i < m; i++) for (int j = 0; j < n; j++) c[i * ldc + j] = 0.0f;\n"
        "}\n"
    )
    library = tmp_path / "libzeros.so"
    subprocess.run([compiler, "-shared", "-fPIC", "-o", library, source], check=True)
    info, stderr = probe(LORA_MLX_BLAS=str(library))
    assert (info["source"], info["path"], info["library"]) == ("env", str(library), "libzeros.so")
    [warning] = info["warnings"]
    assert warning.startswith("mlx's matmul is off by ")
    assert warning.endswith(f" through {library}, unlike numpy's: results are wrong; set LORA_MLX_BLAS=none")
    assert "results are wrong" in " ".join(info["warnings"])

"""The engine/UI boundary: importing the UI never loads mlx; importing the engine never loads textual or rich."""

import subprocess
import sys

import pytest

ENGINE_MODULES = ["engine.config", "engine.protocol", "engine.checkpoint", "engine.trainer", "engine.run", "engine.cli", "engine.data", "engine.batches", "engine.models", "engine.quant", "engine.use", "engine.estimate", "engine.memory", "engine.tune", "engine.tune_cli", "engine.study_plan", "engine.trials", "engine.search", "engine.host", "engine.client", "engine.server", "engine.metrics", "engine.control"]


@pytest.mark.parametrize("module", ENGINE_MODULES)
def test_engine_never_imports_textual_or_rich(module):
    code = f"import sys, {module}; bad = [m for m in ('textual', 'rich') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("module", ["tui", "tui.app", "engine.protocol", "engine.config", "engine.client", "engine.server", "engine.metrics", "engine.control", "engine.cli", "engine.trials", "engine.search"])
def test_ui_side_modules_never_import_mlx(module):
    code = f"import sys, {module}; bad = [m for m in sys.modules if m.split('.')[0] in ('mlx', 'mlx_lm')]; print(bad); sys.exit(1 if bad else 0)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr

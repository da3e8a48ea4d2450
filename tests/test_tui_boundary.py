"""The UI process never imports mlx: every tui module, the app entry point, and the fake engine."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TUI_MODULES = sorted(
    ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__") for p in (ROOT / "tui").rglob("*.py")
)


def test_the_module_list_covers_the_app():
    assert {"tui", "tui.app", "tui.bridge", "tui.screens.main", "tui.widgets.config_form"} <= set(TUI_MODULES)


@pytest.mark.parametrize("module", TUI_MODULES)
def test_tui_modules_never_import_mlx(module):
    code = f"import sys, {module}; bad = sorted(m for m in sys.modules if m.split('.')[0] in ('mlx', 'mlx_lm')); print(bad); sys.exit(1 if bad else 0)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_fake_engine_never_imports_mlx():
    code = "import runpy, sys; sys.argv = ['x', '--help']\ntry:\n    runpy.run_path('tests/fake_engine.py', run_name='__main__')\nexcept SystemExit:\n    pass\nbad = [m for m in sys.modules if m.startswith('mlx')]; print(bad); sys.exit(1 if bad else 0)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr

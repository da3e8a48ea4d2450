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


SHOW_ESTIMATE = """
import asyncio, os, sys
from pathlib import Path
from tui.app import LoraApp
from engine import config

async def main(preset):
    app = LoraApp(preset_path=config.resolve_preset(preset), attach=None)
    async with app.run_test(size=(100, 30)) as pilot:
        for _ in range(200):
            await pilot.pause(0.05)
            text = str(app.query_one("#config-estimate").render())
            if "GB of" in text or "unavailable" in text:
                break
    bad = sorted(m for m in sys.modules if m.split('.')[0] in ('mlx', 'mlx_lm'))
    print(text.splitlines()[0]); print("mlx loaded:", bad)
    sys.exit(1 if bad else 0)

asyncio.run(main(sys.argv[1]))
"""


@pytest.mark.parametrize("preset, verdict", [("demo", "fits"), ("qwen2.5-7b-lora", "")])
def test_the_config_pane_shows_the_memory_estimate_without_loading_mlx(preset, verdict, tmp_path):
    """The pre-flight verdict comes from engine.estimate in a worker thread; a hub model the presets
    use is estimated from its known shape, offline, before any download."""
    env = {**__import__("os").environ, "LORA_MLX_RUNS": str(tmp_path / "runs")}
    result = subprocess.run([sys.executable, "-c", SHOW_ESTIMATE, preset], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "memory estimate:" in result.stdout and "GB of" in result.stdout and verdict in result.stdout

"""Regenerate the SVG screenshots in docs/images/ for the user guide.

  .venv/bin/python docs/screenshots.py

Drives the dashboard headless against the fake engine (tests/fake_engine.py:
the real protocol and run files, scripted numbers, no mlx), so it takes
about a minute and needs no model. Runs go to a temporary folder.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "docs" / "images"
sys.path.insert(0, str(ROOT))

FAKE_ENGINE = (sys.executable, str(ROOT / "tests" / "fake_engine.py"))


async def wait(pilot, condition, timeout_s: float = 60.0) -> None:
    for _ in range(int(timeout_s / 0.05)):
        if condition():
            return
        await pilot.pause(0.05)
    raise TimeoutError("the dashboard did not get there")


async def session(runs: Path) -> None:
    from engine import config
    from tui.app import LoraApp
    from tui.widgets.config_form import editor_id
    from tui.widgets.loss_chart import LossChart

    app = LoraApp(preset_path=config.resolve_preset("demo"), engine_command=FAKE_ENGINE, runs_root=runs)
    view = lambda: app.main.view  # noqa: E731

    async def run(pilot, settings: dict[str, str], until_step: int | None = None) -> None:
        for key, value in settings.items():
            app.main.query_one(f"#{editor_id(key)}").value = value
        await pilot.pause()
        await pilot.press("escape", "s")
        if until_step is None:
            await wait(pilot, lambda: view().state == "finished")
        else:
            await wait(pilot, lambda: view().step >= until_step)

    async def shot(pilot, name: str) -> None:
        chart = app.main.query_one(LossChart)
        await wait(pilot, lambda: not chart.redraw_pending and not app.main.draw_pending)
        await pilot.pause(0.3)
        app.save_screenshot(f"{name}.svg", str(IMAGES))
        print(f"wrote docs/images/{name}.svg")

    async with app.run_test(size=(100, 32)) as pilot:
        os.environ["FAKE_ENGINE_STEP_S"] = "0.002"
        await run(pilot, {"train.iters": "400", "train.learning_rate": "2e-5"})
        await run(pilot, {"train.iters": "400", "lora.rank": "16", "train.learning_rate": "1e-5"})
        os.environ["FAKE_ENGINE_STEP_S"] = "0.02"
        await run(pilot, {"train.iters": "3000", "lora.rank": "8"}, until_step=700)
        await pilot.press("2")
        await shot(pilot, "training")
        await pilot.press("3")
        await shot(pilot, "memory")
        await pilot.press("4")
        await pilot.press("r")
        await pilot.pause(0.5)
        await pilot.press("down", "enter")
        await wait(pilot, lambda: app.main.query_one(LossChart).overlay is not None)
        await shot(pilot, "runs")
        await pilot.press("2")
        await shot(pilot, "training-overlay")
        await pilot.press("1")
        await shot(pilot, "config")
        await pilot.press("escape", "question_mark")
        await shot(pilot, "help")
        await pilot.press("escape", "q")
        await shot(pilot, "quit")
        await pilot.press("escape")
        await pilot.resize_terminal(200, 56)
        await pilot.press("2")
        await shot(pilot, "wide")
        await pilot.press("x")
        await wait(pilot, lambda: view().state == "finished")


async def study_session(runs: Path) -> None:
    """t on the demo preset: the study dialog, then the trials filling the leaderboard."""
    from engine import config
    from tui.app import LoraApp
    from tui.dialogs.study import StudyDialog
    from tui.widgets.config_form import editor_id
    from tui.widgets.loss_chart import LossChart

    app = LoraApp(preset_path=config.resolve_preset("demo"), engine_command=FAKE_ENGINE, runs_root=runs)
    os.environ["FAKE_ENGINE_STEP_S"] = "0.004"
    os.environ["FAKE_ENGINE_PRUNER_STARTUP"] = "2"
    async with app.run_test(size=(100, 32)) as pilot:
        for key, value in {"train.iters": "300", "train.steps_per_eval": "30"}.items():
            app.main.query_one(f"#{editor_id(key)}").value = value
        await pilot.pause()
        await pilot.press("escape", "t")
        await wait(pilot, lambda: isinstance(app.screen, StudyDialog))
        app.screen.query_one("#study-trials").value = "40"
        await pilot.pause(0.5)
        app.save_screenshot("study-dialog.svg", str(IMAGES))
        print("wrote docs/images/study-dialog.svg")
        await pilot.press("enter")
        await wait(pilot, lambda: app.main.study is not None and app.main.study.done >= 9, timeout_s=120)
        await wait(pilot, lambda: app.main.view.step >= 150)
        await pilot.press("4")
        await pilot.pause(1.5)  # the trials are read every second
        app.save_screenshot("trials.svg", str(IMAGES))
        print("wrote docs/images/trials.svg")
        await pilot.resize_terminal(120, 40)
        await pilot.press("2")
        await pilot.pause(1.0)
        chart = app.main.query_one(LossChart)
        await wait(pilot, lambda: not chart.redraw_pending and not app.main.draw_pending)
        app.save_screenshot("study.svg", str(IMAGES))
        print("wrote docs/images/study.svg")
        await pilot.press("x")
        await wait(pilot, lambda: not app.main.busy)


def main() -> int:
    IMAGES.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lora-mlx-docs-") as tmp:
        os.environ["LORA_MLX_PRESETS"] = str(Path(tmp) / "presets")
        os.environ["LORA_MLX_STUDIES"] = str(Path(tmp) / "studies")
        asyncio.run(session(Path(tmp) / "runs"))
        asyncio.run(study_session(Path(tmp) / "runs"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

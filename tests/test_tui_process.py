"""Runs outlive the dashboard: kill the UI process or hang up its terminal, the engine trains on, attach sees it all."""

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from engine.client import pid_alive
from tui_support import fake_env, make_app, pilot_test, until, wait_for  # noqa: F401 (fake_env is a fixture)

UI_SCRIPT = """
import sys
from pathlib import Path
sys.path[:0] = [{tests!r}, {root!r}]
from tui_support import make_app

async def press_start(pilot):
    await pilot.press("s")
    while True:
        await pilot.pause(0.1)

make_app(Path({runs!r})).run(headless=True, size=(80, 24), auto_pilot=press_start)
"""


def record(run_dir: Path) -> dict:
    return json.loads((run_dir / "run.json").read_text())


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGHUP], ids=["ui-killed", "terminal-closed"])
@pilot_test
async def test_the_engine_keeps_training_when_the_ui_goes_and_attach_shows_the_whole_history(fake_env, monkeypatch, how):
    monkeypatch.setenv("FAKE_ENGINE_STEP_S", "0.02")
    tests = Path(__file__).resolve().parent
    script = UI_SCRIPT.format(tests=str(tests), root=str(tests.parent), runs=str(fake_env))
    ui = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        run_json = wait_for(lambda: next(fake_env.glob("*/run.json"), None), timeout_s=30, what="the UI to start a run")
        run_dir = run_json.parent
        wait_for(lambda: record(run_dir).get("step", 0) >= 50, what="the first checkpoint")
        ui.send_signal(how)
        assert ui.wait(timeout=10) == -how, ui.stderr.read().decode()
    finally:
        if ui.poll() is None:
            ui.kill()
    engine_pid = record(run_dir)["pid"]
    assert pid_alive(engine_pid)
    wait_for(lambda: record(run_dir).get("step", 0) >= 100, what="training to go on without the UI")

    app = make_app(fake_env, attach=run_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.main.view.step > 100, what="the live run")
        view = app.main.view
        assert view.state == "running" and view.train.steps == list(range(10, view.step + 1, 10))
        await pilot.press("x")
        await until(pilot, lambda: app.main.view.state == "finished", what="stopped")
    assert record(run_dir)["status"] == "stopped"

"""Helpers shared by the dashboard tests: the fake engine, bounded waits, run fixtures."""

from __future__ import annotations

import io
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from engine import config as C, protocol as P
from engine.client import pid_alive, read_record
from tui.app import LoraApp
from tui.state import Series

FAKE_ENGINE = (sys.executable, str(Path(__file__).resolve().parent / "fake_engine.py"))
DEMO_DATA = C.REPO_ROOT / "presets" / "data" / "demo"
# The tests' own preset, so presets/demo.yaml can change without changing what they expect.
TEST_PRESET = f"# The demo data with the engine's defaults.\nmodel: builtin:tiny\ndata: {DEMO_DATA}\n"


async def until(pilot, condition, timeout_s: float = 15.0, what: str = "the condition"):
    """Let the app run until condition() is true; fail after timeout_s with what was awaited."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            view = pilot.app.main.view
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what} (state {view.state}, step {view.step}, detail {view.detail!r})")
        await pilot.pause(0.02)


def wait_for(condition, timeout_s: float = 15.0, what: str = "the condition"):
    """The same as `until` for code outside an app."""
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)
    return value


@pytest.fixture
def fake_env(tmp_path, monkeypatch):
    """A private runs, studies and user preset folder; engines still alive at the end are killed."""
    monkeypatch.setenv("LORA_MLX_PRESETS", str(tmp_path / "user-presets"))
    monkeypatch.setenv("FAKE_ENGINE_STEP_S", "0.01")
    monkeypatch.setenv("LORA_MLX_STUDIES", str(tmp_path / "studies"))
    runs = tmp_path / "runs"
    yield runs
    for record in [*runs.glob("*/run.json"), *(tmp_path / "studies").glob("*/run.json")]:
        pid = json.loads(record.read_text()).get("pid")
        if pid_alive(pid) and pid != os.getpid():  # a run trained in the test process records this pid
            os.kill(pid, signal.SIGKILL)


def test_preset(folder: Path) -> Path:
    """folder/demo.yaml: the demo data, every other key at its default."""
    path = folder / "test-presets" / "demo.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(TEST_PRESET)
    return path


def make_app(runs: Path, preset: Path | None = None, attach: Path | None = None, engine=FAKE_ENGINE) -> LoraApp:
    """The dashboard on the tests' preset (or `preset`), with its runs under `runs`."""
    if attach is None and preset is None:
        preset = test_preset(runs.parent)
    return LoraApp(preset_path=None if attach else preset, attach=attach, engine_command=engine, runs_root=runs)


def engine_pid(app: LoraApp) -> int:
    return read_record(Path(app.main.view.run_dir)).get("pid")


def notifications(app: LoraApp) -> list[str]:
    return [n.message for n in app._notifications]


def screen_lines(app: LoraApp) -> list[str]:
    """The screen as plain text, a string per row."""
    from rich.console import Console

    console = Console(width=app.size.width, record=True, file=io.StringIO(), color_system=None, legacy_windows=False)
    console.print(app.screen._compositor.render_update(full=True))
    return console.export_text().splitlines()


def rendered(app: LoraApp, widget) -> str:
    """The words inside a widget's region on screen now, borders dropped and wrapped lines joined."""
    region = widget.region
    rows = screen_lines(app)[region.y : region.y + region.height]
    text = " ".join(row[region.x : region.x + region.width] for row in rows)
    return " ".join(text.translate({ord(c): " " for c in "│╭╮╰╯─█▀▄▌▐▉▏"}).split())


def set_field(app: LoraApp, key: str, text: str) -> None:
    from tui.widgets.config_form import editor_id

    app.main.query_one(f"#{editor_id(key)}").value = text


# Fixed events for snapshots: no clock, no pid, no temp paths.
RUN_DIR = "/runs/demo-20260101-120000"


def story(until_step: int = 120, total: int = 200, run_dir: str = RUN_DIR) -> tuple[list[P.Event], list[P.StepReported], P.MemorySampled]:
    events: list[P.Event] = [P.RunStarted(run_dir, total, 0, 75_000, 944_000, 1500, 100), P.EvalReported(0, 6.9, 0.3)]
    steps = [
        P.StepReported(s, s / 375, 0.8 + 6.0 * 2.718 ** (-4.0 * s / total), 1e-5, 2100.0 + s, s * 512, 0.25, s * 0.05)
        for s in range(10, until_step + 1, 10)
    ]
    for s in range(50, until_step + 1, 50):
        events.append(P.EvalReported(s, 0.9 + 6.0 * 2.718 ** (-3.5 * s / total), 0.4))
    events.append(P.CheckpointSaved(100, f"{run_dir}/checkpoints/step-0000100", "periodic"))
    memory = P.MemorySampled(0.42, 0.61, 0.12, 0.9, 12.5, 3.5, 16.0, 0.1, 0.0)
    return events, steps, memory


def write_run(runs: Path, name: str, best: float, status: str = "finished", iters: int = 200, rank: int = 8) -> Path:
    """A finished run on disk, as the engine leaves it (fixed times)."""
    from engine.metrics import MetricsLog

    run_dir = runs / name
    run_dir.mkdir(parents=True)
    cfg = C.Config()
    cfg.data.path = "/data/demo"
    cfg.lora.rank = rank
    cfg.train.iters = iters
    (run_dir / "config.yaml").write_text(C.dump(cfg))
    record = {"status": status, "created_at": "2026-01-01T10:00:00+00:00", "updated_at": "2026-01-01T10:03:20+00:00",
              "pid": 0, "total_steps": iters, "step": iters, "best_val_loss": best}
    (run_dir / "run.json").write_text(json.dumps(record))
    log = MetricsLog(run_dir)
    log.write(P.RunStarted(str(run_dir), iters, 0, 1, 2, 3, 4))
    for s in range(10, iters + 1, 10):
        log.write(P.StepReported(s, 0.0, best + 3.0 * (1 - s / iters), 1e-5, 1000.0, s, 0.1, s * 0.1))
    log.write(P.EvalReported(iters, best, 0.1))
    log.write(P.RunFinished(iters, False, best, str(run_dir / "adapters")))
    log.close()
    return run_dir


def series(points: list[tuple[int, float]]) -> Series:
    return Series([s for s, _ in points], [v for _, v in points])


def pilot_test(test):
    """Run an async test in its own event loop (no pytest plugin needed); fixtures still inject."""
    import asyncio
    import functools

    @functools.wraps(test)
    def run(*args, **kwargs):
        asyncio.run(test(*args, **kwargs))

    return run


async def shows(pilot, widget, *phrases: str, timeout_s: float = 10.0) -> str:
    """Wait until every phrase is on screen inside widget (a widget, or a function returning one)."""
    app = pilot.app

    def text() -> str:
        return rendered(app, widget() if callable(widget) else widget)

    await until(pilot, lambda: all(p in text() for p in phrases), timeout_s, what=f"{phrases} on screen (showing {text()!r})")
    return text()


async def told(pilot, *messages: str) -> None:
    """Wait until the app has shown these notifications (notify() posts a message: it lands a moment later)."""
    await until(pilot, lambda: all(m in notifications(pilot.app) for m in messages), what=f"notifications {messages} (have {notifications(pilot.app)})")


STUDY_PARAMS = ({"train.learning_rate": 5e-4, "lora.rank": 16}, {"train.learning_rate": 1e-4, "lora.rank": 8},
                {"train.learning_rate": 2e-3, "lora.rank": 4}, {"train.learning_rate": 1e-5, "lora.rank": 8})


def write_study(studies: Path, name: str = "demo") -> Path:
    """A study on disk with fixed times: trial 0 complete, 1 complete (better), 2 pruned at step 100, 3 failed."""
    from datetime import datetime, timedelta

    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    study_dir = studies / name
    study_dir.mkdir(parents=True)
    url = f"sqlite:///{study_dir / 'study.db'}"
    (study_dir / "study.json").write_text(json.dumps({"study": name, "storage": url}))
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(storage=url, study_name=name, direction="minimize")
    dists = {"train.learning_rate": FloatDistribution(1e-5, 1e-2, log=True), "lora.rank": CategoricalDistribution((4, 8, 16))}
    start = datetime(2026, 1, 1, 9, 0, 0)
    results = [("COMPLETE", 1.12, None), ("COMPLETE", 0.87, None), ("PRUNED", None, 100), ("FAIL", None, None)]
    for number, ((state, value, pruned_at), params) in enumerate(zip(results, STUDY_PARAMS)):
        run_dir = study_dir / f"trial-{number:04d}"
        curve = {50: 3.0 - number * 0.1, 100: 2.0 - number * 0.2, 200: value or 2.5}
        attrs = {"run_dir": str(run_dir), "adapter_path": f"{run_dir}/checkpoints/step-0000200" if value else None}
        if value:
            attrs.update(best_val_loss=value, best_step=200)
        if pruned_at:
            attrs.update(pruned_at_step=pruned_at, best_val_loss=curve[100])
            curve = {k: v for k, v in curve.items() if k <= pruned_at}
        if state == "FAIL":
            attrs.update(fail_reason="non-finite loss in 3 steps in a row at step 40", interrupted=False)
            curve = {}
        trial = optuna.trial.FrozenTrial(
            number=number, state=getattr(optuna.trial.TrialState, state), value=value,
            datetime_start=start + timedelta(minutes=5 * number), datetime_complete=start + timedelta(minutes=5 * number, seconds=200 - 40 * number),
            params=params, distributions=dists, user_attrs=attrs, system_attrs={}, intermediate_values=curve, trial_id=number,
        )
        study.add_trial(trial)
    return study_dir

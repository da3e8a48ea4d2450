"""The leaderboard, the curve overlay, and attaching to runs (live, finished, dead, shared)."""

import json
import os
from pathlib import Path

from engine import protocol as P
from engine.client import EngineClient
from tui.widgets.leaderboard import Leaderboard
from tui.widgets.loss_chart import LossChart
from tui_support import fake_env, make_app, pilot_test, shows, told, until, wait_for, write_run  # noqa: F401 (fake_env is a fixture)


@pilot_test
async def test_runs_are_listed_best_first_and_enter_overlays_a_runs_curves(fake_env):
    write_run(fake_env, "demo-a", best=1.25, rank=8)
    write_run(fake_env, "demo-b", best=0.75, rank=16)
    app = make_app(fake_env)
    async with app.run_test(size=(80, 24)) as pilot:
        board = app.main.query_one(Leaderboard)
        await until(pilot, lambda: len(board.rows) == 2, what="the runs")
        assert [r.name for r in board.rows] == ["demo-b", "demo-a"]
        await pilot.press("4")
        await shows(pilot, board, "demo-b finished 0.7500 200/200 lora r16 lr 1e-05 bs 4 03:20")
        await pilot.press("enter")
        chart = app.main.query_one(LossChart)
        await until(pilot, lambda: chart.overlay is not None, what="the overlay")
        name, train, val = chart.overlay
        assert name == "demo-b" and train.steps[0] == 10 and len(train) == 20 and val.values == [0.75]
        await told(pilot, "demo-b is overlaid on the training chart (grey).")
        await pilot.press("enter")
        await told(pilot, "Overlay removed.")
        assert chart.overlay is None


@pilot_test
async def test_r_refreshes_the_runs(fake_env):
    app = make_app(fake_env)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("4")
        board = app.main.query_one(Leaderboard)
        await app.workers.wait_for_complete()
        await shows(pilot, board, "No runs yet")
        assert board.rows == []
        write_run(fake_env, "demo-new", best=2.0)
        await pilot.press("r")
        await until(pilot, lambda: [r.name for r in board.rows] == ["demo-new"], what="the new run")


@pilot_test
async def test_attach_replays_the_whole_history_then_controls_the_run(fake_env, monkeypatch):
    monkeypatch.setenv("FAKE_ENGINE_STEP_S", "0.02")
    first = make_app(fake_env)
    async with first.run_test(size=(80, 24)) as pilot:
        await pilot.press("s")
        await until(pilot, lambda: first.main.view.step >= 60, what="step 60")
        await pilot.press("q", "d")
        run_dir = Path(first.main.view.run_dir)
    wait_for(lambda: json.loads((run_dir / "run.json").read_text()).get("step", 0) >= 100, what="the detached run to go on")
    second = make_app(fake_env, attach=run_dir)
    async with second.run_test(size=(80, 24)) as pilot:
        view = second.main.view
        await until(pilot, lambda: second.main.view.step > 100, what="live steps after the replay")
        view = second.main.view
        assert view.state == "running" and view.train.steps[:3] == [10, 20, 30]
        assert view.train.steps == list(range(10, view.step + 1, 10))  # every report, none lost or repeated
        assert view.val.steps[0] == 0
        await until(pilot, lambda: second.main.query_one("#f-train--iters").disabled, what="the run's config shown locked")
        assert second.main.preset_name == f"run {run_dir.name}"
        await pilot.press("p")
        await until(pilot, lambda: second.main.view.state == "paused", what="paused")
        await pilot.press("x")
        await until(pilot, lambda: second.main.view.state == "finished", what="stopped")
    assert json.loads((run_dir / "run.json").read_text())["status"] == "stopped"


@pilot_test
async def test_two_controllers_on_one_run_both_stay_correct(fake_env, monkeypatch):
    monkeypatch.setenv("FAKE_ENGINE_STEP_S", "0.02")
    app = make_app(fake_env)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("s")
        await until(pilot, lambda: app.main.view.step >= 20, what="step 20")
        other = EngineClient(Path(app.main.view.run_dir))
        other.connect(timeout_s=5)
        other.send(P.Pause())  # someone else pauses it
        await until(pilot, lambda: app.main.view.state == "paused", what="the other client's pause")
        await pilot.press("p")  # and this one resumes it
        seen = []
        await until(pilot, lambda: seen.extend(other.receive(0.01)) or any(isinstance(e, P.Resumed) for e in seen), what="the other client to see the resume")
        other.close()
        await pilot.press("x")
        await until(pilot, lambda: app.main.view.state == "finished", what="stopped")


@pilot_test
async def test_attach_to_a_finished_run_shows_its_history(fake_env):
    run_dir = write_run(fake_env, "demo-done", best=0.5)
    app = make_app(fake_env, attach=run_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.main.view.state == "finished", what="finished")
        assert len(app.main.view.train) == 20 and app.main.view.best_val_loss == 0.5
        await pilot.press("p")
        await told(pilot, "Nothing to pause: the run is finished.")


@pilot_test
async def test_attach_to_a_run_whose_engine_died_shows_it_failed(fake_env):
    run_dir = write_run(fake_env, "demo-dead", best=0.5)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()[:-1]  # no end was recorded
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    record = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps({**record, "status": "running", "pid": 999_999_999, "exit_code": -9}))
    (run_dir / "engine.log").write_text("step 190/200\nKilled\n")
    app = make_app(fake_env, attach=run_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.main.view.state == "failed", what="failed")
        assert app.main.view.failure[0] == "The engine process ended without finishing: exit code -9 (SIGKILL: killed)."
        assert app.main.view.failure[-2:] == ["  step 190/200", "  Killed"]


@pilot_test
async def test_a_command_to_an_engine_that_never_answers_is_reported_not_left_pending(fake_env):
    run_dir = write_run(fake_env, "demo-mute", best=0.5)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()[:-1]  # still going, as far as its files tell
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    record = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps({**record, "status": "running", "pid": os.getpid()}))  # alive, no socket
    app = make_app(fake_env, attach=run_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("p")  # while the dashboard is still trying to connect
        assert app.main.view.detail == "pausing at the next step"
        await told(pilot, "The engine did not get 'Pause': it is not reachable.")
        assert app.main.view.detail != "pausing at the next step"

"""Every run key against the fake engine (a real process speaking the real protocol)."""

import json
import os
import signal
import time
from pathlib import Path

from engine import protocol as P
from engine.client import EngineClient
from tui.dialogs.help import HelpDialog
from tui.dialogs.quit import QuitDialog
from tui.widgets.loss_chart import LossChart
from tui.widgets.memory_gauge import MemoryGauge
from tui.widgets.status_bar import StatusBar
from tui.widgets.training import TrainingPane
from tui_support import engine_pid, fake_env, make_app, pilot_test, set_field, shows, told, until  # noqa: F401 (fake_env is a fixture)


async def start(pilot, past_step: int = 20):
    await pilot.press("s")
    await until(pilot, lambda: pilot.app.main.view.step >= past_step, what=f"step {past_step}")


def events_text(app) -> str:
    return "\n".join(str(line) for line in app.main.query_one("#events").lines)


@pilot_test
async def test_s_starts_a_run_and_the_pane_shows_steps_curves_and_memory(fake_env, monkeypatch):
    monkeypatch.setenv("FAKE_ENGINE_LOAD_S", "1.0")  # long enough to see it starting
    app = make_app(fake_env)
    async with app.run_test(size=(80, 24)) as pilot:
        assert app.main.view.state == "idle"
        await pilot.press("s")
        assert app.main.view.state == "starting"
        await until(pilot, lambda: app.main.view.step >= 30 and app.main.view.memory is not None, what="steps and memory")
        view = app.main.view
        assert view.state == "running" and view.total_steps == 1000
        assert view.train.steps[:3] == [10, 20, 30] and view.val.steps[0] == 0
        # Drawn at most twice a second: wait for the widgets to catch up with the view.
        await until(pilot, lambda: app.main.query_one(LossChart).train is view.train, what="the chart to show the run")
        await until(pilot, lambda: app.main.query_one(MemoryGauge).sample is not None, what="the gauge to show a reading")
        await shows(pilot, app.main.query_one(StatusBar), "RUNNING", view.run_name, "/1000")
        await shows(pilot, app.main.query_one(TrainingPane), "loss", "tok/s 2000", "ETA", "mem 0.")
        assert Path(view.run_dir).parent == fake_env
        await until(pilot, lambda: app.main.query_one("#f-train--iters").disabled, what="the form locked while it runs")


@pilot_test
async def test_the_sample_answer_shows_under_the_chart(fake_env):
    app = make_app(fake_env)
    async with app.run_test(size=(80, 24)) as pilot:
        set_field(app, "train.sample_prompt", "who are you?")
        set_field(app, "train.steps_per_eval", "20")
        await pilot.pause()
        await pilot.press("escape", "s")
        await until(pilot, lambda: app.main.view.sample is not None and app.main.view.sample.step >= 20, what="a sample")
        await shows(pilot, app.main.query_one("#sample"), "sample @", "who are you? →")


@pilot_test
async def test_p_pauses_at_a_step_boundary_and_p_again_resumes(fake_env):
    app = make_app(fake_env)
    async with app.run_test(size=(80, 24)) as pilot:
        await start(pilot)
        await pilot.press("p")
        await until(pilot, lambda: app.main.view.state == "paused", what="paused")
        record = json.loads((Path(app.main.view.run_dir) / "run.json").read_text())
        assert record["status"] == "paused"
        assert "paused at step" in events_text(app)
        paused_at = app.main.view.step
        await pilot.pause(0.3)  # 30 steps' time: a paused engine reports none
        assert app.main.view.step == paused_at
        await pilot.press("p")
        await until(pilot, lambda: app.main.view.state == "running" and app.main.view.step > paused_at + 10, what="resumed steps")
        assert "resumed at step" in events_text(app)


@pilot_test
async def test_c_saves_a_checkpoint_and_keeps_training(fake_env):
    app = make_app(fake_env)
    async with app.run_test(size=(80, 24)) as pilot:
        await start(pilot)
        await pilot.press("c")
        await until(pilot, lambda: "checkpoint (requested)" in events_text(app), what="the requested checkpoint")
        path = app.main.view.last_checkpoint
        assert Path(path).is_dir() and app.main.view.state == "running"


@pilot_test
async def test_x_saves_a_checkpoint_and_stops(fake_env):
    app = make_app(fake_env)
    async with app.run_test(size=(80, 24)) as pilot:
        await start(pilot)
        await pilot.press("x")
        await until(pilot, lambda: app.main.view.state == "finished", what="finished")
        assert "checkpoint (stop)" in events_text(app)
        assert app.main.view.detail.startswith("stopped at step")
        assert json.loads((Path(app.main.view.run_dir) / "run.json").read_text())["status"] == "stopped"
        await until(pilot, lambda: not app.main.query_one("#f-train--iters").disabled, what="the form unlocked")


@pilot_test
async def test_keys_that_do_not_apply_say_why(fake_env):
    app = make_app(fake_env)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("p", "x", "c")
        await told(pilot, "Nothing to pause: no run is active.", "Nothing to stop: no run is active.", "Nothing to checkpoint: no run is active.")
        await start(pilot)
        await pilot.press("s")
        await told(pilot, "A run is already running: stop it with x first.")


@pilot_test
async def test_q_without_a_run_quits(fake_env):
    app = make_app(fake_env)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("q")
        await until(pilot, lambda: app._exit, what="exit")
    assert app.return_code == 0


@pilot_test
async def test_q_with_a_run_asks_and_cancel_keeps_everything(fake_env):
    app = make_app(fake_env)
    async with app.run_test(size=(80, 24)) as pilot:
        await start(pilot)
        await pilot.press("q")
        assert isinstance(app.screen, QuitDialog)
        await pilot.press("escape")
        assert app.screen is app.main and not app._exit
        step = app.main.view.step
        await until(pilot, lambda: app.main.view.step > step, what="more steps")


@pilot_test
async def test_q_then_detach_leaves_the_engine_training(fake_env):
    app = make_app(fake_env)
    async with app.run_test(size=(80, 24)) as pilot:
        await start(pilot)
        await pilot.press("q")
        await pilot.press("d")
        await until(pilot, lambda: app._exit, what="exit")
        run_dir = Path(app.main.view.run_dir)
        pid = engine_pid(app)
    step = json.loads((run_dir / "run.json").read_text()).get("step", 0)
    os.kill(pid, 0)  # still there
    deadline = time.monotonic() + 10
    while json.loads((run_dir / "run.json").read_text()).get("step", 0) <= step:  # it keeps checkpointing
        assert time.monotonic() < deadline, "the detached engine stopped training"
        time.sleep(0.05)


@pilot_test
async def test_q_then_stop_and_save_waits_for_the_checkpoint_and_quits(fake_env):
    app = make_app(fake_env)
    async with app.run_test(size=(80, 24)) as pilot:
        await start(pilot)
        await pilot.press("q")
        await pilot.press("s")
        await until(pilot, lambda: app._exit, what="exit after the stop")
        run_dir = Path(app.main.view.run_dir)
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "stopped" and Path(record["last_checkpoint"]).is_dir()


@pilot_test
async def test_ctrl_q_asks_the_same_question(fake_env):
    app = make_app(fake_env)
    async with app.run_test(size=(80, 24)) as pilot:
        await start(pilot)
        await pilot.press("ctrl+q")
        assert isinstance(app.screen, QuitDialog)
        await pilot.press("s")
        await until(pilot, lambda: app._exit, what="exit after the stop")


@pilot_test
async def test_a_killed_engine_shows_as_failed_within_a_second_with_exit_code_log_and_checkpoint(fake_env):
    app = make_app(fake_env)
    async with app.run_test(size=(80, 24)) as pilot:
        await start(pilot, past_step=110)  # past the periodic checkpoint at 100
        os.kill(engine_pid(app), signal.SIGKILL)
        killed = time.monotonic()
        await until(pilot, lambda: app.main.view.state == "failed", timeout_s=5, what="failed")
        assert time.monotonic() - killed < 1.0
        step = app.main.view.step
        await shows(
            pilot,
            app.main.query_one("#failure"),
            "exit code -9 (SIGKILL: killed)",
            "Last checkpoint: checkpoints/step-0000100",
            "Last lines of engine.log:",
            f"step {step}/",  # the engine's last report, from engine.log
        )
        await until(pilot, lambda: not app.main.query_one("#f-train--iters").disabled, what="the form unlocked")


@pilot_test
async def test_an_aborted_engine_reports_exit_code_minus_6(fake_env, monkeypatch):
    monkeypatch.setenv("FAKE_ENGINE_ABORT_AT", "25")
    app = make_app(fake_env)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("s")
        await until(pilot, lambda: app.main.view.state == "failed", what="failed")
        assert "exit code -6 (SIGABRT: aborted; on Apple silicon this is how running out of memory ends a process)" in app.main.view.failure[0]
        assert "  fake engine: aborting at step 25" in app.main.view.failure


@pilot_test
async def test_a_run_failed_event_shows_its_reason(fake_env, monkeypatch):
    monkeypatch.setenv("FAKE_ENGINE_FAIL_AT", "15")
    app = make_app(fake_env)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("s")
        await until(pilot, lambda: app.main.view.state == "failed", what="failed")
        await pilot.pause()
        await shows(pilot, lambda: app.main.query_one("#failure"), "The run failed at step 15: the fake engine was told to fail")
        await shows(pilot, lambda: app.main.query_one(StatusBar), "FAILED")


@pilot_test
async def test_question_mark_shows_every_key(fake_env):
    app = make_app(fake_env)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpDialog)
        keys = {key: what for _, key, what in app.screen.keys}
        assert keys["x"] == "Save a checkpoint, then stop the run"
        assert {"s", "p", "x", "c", "q", "?", "1", "2", "3", "4", "ctrl+s", "ctrl+p"} <= set(keys)
        await shows(pilot, app.screen.query_one(".dialog"), "Save a checkpoint, then stop the run", "lora-mlx attach")
        await pilot.press("escape")
        assert app.screen is app.main


@pilot_test
async def test_every_run_key_is_in_the_command_palette(fake_env):
    app = make_app(fake_env)
    async with app.run_test(size=(80, 24)) as pilot:
        titles = {command.title for command in app.get_system_commands(app.main)}
        assert {"Start", "Pause", "Stop", "Checkpoint", "Help", "Show config", "Show runs"} <= titles
        await start(pilot)
        await pilot.press("ctrl+p")
        await pilot.press(*"Pause")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await until(pilot, lambda: app.main.view.state == "paused", what="paused from the palette")


@pilot_test
async def test_the_footer_shows_the_run_keys(fake_env):
    app = make_app(fake_env)
    async with app.run_test(size=(80, 24)) as pilot:
        await shows(pilot, app.main.query_one("Footer"), "s Start", "p Pause", "x Stop", "c Checkpoint", "q Quit", "? Help")


@pilot_test
async def test_a_relative_runs_folder_is_the_one_in_the_current_directory(fake_env, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the repository, where the engine process starts
    app = make_app(Path("my-runs"))
    async with app.run_test(size=(80, 24)) as pilot:
        await start(pilot)
        assert Path(app.main.view.run_dir).parent == tmp_path / "my-runs"
        await pilot.press("x")
        await until(pilot, lambda: app.main.view.state == "finished", what="finished")


@pilot_test
async def test_the_quit_question_goes_away_when_the_run_ends_meanwhile(fake_env, monkeypatch):
    monkeypatch.setenv("FAKE_ENGINE_STEP_S", "0.02")
    app = make_app(fake_env)
    async with app.run_test(size=(80, 24)) as pilot:
        await start(pilot)
        await pilot.press("q")
        assert isinstance(app.screen, QuitDialog)
        other = EngineClient(Path(app.main.view.run_dir))
        other.connect(timeout_s=5)
        other.send(P.Stop())  # another terminal stops it (and stays connected: see the report on the server)
        await until(pilot, lambda: app.screen is app.main, what="the dialog to close")
        other.close()
        await told(pilot, "The run is finished; nothing to stop or detach from.")


def test_run_app_refuses_an_unknown_preset_or_a_folder_that_is_not_a_run(tmp_path, capsys):
    from tui.app import run_app

    assert run_app("demoo") == 2
    assert "error: preset 'demoo' not found (did you mean 'demo'?)" in capsys.readouterr().err
    assert run_app(None, attach=tmp_path) == 2
    assert capsys.readouterr().err == f"error: {tmp_path}: not a run or study directory (no config.yaml, no study.json)\n"


@pilot_test
async def test_a_burst_of_steps_folds_into_a_few_updates_and_loses_none(fake_env):
    from tui.messages import Telemetry

    app = make_app(fake_env)
    async with app.run_test(size=(80, 24)) as pilot:
        view = app.main.view
        applied = []
        apply = view.apply
        view.apply = lambda events: applied.append(len(events)) or apply(events)

        # What a history replay or a stalled terminal looks like: 3000 messages queued before the
        # screen gets to handle any (posted without yielding to the event loop, so it is deterministic).
        for step in range(1, 3001):
            app.main.post_message(Telemetry([P.StepReported(step, 0.0, 1.0, 1e-5, 1.0, step, 0.1, step * 0.01)], None))
        await until(pilot, lambda: view.step == 3000, what="every step")
        assert view.train.steps == list(range(1, 3001))
        assert len(applied) < 30  # queued step messages were folded together, not handled one by one

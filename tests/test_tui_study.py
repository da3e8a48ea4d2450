"""The dashboard's side of a study: t, the trial leaderboard filling live, quit and continue, the best trial's adapters.

A fake engine hosts the study: the real socket protocol, a real Optuna storage, scripted trials.
"""

from pathlib import Path

import yaml

from engine import client as engine_client
from tui.dialogs.quit import QuitDialog
from tui.dialogs.study import StudyDialog
from tui.dialogs.try_it import TryItScreen
from tui.widgets.boards import Boards
from tui.widgets.loss_chart import LossChart
from tui.widgets.status_bar import StatusBar
from tui.widgets.trial_board import TrialBoard
from tui_support import TEST_PRESET, fake_env, make_app, pilot_test, set_field, shows, told, until, wait_for  # noqa: F401 (fake_env is a fixture)

SHORT = {"train.iters": "40", "train.steps_per_eval": "10", "train.steps_per_report": "5"}


def short_trials(app) -> None:
    for key, value in SHORT.items():
        set_field(app, key, value)


async def open_study_dialog(pilot, trials: str = "6", pruner: str | None = None):
    app = pilot.app
    await pilot.press("escape", "t")
    await until(pilot, lambda: isinstance(app.screen, StudyDialog), what="the study dialog")
    dialog = app.screen
    dialog.query_one("#study-trials").value = trials
    if pruner:
        dialog.query_one("#study-pruner").value = pruner
    await pilot.pause()
    return dialog


def rows(app):
    return app.main.query_one(TrialBoard).rows


@pilot_test
async def test_t_starts_a_study_whose_trials_fill_the_leaderboard_live_and_are_pruned(fake_env, monkeypatch):
    monkeypatch.setenv("FAKE_ENGINE_PRUNER_STARTUP", "1")  # prune from the second trial on
    app = make_app(fake_env)
    async with app.run_test(size=(120, 40)) as pilot:
        short_trials(app)
        dialog = await open_study_dialog(pilot)
        await shows(pilot, dialog, "study 'demo'", "the default space", "train.learning_rate: float 1e-06..0.0001 log", "A new study in")
        await pilot.press("enter")
        await until(pilot, lambda: app.main.study is not None and app.main.study.trial is not None, what="the first trial")
        assert app.main.busy and app.main.query_one("#f-train--iters").disabled
        board = app.main.query_one(Boards)
        assert board.current == "trial-board" and board.border_title == "Trials · demo"
        await shows(pilot, app.main.query_one(StatusBar), "STUDY RUNNING", "demo", "/6 done", "trial")
        # The running trial's curve is the training chart's: the view follows each new trial.
        await until(pilot, lambda: "trial-" in app.main.view.run_dir and len(app.main.view.train) >= 2, what="the running trial's curve")
        await until(pilot, lambda: any(r.state == "running" for r in rows(app)), what="a running trial in the leaderboard")
        await until(pilot, lambda: app.main.study.state == "finished", timeout_s=60, what="the study to finish")
        await until(pilot, lambda: len(rows(app)) == 6 and all(r.state != "running" for r in rows(app)), what="six finished rows")
        states = [r.state for r in rows(app)]
        assert states.count("pruned") >= 1 and states[0] == "complete"  # best first
        values = [r.value for r in rows(app) if r.state == "complete"]
        assert values == sorted(values)
        pruned = next(r for r in rows(app) if r.state == "pruned")
        text = await shows(pilot, app.main.query_one(TrialBoard), "study demo: 6 of 6 done", "pruned", "best: trial")
        assert f"✂ {pruned.pruned_at_step}" in app.main.query_one("#trials-table").get_row(str(pruned.number))  # scrolled to the right
        assert "importance: after 5 complete trials" in text or "importance: lr" in text
        assert not app.main.busy
        await until(pilot, lambda: not app.main.query_one("#f-train--iters").disabled, what="the form unlocked")
        log = "\n".join(str(line) for line in app.main.query_one("#events").lines)
        assert f"trial {pruned.number} pruned at step {pruned.pruned_at_step}" in log and "study demo finished" in log


@pilot_test
async def test_importance_shows_once_five_trials_are_complete_and_enter_overlays_a_trial(fake_env):
    app = make_app(fake_env)
    async with app.run_test(size=(120, 40)) as pilot:
        short_trials(app)
        await open_study_dialog(pilot, trials="6", pruner="none")
        await pilot.press("enter")
        await until(pilot, lambda: app.main.study is not None and app.main.study.state == "finished", timeout_s=60, what="the study")
        board = app.main.query_one(TrialBoard)
        await until(pilot, lambda: board.snapshot is not None and board.snapshot.importance, what="importances")
        assert set(board.snapshot.importance) == {"train.learning_rate", "lora.rank", "lora.alpha", "lora.dropout"}
        await shows(pilot, board, "importance: lr")
        await pilot.press("4")
        await until(pilot, lambda: app.focused is not None and app.focused.id == "trials-table", what="the trials table focused")
        table = board.query_one("#trials-table")
        table.move_cursor(row=0)
        await pilot.press("down")
        assert table.cursor_row == 1
        chosen = board.rows[1]
        await pilot.press("enter")
        chart = app.main.query_one(LossChart)
        await until(pilot, lambda: chart.overlay is not None, what="a trial's curve overlaid")
        assert chart.overlay[0] == Path(chosen.run_dir).name and len(chart.overlay[1]) == 8  # steps 5..40
        await shows(pilot, board, f"◆ {chosen.number}")
        await pilot.press("l")
        assert app.main.query_one(Boards).current == "run-board"
        await pilot.press("l")
        assert app.main.query_one(Boards).current == "trial-board"


@pilot_test
async def test_quitting_stops_the_study_and_t_later_continues_it(fake_env, monkeypatch):
    monkeypatch.setenv("FAKE_ENGINE_STEP_S", "0.05")  # 2 s a trial: the quit lands well before the study could end
    app = make_app(fake_env)
    async with app.run_test(size=(120, 40)) as pilot:
        short_trials(app)
        await open_study_dialog(pilot, trials="5", pruner="none")
        await pilot.press("enter")
        await until(pilot, lambda: app.main.study is not None and app.main.study.done >= 2, timeout_s=60, what="two trials done")
        await pilot.press("q")
        await until(pilot, lambda: isinstance(app.screen, QuitDialog), what="the quit question")
        await shows(pilot, app.screen, "study demo is still running", "the study stops; t continues it")
        await pilot.press("s")
        await until(pilot, lambda: app._exit, timeout_s=30, what="exit after the study stopped")
    assert app.return_code == 0
    study_dir = fake_env.parent / "studies" / "demo"
    record = engine_client.read_record(study_dir)
    assert record["status"] == "stopped"
    wait_for(lambda: not engine_client.pid_alive(record["pid"]), what="the study process to end")
    done_before = app.main.study.done

    again = make_app(fake_env)
    async with again.run_test(size=(120, 40)) as pilot:
        board = again.main.query_one(TrialBoard)
        # The stop may land mid-trial (one stopped row more) or between trials (none), so at least done_before rows.
        await until(pilot, lambda: len(board.rows) >= done_before, what="the study's trials shown on opening")  # before any key
        assert again.main.query_one(Boards).current == "trial-board"  # the study is newer than any run
        short_trials(again)
        await pilot.press("escape", "t")
        await until(pilot, lambda: isinstance(again.screen, StudyDialog), what="the study dialog")
        dialog = again.screen
        assert dialog.query_one("#study-trials").value == "5" and dialog.query_one("#study-pruner").value == "none"  # as last time
        await shows(pilot, dialog, "Continues the study in", f"{done_before} complete")
        await pilot.press("enter")
        await until(pilot, lambda: again.main.study is not None and again.main.study.state == "finished", timeout_s=60, what="the continued study")
        await until(pilot, lambda: sum(r.state == "complete" for r in board.rows) == 5, what="five complete trials")
        assert not [r for r in board.rows if r.state == "running"]


@pilot_test
async def test_detach_then_attach_shows_the_study_and_its_running_trial(fake_env, monkeypatch):
    monkeypatch.setenv("FAKE_ENGINE_STEP_S", "0.03")
    app = make_app(fake_env)
    async with app.run_test(size=(120, 40)) as pilot:
        short_trials(app)
        await open_study_dialog(pilot, trials="8", pruner="none")  # more than can finish before the attach, even on a loaded machine
        await pilot.press("enter")
        await until(pilot, lambda: app.main.study is not None and app.main.study.done >= 1, timeout_s=60, what="a trial done")
        await pilot.press("q", "d")
    study_dir = fake_env.parent / "studies" / "demo"
    assert engine_client.pid_alive(engine_client.read_record(study_dir)["pid"])  # it kept running

    again = make_app(fake_env, attach=study_dir)
    async with again.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: again.main.study is not None and again.main.study.trial is not None, what="the study's running trial")
        assert again.main.study.name == "demo" and again.main.study.target == 8
        await until(pilot, lambda: len(again.main.view.train) >= 1 and "trial-" in again.main.view.run_dir, what="the trial's curve")
        await pilot.press("x")
        await until(pilot, lambda: again.main.study.state == "stopped", timeout_s=30, what="the study stopped")
    assert engine_client.read_record(study_dir)["status"] == "stopped"


@pilot_test
async def test_b_tries_the_best_trials_adapters_and_P_promotes_it_to_a_preset(fake_env):
    app = make_app(fake_env)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("b")
        await told(pilot, "No complete trial yet: start a study with t.")
        short_trials(app)
        await open_study_dialog(pilot, trials="3", pruner="none")
        await pilot.press("enter")
        await until(pilot, lambda: app.main.study is not None and app.main.study.state == "finished", timeout_s=60, what="the study")
        board = app.main.query_one(TrialBoard)
        await until(pilot, lambda: board.snapshot and board.snapshot.best, what="a best trial")
        best = board.snapshot.best
        await pilot.press("b")
        await until(pilot, lambda: isinstance(app.screen, TryItScreen), what="the try-it screen")
        assert app.screen.run_dir == Path(best.run_dir) and app.screen.which == "best"
        await pilot.press("escape")
        await pilot.press("4", "P")
        await until(pilot, lambda: any("Best trial promoted" == n.title for n in app._notifications), what="the promotion")
        path = fake_env.parent / "user-presets" / "demo-best.yaml"
        written = yaml.safe_load(path.read_text())
        assert written["train"]["learning_rate"] == best.params["train.learning_rate"]
        assert f"trial {best.number}" in path.read_text().splitlines()[0]


@pilot_test
async def test_t_refuses_while_a_run_is_active_and_names_a_bad_search_section(fake_env):
    preset = fake_env.parent / "p" / "demo.yaml"
    preset.parent.mkdir(parents=True)
    preset.write_text(TEST_PRESET + "search:\n  lora.rnak: [4, 8]\n")
    app = make_app(fake_env, preset=preset)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("t")
        await told(pilot, f"{preset}:5: search: lora.rnak: unknown parameter (did you mean 'lora.rank'?)")
        assert not isinstance(app.screen, StudyDialog)
        await pilot.press("s")
        await until(pilot, lambda: app.main.view.step > 0, what="a run")
        await pilot.press("t")
        await told(pilot, "A run or study is active: stop it with x first (or detach with q).")
        assert not isinstance(app.screen, StudyDialog)
        await pilot.press("x")


@pilot_test
async def test_attaching_to_a_study_run_by_lora_mlx_tune_shows_its_stored_trials(fake_env):
    from tui_support import write_study

    study_dir = write_study(fake_env.parent / "studies")  # as workers on other machines leave it: no run.json, no socket
    app = make_app(fake_env, attach=study_dir)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.main.study is not None and app.main.study.state == "watching", what="watching the study")
        board = app.main.query_one(TrialBoard)
        await until(pilot, lambda: len(board.rows) == 4, what="its trials")
        assert [r.number for r in board.rows] == [1, 0, 2, 3] and app.main.query_one(Boards).current == "trial-board"
        await shows(pilot, app.main.query_one(StatusBar), "STUDY WATCHING", "its trials as stored (no worker here serves it)")
        assert not app.main.busy  # nothing here to stop or pause


@pilot_test
async def test_the_dialog_refuses_and_warns_in_its_own_words(fake_env):
    app = make_app(fake_env)
    async with app.run_test(size=(120, 40)) as pilot:
        dialog = await open_study_dialog(pilot, trials="0")
        notes = dialog.query_one("#study-notes")
        await shows(pilot, notes, "trials 0: must be at least 1")
        assert dialog.query_one("#study-start").disabled
        dialog.query_one("#study-trials").value = "6"
        text = await shows(pilot, notes, "TPE picks its first 10 trials", "with trials 6 this")
        assert not dialog.query_one("#study-start").disabled and "--" not in text
        await pilot.press("escape")


@pilot_test
async def test_keys_typed_right_after_t_reach_the_trials_field(fake_env):
    """t, 1, 2 in one SSH packet: the dialog is not up when 1 and 2 are handled, yet they are its trials."""
    from textual import events

    app = make_app(fake_env)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("escape")
        for key in ("t", "1", "2"):
            app.post_message(events.Key(key, key))  # all queued before any is handled
        await until(pilot, lambda: isinstance(app.screen, StudyDialog), what="the study dialog")
        field = app.screen.query_one("#study-trials")
        await until(pilot, lambda: field.value == "12", what=f"'12' in the trials field (it holds {field.value!r})")
        await pilot.press("escape")
        assert not isinstance(app.screen, StudyDialog)


def test_the_board_follows_the_folder_t_uses_even_for_a_preset_name_with_spaces(monkeypatch, tmp_path):
    from tui import trials
    from tui.dialogs.study import settings_for

    monkeypatch.setenv("LORA_MLX_STUDIES", str(tmp_path))
    t_uses = settings_for(trials.study_name("my preset"), trials.studies_root().resolve()).study_dir
    assert trials.study_dir_for("my preset") == t_uses == (tmp_path / "my-preset").resolve()

"""The dashboard driving the real engine on builtin:tiny, end to end, with a pause in the middle."""

import json
import subprocess
import sys
from pathlib import Path

from engine.client import ENGINE_COMMAND
from tui_support import fake_env, make_app, pilot_test, set_field, until  # noqa: F401 (fake_env is a fixture)

SETTINGS = {
    "train.iters": "30",
    "train.steps_per_report": "5",
    "train.steps_per_eval": "15",
    "train.save_every": "15",
    "train.sample_prompt": "hi! what is your name?",
    "train.sample_max_tokens": "8",
}


def train_losses(run_dir: Path) -> list[tuple[int, float]]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(line["step"], line["train_loss"]) for line in lines if line["event"] == "train"]


@pilot_test
async def test_start_pause_resume_finish_on_the_real_engine_matches_a_headless_run(fake_env, tmp_path):
    app = make_app(fake_env, engine=ENGINE_COMMAND)
    async with app.run_test(size=(80, 24)) as pilot:
        for key, value in SETTINGS.items():
            set_field(app, key, value)
        await pilot.pause()
        await pilot.press("s")
        await until(pilot, lambda: app.main.view.step >= 5, timeout_s=120, what="the first report")
        await pilot.press("p")
        await until(pilot, lambda: app.main.view.state == "paused", timeout_s=60, what="paused")
        await pilot.press("p")
        await until(pilot, lambda: app.main.view.state == "finished", timeout_s=180, what="finished")
        view = app.main.view
        assert view.train.steps == [5, 10, 15, 20, 25, 30] and view.val.steps == [0, 15, 30]
        assert view.memory is not None and view.memory.rss_gb > 0
        assert view.sample is not None and view.sample.step == 30 and view.sample.prompt == "hi! what is your name?"
        assert view.best_val_loss is not None and view.detail == "adapters in adapters"
        run_dir = Path(view.run_dir)
    assert (run_dir / "adapters" / "adapters.safetensors").exists()

    headless = tmp_path / "headless"
    overrides = [arg for key, value in SETTINGS.items() for arg in ("--set", f"{key}={value}")]
    preset = str(fake_env.parent / "test-presets" / "demo.yaml")  # the preset the app was opened on
    subprocess.run([sys.executable, "-m", "engine.cli", "train", preset, *overrides, "--run-dir", str(headless)], check=True, capture_output=True)
    assert train_losses(run_dir) == train_losses(headless)  # pausing through the UI kept the exact trajectory


@pilot_test
async def test_try_it_answers_with_the_adapters_beside_the_base_model(fake_env, tmp_path):
    """`g` on a trained run: both answers come from `lora-mlx generate` child processes."""
    from engine import config, run, trainer

    run_dir = tmp_path / "tried"  # trained in this process, so not among the fixture's engines
    cfg = config.load("demo", ["train.iters=120", "train.steps_per_eval=60", "train.learning_rate=1e-3"])
    run.start(cfg, run_dir, lambda e: None, trainer.Control())
    app = make_app(fake_env, attach=run_dir)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.main.view.state == "finished", what="the run's history")
        await pilot.press("g")
        await until(pilot, lambda: app.screen.query("#try-prompt"), what="the try-it screen")
        assert app.screen.query_one("#try-prompt").value == "hi! what is your name?"  # the run's sample prompt
        await pilot.press("enter")

        def answer(side):
            return str(app.screen.query_one(f"#try-{side}").render()).strip()

        await until(pilot, lambda: answer("tuned") not in ("", "…") and answer("base") not in ("", "…"), timeout_s=90, what="both answers")
        await until(pilot, lambda: not any(w.is_running for w in app.screen.workers), timeout_s=90, what="both generators to end")
        assert answer("tuned") != answer("base")
        assert "error" not in answer("tuned").lower()
        await pilot.press("escape")
        await until(pilot, lambda: not app.screen.query("#try-prompt"), what="the screen to close")


@pilot_test
async def test_t_runs_a_real_study_whose_trials_fill_the_leaderboard_and_b_tries_the_best(fake_env):
    from engine import trials
    from tui.dialogs.study import StudyDialog
    from tui.dialogs.try_it import TryItScreen
    from tui.widgets.trial_board import TrialBoard

    app = make_app(fake_env, engine=ENGINE_COMMAND)
    async with app.run_test(size=(120, 40)) as pilot:
        for key, value in {"train.iters": "10", "train.steps_per_report": "5", "train.steps_per_eval": "5", "train.val_batches": "2"}.items():
            set_field(app, key, value)
        await pilot.pause()
        await pilot.press("escape", "t")
        await until(pilot, lambda: isinstance(app.screen, StudyDialog), what="the study dialog")
        app.screen.query_one("#study-trials").value = "2"
        await pilot.pause()
        await pilot.press("enter")
        await until(pilot, lambda: app.main.study is not None and app.main.study.trial is not None, timeout_s=120, what="the first trial")
        await until(pilot, lambda: app.main.view.state == "running" and len(app.main.view.train) >= 1, timeout_s=120, what="its steps")
        await until(pilot, lambda: app.main.study.state == "finished", timeout_s=240, what="the study to finish")
        board = app.main.query_one(TrialBoard)
        await until(pilot, lambda: sum(r.state == "complete" for r in board.rows) == 2, what="two complete trials")
        study_dir = Path(app.main.study.study_dir)
        assert [r.number for r in trials.leaderboard(study_dir)] == [r.number for r in board.rows]
        await pilot.press("b")
        await until(pilot, lambda: isinstance(app.screen, TryItScreen), what="the try-it screen")
        assert app.screen.run_dir == Path(board.snapshot.best.run_dir) and app.screen.which == "best"
        await pilot.press("enter")  # a child `lora-mlx generate TRIAL --checkpoint best` answers
        tuned = lambda: str(app.screen.query_one("#try-tuned").render()).strip()  # noqa: E731
        await until(pilot, lambda: not any(w.is_running for w in app.screen.workers) and tuned() not in ("", "…"), timeout_s=90, what="the answer")
        assert "error" not in tuned().lower() and "no best checkpoint" not in tuned()

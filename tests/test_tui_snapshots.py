"""Snapshots of the main screen in each run state at 80x24 and 120x40 (and one at 200x60).

Deterministic: the run is fed fixed events through the same messages the
bridge posts (no engine, clock, pid or temp path reaches the screen), and the
leaderboard reads two runs written with fixed times. Update them with
`pytest tests/test_tui_snapshots.py --snapshot-update` and look at the SVGs.
"""

import pytest

from engine import protocol as P
from tui.bridge import split
from tui.widgets.loss_chart import LossChart
from tui.state import StudyView
from tui_support import RUN_DIR, make_app, story, write_run, write_study

STATES = ("idle", "running", "paused", "finished", "failed")


def events_for(state: str) -> list[P.Event]:
    if state == "idle":
        return []
    until = 200 if state == "finished" else 120
    story_events, steps, memory = story(until_step=until)
    events = sorted(story_events + steps, key=lambda e: (getattr(e, "step", getattr(e, "start_step", 0)), not isinstance(e, P.RunStarted)))
    events.append(memory)
    if state == "paused":
        events.append(P.Paused(120))
    elif state == "finished":
        events.append(P.RunFinished(200, False, 1.05, f"{RUN_DIR}/adapters"))
    elif state == "failed":
        tail = ["step 110/200  loss  1.9130  lr 1.00e-05  2210 tok/s  peak 0.25 GB  epoch 0.29  ETA 00:04",
                "step 120/200  loss  1.7788  lr 1.00e-05  2220 tok/s  peak 0.25 GB  epoch 0.32  ETA 00:04"]
        events.append(P.EngineGone(-9, tail, f"{RUN_DIR}/checkpoints/step-0000100"))
    return events


@pytest.fixture
def app(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_MLX_PRESETS", str(tmp_path / "no-user-presets"))
    monkeypatch.setenv("LORA_MLX_STUDIES", str(tmp_path / "studies"))
    monkeypatch.setattr("engine.estimate.budget", lambda cfg: (16 * 10**9, "a fixed test budget"))  # not this machine's
    runs = tmp_path / "runs"
    write_run(runs, "demo-20251231-090000", best=1.31)
    write_run(runs, "demo-20251231-100000", best=0.94, rank=16)
    # A data path that is the same in every checkout (the wide layout shows the config form).
    preset = tmp_path / "presets" / "demo.yaml"
    preset.parent.mkdir()
    preset.write_text("model: builtin:tiny\ndata: /srv/lora-mlx/demo-data\n")
    return make_app(runs, preset=preset)


async def feed(pilot, events: list[P.Event]) -> None:
    """Post events as the bridge would, then wait until everything they change is drawn."""
    await pilot.app.workers.wait_for_complete()  # the leaderboard's read
    for message in split(events):
        pilot.app.main.post_message(message)
    await pilot.pause()
    chart = pilot.app.main.query_one(LossChart)
    for _ in range(100):  # numbers are drawn twice a second, the chart once
        if not pilot.app.main.draw_pending and not chart.redraw_pending:
            break
        await pilot.pause(0.05)
    assert not pilot.app.main.draw_pending and not chart.redraw_pending
    await pilot.app.workers.wait_for_complete()  # the config pane's memory estimate, redone as the form locks
    await pilot.pause()


def feeder(state: str):
    async def run_before(pilot):
        await feed(pilot, events_for(state))

    return run_before


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("state", STATES)
def test_main_screen(snap_compare, app, state, size):
    assert snap_compare(app, terminal_size=size, run_before=feeder(state))


def test_main_screen_wide_running(snap_compare, app):
    assert snap_compare(app, terminal_size=(200, 60), run_before=feeder("running"))


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_main_screen_during_a_study(snap_compare, app, tmp_path, size):
    """Trial 4 of a study runs: the status line counts trials, the leaderboard shows the study's trials."""
    study_dir = write_study(tmp_path / "studies")
    trial_dir = str(study_dir / "trial-0004")
    story_events, steps, memory = story(until_step=120, run_dir=trial_dir)
    events = [P.StudyStarted("demo", str(study_dir), "sqlite", 6, 4, "tpe", "median", {}),
              P.TrialStarted("demo", 4, {"train.learning_rate": 3e-4, "lora.rank": 16}, trial_dir),
              *sorted(story_events + steps, key=lambda e: (getattr(e, "step", getattr(e, "start_step", 0)), not isinstance(e, P.RunStarted))),
              memory]

    async def run_before(pilot):
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()  # mounted
        main = pilot.app.main
        main.study = StudyView(str(study_dir), name="demo", target=6)
        main._begin(study_dir, "launching the study")
        main._follow_study(study_dir, target=6)
        await feed(pilot, events)
        await pilot.press("4" if size[0] < 120 else "2")

    assert snap_compare(app, terminal_size=size, run_before=run_before)

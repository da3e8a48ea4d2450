"""The dashboard's run state, folded from engine events (pure logic)."""

import pytest

from engine import protocol as P
from tui.state import RunView, clock, describe_exit
from tui.widgets.memory_gauge import gauge_lines, level

RUN = "/runs/demo-1"


def started(total=100, start=0, resumed=None):
    return P.RunStarted(RUN, total, start, 10, 100, 50, 5, resumed)


def step(n, seconds, loss=5.0):
    return P.StepReported(n, n / 50, loss, 1e-5, 1000.0, n * 10, 0.1, seconds)


def test_a_run_goes_from_starting_to_running_to_finished():
    view = RunView(state="starting", run_dir=RUN)
    view.apply([started(), step(10, 1.0)])
    assert (view.state, view.step, view.total_steps) == ("running", 10, 100)
    view.apply([P.RunFinished(100, False, 1.5, f"{RUN}/adapters")])
    assert view.state == "finished" and not view.active
    assert view.detail == "adapters in adapters"
    assert view.best_val_loss == 1.5


def test_a_stopped_run_says_how_to_continue():
    view = RunView(state="starting", run_dir=RUN)
    view.apply([started()])
    view.request(P.Stop())
    assert view.state == "stopping" and view.active
    update = view.apply([P.CheckpointSaved(40, f"{RUN}/checkpoints/step-0000040", "stop"), P.RunFinished(40, True, None, "a")])
    assert update.log_lines[-1] == f"continue with: lora-mlx resume {RUN}"
    assert view.state == "finished" and view.stopped_early
    assert view.detail == f"stopped at step 40; continue with: lora-mlx resume {RUN}"


def test_pause_is_shown_as_requested_until_the_engine_confirms_it():
    view = RunView(state="running", run_dir=RUN)
    view.request(P.Pause())
    assert (view.state, view.detail) == ("running", "pausing at the next step")
    update = view.apply([P.Paused(33)])
    assert view.state == "paused" and update.log_lines == ["paused at step 33"]
    assert view.step == 33  # where it paused, not the last report
    view.apply([P.Resumed(33)])
    assert (view.state, view.detail) == ("running", "")


def test_a_checkpoint_asked_for_while_paused_keeps_the_paused_note():
    view = RunView(state="running", run_dir=RUN)
    view.apply([P.Paused(12)])
    view.request(P.SaveCheckpoint())
    assert view.detail == "saving a checkpoint"
    view.apply([P.CheckpointSaved(12, f"{RUN}/checkpoints/step-0000012", "requested")])
    assert (view.state, view.detail) == ("paused", "model kept in memory; p resumes")


def test_stopping_is_not_undone_by_a_pause_event_that_was_already_on_its_way():
    view = RunView(state="running", run_dir=RUN)
    view.request(P.Stop())
    view.apply([P.Paused(30)])
    assert view.state == "stopping"


def test_eta_comes_from_the_pace_and_ignores_time_spent_paused():
    view = RunView(state="starting", run_dir=RUN)
    view.apply([started(total=100), step(10, 1.0)])
    assert view.eta_s is None  # one report is not a pace
    view.apply([step(20, 2.0)])
    assert view.eta_s == pytest.approx(80 * 0.1)
    view.apply([P.Paused(20), P.Resumed(20), step(30, 62.0)])  # a minute paused
    assert view.eta_s == pytest.approx(70 * 0.1)  # the old pace, not 6 s a step
    view.apply([step(40, 64.0)])
    assert view.eta_s == pytest.approx(60 * 0.2)


def test_a_resumed_run_drops_the_points_after_its_checkpoint():
    view = RunView(state="starting", run_dir=RUN)
    view.apply([started(), step(10, 1), step(20, 2), step(30, 3), P.EvalReported(20, 4.0, 0.1)])
    view.apply([P.RunStarted(RUN, 100, 20, 10, 100, 50, 5, f"{RUN}/checkpoints/step-0000020")])
    assert view.train.steps == [10, 20] and view.val.steps == [20]
    assert view.state == "running"


def test_a_replayed_history_with_an_earlier_end_is_running_again_after_the_resume():
    view = RunView(state="starting", run_dir=RUN)
    view.apply([started(), step(10, 1), P.RunFinished(10, True, None, "a"), started(start=10, resumed="ckpt"), step(20, 1)])
    assert view.state == "running" and view.train.steps == [10, 20]


def test_engine_gone_reports_exit_code_log_tail_and_last_checkpoint():
    view = RunView(state="running", run_dir=RUN)
    view.apply([P.EngineGone(-9, ["loading", "step 10/100"], f"{RUN}/checkpoints/step-0000010")])
    assert view.state == "failed" and not view.active
    assert view.failure == [
        "The engine process ended without finishing: exit code -9 (SIGKILL: killed).",
        "Last checkpoint: checkpoints/step-0000010",
        f"Continue with: lora-mlx resume {RUN}",
        "Last lines of engine.log:",
        "  loading",
        "  step 10/100",
    ]


def test_run_failed_shows_the_reason_and_details():
    view = RunView(state="running", run_dir=RUN)
    view.apply([P.RunFailed(7, "the loss was not finite", None, ["Traceback", "ValueError"])])
    assert view.detail == "the loss was not finite"
    assert view.failure == ["The run failed at step 7: the loss was not finite", "Traceback", "ValueError", "No checkpoint was saved."]


@pytest.mark.parametrize(
    "code, words",
    [(0, "exit code 0"), (2, "exit code 2"), (None, "exit code unknown"), (-6, "exit code -6 (SIGABRT: aborted; on Apple silicon"), (-9, "(SIGKILL: killed)")],
)
def test_exit_codes_are_described(code, words):
    assert words in describe_exit(code)


def test_clock():
    assert (clock(None), clock(5), clock(65), clock(3725)) == ("--:--", "00:05", "01:05", "1:02:05")


def test_memory_gauge_colours_change_near_the_limit():
    assert [level(f) for f in (0.5, 0.74, 0.75, 0.89, 0.9, 1.2)] == ["ok", "ok", "warn", "warn", "danger", "danger"]
    near = P.MemorySampled(9.3, 9.5, 0.2, 9.8, 12.0, 4.0, 16.0, 0.0, 10.0)
    text = gauge_lines(near, 80)
    assert "98% of the limit 10.00 GB" in text.plain
    assert any(span.style == "bold red" for span in text.spans)
    calm = gauge_lines(P.MemorySampled(1.0, 1.0, 0.1, 1.2, 6.0, 10.0, 16.0, 0.0, 0.0), 80)
    assert "none set; bars are scaled to system memory" in calm.plain
    assert not any(span.style in ("bold red", "yellow") for span in calm.spans)


@pytest.mark.parametrize(
    "width, current, shown",
    [
        (80, "training", {"training"}),
        (80, "runs", {"runs"}),
        (119, "config", {"config"}),
        (120, "memory", {"training", "memory", "runs"}),
        (150, "config", {"config"}),
        (180, "config", {"config", "training", "memory", "runs"}),
    ],
)
def test_which_panes_a_width_shows(width, current, shown):
    from tui.layout import visible_panes

    assert visible_panes(width, current) == shown


def test_a_sample_is_kept_and_logged():
    view = RunView(state="running", run_dir=RUN)
    update = view.apply([P.SampleGenerated(100, "Who are you?", "My name is Tiny.")])
    assert update.sample and view.sample.text == "My name is Tiny."
    assert update.log_lines == ["sample at step 100: 'My name is Tiny.'"]


def test_fold_gives_each_trial_a_fresh_view_and_keeps_the_study_story():
    from tui.state import fold

    memory = P.MemorySampled(1, 1, 0, 1, 1, 1, 2, 0, 0)
    started = P.StudyStarted("demo", "/s/demo", "sqlite", 6, 2, "tpe", "median", {})
    trial = P.TrialStarted("demo", 2, {"train.learning_rate": 1e-4}, "/s/demo/trial-0002")
    view, study, update = fold(RunView(state="starting", run_dir="/s/demo"), None, [memory, started, trial, P.RunStarted("/s/demo/trial-0002", 40, 0, 1, 2, 3, 4)])
    assert study.name == "demo" and study.state == "running" and (study.done, study.target, study.trial) == (2, 6, 2)
    assert view.run_dir == "/s/demo/trial-0002" and view.state == "running" and view.memory == memory  # the reading carries over
    assert update.study and "trial 2: train.learning_rate=0.0001" in update.log_lines
    first = view
    view, study, _ = fold(view, study, [P.EvalReported(10, 3.0, 0.1), P.RunFinished(10, True, 3.0, "a"),
                                        P.TrialFinished("demo", 2, "pruned", 3.0, 10, 10, 1.0, None, None, 3)])
    assert view is first and view.detail == "trial 2 pruned at step 10" and not view.stopped_early
    assert study.done == 3 and study.trial is None and study.active  # between trials: still running
    view, study, _ = fold(view, study, [P.TrialStarted("demo", 3, {}, "/s/demo/trial-0003")])
    assert view is not first and view.state == "starting" and not len(view.train)
    view, study, update = fold(view, study, [P.StudyFinished("demo", 3, 1, 0, 1, 1, 0.9, {"train.learning_rate": 1e-4}, "/a", "stopped")])
    assert study.state == "stopped" and not study.active and study.detail == "t continues it"
    assert "study demo stopped: 3 complete, 1 pruned, 0 failed" in update.log_lines


def test_a_study_that_cannot_run_or_whose_process_dies_is_failed():
    from tui.state import StudyView, fold

    view, study, _ = fold(RunView(state="starting"), StudyView("/s/demo", name="demo"), [P.RunFailed(0, "study 'demo' was started with train.iters=30")])
    assert study.state == "failed" and "train.iters=30" in study.detail and view.state == "failed"
    study = StudyView("/s/demo", name="demo", state="running", trial=4)
    view, study, _ = fold(RunView(state="running"), study, [P.RunFailed(7, "NaN")])  # a trial's own failure
    assert study.active and view.state == "failed"
    view, study, _ = fold(view, study, [P.EngineGone(-9, [], None)])
    assert study.state == "failed" and "exit code -9 (SIGKILL: killed)" in study.detail and "t continues it" in study.detail


def test_a_trials_end_is_not_the_end_of_a_study_stream():
    from engine.client import Story

    story = Story()
    for event in (P.StudyStarted("d", "/d", "s", 2, 0, "tpe", "median", {}), P.TrialStarted("d", 0, {}, "/d/t0"),
                  P.RunStarted("/d/t0", 1, 0, 1, 1, 1, 1), P.RunFinished(1, False, 1.0, "a")):
        story.see(event)
    assert not story.ended
    story.see(P.TrialFinished("d", 0, "complete", 1.0, 1, None, 1.0, None, "a", 1))
    assert not story.ended
    story.see(P.RunFailed(0, "cannot load the model"))  # outside any trial: the study's own failure
    assert story.ended
    run = Story()
    run.see(P.RunFinished(5, True, None, "a"))
    assert run.ended
    run.see(P.RunStarted("r", 10, 5, 1, 1, 1, 1))  # a resumed run replays the earlier end first
    assert not run.ended

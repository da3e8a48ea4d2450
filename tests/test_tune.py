"""Studies on builtin:tiny: pruning, failures, stopping, kill -9 and resume, heartbeats, the leaderboard, promote."""

import argparse
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from engine import client, config, metrics, models, protocol as P, search, trainer, trials, tune, tune_cli
from engine.config import ConfigError

DATA = config.REPO_ROOT / "presets" / "data" / "demo"
PRESET = f"""model: builtin:tiny
data: {DATA}
seed: 0
lora:
  rank: 8
  alpha: 16
train:
  iters: 20
  batch_size: 4
  learning_rate: 5.0e-4
  max_seq_length: 64
  mask_prompt: true
  steps_per_report: 5
  steps_per_eval: 5
  val_batches: 2
  save_every: 100
"""
# Two learning rates that learn, and one that cannot (its trials are the ones to prune).
PRUNE_SEARCH = "search:\n  train.learning_rate: [1.0e-3, 5.0e-4, 1.0e-7]\n  lora.rank: [4, 8]\n"


def write_preset(tmp_path: Path, search_text: str, extra: str = "") -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(PRESET + extra + search_text)
    return path


def plan(tmp_path, search_text, overrides=(), **settings):
    path = write_preset(tmp_path, search_text)
    cfg = config.load(str(path), list(overrides))
    space = search.parse(config.read_yaml(path).get("search"), str(path), cfg)
    return cfg, space, tune.StudySettings(**{"name": "p", "root": tmp_path / "studies", **settings})


def study(tmp_path, search_text, overrides=(), emit=None, control=None, **settings):
    cfg, space, s = plan(tmp_path, search_text, overrides, **settings)
    events: list[P.Event] = []

    def record(event):
        events.append(event)
        if emit:
            emit(event)

    finished = tune.run_study(cfg, space, s, record, control, preset={"path": "p.yaml", "keys": ["model", "data.path"]})
    return finished, events, trials.leaderboard(s.study_dir)


def evals_of(run_dir) -> dict[int, float]:
    lines = [json.loads(l) for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return {l["step"]: l["val_loss"] for l in lines if l["event"] == "eval" and l["step"] > 0}


def test_a_study_prunes_the_trials_that_cannot_learn(tmp_path, monkeypatch):
    loads = []
    real_load = models.load
    monkeypatch.setattr(models, "load", lambda *a: loads.append(a) or real_load(*a))
    finished, events, rows = study(tmp_path, PRUNE_SEARCH, trials=6, sampler="random", pruner_startup=2)

    assert len(loads) == 1  # the base model, once for the whole study
    assert finished.reason == "done" and len(rows) == 6
    pruned = [r for r in rows if r.state == "pruned"]
    complete = [r for r in rows if r.state == "complete"]
    assert pruned and len(pruned) + len(complete) == 6
    assert all(r.params["train.learning_rate"] == 1e-7 for r in pruned)
    for r in pruned:  # stopped at the step the pruner spoke, with a checkpoint; a normal run dir
        assert r.pruned_at_step == 5 and r.best_step == 5
        assert json.loads((Path(r.run_dir) / "run.json").read_text())["status"] == "stopped"
        assert max(evals_of(r.run_dir)) == 5
    for r in complete:  # the objective is the best validation loss; its adapters are that checkpoint
        assert r.value == min(evals_of(r.run_dir).values())
        assert Path(r.adapter_path).name == f"step-{r.best_step:07d}"
        assert (Path(r.adapter_path) / "adapters.safetensors").exists()
        assert config.from_dict(__import__("yaml").safe_load((Path(r.run_dir) / "config.yaml").read_text())).train.learning_rate == r.params["train.learning_rate"]
    # Trials are isolated: the same values give the same result, whatever ran before.
    by_params = {}
    for r in complete:
        by_params.setdefault(json.dumps(r.params, sort_keys=True), set()).add(round(r.value, 6))
    assert any(len(v) == 1 for v in by_params.values()) and all(len(v) == 1 for v in by_params.values())
    assert [r.value for r in complete] == sorted(r.value for r in complete)  # best first
    assert finished.best_value == complete[0].value and finished.best_adapter_path == complete[0].adapter_path
    assert (finished.complete, finished.pruned, finished.failed) == (len(complete), len(pruned), 0)

    kinds = [type(e).__name__ for e in events]
    assert kinds[0] in ("LogMessage", "StudyStarted") and kinds[-1] == "StudyFinished"
    assert kinds.count("TrialStarted") == kinds.count("TrialFinished") == 6
    done = [e for e in events if isinstance(e, tune.TrialFinished)]
    assert {e.number for e in done if e.state == "pruned"} == {r.number for r in pruned}
    assert all(e.pruned_at_step == 5 for e in done if e.state == "pruned")
    for e in (events[kinds.index("StudyStarted")], done[0], finished, next(e for e in events if isinstance(e, tune.TrialStarted))):
        assert pickle.loads(pickle.dumps(e)) == e
    assert len(client.list_runs(tmp_path / "studies" / "p")) == 6  # `lora-mlx runs --root studies/p` sees the trials


def test_failed_trials_are_recorded_with_their_reason_and_the_study_goes_on(tmp_path, monkeypatch):
    real_train = trainer.train

    def nan_for_rank_8(**kwargs):  # a real non-finite loss, in the real loop, for one setting
        if kwargs["model"].layers[0].self_attn.q_proj.lora_a.shape[1] == 8:
            kwargs["loss"] = lambda m, t, l: (lambda v, n: (v * float("nan"), n))(*trainer.masked_loss(m, t, l))
        return real_train(**kwargs)

    monkeypatch.setattr(trainer, "train", nan_for_rank_8)
    search_text = "search:\n  train.batch_size: [4, 4096]\n  lora.rank: [4, 8]\n"
    finished, events, rows = study(tmp_path, search_text, ["train.max_bad_steps=2"], trials=4, sampler="grid")
    assert finished.reason == "done" and len(rows) == 4
    failed = {(r.params["train.batch_size"], r.params["lora.rank"]): r.reason for r in rows if r.state == "failed"}
    assert len(failed) == 3 and [r.params for r in rows if r.state == "complete"] == [{"train.batch_size": 4, "lora.rank": 4}]
    assert failed[(4, 8)].startswith("RunAborted: the loss was not finite for 2 steps in a row")
    assert "train.batch_size=4096" in failed[(4096, 4)] and failed[(4096, 4)] == failed[(4096, 8)]
    assert finished.failed == 3


def test_a_study_whose_trials_all_fail_the_same_way_stops(tmp_path):
    finished, events, rows = study(tmp_path, "search:\n  lora.rank: [4, 8, 16, 32]\n", ["train.batch_size=4096"], trials=6)
    assert finished.reason == "failing" and len(rows) == 3
    assert any(isinstance(e, P.LogMessage) and "3 trials in a row failed the same way" in e.text for e in events)


def test_stop_ends_the_study_and_a_rerun_retries_the_stopped_trial(tmp_path):
    control = tune.StudyControl()
    seen = {"trial": None}

    def stop_in_trial_1(event):
        if isinstance(event, tune.TrialStarted):
            seen["trial"] = event.number
        if isinstance(event, P.EvalReported) and event.step == 10 and seen["trial"] == 1:
            control.stop()  # what the first Ctrl-C does

    finished, _, rows = study(tmp_path, PRUNE_SEARCH, emit=stop_in_trial_1, control=control, trials=3, pruner="hyperband")
    assert finished.reason == "stopped"
    stopped = next(r for r in rows if r.number == 1)
    assert stopped.state == "failed" and stopped.reason.startswith("stopped at step 10; its checkpoint is in ")
    assert (Path(stopped.run_dir) / "checkpoints" / "step-0000010").is_dir()
    assert [r.state for r in rows if r.number == 0] == ["complete"]

    finished, events, rows = study(tmp_path, PRUNE_SEARCH, trials=3, pruner="hyperband", retry_failed=1)
    assert finished.reason == "done"
    retry = next(r for r in rows if r.retry_of == 1)
    assert retry.params == stopped.params and retry.state in ("complete", "pruned") and retry.reason is None
    assert sum(r.state in ("complete", "pruned") for r in rows) == 3 and not [r for r in rows if r.state in ("running", "waiting")]
    started = next(e for e in events if isinstance(e, tune.StudyStarted))
    assert (started.trials_done, started.trials_target) == (1, 3)


def test_a_trial_whose_remote_worker_went_silent_is_failed_by_heartbeat_and_retried(tmp_path):
    cfg, space, s = plan(tmp_path, PRUNE_SEARCH, trials=1, heartbeat_s=1, grace_s=2, retry_failed=1)
    s.study_dir.mkdir(parents=True)
    storage = trials.open_storage(f"sqlite:///{s.study_dir / 'study.db'}")
    lost = optuna.create_study(storage=storage, study_name="p").ask()
    space.suggest(lost)
    lost.set_user_attr("worker", "another-machine/12345678:4242:1.00")  # not ours: only its heartbeat can tell
    storage.record_heartbeat(lost._trial_id)
    time.sleep(2.5)
    finished = tune.run_study(cfg, space, s, lambda e: None)
    rows = trials.leaderboard(s.study_dir)
    assert finished.reason == "done"
    assert rows[-1].number == 0 and rows[-1].state == "failed" and "heartbeats" in rows[-1].reason
    assert rows[0].retry_of == 0 and rows[0].params == rows[-1].params and rows[0].state == "complete"


def lora_mlx_tune(preset: Path, root: Path, *extra: str, log: Path) -> subprocess.Popen:
    args = [sys.executable, "-m", "engine.tune_cli", "tune", str(preset), "--root", str(root), "--sampler", "random",
            "--pruner", "none", "--heartbeat", "1", "--grace", "3", "--set", "train.iters=30", *extra]  # time to interrupt
    return subprocess.Popen(args, stdout=open(log, "w"), stderr=subprocess.STDOUT, cwd=config.REPO_ROOT)


def wait_for_running_trial(study_dir: Path, proc: subprocess.Popen, after: int, timeout_s: float = 120) -> int:
    """The number of a trial past `after` that is running and has reported an evaluation."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the study ended before it could be interrupted"
        if (study_dir / "study.db").exists():
            try:
                rows = trials.leaderboard(study_dir)
            except Exception:  # the first worker is still creating the tables
                rows = []
            running = [r for r in rows if r.state == "running" and r.number > after and r.intermediate]
            if running:
                return running[0].number
        time.sleep(0.2)
    raise AssertionError("no trial reached its first evaluation in time")


def test_kill_9_and_ctrl_c_then_the_same_command_continues_the_study(tmp_path):
    preset = write_preset(tmp_path, PRUNE_SEARCH)
    root, study_dir = tmp_path / "studies", tmp_path / "studies" / "p"

    first = lora_mlx_tune(preset, root, "--trials", "3", log=tmp_path / "1.log")
    killed = wait_for_running_trial(study_dir, first, after=0)
    first.send_signal(signal.SIGKILL)
    first.wait()
    before = {r.number: r for r in trials.leaderboard(study_dir)}
    assert before[killed].state == "running"  # nobody told the storage
    kept = {n: r.value for n, r in before.items() if r.state == "complete"}
    assert kept

    second = lora_mlx_tune(preset, root, "--trials", "3", "--retry-failed", "1", log=tmp_path / "2.log")
    assert second.wait(timeout=180) == 0, (tmp_path / "2.log").read_text()
    rows = {r.number: r for r in trials.leaderboard(study_dir)}
    assert rows[killed].state == "failed" and f"its worker (pid {first.pid}) died while it ran" == rows[killed].reason
    retry = next(r for r in rows.values() if r.retry_of == killed)
    assert retry.state == "complete" and retry.params == rows[killed].params
    assert {n: rows[n].value for n in kept} == kept  # completed trials are kept as they were
    assert not [r for r in rows.values() if r.state in ("running", "waiting")]
    assert sum(r.state == "complete" for r in rows.values()) == 3
    assert f"trial {killed} was left running by a worker that died" in (tmp_path / "2.log").read_text()

    third = lora_mlx_tune(preset, root, "--trials", "5", log=tmp_path / "3.log")
    interrupted = wait_for_running_trial(study_dir, third, after=max(rows))
    third.send_signal(signal.SIGINT)  # the first Ctrl-C: stop with a checkpoint, end the study
    assert third.wait(timeout=60) == 0
    out = (tmp_path / "3.log").read_text()
    assert "stopping the study after this step" in out and "study p stopped" in out
    row = next(r for r in trials.leaderboard(study_dir) if r.number == interrupted)
    assert row.state == "failed" and row.reason.startswith("stopped at step ")


def test_a_study_run_by_lora_mlx_tune_can_be_attached_to_and_stopped(tmp_path):
    """`lora-mlx tune` in a terminal serves its study like the dashboard's study process does."""
    preset = write_preset(tmp_path, PRUNE_SEARCH)
    root, study_dir = tmp_path / "studies", tmp_path / "studies" / "p"
    proc = lora_mlx_tune(preset, root, "--trials", "4", "--set", "train.steps_per_report=1", log=tmp_path / "t.log")
    try:
        watcher = client.EngineClient(study_dir)
        watcher.connect(timeout_s=60)
        seen: list[P.Event] = []

        def wait_for(condition, what: str) -> None:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                seen.extend(watcher.receive(0.2))
                if condition():
                    return
            raise AssertionError(f"no {what}; saw {[type(e).__name__ for e in seen][-10:]}")

        wait_for(lambda: any(isinstance(e, P.TrialStarted) for e in seen) and any(isinstance(e, P.StepReported) for e in seen), "running trial")
        record = client.read_record(study_dir)
        assert record["kind"] == "study" and record["pid"] == proc.pid and record["status"] == "running"
        assert watcher.send(P.Stop())
        wait_for(lambda: any(isinstance(e, P.StudyFinished) for e in seen), "end of the study")
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    finished = next(e for e in seen if isinstance(e, P.StudyFinished))
    assert finished.reason == "stopped" and "study p stopped" in (tmp_path / "t.log").read_text()
    record = client.read_record(study_dir)
    assert record["status"] == "stopped" and record["exit_code"] == 0 and not Path(record["socket"]).exists()


def test_one_worker_per_machine_serves_a_study(tmp_path):
    """Several workers of one study on one machine: the first serves the socket, the others add trials beside it."""
    from engine.host import serving_study

    control, shown = tune.StudyControl(), []
    with serving_study(tmp_path, control, shown.append) as emit:
        with serving_study(tmp_path, control, shown.append, required=False) as second:
            second(P.LogMessage("info", "a trial"))
        with pytest.raises(OSError, match="already hosts this study"):
            with serving_study(tmp_path, control, shown.append):
                pass
        emit(P.LogMessage("info", "the host's"))
    assert [e.text for e in shown] == [f"pid {os.getpid()} serves this study to the dashboard; this worker adds trials beside it",
                                      "a trial", "the host's"]
    with serving_study(tmp_path, control, shown.append):  # the first has gone: the next one serves
        assert client.read_record(tmp_path)["pid"] == os.getpid() and client.read_record(tmp_path)["status"] == "starting"


def settings_error(tmp_path, search_text, **settings) -> str:
    cfg, space, s = plan(tmp_path, search_text, **settings)
    with pytest.raises(ConfigError) as info:
        tune.check_plan(cfg, space, s)
    return str(info.value)


def test_poor_choices_are_refused_or_warned(tmp_path):
    assert settings_error(tmp_path, "search:\n  train.learning_rate: {low: 1.0e-5, high: 1.0e-3, log: true}\n", sampler="grid").startswith(
        "--sampler grid: train.learning_rate is a continuous range (float 1e-05..0.001 log); a grid needs choices or a step")
    assert settings_error(tmp_path, "", name="my study") == "--study 'my study': use letters, digits, '.', '_' and '-' (it names a folder)"
    assert settings_error(tmp_path, "", grace_s=5, heartbeat_s=10) == "--grace 5: must be longer than --heartbeat (10 s)"
    assert settings_error(tmp_path, "", trials=0) == "--trials 0: must be at least 1"

    def notes(search_text="", overrides=(), **settings):
        cfg, space, s = plan(tmp_path, search_text, overrides, **settings)
        return " | ".join(tune.check_plan(cfg, space, s))

    assert "TPE picks its first 10 trials at random, so with --trials 6 this is a random search" in notes(trials=6)
    assert notes(trials=30) == ""
    assert "the grid has 4 points and --trials is 2: only 2 of them will run" in notes("search:\n  lora.rank: [4, 8, 16, 32]\n", sampler="grid", trials=2)
    assert "no trial can be pruned: the median pruner starts after 5 complete trials" in notes(trials=4, sampler="random")
    assert "hyperband with 4 evaluations per trial has only 2 bracket(s)" in notes(trials=30, pruner="hyperband")
    assert "no trial can be pruned: each trial evaluates only at its end" in notes("", ["train.steps_per_eval=20"], trials=30)
    (tmp_path / "nodata").mkdir()
    (tmp_path / "nodata" / "train.jsonl").write_text('{"text": "hi"}\n')
    cfg, space, s = plan(tmp_path, "", [f"data={tmp_path / 'nodata'}"])
    with pytest.raises(ConfigError, match="nodata/valid.jsonl is missing; a study scores each trial by its validation loss"):
        tune.check_plan(cfg, space, s)


def test_a_study_refuses_to_continue_with_other_settings(tmp_path):
    cfg, space, s = plan(tmp_path, PRUNE_SEARCH)
    s.study_dir.mkdir(parents=True)
    storage = trials.open_storage(f"sqlite:///{s.study_dir / 'study.db'}")
    tune._open_study(storage, s, cfg, space, {})
    tune._open_study(storage, s, config.load(str(tmp_path / "p.yaml"), ["memory.limit_gb=3"]), space, {})  # local settings may differ
    with pytest.raises(ConfigError, match=r"study 'p' was started with train.iters=20, this preset has 30; its trials would not be comparable: use --study NEW_NAME"):
        tune._open_study(storage, s, config.load(str(tmp_path / "p.yaml"), ["train.iters=30"]), space, {})
    _, other_space, _ = plan(tmp_path, "search:\n  lora.rank: [4, 8]\n")
    with pytest.raises(ConfigError, match=r"study 'p' searches .*train.learning_rate.*, this preset searches .*; use --study NEW_NAME"):
        tune._open_study(storage, s, cfg, other_space, {})


def synthetic_study(tmp_path, complete: int):
    """A study in SQLite as run_study leaves it, without training: for the leaderboard, importance and promote."""
    path = write_preset(tmp_path, PRUNE_SEARCH)
    cfg = config.load(str(path))
    space = search.parse(config.read_yaml(path).get("search"), str(path), cfg)
    study_dir = tmp_path / "studies" / "p"
    study_dir.mkdir(parents=True)
    url = f"sqlite:///{study_dir / 'study.db'}"
    (study_dir / "study.json").write_text(json.dumps({"study": "p", "storage": url}))
    study = optuna.create_study(storage=trials.open_storage(url), study_name="p")
    for key, value in {"full_config": cfg.to_dict(), "space": space.to_dict(), "preset": {"keys": ["model", "data.path", "lora.alpha"]}}.items():
        study.set_user_attr(key, value)
    dists = {p.key: optuna.distributions.CategoricalDistribution(list(p.choices)) for p in space.params}
    grid = [(lr, rank) for lr in (1e-3, 5e-4, 1e-7) for rank in (4, 8)]
    for i in range(complete):
        lr, rank = grid[i % len(grid)]
        study.add_trial(optuna.create_trial(
            params={"train.learning_rate": lr, "lora.rank": rank}, distributions=dists, value=1.0 / lr / 1e4 + rank / 100,
            user_attrs={"best_step": 20, "adapter_path": f"/a/{i}", "run_dir": f"/r/{i}"},
        ))
    study.add_trial(optuna.create_trial(params={"train.learning_rate": 1e-7, "lora.rank": 4}, distributions=dists,
                                        state=optuna.trial.TrialState.PRUNED, intermediate_values={5: 7.3, 10: 7.2},
                                        user_attrs={"best_val_loss": 7.2, "best_step": 10}))
    study.add_trial(optuna.create_trial(params={"train.learning_rate": 1e-7, "lora.rank": 8}, distributions=dists,
                                        state=optuna.trial.TrialState.FAIL, user_attrs={"fail_reason": "RunAborted: nan"}))
    return study_dir, study


def test_leaderboard_sorts_best_first_and_importance_waits_for_enough_trials(tmp_path):
    study_dir, study = synthetic_study(tmp_path, complete=4)
    rows = trials.leaderboard(study_dir)
    assert [r.state for r in rows] == ["complete"] * 4 + ["pruned", "failed"]
    assert [r.value for r in rows[:4]] == sorted(r.value for r in rows[:4])
    assert (rows[4].value, rows[4].pruned_at_step, rows[4].intermediate) == (7.2, 10, {5: 7.3, 10: 7.2})
    assert rows[5].reason == "RunAborted: nan"
    assert trials.importances(study) is None  # 4 complete trials say nothing yet
    study.add_trial(optuna.create_trial(params={"train.learning_rate": 1e-7, "lora.rank": 8}, distributions=study.trials[0].distributions, value=9.0))
    ranked = trials.importances(study)
    assert set(ranked) == {"train.learning_rate", "lora.rank"} and abs(sum(ranked.values()) - 1) < 1e-6


def run_cli(*argv) -> int:
    parser = argparse.ArgumentParser(prog="lora-mlx")
    tune_cli.add_parsers(parser.add_subparsers(dest="command", required=True))
    return tune_cli.main(parser.parse_args([str(a) for a in argv]))


def test_trials_prints_the_leaderboard_and_promotes_the_best(tmp_path, capsys):
    study_dir, _ = synthetic_study(tmp_path, complete=3)
    assert run_cli("trials", study_dir) == 0
    out = capsys.readouterr().out
    assert "   0  complete" in out and "/a/0" in out and "RunAborted: nan" in out
    assert "best: trial 0, validation loss 0.1400; adapters: /a/0" in out

    target = tmp_path / "best.yaml"
    assert run_cli("trials", "p", "--root", tmp_path / "studies", "--promote", target) == 0
    promoted = config.load(str(target))
    assert (promoted.train.learning_rate, promoted.lora.rank, promoted.lora.alpha) == (1e-3, 4, 16.0)
    text = target.read_text()
    assert "# Promoted from study 'p', trial 0: validation loss 0.1400 at step 20." in text
    assert "  rank: 4                  # tuned: one of 4, 8" in text and "  alpha: 16.0" in text
    assert run_cli("trials", study_dir, "--promote", target) == 2
    assert f"error: --promote {target}: {target} already exists; pick another name or remove it" in capsys.readouterr().err
    assert run_cli("trials", "nope", "--root", tmp_path / "studies") == 2
    assert capsys.readouterr().err == f"error: no study at {tmp_path / 'studies' / 'nope'}; studies under {tmp_path / 'studies'}: p\n"


def test_tune_config_errors_exit_2_with_file_and_line(tmp_path, capsys):
    handler = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN under a shell's background job
    preset = write_preset(tmp_path, "search:\n  lora.rnak: [4, 8]\n")
    assert run_cli("tune", preset, "--root", tmp_path / "studies") == 2
    line = PRESET.count("\n") + 2
    assert capsys.readouterr().err == f"error: {preset}:{line}: search: lora.rnak: unknown parameter (did you mean 'lora.rank'?)\n"
    preset = write_preset(tmp_path, "search:\n  train.learning_rate: {low: 1.0e-5, high: 1.0e-3}\n")
    assert run_cli("tune", preset, "--sampler", "grid", "--root", tmp_path / "studies") == 2
    assert "a grid needs choices or a step" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is handler  # refused before any handler was installed


@pytest.mark.parametrize("module", ["engine.tune", "engine.tune_cli", "engine.study_plan", "engine.trials", "engine.search"])
def test_study_modules_import_neither_mlx_nor_the_ui(module):
    code = f"import sys, {module}; bad = [m for m in sys.modules if m.split('.')[0] in ('mlx', 'mlx_lm', 'textual', 'rich')]; print(bad); sys.exit(1 if bad else 0)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_timeout_starts_no_new_trial(tmp_path):
    finished, events, rows = study(tmp_path, PRUNE_SEARCH, trials=3, timeout_min=0.001)  # 60 ms: over before the first
    assert finished.reason == "timeout" and rows == []
    assert not [e for e in events if isinstance(e, tune.TrialStarted)]


def test_a_detached_study_process_reports_over_its_socket_stops_on_request_and_continues(tmp_path):
    """What the dashboard's t does: write the plan, launch `engine.host tune`, watch, stop, launch again."""
    cfg, space, s = plan(tmp_path, "search:\n  train.learning_rate: [1.0e-3, 5.0e-4]\n", trials=3, retry_failed=1)
    tune.write_plan(cfg, space, s, {"path": "p.yaml", "keys": ["model", "data.path"]})
    assert (s.study_dir / "config.yaml").exists() and client.is_study(s.study_dir)
    again = tune.read_plan(s.study_dir)
    assert again[0].to_dict() == cfg.to_dict() and again[1] == space and again[2].study_dir == s.study_dir

    def watch(until):
        proc = client.start_study(s.study_dir)
        c = client.EngineClient(s.study_dir, proc)
        c.connect(timeout_s=60)
        seen: list[P.Event] = []
        deadline = time.monotonic() + 240
        while not until(seen, c) and time.monotonic() < deadline:
            seen += c.receive(0.2)
        return proc, c, seen

    def second_trial_steps(seen, c):
        if sum(isinstance(e, tune.TrialStarted) for e in seen) >= 2 and any(isinstance(e, P.StepReported) for e in seen[-3:]):
            c.send(P.Stop())
            return True
        return False

    proc, c, seen = watch(second_trial_steps)
    while not c.finished:
        seen += c.receive(0.2)
    assert proc.wait(timeout=30) == 0
    kinds = [type(e).__name__ for e in seen if not isinstance(e, (P.LogMessage, P.MemorySampled))]
    assert "TPE picks its first" in seen[0].text  # the plan's warnings come first
    assert kinds[0] == "StudyStarted" and kinds[-1] == "StudyFinished"
    ends = [e for e in seen if isinstance(e, tune.TrialFinished)]
    assert [e.state for e in ends] == ["complete", "failed"] and "stopped at step" in ends[1].reason
    assert seen[-1].reason == "stopped" and not any(isinstance(e, P.EngineGone) for e in seen)
    record = client.read_record(s.study_dir)
    assert record["kind"] == "study" and record["status"] == "stopped" and record["exit_code"] == 0
    story = [type(e).__name__ for e in metrics.read_history(s.study_dir) if not isinstance(e, P.LogMessage)]
    assert story == ["StudyStarted", "TrialStarted", "TrialFinished", "TrialStarted", "TrialFinished", "StudyFinished"]  # trials' steps stay in their dirs

    proc, c, seen = watch(lambda seen, c: c.finished)
    assert proc.wait(timeout=30) == 0
    started = [e for e in seen if isinstance(e, tune.TrialStarted)]
    study_started = next(e for e in seen if isinstance(e, tune.StudyStarted))
    assert study_started.trials_done == 1 and started[0].retry_of == 1  # the stopped trial runs again first
    rows = trials.leaderboard(s.study_dir)
    assert sum(r.state == "complete" for r in rows) == 3 and not [r for r in rows if r.state == "running"]


def test_a_study_process_that_cannot_start_says_why_and_ends(tmp_path):
    cfg, space, s = plan(tmp_path, "search:\n  train.learning_rate: [1.0e-3, 5.0e-4]\n")
    tune.write_plan(cfg, space, s, {})
    other, _, _ = plan(tmp_path, "", ["train.iters=30"])
    (s.study_dir / "study.db").touch()
    storage = trials.open_storage(f"sqlite:///{s.study_dir / 'study.db'}")
    tune._open_study(storage, s, other, space, {})  # the study exists with other settings
    proc = client.start_study(s.study_dir)
    c = client.EngineClient(s.study_dir, proc)
    c.connect(timeout_s=60)
    seen: list[P.Event] = []
    while not c.finished:
        seen += c.receive(0.2)
    assert proc.wait(timeout=30) == 2
    failed = [e for e in seen if isinstance(e, P.RunFailed)]
    assert len(failed) == 1 and "was started with train.iters=30" in failed[0].reason
    assert "error: study 'p' was started with train.iters=30" in (s.study_dir / "engine.log").read_text()


def test_the_summary_names_the_trials_command_that_finds_the_study():
    from engine.protocol import StudyFinished

    done = StudyFinished("lr-sweep", 2, 0, 0, 0, 1, 0.5, {"lora.rank": 8}, "/a/1", "done")
    assert tune_cli.StudyPrinter().format(done).endswith("\nleaderboard: lora-mlx trials lr-sweep")
    # a study outside ./studies, or in a database, is found only with the same --root / --storage; never print a password
    assert tune_cli.StudyPrinter(" --root /tmp/s").format(done).endswith("leaderboard: lora-mlx trials lr-sweep --root /tmp/s")
    assert tune_cli._without_password("postgresql://tuner:SECRET@dbhost:5432/studies") == "postgresql://tuner@dbhost:5432/studies"
    assert tune_cli._without_password("sqlite:////tmp/s/study.db") == "sqlite:////tmp/s/study.db"


def test_the_leaderboard_says_which_host_holds_a_trial_of_another_machine(tmp_path, capsys):
    import socket

    study_dir, study = synthetic_study(tmp_path, complete=2)
    dists = study.trials[0].distributions
    for n, host in ((2, "worker-b"), (3, socket.gethostname())):
        study.add_trial(optuna.create_trial(params={"train.learning_rate": 1e-3, "lora.rank": 4}, distributions=dists, value=0.01 * n,
                                            user_attrs={"best_step": 20, "adapter_path": f"/a/{n}", "host": host}))
    assert run_cli("trials", study_dir) == 0
    out = capsys.readouterr().out
    assert "/a/2  (on worker-b)\n" in out
    assert "/a/3\n" in out and "/a/0\n" in out  # this machine's trials (and those with no host recorded) need no name


def test_a_trial_counts_toward_the_target_unless_it_was_stopped_or_lost():
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import TrialState

    dists = {"lora.rank": CategoricalDistribution((4, 8))}

    def row(state, **attrs):
        return trials.row_of(optuna.create_trial(params={"lora.rank": 4}, distributions=dists, state=state,
                                                 value=1.0 if state == TrialState.COMPLETE else None, user_attrs=attrs))

    assert row(TrialState.COMPLETE).done and row(TrialState.PRUNED).done
    assert row(TrialState.FAIL, fail_reason="non-finite loss", interrupted=False).done  # failed on its own: would fail again
    assert not row(TrialState.FAIL, fail_reason="stopped at step 40; its checkpoint is in /x", interrupted=True).done
    lost = row(TrialState.FAIL)  # failed by heartbeats: its worker vanished
    assert not lost.done and "heartbeats" in lost.reason

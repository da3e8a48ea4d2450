"""A fake engine for UI tests: the real socket protocol and run files, scripted numbers, no mlx.

  python tests/fake_engine.py start|resume RUN_DIR [--stop-at STEP]
  python tests/fake_engine.py tune STUDY_DIR      (a study: real Optuna storage, fake trials)

It speaks through `engine.server.EventServer`, obeys `engine.control.Control`
(pause, resume, stop, checkpoint) at step boundaries like the real loop,
writes run.json (pid, socket, status, step, last_checkpoint ...) and
metrics.jsonl like the real host, so `attach` and the leaderboard work.
Training settings come from RUN_DIR/config.yaml (train.iters,
steps_per_report, steps_per_eval, save_every, learning_rate, sample_prompt); the pace and
failures come from the environment:

  FAKE_ENGINE_STEP_S   seconds per step (default 0.01)
  FAKE_ENGINE_LOAD_S   seconds of "loading" before RunStarted (default 0)
  FAKE_ENGINE_ABORT_AT abort the process (SIGABRT, like an OOM on Metal) at this step
  FAKE_ENGINE_FAIL_AT  report RunFailed at this step and exit 1
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml  # noqa: E402

from engine import config as config_mod, metrics, protocol as P, search  # noqa: E402
from engine.cli import Printer  # noqa: E402
from engine.control import Control  # noqa: E402
from engine.run import RunRecord  # noqa: E402  (run.json as the real host writes it; no mlx at import)
from engine.server import EventServer  # noqa: E402


def env_number(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def train_loss(step: int, iters: int, speed: float = 1.0) -> float:
    return 0.8 + 6.0 * math.exp(-4.0 * speed * step / iters) + 0.05 * math.sin(step)


def val_loss(step: int, iters: int, speed: float = 1.0) -> float:
    return 0.9 + 6.0 * math.exp(-3.5 * speed * step / iters)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("start", "resume", "tune"))
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--stop-at", type=int)
    args = parser.parse_args()
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if args.mode == "tune":
        return tune(args.run_dir.resolve())

    run_dir = args.run_dir.resolve()
    control = Control()
    server = EventServer(run_dir, control.submit, metrics.read_history(run_dir))
    record = RunRecord(run_dir)  # the real host's run.json writer
    record.update(pid=os.getpid(), socket=server.address, status="starting")
    signal.signal(signal.SIGTERM, lambda *_: control.submit(P.Stop()))
    stop_sampling = threading.Event()
    threading.Thread(target=sample_memory, args=(server, stop_sampling, lambda: record.read().get("step", 0)), daemon=True).start()
    exit_code = train(run_dir, args.mode == "resume", args.stop_at, control, server.publish, record)[0]
    stop_sampling.set()
    record.update(exit_code=exit_code)
    server.close()
    return exit_code


def sample_memory(server: EventServer, stop: threading.Event, step) -> None:
    while not stop.wait(0.25):
        active = 0.2 + 0.001 * step()
        server.publish(P.MemorySampled(active, active + 0.05, 0.1, 0.5, 6.0, 10.0, 16.0, 0.0, 0.0))


def train(run_dir: Path, resume: bool, stop_at: int | None, control: Control, publish, record: RunRecord, on_eval=None):
    """One fake run in run_dir (its config.yaml written): (exit code, stopped early, best val loss).

    on_eval(step, val_loss) -> True stops the run there (a study's pruner)."""
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    train = cfg.get("train", {})
    iters, every_report = int(train.get("iters", 100)), int(train.get("steps_per_report", 10))
    every_eval, every_save = int(train.get("steps_per_eval", 50)), int(train.get("save_every", 50))
    lr = float(train.get("learning_rate", 1e-5))
    speed = (lr / 1e-5) ** 0.3 * (int((cfg.get("lora") or {}).get("rank", 8)) / 8) ** 0.1  # other settings, other curves
    step_s = env_number("FAKE_ENGINE_STEP_S", 0.01)
    abort_at, fail_at = int(env_number("FAKE_ENGINE_ABORT_AT", -1)), int(env_number("FAKE_ENGINE_FAIL_AT", -1))
    log = metrics.MetricsLog(run_dir)
    printer = Printer(sys.stdout)
    state = {"step": 0, "best": None, "checkpoint": record.read().get("last_checkpoint"), "pruned": False}

    def emit(event: P.Event) -> None:
        if isinstance(event, P.Paused):
            record.update(status="paused")
        elif isinstance(event, P.Resumed):
            record.update(status="running")
        log.write(event)
        printer(event)
        publish(event)

    def save(reason: str) -> None:
        path = run_dir / "checkpoints" / f"step-{state['step']:07d}"
        path.mkdir(parents=True, exist_ok=True)
        state["checkpoint"] = str(path)
        record.update(last_checkpoint=str(path), step=state["step"])
        emit(P.CheckpointSaved(step=state["step"], path=str(path), reason=reason))

    sample_prompt = str(train.get("sample_prompt") or "")

    def evaluate() -> None:
        loss = val_loss(state["step"], iters, speed)
        emit(P.EvalReported(step=state["step"], val_loss=loss, seconds_taken=0.01))
        if sample_prompt:
            answer = "My name is Tiny." if loss < 2.0 else "name name the the"
            emit(P.SampleGenerated(step=state["step"], prompt=sample_prompt, text=answer))
        state["best"] = loss if state["best"] is None else min(state["best"], loss)
        if on_eval is not None and state["step"] > 0 and on_eval(state["step"], loss):
            state["pruned"] = True

    if resume:
        last = record.read().get("last_checkpoint")
        state["step"] = int(Path(last).name.split("-")[1]) if last else 0
    time.sleep(env_number("FAKE_ENGINE_LOAD_S", 0.0))
    record.update(status="running", total_steps=iters, step=state["step"])
    emit(P.RunStarted(str(run_dir), iters, state["step"], 75_000, 944_000, 1500, 100, state["checkpoint"] if resume else None))
    print("the fake engine is running", flush=True)
    started = time.perf_counter()
    if state["step"] == 0:
        evaluate()
    exit_code, stopped = 0, False
    while state["step"] < iters:
        control.wait_while_paused(
            on_pause=lambda: emit(P.Paused(step=state["step"])),
            on_resume=lambda: emit(P.Resumed(step=state["step"])),
            on_checkpoint=lambda: save("requested"),
        )
        if control.take_checkpoint_request():
            save("requested")
        if control.stop_requested or state["pruned"]:
            save("stop")
            stopped = True
            break
        time.sleep(step_s)
        state["step"] += 1
        step = state["step"]
        if step == abort_at:
            print(f"fake engine: aborting at step {step}", flush=True)
            os.abort()
        if step == fail_at:
            emit(P.RunFailed(step=step, reason="the fake engine was told to fail", last_checkpoint=state["checkpoint"], details=["details line"]))
            record.update(status="failed", exit_code=1)
            exit_code = 1
            break
        if step % every_report == 0 or step == iters:
            emit(P.StepReported(step, step / 375, train_loss(step, iters, speed), lr, 2000.0, step * 512, 0.25, time.perf_counter() - started))
        if step % every_eval == 0 or step == iters:
            evaluate()
        if step == iters:
            save("final")
        elif step == stop_at:
            save("stop")
            stopped = True
            break
        elif step % every_save == 0:
            save("periodic")
    if exit_code == 0:
        record.update(status="stopped" if stopped else "finished", step=state["step"], best_val_loss=state["best"])
        emit(P.RunFinished(state["step"], stopped, state["best"], str(run_dir / "adapters")))
    log.close()
    return exit_code, stopped, state["best"]


def tune(study_dir: Path) -> int:
    """A study as the real host runs it (its plan, a real Optuna storage, the study's events), with fake trials.

    FAKE_ENGINE_PRUNER_STARTUP overrides the plan's median-pruner startup (so a short test prunes)."""
    import optuna

    from engine import study_plan, trials as trial_store, tune as real_tune

    control = real_tune.StudyControl()
    server = EventServer(study_dir, control.submit)
    record = RunRecord(study_dir)
    record.update(kind="study", pid=os.getpid(), socket=server.address, status="starting", exit_code=None)
    signal.signal(signal.SIGTERM, lambda *_: control.stop())
    cfg, space, s, preset = study_plan.read_plan(study_dir)
    log = metrics.MetricsLog(study_dir)
    story: list[P.Event] = []

    def emit(event: P.Event) -> None:
        if isinstance(event, P.STUDY_EVENTS):
            story.append(event)
            log.write(event)
        server.publish(event)

    stop_sampling = threading.Event()
    threading.Thread(target=sample_memory, args=(server, stop_sampling, lambda: 0), daemon=True).start()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = trial_store.open_storage(f"sqlite:///{study_dir / 'study.db'}")
    startup = int(env_number("FAKE_ENGINE_PRUNER_STARTUP", s.pruner_startup))
    pruner = optuna.pruners.MedianPruner(n_startup_trials=startup) if s.pruner != "none" else optuna.pruners.NopPruner()
    study = optuna.create_study(storage=storage, study_name=s.name, direction="minimize", load_if_exists=True,
                                sampler=optuna.samplers.RandomSampler(seed=len(storage.get_all_studies())), pruner=pruner)
    (study_dir / "study.json").write_text(json.dumps({"study": s.name, "storage": f"sqlite:///{study_dir / 'study.db'}"}))
    for key, value in {"full_config": cfg.to_dict(), "space": space.to_dict(), "preset": preset}.items():
        study.set_user_attr(key, value)  # what promote reads, as the real study keeps it

    def done() -> int:
        return sum(t.state.name in ("COMPLETE", "PRUNED") for t in study.get_trials(deepcopy=False))

    emit(P.StudyStarted(s.name, str(study_dir), "sqlite", s.trials, done(), s.sampler, s.pruner, space.to_dict()))
    record.update(status="running")
    while done() < s.trials and not control.stopping:
        trial = study.ask()
        params = space.suggest(trial)
        run_dir = study_dir / f"trial-{trial.number:04d}"
        run_dir.mkdir(parents=True, exist_ok=True)
        trial.set_user_attr("run_dir", str(run_dir))
        (run_dir / "config.yaml").write_text(config_mod.dump(search.apply(cfg, params)))
        story_so_far = list(story)
        server.reset_history(story_so_far)
        emit(P.TrialStarted(s.name, trial.number, params, str(run_dir)))
        trial_control = Control()
        control.trial_control = trial_control
        pruned_at: list[int] = []
        evals: dict[int, float] = {}

        def on_eval(step: int, loss: float) -> bool:
            evals[step] = loss
            trial.report(loss, step)
            if trial.should_prune():
                pruned_at.append(step)
                return True
            return False

        _, stopped, best = train(run_dir, False, None, trial_control, server.publish, RunRecord(run_dir), on_eval)
        control.trial_control = None
        if best is not None:
            trial.set_user_attr("best_val_loss", best)
        if pruned_at:
            trial.set_user_attr("pruned_at_step", pruned_at[0])
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            state, reason = "pruned", None
        elif stopped:
            trial.set_user_attr("fail_reason", "stopped at step ?; its checkpoint is in " + str(run_dir))
            trial.set_user_attr("interrupted", True)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            state, reason = "failed", "stopped"
        else:
            trial.set_user_attr("best_step", min(evals, key=evals.get))  # what the real study records
            trial.set_user_attr("adapter_path", str(run_dir / "adapters"))
            study.tell(trial, best)
            state, reason = "complete", None
        best_step = min(evals, key=evals.get) if evals else None
        emit(P.TrialFinished(s.name, trial.number, state, best, best_step, pruned_at[0] if pruned_at else None, 0.1, reason, None, done()))
    rows = trial_store.leaderboard(study)
    best = next((r for r in rows if r.state == "complete"), None)
    counts = {k: sum(r.state == k for r in rows) for k in ("complete", "pruned", "failed")}
    emit(P.StudyFinished(s.name, counts["complete"], counts["pruned"], counts["failed"], 0, best and best.number, best and best.value,
                         best.params if best else {}, best and best.adapter_path, "stopped" if control.stopping else "done"))
    record.update(status="stopped" if control.stopping else "finished", exit_code=0)
    stop_sampling.set()
    log.close()
    server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

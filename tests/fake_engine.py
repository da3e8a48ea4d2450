"""A fake engine for UI tests: the real socket protocol and run files, scripted numbers, no mlx.

  python tests/fake_engine.py start|resume RUN_DIR [--stop-at STEP]

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
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml  # noqa: E402

from engine import metrics, protocol as P  # noqa: E402
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
    parser.add_argument("mode", choices=("start", "resume"))
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--stop-at", type=int)
    args = parser.parse_args()
    signal.signal(signal.SIGHUP, signal.SIG_IGN)

    run_dir = args.run_dir.resolve()
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    train = cfg.get("train", {})
    iters, every_report = int(train.get("iters", 100)), int(train.get("steps_per_report", 10))
    every_eval, every_save = int(train.get("steps_per_eval", 50)), int(train.get("save_every", 50))
    lr = float(train.get("learning_rate", 1e-5))
    speed = (lr / 1e-5) ** 0.3 * (int((cfg.get("lora") or {}).get("rank", 8)) / 8) ** 0.1  # other settings, other curves
    step_s = env_number("FAKE_ENGINE_STEP_S", 0.01)
    abort_at, fail_at = int(env_number("FAKE_ENGINE_ABORT_AT", -1)), int(env_number("FAKE_ENGINE_FAIL_AT", -1))

    control = Control()
    server = EventServer(run_dir, control.submit, metrics.read_history(run_dir))
    record = RunRecord(run_dir)  # the real host's run.json writer
    record.update(pid=os.getpid(), socket=server.address, status="starting")
    signal.signal(signal.SIGTERM, lambda *_: control.submit(P.Stop()))
    log = metrics.MetricsLog(run_dir)
    printer = Printer(sys.stdout)
    state = {"step": 0, "best": None, "checkpoint": record.read().get("last_checkpoint")}

    def emit(event: P.Event) -> None:
        if isinstance(event, P.Paused):
            record.update(status="paused")
        elif isinstance(event, P.Resumed):
            record.update(status="running")
        log.write(event)
        printer(event)
        server.publish(event)

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

    stop_sampling = threading.Event()

    def sample_memory() -> None:
        while not stop_sampling.wait(0.25):
            active = 0.2 + 0.001 * state["step"]
            server.publish(P.MemorySampled(active, active + 0.05, 0.1, 0.5, 6.0, 10.0, 16.0, 0.0, 0.0))

    threading.Thread(target=sample_memory, daemon=True).start()
    if args.mode == "resume":
        last = record.read().get("last_checkpoint")
        state["step"] = int(Path(last).name.split("-")[1]) if last else 0
    time.sleep(env_number("FAKE_ENGINE_LOAD_S", 0.0))
    record.update(status="running", total_steps=iters, step=state["step"])
    emit(P.RunStarted(str(run_dir), iters, state["step"], 75_000, 944_000, 1500, 100, state["checkpoint"] if args.mode == "resume" else None))
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
        if control.stop_requested:
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
        elif step == args.stop_at:
            save("stop")
            stopped = True
            break
        elif step % every_save == 0:
            save("periodic")
    if exit_code == 0:
        record.update(status="stopped" if stopped else "finished", step=state["step"], best_val_loss=state["best"])
        emit(P.RunFinished(state["step"], stopped, state["best"], str(run_dir / "adapters")))
    stop_sampling.set()
    record.update(exit_code=exit_code)
    log.close()
    server.close()
    return exit_code


if __name__ == "__main__":
    sys.exit(main())

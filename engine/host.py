"""The detached engine process: one run, a socket for UIs, no terminal.

  python -m engine.host start RUN_DIR [--stop-at STEP]    (RUN_DIR/config.yaml already written)
  python -m engine.host resume RUN_DIR [--stop-at STEP]
  python -m engine.host tune STUDY_DIR                    (STUDY_DIR/study-plan.json already written)

Started by `engine.client.launch` in its own session with SIGHUP ignored and
stdout/stderr going to RUN_DIR/engine.log, so closing the terminal or losing
the SSH connection does not stop training. It listens on RUN_DIR's socket
from the start, so a UI sees loading, training and the end. A study (`tune`)
is hosted the same way: its socket carries the study's events and the running
trial's, and a UI attaching later gets the study's story and the current trial.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from engine import protocol as P

SAMPLE_EVERY_S = 0.25
NOTE_MEMORY_EVERY_S = 5.0


def _memory_sampler(publish, record, stop: threading.Event) -> None:
    """Publish readings a few times a second; note the latest in run.json now and then,
    so a run killed for memory can be recognised afterwards."""
    from engine import memory

    last_noted = 0.0
    while not stop.wait(SAMPLE_EVERY_S):
        try:
            reading = memory.sample()
            publish(reading)
            if time.monotonic() - last_noted > NOTE_MEMORY_EVERY_S:
                record.update(memory=reading.to_dict())
                last_noted = time.monotonic()
        except Exception:  # a failed reading must never touch training
            pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.host")
    parser.add_argument("mode", choices=("start", "resume", "tune"))
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--stop-at", type=int)
    args = parser.parse_args(argv)

    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if args.mode == "tune":
        return tune_main(args.run_dir.resolve())
    from engine import blas
    from engine.cli import Printer
    from engine.control import Control
    from engine.run import RunRecord

    # The socket opens before mlx loads, so a UI connects at once and sees the loading.
    run_dir = args.run_dir.resolve()
    control = Control()
    with serving(run_dir, control, Printer(sys.stdout)) as emit:  # engine.log reads like the CLI's output
        for warning in blas.setup().warnings:
            print(f"warning: {warning}", flush=True)
        from engine import checkpoint, models, run
        from engine.config import ConfigError
        from engine.data import DataError

        signal.signal(signal.SIGTERM, lambda *_: control.submit(P.Stop()))
        exit_code = 1
        try:
            if args.mode == "start":
                run.start(run.load_run_config(run_dir), run_dir, emit, control, stop_at=args.stop_at)
            else:
                run.resume(run_dir, emit, control, stop_at=args.stop_at)
            exit_code = 0
        except (ConfigError, DataError, models.ModelError, checkpoint.CheckpointError):
            exit_code = 2
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            RunRecord(run_dir).update(exit_code=exit_code)
    return exit_code


@contextmanager
def serving(run_dir: Path, control, show: Callable[[P.Event], None], required: bool = True) -> Iterator[Callable[[P.Event], None]]:
    """A run's socket and memory readings around its training; yields emit (show the event, then publish it).

    The detached host and `lora-mlx train` / `resume` in a terminal both serve their run,
    so `lora-mlx attach` follows and controls either. A terminal run whose socket cannot
    open (required=False) trains anyway, with a warning."""
    from engine import metrics
    from engine.run import RunRecord

    server = _open_server(run_dir, control, metrics.read_history(run_dir), show, required, "run; it trains")
    record = RunRecord(run_dir)
    record.update(pid=os.getpid(), socket=server and server.address, status="starting")
    publish = server.publish if server else (lambda event: None)

    def emit(event: P.Event) -> None:
        if isinstance(event, P.Paused):
            record.update(status="paused")
        elif isinstance(event, P.Resumed):
            record.update(status="running")
        show(event)
        publish(event)

    try:
        with _sampling_memory(publish, record):
            yield emit
    finally:
        if server:
            server.close()


def _open_server(folder: Path, control, history: list[P.Event], show, required: bool, what: str):
    """The folder's EventServer; when its socket cannot open and one is not required, a warning and None."""
    from engine.server import EventServer

    try:
        return EventServer(folder, control.submit, history)
    except OSError as e:
        if required:
            raise
        show(P.LogMessage("warning", f"{e}: lora-mlx attach cannot follow this {what} here all the same"))
        return None


@contextmanager
def _sampling_memory(publish, record) -> Iterator[None]:
    """Memory readings published a few times a second while the block runs (see _memory_sampler)."""
    stop = threading.Event()
    threading.Thread(target=_memory_sampler, args=(publish, record, stop), daemon=True).start()
    try:
        yield
    finally:
        stop.set()


def tune_main(study_dir: Path) -> int:
    """Host a study: trials one after another on this machine, until it is done or told to stop."""
    from engine.tune import StudyControl
    from engine.tune_cli import StudyPrinter

    control = StudyControl()
    signal.signal(signal.SIGTERM, lambda *_: control.stop())
    try:
        with serving_study(study_dir, control, StudyPrinter()) as emit:  # the socket opens before mlx loads
            from engine import blas

            for warning in blas.setup().warnings:
                print(f"warning: {warning}", flush=True)
            from engine.tune import read_plan, run_study

            cfg, space, settings, preset = read_plan(study_dir)
            run_study(cfg, space, settings, emit, control, preset=preset)
        return 0
    except BaseException as e:
        code, reason = _study_failure(e)
        print(f"error: {reason}", flush=True)
        if code == 1:
            import traceback

            traceback.print_exc()
        return code


def _study_failure(e: BaseException) -> tuple[int, str]:
    """A study that ended on an exception: its exit code and what to tell the user."""
    from engine import checkpoint, models
    from engine.config import ConfigError
    from engine.data import DataError

    if isinstance(e, (ConfigError, DataError, models.ModelError, checkpoint.CheckpointError)):
        return 2, str(e)
    if isinstance(e, KeyboardInterrupt):
        return 130, "aborted; the trial that was running is marked failed, and a rerun continues the study"
    return 1, f"the study stopped on an error: {type(e).__name__}: {e}"


@contextmanager
def serving_study(study_dir: Path, control, show: Callable[[P.Event], None], required: bool = True) -> Iterator[Callable[[P.Event], None]]:
    """A study's socket, run.json and memory readings around `run_study`; yields emit.

    The socket's history is the study's story plus the running trial, so a dashboard attaching
    late sees the trials so far and the current curve. The dashboard's study process and
    `lora-mlx tune` in a terminal (required=False) both serve their study. A second worker of
    the same study on this machine leaves the socket to the first; a terminal worker whose
    socket cannot open runs anyway."""
    import fcntl

    from engine import metrics
    from engine.client import Story
    from engine.run import RunRecord

    record = RunRecord(study_dir)
    claim = open(study_dir / "host.lock", "a")  # held while this process hosts; the OS lets go if it dies
    try:
        fcntl.flock(claim, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held = False
    except BlockingIOError:
        held = True  # another process serves this study
    except OSError:
        held = False  # a filesystem without flock: serve anyway (a second worker here may then take the socket over)
    if held:
        claim.close()
        if required:
            raise OSError(f"{study_dir}: another process (pid {record.read().get('pid')}) already hosts this study")
        show(P.LogMessage("info", f"pid {record.read().get('pid')} serves this study to the dashboard; this worker adds trials beside it"))
        yield show
        return
    try:  # the server's history: this session's study events and the running trial
        server = _open_server(study_dir, control, [], show, required, "study; it runs")
    except OSError:
        claim.close()
        raise
    if server is None:
        claim.close()
        yield show
        return
    record.update(kind="study", pid=os.getpid(), socket=server.address, status="starting", exit_code=None)
    log = metrics.MetricsLog(study_dir)  # run_study records the study's events; a failure outside it is recorded here
    story: list[P.Event] = []  # the study's own events, and messages and a failure outside any trial
    where = Story()  # knows whether a trial is running

    def emit(event: P.Event) -> None:
        where.see(event)
        if isinstance(event, P.TrialStarted):
            server.reset_history(story)  # a UI attaching now needs the study so far, then this trial
            record.update(status="running", trial=event.number, trial_dir=event.run_dir)
        elif isinstance(event, (P.Paused, P.Resumed)):
            record.update(status="paused" if isinstance(event, P.Paused) else "running")
        elif isinstance(event, P.StudyFinished):
            record.update(status=event.status, best_val_loss=event.best_value)
        if isinstance(event, P.STUDY_EVENTS) or (isinstance(event, (P.RunFailed, P.LogMessage)) and not where.in_trial):
            story.append(event)
            if isinstance(event, P.RunFailed):
                log.write(event)
        show(event)
        server.publish(event)

    exit_code = 1
    try:
        with _sampling_memory(server.publish, record):
            yield emit
        exit_code = 0
    except BaseException as e:
        exit_code, reason = _study_failure(e)
        emit(P.RunFailed(step=0, reason=reason))
        record.update(status="failed")
        raise
    finally:
        record.update(exit_code=exit_code)
        log.close()
        server.close()
        claim.close()


if __name__ == "__main__":
    sys.exit(main())

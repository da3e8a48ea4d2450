"""The detached engine process: one run, a socket for UIs, no terminal.

  python -m engine.host start RUN_DIR [--stop-at STEP]    (RUN_DIR/config.yaml already written)
  python -m engine.host resume RUN_DIR [--stop-at STEP]

Started by `engine.client.launch` in its own session with SIGHUP ignored and
stdout/stderr going to RUN_DIR/engine.log, so closing the terminal or losing
the SSH connection does not stop training. It listens on RUN_DIR's socket
from the start, so a UI sees loading, training and the end.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path

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
    parser.add_argument("mode", choices=("start", "resume"))
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--stop-at", type=int)
    args = parser.parse_args(argv)

    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    from engine import metrics
    from engine.cli import Printer
    from engine.control import Control
    from engine.server import EventServer

    # The socket opens before mlx loads, so a UI connects at once and sees the loading.
    run_dir = args.run_dir.resolve()
    control = Control()
    printer = Printer(sys.stdout)
    server = EventServer(run_dir, control.submit, metrics.read_history(run_dir))
    from engine.run import RunRecord

    record = RunRecord(run_dir)
    record.update(pid=os.getpid(), socket=server.address, status="starting")

    from engine import blas

    for warning in blas.setup().warnings:
        print(f"warning: {warning}", flush=True)
    from engine import checkpoint, models, run
    from engine.config import ConfigError
    from engine.data import DataError
    signal.signal(signal.SIGTERM, lambda *_: control.submit(P.Stop()))

    def emit(event: P.Event) -> None:
        if isinstance(event, P.Paused):
            record.update(status="paused")
        elif isinstance(event, P.Resumed):
            record.update(status="running")
        printer(event)  # engine.log reads like the CLI's output
        server.publish(event)

    stop_sampling = threading.Event()
    threading.Thread(target=_memory_sampler, args=(server.publish, record, stop_sampling), daemon=True).start()
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
        stop_sampling.set()
        record.update(exit_code=exit_code)
        server.close()
    return exit_code


if __name__ == "__main__":
    sys.exit(main())

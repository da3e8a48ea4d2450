"""The bridge between one engine process and the dashboard.

`run_bridge` is the body of the screen's bridge worker thread. It owns the
EngineClient (which is not thread-safe), sends the commands the UI queued,
waits on the engine with a short timeout, checks for cancellation between
waits, and hands everything to the UI through `post` (Textual's
`post_message`, safe from a thread). It never touches a widget.
"""

from __future__ import annotations

import queue
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from textual.message import Message

from engine import client as engine_client, config as config_mod, metrics, protocol as P
from tui.messages import BridgeEnded, CommandSent, EngineEvents, RunLaunched, Telemetry

POLL_S = 0.1  # longest the loop waits before looking at commands and cancellation again
CONNECT_S = 60.0  # a launched engine opens its socket within a second; allow a slow, busy machine
ATTACH_S = 3.0  # a live engine answers at once; after this, read the run from its files

Post = Callable[[Message], object]
Cancelled = Callable[[], bool]


@dataclass(frozen=True)
class StartJob:
    """Launch a new engine for cfg in run_dir."""

    cfg: config_mod.Config
    run_dir: Path
    engine: tuple[str, ...]

    def launch(self):
        return engine_client.start_run(self.cfg, self.run_dir, engine=self.engine)


@dataclass(frozen=True)
class StudyJob:
    """Launch a study process on run_dir, a study directory whose plan is written."""

    run_dir: Path
    engine: tuple[str, ...]

    def launch(self):
        return engine_client.start_study(self.run_dir, engine=self.engine)


@dataclass(frozen=True)
class AttachJob:
    """Connect to a run's (or study's) engine; if it is not running, show it from its files."""

    run_dir: Path


def run_bridge(job: StartJob | StudyJob | AttachJob, commands: queue.SimpleQueue, post: Post, cancelled: Cancelled) -> None:
    try:
        if isinstance(job, (StartJob, StudyJob)):
            try:
                process = job.launch()
            except OSError as e:
                post(EngineEvents([P.RunFailed(step=0, reason=f"could not start the engine: {e}")]))
                return
            post(RunLaunched(job.run_dir, process.pid))
            client = engine_client.EngineClient(job.run_dir, process)
            if connect(client, cancelled, CONNECT_S, lambda: process.poll() is not None):
                pump(client, commands, post, cancelled)
            elif not cancelled():  # it ended before we could connect: what it recorded tells how
                post(EngineEvents(from_files(job.run_dir, exit_code=gone(client).exit_code)))
                refuse_waiting(commands, post)
        else:
            client = engine_client.EngineClient(job.run_dir)
            if connect(client, cancelled, ATTACH_S, lambda: not _engine_alive(job.run_dir)):
                pump(client, commands, post, cancelled)
            elif not cancelled():
                post(EngineEvents(from_files(job.run_dir)))
                refuse_waiting(commands, post)
    finally:
        post(BridgeEnded(job.run_dir))


def connect(client: engine_client.EngineClient, cancelled: Cancelled, timeout_s: float, exited: Callable[[], bool]) -> bool:
    """Wait for the engine's socket in short steps; False if it exited, never came, or the UI left."""
    deadline = time.monotonic() + timeout_s
    while not cancelled() and time.monotonic() < deadline:
        try:
            client.connect(timeout_s=0.25)
            return True
        except ConnectionError:
            if exited():
                return False
    return False


def refuse_waiting(commands: queue.SimpleQueue, post: Post) -> None:
    """Commands queued while connecting reached no engine: say so, so the UI does not wait for them."""
    while True:
        try:
            post(CommandSent(commands.get_nowait(), False))
        except queue.Empty:
            return


def pump(client: engine_client.EngineClient, commands: queue.SimpleQueue, post: Post, cancelled: Cancelled) -> None:
    """Forward events and commands until the engine closes the connection or the UI detaches."""
    story = engine_client.Story()  # has the run (or study) reached its end since its last start?
    try:
        while not cancelled():
            while True:
                try:
                    command = commands.get_nowait()
                except queue.Empty:
                    break
                post(CommandSent(command, client.send(command)))
            events = client.receive(timeout_s=POLL_S)
            for event in events:
                story.see(event)
            for message in split(events):
                post(message)
            if client.conn is None:  # the engine closed the connection: it has ended
                if not story.ended:
                    post(EngineEvents([gone(client)]))
                return
    finally:
        client.close()  # detach; the engine keeps training


def split(events: list[P.Event]) -> list[Message]:
    """Runs of steps and memory samples become one Telemetry each; the other events keep their order."""
    messages: list[Message] = []
    steps: list[P.StepReported] = []
    memory: P.MemorySampled | None = None
    story: list[P.Event] = []
    for event in events:
        if isinstance(event, (P.StepReported, P.MemorySampled)):
            if story:
                messages.append(EngineEvents(story))
                story = []
            if isinstance(event, P.StepReported):
                steps.append(event)
            else:
                memory = event
        else:
            if steps or memory:
                messages.append(Telemetry(steps, memory))
                steps, memory = [], None
            story.append(event)
    if story:
        messages.append(EngineEvents(story))
    if steps or memory:
        messages.append(Telemetry(steps, memory))
    return messages


def gone(client: engine_client.EngineClient) -> P.EngineGone:
    """What is known about an engine that ended without a final event."""
    return client.gone()


def from_files(run_dir: Path, exit_code: int | None = None) -> list[P.Event]:
    """A run (or study) with no live engine: its recorded history, and how it ended if that was not recorded."""
    history = metrics.read_history(run_dir)
    story = engine_client.Story()
    for event in history:
        story.see(event)
    if story.ended:
        return history
    record = engine_client.read_record(run_dir)
    if engine_client.is_study(run_dir) and "pid" not in record:
        history.append(P.LogMessage("info", "no process on this machine serves this study (its workers run elsewhere); the trials show as they are stored"))
    elif engine_client.pid_alive(record.get("pid")):
        history.append(P.LogMessage("warning", f"the engine (pid {record.get('pid')}) is running but did not answer on its socket"))
    else:
        code = exit_code if exit_code is not None else record.get("exit_code")
        diagnosis = engine_client.diagnose({**record, "run_dir": str(run_dir)}, code)
        history.append(P.EngineGone(code, engine_client.log_tail(run_dir), record.get("last_checkpoint"), diagnosis))
    return history


def _engine_alive(run_dir: Path) -> bool:
    return engine_client.pid_alive(engine_client.read_record(run_dir).get("pid"))

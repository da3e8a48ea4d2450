"""The bridge worker's loop, with a scripted client in place of an engine connection."""

import json
import queue
import threading
from pathlib import Path

from engine import protocol as P
from engine.client import Story
from tui import bridge
from tui.messages import BridgeEnded, CommandSent, EngineEvents, Telemetry


class ScriptedClient:
    """Hands out one batch of events per receive(); closes the connection after the last when told to."""

    def __init__(self, batches, close_at_end=True, run_dir=Path("/nonexistent")):
        self.batches = list(batches)
        self.close_at_end = close_at_end
        self.conn = object()
        self.sent = []
        self.closed = False
        self.process = None
        self.run_dir = run_dir
        self.story = Story()

    def receive(self, timeout_s):
        if self.batches:
            batch = self.batches.pop(0)
            if not self.batches and self.close_at_end:
                self.conn = None
            return batch
        return []

    def send(self, command):
        self.sent.append(command)
        return True

    def close(self):
        self.closed = True

    def gone(self):  # the real client's account of a dead engine (reads run.json and engine.log)
        from engine.client import EngineClient

        return EngineClient.gone(self)
        self.conn = None


def step(n):
    return P.StepReported(n, 0.0, 1.0, 1e-5, 1.0, n, 0.1, float(n))


MEMORY = P.MemorySampled(1, 1, 0, 1, 1, 1, 2, 0, 0)


def test_split_keeps_the_story_in_order_and_folds_telemetry():
    started, evaluated = P.RunStarted("r", 10, 0, 1, 2, 3, 4), P.EvalReported(2, 1.0, 0.1)
    memory2 = P.MemorySampled(2, 2, 0, 2, 2, 2, 4, 0, 0)
    messages = bridge.split([started, step(1), MEMORY, step(2), evaluated, step(3), memory2])
    assert [type(m) for m in messages] == [EngineEvents, Telemetry, EngineEvents, Telemetry]
    assert messages[0].events == [started]
    assert (messages[1].steps, messages[1].memory) == ([step(1), step(2)], MEMORY)
    assert messages[2].events == [evaluated]
    assert (messages[3].steps, messages[3].memory) == ([step(3)], memory2)


def test_a_queued_telemetry_folds_into_the_next_without_losing_steps():
    older, newer = Telemetry([step(1), step(2)], MEMORY), Telemetry([step(3)], None)
    assert older.can_replace(newer)
    assert newer.steps == [step(1), step(2), step(3)] and newer.memory == MEMORY
    assert not older.can_replace(EngineEvents([]))


def test_pump_sends_queued_commands_and_forwards_events_until_the_engine_closes():
    client = ScriptedClient([[P.RunStarted("r", 10, 0, 1, 2, 3, 4)], [step(1)], [P.RunFinished(1, False, None, "a")]])
    commands = queue.SimpleQueue()
    commands.put(P.Pause())
    commands.put(P.Resume())
    posted = []
    bridge.pump(client, commands, posted.append, lambda: False)
    assert client.sent == [P.Pause(), P.Resume()]
    assert [type(m) for m in posted] == [CommandSent, CommandSent, EngineEvents, Telemetry, EngineEvents]
    assert client.closed


def test_pump_detaches_when_cancelled():
    client = ScriptedClient([[step(1)]] * 1000, close_at_end=False)
    cancel = threading.Event()
    posted = []

    def post(message):
        posted.append(message)
        if len(posted) == 3:
            cancel.set()

    bridge.pump(client, queue.SimpleQueue(), post, cancel.is_set)
    assert len(posted) == 3 and client.closed
    assert len(client.batches) == 997  # it stopped asking the engine as soon as it was cancelled


def test_pump_reports_a_resumed_engine_that_dies_even_though_history_holds_an_earlier_end(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"exit_code": None, "last_checkpoint": "ckpt"}))
    (tmp_path / "engine.log").write_text("resuming\nstep 20\n")
    history = [P.RunStarted("r", 10, 0, 1, 2, 3, 4), P.RunFinished(5, True, None, "a"), P.RunStarted("r", 10, 5, 1, 2, 3, 4, "ckpt")]
    client = ScriptedClient([history, [step(6)]], run_dir=tmp_path)
    posted = []
    bridge.pump(client, queue.SimpleQueue(), posted.append, lambda: False)
    gone = posted[-1].events[-1]
    assert isinstance(gone, P.EngineGone)
    assert gone.log_tail == ["resuming", "step 20"] and gone.last_checkpoint == "ckpt"


def test_pump_does_not_report_a_finished_engine_as_gone():
    client = ScriptedClient([[P.RunStarted("r", 10, 0, 1, 2, 3, 4)], [P.RunFinished(10, False, None, "a")]])
    posted = []
    bridge.pump(client, queue.SimpleQueue(), posted.append, lambda: False)
    assert not any(isinstance(e, P.EngineGone) for m in posted for e in getattr(m, "events", []))


def test_a_failed_launch_is_reported_not_raised(tmp_path):
    from engine.config import Config

    posted = []
    job = bridge.StartJob(Config(), tmp_path / "run", ("/nonexistent/python",))
    bridge.run_bridge(job, queue.SimpleQueue(), posted.append, lambda: False)
    failed = posted[0].events[0]
    assert isinstance(failed, P.RunFailed) and failed.reason.startswith("could not start the engine: ")
    assert isinstance(posted[-1], BridgeEnded)


def test_an_engine_that_exits_before_its_socket_opens_is_reported_gone(tmp_path):
    import sys

    from engine.config import Config

    posted = []
    job = bridge.StartJob(Config(), tmp_path / "run", (sys.executable, "-c", "import sys; print('bad engine'); sys.exit(3)"))
    bridge.run_bridge(job, queue.SimpleQueue(), posted.append, lambda: False)
    gone = next(e for m in posted for e in getattr(m, "events", []) if isinstance(e, P.EngineGone))
    assert gone.exit_code == 3 and gone.log_tail == ["bad engine"]


def test_attaching_to_a_run_with_no_engine_reads_its_files(tmp_path):
    from engine.metrics import MetricsLog

    log = MetricsLog(tmp_path)
    for event in (P.RunStarted(str(tmp_path), 10, 0, 1, 2, 3, 4), step(5)):
        log.write(event)
    log.close()
    (tmp_path / "run.json").write_text(json.dumps({"status": "running", "pid": 0, "exit_code": -9}))
    (tmp_path / "engine.log").write_text("step 5/10\n")
    events = bridge.from_files(tmp_path)
    assert isinstance(events[0], P.RunStarted) and events[1] == step(5)
    gone = events[2]
    assert (gone.exit_code, gone.log_tail, gone.last_checkpoint) == (-9, ["step 5/10"], None)
    assert "probably out of memory" in gone.diagnosis  # SIGKILL: what Linux's OOM killer sends

"""The detached engine process with the real engine on builtin:tiny: socket, attach, death, SSH drops."""

import os
import re
import pty
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine import client, config, protocol as P

DEMO = str(config.REPO_ROOT / "presets" / "demo.yaml")
SETTINGS = ["train.max_seq_length=64", "train.steps_per_report=1", "train.steps_per_eval=1000", "train.save_every=1000"]


def wait_for(c: client.EngineClient, predicate, seen: list, timeout_s: float = 60.0):
    """Receive until an event satisfies predicate; return that event."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        batch = c.receive(0.2)
        seen.extend(batch)  # keep every event, including those after the match
        match = next((e for e in batch if predicate(e)), None)
        if match is not None:
            return match
    raise AssertionError(f"timed out; last events: {[type(e).__name__ for e in seen[-5:]]}")


def steps(events):
    return [e.step for e in events if isinstance(e, P.StepReported)]


@pytest.fixture
def started(tmp_path):
    cfg = config.load(DEMO, SETTINGS + ["train.iters=400"])
    proc = client.start_run(cfg, tmp_path / "run")
    c = client.EngineClient(tmp_path / "run", proc)
    c.connect()
    yield c, proc, tmp_path / "run"
    c.close()
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_killed_engine_is_reported_at_once_with_exit_code_log_and_checkpoint(started):
    c, proc, run_dir = started
    seen: list = []
    wait_for(c, lambda e: isinstance(e, P.StepReported) and e.step >= 3, seen)
    c.send(P.SaveCheckpoint())
    wait_for(c, lambda e: isinstance(e, P.CheckpointSaved), seen)
    os.kill(proc.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    gone = wait_for(c, lambda e: isinstance(e, P.EngineGone), seen, timeout_s=5)
    assert time.monotonic() - killed_at < 1.0
    assert gone.exit_code == -signal.SIGKILL
    assert any("step" in line for line in gone.log_tail)
    assert gone.last_checkpoint and Path(gone.last_checkpoint).name.startswith("step-")
    assert "probably out of memory" in gone.diagnosis  # SIGKILL is what Linux's OOM killer sends
    assert "--set train.micro_batch_size=1" in gone.diagnosis
    assert client.run_status(run_dir).status == "died"


def test_detach_and_attach_replays_the_whole_history_and_two_clients_agree(started):
    c, proc, run_dir = started
    seen: list = []
    wait_for(c, lambda e: isinstance(e, P.StepReported) and e.step >= 5, seen)
    c.close()  # detach: the engine keeps training
    time.sleep(1.0)
    a, b = client.EngineClient(run_dir), client.EngineClient(run_dir)
    a.connect()
    b.connect()
    seen_a, seen_b = [], []
    wait_for(a, lambda e: isinstance(e, P.StepReported) and e.step >= 12, seen_a)
    assert steps(seen_a)[:12] == list(range(1, 13))  # history from step 1, then live, no gaps
    a.send(P.Pause())
    wait_for(b, lambda e: isinstance(e, P.Paused), seen_b)
    assert steps(seen_b) == list(range(1, steps(seen_b)[-1] + 1))
    assert client.run_status(run_dir).status == "paused"
    b.send(P.Stop())
    done_a = wait_for(a, lambda e: isinstance(e, P.RunFinished), seen_a)
    done_b = wait_for(b, lambda e: isinstance(e, P.RunFinished), seen_b)
    assert done_a == done_b and done_a.stopped_early
    assert steps(seen_a) == steps(seen_b)
    assert proc.wait(timeout=10) == 0
    assert client.run_status(run_dir).status == "stopped"


def test_engine_survives_its_terminal_closing_and_its_launcher_being_killed(tmp_path):
    """A launcher in a pseudo-terminal starts a run, then the terminal goes away (as when SSH drops)."""
    run_dir = tmp_path / "run"
    script = (
        "import sys, time; from pathlib import Path; from engine import client, config\n"
        f"cfg = config.load({DEMO!r}, {SETTINGS + ['train.iters=60']!r})\n"
        f"p = client.start_run(cfg, Path({str(run_dir)!r}))\n"
        "print('launched', p.pid, flush=True); time.sleep(600)\n"
    )
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(config.REPO_ROOT)
        os.execv(sys.executable, [sys.executable, "-c", script])
    output = b""
    while not re.search(rb"launched \d+\s", output):  # the line may arrive in pieces
        output += os.read(fd, 1024)
    engine_pid = int(output.split(b"launched")[1].split()[0])
    os.close(fd)  # the terminal is gone: the launcher gets SIGHUP
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)

    c = client.EngineClient(run_dir)
    c.connect()
    seen: list = []
    done = wait_for(c, lambda e: isinstance(e, (P.RunFinished, P.RunFailed, P.EngineGone)), seen, timeout_s=120)
    assert isinstance(done, P.RunFinished) and not done.stopped_early, done
    assert steps(seen) == list(range(1, 61))
    assert client.pid_alive(engine_pid) is False or client.run_status(run_dir).status == "finished"


def test_runs_lists_states(started, tmp_path):
    c, proc, run_dir = started
    wait_for(c, lambda e: isinstance(e, P.StepReported), [])
    result = subprocess.run(
        [sys.executable, "-m", "engine.cli", "runs", "--root", str(run_dir.parent)],
        capture_output=True, text=True, cwd=config.REPO_ROOT, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "run" in result.stdout and "running" in result.stdout
    assert f"follow it with: lora-mlx attach {run_dir}" in result.stdout


def test_diagnosis_reads_the_last_memory_note():
    near = {"memory": {"peak_gb": 9.5, "limit_gb": 10.0, "system_available_gb": 3.0, "system_total_gb": 16.0}}
    assert "probably out of memory" in client.diagnose(near, exit_code=None)
    calm = {"memory": {"peak_gb": 2.0, "limit_gb": 10.0, "system_available_gb": 12.0, "system_total_gb": 16.0}}
    assert client.diagnose(calm, exit_code=1) is None
    assert "micro_batch_size" in client.diagnose(calm, exit_code=-6)  # Metal aborts on OOM


def test_run_json_keeps_every_update_when_the_memory_sampler_writes_beside_the_loop(tmp_path):
    """The sampler thread and the training loop both update run.json: neither may undo the other."""
    import threading

    from engine.run import RunRecord

    def writer(name: str) -> None:
        record = RunRecord(tmp_path)
        for i in range(200):
            record.update(**{f"{name}{i}": i})

    threads = [threading.Thread(target=writer, args=(name,)) for name in ("loop", "sampler")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    data = RunRecord(tmp_path).read()
    assert all(data.get(f"{name}{i}") == i for name in ("loop", "sampler") for i in range(200))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]  # no temp file left behind


def test_a_run_folder_that_cannot_hold_a_socket_gets_one_in_a_private_temp_folder(tmp_path, monkeypatch):
    """Some network filesystems refuse Unix sockets: the run still serves, from the temp folder."""
    import json

    from engine import server

    real_listener = server.Listener

    def refusing_in_run_dirs(address, family):
        if address.startswith(str(tmp_path)):
            raise OSError(95, "Operation not supported")  # what an SMB mount says
        return real_listener(address, family=family)

    monkeypatch.setattr(server, "Listener", refusing_in_run_dirs)
    engine = server.EventServer(tmp_path, lambda command: None, [P.LogMessage("info", "hello")])
    try:
        assert engine.address.startswith(str(server._private_folder()))
        conn = server.connect(tmp_path)  # a client finds it without being told where
        assert json.loads(conn.recv_bytes())["text"] == "hello"
        conn.close()
    finally:
        engine.close()
    assert not Path(engine.address).exists()


def test_a_terminal_run_whose_socket_cannot_open_trains_anyway_with_a_warning(tmp_path, monkeypatch):
    from engine import server
    from engine.control import Control
    from engine.host import serving

    def refusing(address, family):
        raise OSError(95, "Operation not supported")

    monkeypatch.setattr(server, "Listener", refusing)
    shown = []
    with serving(tmp_path, Control(), shown.append, required=False) as emit:
        emit(P.LogMessage("info", "step"))
    assert shown[0].level == "warning" and "lora-mlx attach cannot follow this run" in shown[0].text
    assert shown[1].text == "step" and client.read_record(tmp_path)["socket"] is None
    with pytest.raises(OSError, match="cannot open the run's socket"):  # the detached engine needs its socket
        with serving(tmp_path, Control(), shown.append):
            pass

"""`lora-mlx` as a user runs it: real subprocesses, exit codes, and the messages on screen."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from engine import config

FAST = ["--set", "train.max_seq_length=64", "--set", "train.steps_per_report=1", "--set", "train.steps_per_eval=1000"]


def lora_mlx(*args, env_extra=None, timeout=180):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *map(str, args)],
        capture_output=True, text=True, cwd=config.REPO_ROOT, env=env, timeout=timeout,
    )


def test_train_stop_at_then_resume(tmp_path):
    run_dir = tmp_path / "run"
    first = lora_mlx("train", "demo", *FAST, "--set", "train.iters=6", "--run-dir", run_dir, "--stop-at", "3")
    assert first.returncode == 0, first.stderr
    assert "checkpoint (stop) at step 3" in first.stdout
    assert "stopped at step 3" in first.stdout
    second = lora_mlx("resume", run_dir)
    assert second.returncode == 0, second.stderr
    assert "resuming at step 3" in second.stdout and "finished at step 6" in second.stdout
    # Nothing from mlx-lm's rich console UI reaches the terminal.
    for out in (first.stdout + first.stderr, second.stdout + second.stderr):
        assert "╭" not in out and "Iter" not in out and "Traceback" not in out
    assert (run_dir / "adapters" / "adapters.safetensors").exists()


def test_config_error_exits_2_with_the_message(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("model: builtin:tiny\ndata: d\ntrain:\n  itres: 5\n")
    result = lora_mlx("train", preset)
    assert result.returncode == 2
    assert f"{preset}:4: train.itres: unknown key (did you mean 'train.iters'?)" in result.stderr
    assert "Traceback" not in result.stderr


def test_data_error_exits_2_before_training(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text('{"text": "ok"}\n{"text": \n')
    preset = tmp_path / "p.yaml"
    preset.write_text("model: builtin:tiny\ndata: data\n")
    result = lora_mlx("train", preset, "--run-dir", tmp_path / "run")
    assert result.returncode == 2
    assert "train.jsonl:2" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_offline_hub_id_fails_fast_with_a_clear_message(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text(f"model: mlx-community/Qwen2.5-0.5B-Instruct-4bit\ndata: {config.REPO_ROOT / 'presets/data/demo'}\n")
    started = time.monotonic()
    result = lora_mlx("train", preset, "--run-dir", tmp_path / "run", env_extra={"HF_HOME": str(tmp_path / "hf")})
    assert result.returncode == 2
    assert "not found locally, and the hub is unreachable" in result.stdout + result.stderr
    # the fix names a command that exists: huggingface_hub >= 1.0 ships `hf`, not `huggingface-cli`
    assert "hf download mlx-community/Qwen2.5-0.5B-Instruct-4bit" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert time.monotonic() - started < 60


def test_offline_estimate_of_an_unknown_hub_id_says_how_to_get_it(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text(f"model: someone/not-a-known-model\ndata: {config.REPO_ROOT / 'presets/data/demo'}\n")
    result = lora_mlx("estimate", preset, env_extra={"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2
    assert "model 'someone/not-a-known-model': not found locally, and the hub is unreachable" in result.stderr
    assert "hf download someone/not-a-known-model" in result.stderr


def test_missing_local_model_dir(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("model: ./models/nope\ndata: d\n")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "train.jsonl").write_text('{"text": "hello"}\n' * 8)
    result = lora_mlx("train", preset, "--run-dir", tmp_path / "run")
    assert result.returncode == 2
    assert "no such directory" in result.stdout + result.stderr


def test_stop_at_out_of_range(tmp_path):
    result = lora_mlx("train", "demo", "--set", "train.iters=5", "--stop-at", "9", "--run-dir", tmp_path / "r")
    assert result.returncode == 2 and "--stop-at 9: must be between 1 and train.iters (5)" in result.stderr


def test_ctrl_c_stops_with_a_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "train", "demo", *FAST, "--set", "train.iters=2000", "--run-dir", str(run_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=config.REPO_ROOT,
    )
    for line in proc.stdout:
        if line.startswith("step") and "/2000" in line:
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "stopping after this step" in err
    assert "checkpoint (stop)" in out
    assert json.loads((run_dir / "run.json").read_text())["status"] == "stopped"


def test_a_run_in_a_terminal_can_be_attached_to_paused_and_stopped(tmp_path):
    """`lora-mlx train` serves its run like the detached engine: another terminal follows and controls it."""
    from engine import client as engine_client, protocol as P

    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "train", "demo", *FAST, "--set", "train.iters=2000", "--run-dir", str(run_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=config.REPO_ROOT,
    )
    try:
        watcher = engine_client.EngineClient(run_dir)
        watcher.connect(timeout_s=60)
        seen: list = []

        def wait_for_event(kind, timeout_s=60):
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                seen.extend(watcher.receive(0.2))
                if any(isinstance(e, kind) for e in seen):
                    return
            raise AssertionError(f"no {kind.__name__} within {timeout_s} s; saw {[type(e).__name__ for e in seen][-10:]}")

        wait_for_event(P.StepReported)
        assert watcher.send(P.Pause())
        wait_for_event(P.Paused)
        assert engine_client.read_record(run_dir)["status"] == "paused"
        refused = lora_mlx("resume", run_dir)  # a second process must not train the same run
        assert refused.returncode == 2 and f"is still being trained (pid {proc.pid})" in refused.stderr, refused.stderr
        assert watcher.send(P.Stop())
        wait_for_event(P.RunFinished)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "paused at step" in out and "checkpoint (stop)" in out  # the terminal shows what the other one asked for
    record = engine_client.read_record(run_dir)
    assert record["status"] == "stopped" and not Path(record["socket"]).exists()


def test_runs_offers_resume_only_with_a_checkpoint(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text('{"text": "ok"}\n{"text": \n')
    preset = tmp_path / "p.yaml"
    preset.write_text("model: builtin:tiny\ndata: data\n")
    assert lora_mlx("train", preset, "--run-dir", tmp_path / "runs" / "bad").returncode == 2
    assert lora_mlx("train", "demo", "--set", "train.iters=4", "--set", "train.steps_per_eval=2", "--stop-at", "2",
                    "--run-dir", tmp_path / "runs" / "stopped").returncode == 0
    result = lora_mlx("runs", "--root", tmp_path / "runs")
    assert result.returncode == 0, result.stderr
    blocks = {}  # run name -> its line and the indented lines under it
    for line in result.stdout.splitlines()[1:]:
        if not line.startswith(" "):
            name = Path(line.split()[0]).name
        blocks[name] = blocks.get(name, "") + line + "\n"
    bad, stopped = blocks["bad"], blocks["stopped"]
    assert "problem in the data" in bad and "nothing to resume" in bad and "lora-mlx resume" not in bad
    assert f"continue with: lora-mlx resume {tmp_path / 'runs' / 'stopped'}" in stopped


def test_runs_with_no_runs(tmp_path):
    result = lora_mlx("runs", "--root", tmp_path)
    assert result.returncode == 0 and "no runs under" in result.stdout


def test_a_closed_pipe_ends_a_listing_quietly(tmp_path):
    """`lora-mlx runs | head -1`: the reader leaves early; no BrokenPipeError traceback."""
    import subprocess
    import sys

    for n in range(1500):  # more than a pipe holds (64 KiB), so printing outlives the reader
        (tmp_path / f"run-{n:04d}").mkdir()
        (tmp_path / f"run-{n:04d}" / "run.json").write_text('{"status": "finished"}')
    shell = f"{sys.executable} -m engine.cli runs --root {tmp_path} | head -1"
    result = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=60)
    assert result.stdout.startswith("RUN ") and "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr


def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path):
    from datetime import datetime

    from engine.client import new_run_dir

    now = datetime(2026, 1, 1, 12, 0, 0)
    first, second = new_run_dir("my preset", tmp_path / "runs", now), new_run_dir("my preset", tmp_path / "runs", now)
    assert first.name == "my-preset-20260101-120000" and second.name == "my-preset-20260101-120000-2"
    assert first.is_dir() and second.is_dir() and oct(first.stat().st_mode & 0o777) == "0o700"


def test_attach_without_a_folder_picks_the_newest_run_or_study_still_going(tmp_path):
    from engine.client import newest_to_attach
    from engine.run import RunRecord

    runs, studies = tmp_path / "runs", tmp_path / "studies"
    assert newest_to_attach(runs, studies) is None
    for folder, fields in ((runs / "old", {"status": "finished"}), (runs / "new", {"status": "stopped"}),
                           (studies / "demo", {"kind": "study", "status": "running", "pid": os.getpid()})):
        folder.mkdir(parents=True)
        RunRecord(folder).update(**fields)
        time.sleep(0.01)  # distinct modification times
    assert newest_to_attach(runs, studies) == studies / "demo"  # a study still going beats runs that ended
    RunRecord(runs / "old").update(status="paused", pid=os.getpid())  # now the newest thing still going
    assert newest_to_attach(runs, studies) == runs / "old"
    RunRecord(runs / "old").update(status="finished")
    RunRecord(studies / "demo").update(status="finished")
    assert newest_to_attach(runs, studies) == runs / "old"  # nothing going: the newest run

"""The dashboard in a real terminal (tmux, 80x24), driven by keys as a person would: start, pause, resume, quit."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from engine import config

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (.ci/run installs it)")


def screen(session: str) -> str:
    return subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout


def wait_for(session: str, text: str, timeout_s: float = 60.0) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        shown = screen(session)
        if text in shown:
            return shown
        time.sleep(0.2)
    raise AssertionError(f"{text!r} never appeared; the screen shows:\n{screen(session)}")


def test_start_pause_resume_quit_in_a_real_terminal(tmp_path):
    preset = tmp_path / "long.yaml"
    preset.write_text(f"model: builtin:tiny\ndata: {config.REPO_ROOT / 'presets/data/demo'}\ntrain:\n  iters: 5000\n"
                      "  max_seq_length: 64\n  mask_prompt: true\n  learning_rate: 5.0e-4\n  steps_per_report: 5\n")
    runs = tmp_path / "runs"
    session = f"lora-mlx-test-{os.getpid()}"
    env = f"LORA_MLX_RUNS={runs} LORA_MLX_CACHE={os.environ['LORA_MLX_CACHE']}"
    command = f"cd {config.REPO_ROOT} && {env} {sys.executable} -m engine.cli tui {preset}; echo EXITED $?; sleep 60"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "80", "-y", "24", command], check=True)
    try:
        wait_for(session, "IDLE")
        subprocess.run(["tmux", "send-keys", "-t", session, "s"], check=True)
        wait_for(session, "RUNNING")
        wait_for(session, "loss 7.")  # the first reported steps reached the screen
        subprocess.run(["tmux", "send-keys", "-t", session, "p"], check=True)
        paused = wait_for(session, "PAUSED")
        subprocess.run(["tmux", "send-keys", "-t", session, "p"], check=True)
        wait_for(session, "RUNNING")
        subprocess.run(["tmux", "send-keys", "-t", session, "q"], check=True)
        wait_for(session, "still training")
        subprocess.run(["tmux", "send-keys", "-t", session, "s"], check=True)  # stop and save
        wait_for(session, "EXITED 0")
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    assert "step" in paused
    (run_dir,) = [p for p in runs.iterdir() if p.is_dir()]
    deadline = time.monotonic() + 30
    while json.loads((run_dir / "run.json").read_text()).get("status") != "stopped" and time.monotonic() < deadline:
        time.sleep(0.2)
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "stopped" and record["last_checkpoint"]
    assert 0 < record["step"] < 5000

"""Starting, finding and talking to detached engine processes. No mlx here.

The dashboard and `lora-mlx runs` / `attach` use this module. An engine runs in
its own session with its output in RUN_DIR/engine.log; `EngineClient` connects
to its socket, receives the run's history and then live events, and sends
commands. When the engine process ends without a final event (killed, crashed,
out of memory), `receive` reports `EngineGone` with what is known.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from multiprocessing.connection import Connection
from pathlib import Path

from engine import config as config_mod, protocol as P
from engine.server import connect, encode
from engine.study_plan import PLAN_FILE

ACTIVE = ("starting", "loading", "running", "paused")


def default_runs_root() -> Path:
    """Where runs go: $LORA_MLX_RUNS, else ./runs."""
    return Path(os.environ.get("LORA_MLX_RUNS", "runs")).expanduser()


def folder_name(text: str, fallback: str) -> str:
    """text in the characters a folder name (and `--study`) allows: letters, digits, '.', '_', '-'."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or fallback


def new_run_dir(preset_name: str, root: Path | None = None, now: datetime | None = None) -> Path:
    """root/PRESET-YYYYmmdd-HHMMSS, created (0700) here, with -2, -3... when another run took that second.

    Creating it is what claims the name, so two runs started at once never share a folder."""
    root = root or default_runs_root()
    root.mkdir(parents=True, exist_ok=True)
    base = f"{folder_name(preset_name, 'run')}-{(now or datetime.now()):%Y%m%d-%H%M%S}"
    for n in range(1, 1000):
        candidate = root / (base if n == 1 else f"{base}-{n}")
        try:
            candidate.mkdir(mode=0o700)
            return candidate
        except FileExistsError:
            continue
    raise OSError(f"{root}: a thousand runs named {base} already exist")


ENGINE_COMMAND = (sys.executable, "-m", "engine.host")


def launch(mode: str, run_dir: Path, stop_at: int | None = None, engine: tuple[str, ...] = ENGINE_COMMAND) -> subprocess.Popen:
    """Start `python -m engine.host MODE RUN_DIR` detached from this terminal.

    `engine` replaces the command (tests pass a fake engine that speaks the same protocol).
    """
    run_dir = Path(run_dir).resolve()  # the engine starts in the repository, not in our directory
    run_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(run_dir, 0o700)
    command = [*engine, mode, str(run_dir)]
    if stop_at is not None:
        command += ["--stop-at", str(stop_at)]
    with open(run_dir / "engine.log", "ab") as log:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own session: no SIGHUP when the terminal goes
            cwd=str(config_mod.REPO_ROOT),
        )


def start_run(cfg: config_mod.Config, run_dir: Path, engine: tuple[str, ...] = ENGINE_COMMAND) -> subprocess.Popen:
    """Write the run's config and launch an engine on it."""
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(run_dir, 0o700)
    (run_dir / "config.yaml").write_text(config_mod.dump(cfg))
    return launch("start", run_dir, engine=engine)


def start_study(study_dir: Path, engine: tuple[str, ...] = ENGINE_COMMAND) -> subprocess.Popen:
    """Launch a detached study process on STUDY_DIR (its study-plan.json written by engine.tune.write_plan)."""
    return launch("tune", study_dir, engine=engine)


def is_study(folder: Path) -> bool:
    """A study directory (made by `lora-mlx tune` or the dashboard's t) rather than a run directory."""
    return (Path(folder) / PLAN_FILE).exists() or (Path(folder) / "study.json").exists()


def read_record(run_dir: Path) -> dict:
    try:
        return json.loads((Path(run_dir) / "run.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][:1] != "Z"
    except OSError:
        return True


def log_tail(run_dir: Path, lines: int = 15) -> list[str]:
    try:
        text = (Path(run_dir) / "engine.log").read_text(errors="replace")
    except FileNotFoundError:
        return []
    return text.splitlines()[-lines:]


MEMORY_SIGNALS = (-6, -9, 134, 137)  # SIGABRT (Metal's out-of-memory abort), SIGKILL (Linux's OOM killer)


def diagnose(record: dict, exit_code: int | None) -> str | None:
    """For an engine that died: was it probably memory? If so, say so and what to change on resume."""
    reading = record.get("memory") or {}
    limit = reading.get("limit_gb") or 0
    near_limit = limit and reading.get("peak_gb", 0) > 0.85 * limit
    system_short = reading.get("system_total_gb") and reading.get("system_available_gb", 1e9) < 0.05 * reading["system_total_gb"]
    if exit_code not in MEMORY_SIGNALS and not near_limit and not system_short:
        return None
    reading_text = f" (last reading: {reading.get('peak_gb', 0):.1f} GB peak, {reading.get('system_available_gb', 0):.1f} GB free)" if reading else ""
    return f"probably out of memory{reading_text}: resume with --set train.micro_batch_size=1 or --set train.grad_checkpoint=true"


@dataclass
class RunInfo:
    run_dir: Path
    status: str  # starting, loading, running, paused, finished, stopped, failed, died
    step: int | None
    total_steps: int | None
    best_val_loss: float | None
    updated_at: str | None
    diagnosis: str | None = None  # for a run that died: what probably happened and what to do
    last_checkpoint: str | None = None  # None: nothing to resume from
    error: str | None = None  # why a failed run failed


def run_status(run_dir: Path) -> RunInfo:
    """A run's state; an active status whose process is gone reads as 'died'."""
    record = read_record(run_dir)
    status = record.get("status", "unknown")
    diagnosis = None
    if status in ACTIVE and not pid_alive(record.get("pid")):
        status = "died"
        diagnosis = diagnose({**record, "run_dir": str(run_dir)}, record.get("exit_code"))
    return RunInfo(
        Path(run_dir), status, record.get("step"), record.get("total_steps"), record.get("best_val_loss"),
        record.get("updated_at"), diagnosis, record.get("last_checkpoint"), record.get("error"),
    )


def list_runs(root: Path) -> list[RunInfo]:
    """Every run under root (folders with a run.json), newest first."""
    if not Path(root).is_dir():
        return []
    dirs = [p.parent for p in Path(root).glob("*/run.json")]
    return [run_status(d) for d in sorted(dirs, key=lambda d: (d / "run.json").stat().st_mtime, reverse=True)]


def newest_to_attach(runs_root: Path, studies_root: Path) -> Path | None:
    """What `lora-mlx attach` opens when not told: the newest run or study still going, else the newest run."""
    runs = list_runs(runs_root)
    going = [r for r in runs + list_runs(studies_root) if r.status in ACTIVE]
    if going:
        return max(going, key=lambda r: (r.run_dir / "run.json").stat().st_mtime).run_dir
    return runs[0].run_dir if runs else None


class Story:
    """Whether a stream of events has reached its end: a run's RunFinished or RunFailed, or a study's
    StudyFinished (a trial's end is not the study's; a failure outside any trial, e.g. loading, is)."""

    def __init__(self) -> None:
        self.ended = False
        self.study = False
        self.in_trial = False

    def see(self, event: P.Event) -> None:
        if isinstance(event, P.StudyStarted):
            self.study, self.ended = True, False
        elif isinstance(event, P.TrialStarted):
            self.in_trial = True
        elif isinstance(event, P.TrialFinished):
            self.in_trial = False
        elif isinstance(event, P.RunStarted):
            self.ended = False  # a resumed run replays an earlier segment's end first
        elif isinstance(event, (P.StudyFinished, P.EngineGone)) or (isinstance(event, (P.RunFinished, P.RunFailed)) and not self.in_trial):
            self.ended = True


class EngineClient:
    """One connection to one run's (or study's) engine; not thread-safe (one bridge thread owns it)."""

    def __init__(self, run_dir: Path, process: subprocess.Popen | None = None):
        self.run_dir = Path(run_dir).resolve()
        self.process = process
        self.conn: Connection | None = None
        self.story = Story()

    @property
    def finished(self) -> bool:
        """A final event arrived (or the engine's end was reported): its exit is expected."""
        return self.story.ended

    def connect(self, timeout_s: float = 30.0) -> None:
        """Wait for the engine's socket (it opens before the model loads)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.conn = connect(self.run_dir)
                return
            except ConnectionError:
                if self._exited() or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _exited(self) -> bool:
        if self.process is not None:
            return self.process.poll() is not None
        pid = read_record(self.run_dir).get("pid")
        return pid is not None and not pid_alive(pid)  # no pid yet: still starting

    def receive(self, timeout_s: float) -> list[P.Event]:
        """Events that arrive within timeout_s (all that are waiting, without blocking further)."""
        if self.conn is None:
            return [self.gone()] if not self.finished else []
        events: list[P.Event] = []
        try:
            if not self.conn.poll(timeout_s):
                return events
            # Drain what is already on its way (a history replay arrives as a burst), within reason.
            while len(events) < 5000 and self.conn.poll(0.005):
                event = P.event_from_dict(json.loads(self.conn.recv_bytes()))
                self.story.see(event)
                events.append(event)
        except (EOFError, OSError):
            self.conn.close()
            self.conn = None
            if not self.finished:
                events.append(self.gone())
        return events

    def gone(self) -> P.EngineGone:
        """What is known about an engine that ended without a final event (waits up to 1 s for its exit code)."""
        exit_code = None
        if self.process is not None:
            try:
                exit_code = self.process.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                pass
        record = read_record(self.run_dir)
        if exit_code is None:
            exit_code = record.get("exit_code")
        gone = P.EngineGone(
            exit_code=exit_code,
            log_tail=log_tail(self.run_dir),
            last_checkpoint=record.get("last_checkpoint"),
            diagnosis=diagnose({**record, "run_dir": str(self.run_dir)}, exit_code),
        )
        self.story.see(gone)
        return gone

    def send(self, command: P.Command) -> bool:
        """Send a command; False when the engine is no longer there."""
        if self.conn is None:
            return False
        try:
            self.conn.send_bytes(encode(command))
            return True
        except (OSError, ValueError):
            return False

    def close(self) -> None:
        """Detach: the engine keeps running."""
        if self.conn is not None:
            self.conn.close()
            self.conn = None

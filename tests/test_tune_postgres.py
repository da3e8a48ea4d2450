"""Two workers, in two processes, share one study in a real PostgreSQL server that this test starts."""

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from engine import config, trials

DATA = config.REPO_ROOT / "presets" / "data" / "demo"
PRESET = f"""model: builtin:tiny
data: {DATA}
train:
  iters: 20
  learning_rate: 5.0e-4
  max_seq_length: 64
  mask_prompt: true
  steps_per_eval: 5
  val_batches: 2
search:
  train.learning_rate: [1.0e-3, 5.0e-4, 1.0e-4]
  lora.rank: [4, 8]
"""


def server_binaries() -> Path | None:
    """The newest PostgreSQL server's bin folder (Debian keeps it off PATH), or one on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    initdb = found[-1] if found else shutil.which("initdb")
    return Path(initdb).parent if initdb and (Path(initdb).parent / "pg_ctl").exists() else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    binaries = server_binaries()
    if binaries is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found; on Debian: apt-get install postgresql")
    pytest.importorskip("psycopg", reason="the PostgreSQL driver (psycopg 3) is missing: pip install 'lora-finetuning-mlx[postgres]'")
    as_user = {}
    if os.geteuid() == 0:  # the server refuses to run as root: run it as the package's 'postgres' user
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root, and there is no 'postgres' user to run the server as")
        as_user = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
    folder = Path(tempfile.mkdtemp(prefix="lora-mlx-pg-"))  # under /tmp: reachable by that user
    if as_user:
        os.chown(folder, as_user["user"], as_user["group"])
    port = free_port()

    def pg(*args, **kwargs):
        return subprocess.run([str(binaries / args[0]), *args[1:]], cwd=folder, capture_output=True, text=True, timeout=120, **as_user, **kwargs)

    made = pg("initdb", "-D", str(folder / "data"), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
    assert made.returncode == 0, made.stdout + made.stderr
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off"
    started = pg("pg_ctl", "-D", str(folder / "data"), "-l", str(folder / "server.log"), "-w", "-t", "60", "-o", options, "start")
    assert started.returncode == 0, started.stdout + started.stderr + (folder / "server.log").read_text()
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        pg("pg_ctl", "-D", str(folder / "data"), "-m", "immediate", "stop")
        shutil.rmtree(folder, ignore_errors=True)


def test_two_workers_share_one_study_and_no_trial_runs_twice(tmp_path, postgres_url):
    preset = tmp_path / "p.yaml"
    preset.write_text(PRESET)
    roots = [tmp_path / "machine-a", tmp_path / "machine-b"]  # each worker keeps its trials' run dirs locally
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "engine.tune_cli", "tune", str(preset), "--storage", postgres_url, "--study", "shared",
             "--trials", "6", "--sampler", "random", "--pruner", "none", "--root", str(root)],
            stdout=open(tmp_path / f"{i}.log", "w"), stderr=subprocess.STDOUT, cwd=config.REPO_ROOT,
        )
        for i, root in enumerate(roots)
    ]
    for i, worker in enumerate(workers):
        assert worker.wait(timeout=300) == 0, (tmp_path / f"{i}.log").read_text()

    rows = trials.leaderboard(postgres_url, "shared")
    assert len(rows) >= 6 and all(r.state == "complete" for r in rows), [(r.number, r.state, r.reason) for r in rows]
    assert len({r.number for r in rows}) == len(rows)
    ran_by = {}
    for r in rows:  # every trial ran in exactly one worker, in that worker's own study folder
        where = [root for root in roots if (root / "shared" / f"trial-{r.number:04d}" / "metrics.jsonl").exists()]
        assert len(where) == 1 and r.run_dir == str(where[0] / "shared" / f"trial-{r.number:04d}"), (r.number, where)
        ran_by.setdefault(where[0], []).append(r.number)
    assert len(ran_by) == 2, ran_by  # both workers took trials
    assert len(rows) <= 7  # at most one trial past the target: two workers may both start the last one

    shown = subprocess.run([sys.executable, "-m", "engine.tune_cli", "trials", "shared", "--storage", postgres_url],
                           capture_output=True, text=True, cwd=config.REPO_ROOT, timeout=60)
    assert shown.returncode == 0 and "best: trial" in shown.stdout and "***" not in postgres_url

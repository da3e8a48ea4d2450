"""The engine's local socket: events out to every attached UI, commands in.

A Unix socket in the run directory (0700, so only its owner can reach it)
speaks length-prefixed JSON via `multiprocessing.connection`: never pickle.
Each client gets the run's history on connect, then live events. A client
that stops reading (a suspended terminal) is dropped rather than allowed to
stall training: every client has its own bounded queue and sender thread.
No mlx here, so a fake engine in the tests speaks exactly this protocol.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import tempfile
import threading
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import Callable

from engine import protocol as P

MAX_QUEUED = 10_000  # events waiting for one slow client before it is dropped


def socket_addresses(run_dir: Path) -> list[str]:
    """Where a run's socket may be, in the order tried: RUN_DIR/engine.sock, then a short path in a
    private temp folder (for a path too long for AF_UNIX, or a filesystem that cannot hold a socket)."""
    path = str(Path(run_dir).resolve() / "engine.sock")
    private = str(_private_folder() / (hashlib.sha1(path.encode()).hexdigest()[:16] + ".sock"))
    return [path, private] if len(path.encode()) < 100 else [private]


def _private_folder() -> Path:
    return Path(tempfile.gettempdir()) / f"lora-mlx-{os.getuid()}"


def encode(message: P.Event | P.Command) -> bytes:
    return json.dumps(message.to_dict() if isinstance(message, P.Event) else {"type": type(message).__name__}).encode()


def decode_command(raw: bytes) -> P.Command | None:
    try:
        cls = P.COMMAND_TYPES.get(json.loads(raw).get("type"))
    except (json.JSONDecodeError, AttributeError):
        return None
    return cls() if cls else None


class _Subscriber:
    def __init__(self, conn: Connection, backlog: list[bytes]):
        self.conn = conn
        self.queue: queue.Queue[bytes | None] = queue.Queue()
        for item in backlog:
            self.queue.put(item)
        self.alive = True
        self.thread = threading.Thread(target=self.send_loop, name="engine-send", daemon=True)
        self._close_lock = threading.Lock()

    def close(self) -> None:
        """Close the connection once: the sender (after its flush) and the reader (on EOF) may both ask."""
        with self._close_lock:
            if not self.conn.closed:
                try:
                    self.conn.close()
                except OSError:
                    pass

    def send_loop(self) -> None:
        """Send queued events; on a failed send stop sending, but leave the connection to the
        reader, so a command the client sent just before it left is still read."""
        try:
            while (item := self.queue.get()) is not None:
                self.conn.send_bytes(item)
        except (OSError, EOFError, ValueError):
            self.alive = False
            return
        self.alive = False
        self.close()  # the engine is closing: queued events were flushed


class EventServer:
    """Broadcast events to attached clients and pass their commands to `on_command`."""

    def __init__(self, run_dir: Path, on_command: Callable[[P.Command], None], history: list[P.Event] = ()):
        self.address, self.listener = _listen(socket_addresses(run_dir))
        self.on_command = on_command
        self.history = [encode(e) for e in history]
        self.latest_memory: bytes | None = None
        self.subscribers: list[_Subscriber] = []
        self.lock = threading.Lock()
        self.closed = False
        threading.Thread(target=self._accept_loop, name="engine-accept", daemon=True).start()

    def publish(self, event: P.Event) -> None:
        data = encode(event)
        with self.lock:
            if isinstance(event, P.MemorySampled):
                self.latest_memory = data  # high rate: only the newest matters to a new client
            else:
                self.history.append(data)
            for sub in list(self.subscribers):
                if not sub.alive or sub.queue.qsize() > MAX_QUEUED:
                    self._drop(sub)
                else:
                    sub.queue.put(data)

    def reset_history(self, events: list[P.Event]) -> None:
        """What a client connecting from now on is sent first (a study keeps its own story, not every trial's)."""
        with self.lock:
            self.history = [encode(e) for e in events]

    def _drop(self, sub: _Subscriber) -> None:
        self.subscribers.remove(sub)
        sub.alive = False
        sub.queue.put(None)

    def _accept_loop(self) -> None:
        while not self.closed:
            try:
                conn = self.listener.accept()
            except OSError:
                return
            with self.lock:
                backlog = self.history + ([self.latest_memory] if self.latest_memory else [])
                sub = _Subscriber(conn, backlog)
                self.subscribers.append(sub)
            sub.thread.start()
            threading.Thread(target=self._read_loop, args=(sub,), name="engine-read", daemon=True).start()

    def _read_loop(self, sub: _Subscriber) -> None:
        try:
            while True:
                command = decode_command(sub.conn.recv_bytes())
                if command is not None:
                    self.on_command(command)
        except (OSError, EOFError):
            with self.lock:
                if sub in self.subscribers:
                    self._drop(sub)
            sub.close()

    def close(self) -> None:
        """Flush what each client has queued, then close the socket."""
        self.closed = True
        with self.lock:
            leaving = list(self.subscribers)
            for sub in leaving:
                self._drop(sub)
        for sub in leaving:
            sub.thread.join(timeout=2.0)
        self.listener.close()
        if os.path.exists(self.address):
            os.unlink(self.address)


def _listen(addresses: list[str]) -> tuple[str, Listener]:
    """Listen on the first address that takes a socket (only its owner may connect)."""
    for stale in addresses:  # left by an engine that was killed; a client must not find it first
        if os.path.exists(stale):
            os.unlink(stale)
    error: OSError | None = None
    for address in addresses:
        if Path(address).parent == _private_folder():
            _private_folder().mkdir(mode=0o700, exist_ok=True)
            os.chmod(_private_folder(), 0o700)
        old_umask = os.umask(0o177)
        try:
            return address, Listener(address, family="AF_UNIX")
        except OSError as e:
            error = e
        finally:
            os.umask(old_umask)
    raise OSError(f"cannot open the run's socket at {' or '.join(addresses)}: {error}")


def connect(run_dir: Path) -> Connection:
    """Connect to a run's engine; raises ConnectionError if none is listening."""
    error: OSError | None = None
    for address in socket_addresses(run_dir):
        if os.path.exists(address):
            try:
                return Client(address, family="AF_UNIX")
            except OSError as e:
                error = e
    if error is None:
        raise ConnectionError(f"no engine is listening for {run_dir}")
    raise ConnectionError(f"cannot reach the engine for {run_dir}: {error}")

"""The leaderboard pane: this project's runs, or a study's trials. It reads them itself, in worker
threads, and posts the curves the user picked to overlay; the screen tells it what is current."""

from __future__ import annotations

from pathlib import Path

from textual import on, work
from textual.message import Message
from textual.widgets import ContentSwitcher

from engine.trials import MIN_COMPLETE_FOR_IMPORTANCE
from tui import runs
from tui.state import Series
from tui.trials import Snapshot, TrialsReader
from tui.widgets.leaderboard import Leaderboard
from tui.widgets.trial_board import TrialBoard

RUNS_REFRESH_S = 5.0
TRIALS_REFRESH_S = 1.0  # while a study runs here; otherwise with the runs


class Boards(ContentSwitcher):
    class OverlayChanged(Message):
        """Show these curves in grey on the training chart (name None: remove the overlay)."""

        def __init__(self, name: str | None, train: Series | None = None, val: Series | None = None) -> None:
            super().__init__()
            self.name, self.train, self.val = name, train, val

    class _RunsRead(Message):
        def __init__(self, rows: list[runs.RunRow]) -> None:
            super().__init__()
            self.rows = rows

    class _TrialsRead(Message):
        def __init__(self, snapshot: Snapshot, seq: int, newest_run_s: float) -> None:
            super().__init__()
            self.snapshot, self.seq, self.newest_run_s = snapshot, seq, newest_run_s

    class _CurvesRead(Message):
        def __init__(self, run_dir: Path, train: Series, val: Series) -> None:
            super().__init__()
            self.run_dir, self.train, self.val = run_dir, train, val

    def __init__(self, runs_root: Path, **kwargs) -> None:
        super().__init__(initial="run-board", **kwargs)
        self.runs_root = runs_root
        self.current_run: Path | None = None  # the run (or trial) the training pane shows
        self.overlay: Path | None = None
        self.study_dir: Path | None = None
        self.study_target: int | None = None
        self.study_live = False  # a study runs now: read its trials every second
        self.snapshot: Snapshot | None = None
        self.run_rows: list[runs.RunRow] = []
        self._reader = TrialsReader()
        self._runs_shown: tuple | None = None
        self._trials_asked = self._trials_applied = 0  # a slow, older read must not overwrite a newer one
        self._trials_shown: tuple | None = None

    def compose(self):
        yield Leaderboard(id="run-board")
        yield TrialBoard(id="trial-board")

    def on_mount(self) -> None:
        self._title()
        self.refresh_runs()
        self.set_interval(RUNS_REFRESH_S, self._tick_slow)
        self.set_interval(TRIALS_REFRESH_S, self._tick_fast)

    @property
    def table_selector(self) -> str:
        return "#trials-table" if self.current == "trial-board" else "#runs-table"

    def _title(self) -> None:
        study = f"Trials · {self.study_dir.name}" if self.study_dir else "Trials"
        self.border_title = study if self.current == "trial-board" else "Runs"

    # -- what the screen tells it ---------------------------------------------------------

    def show_study(self, study_dir: Path, target: int | None = None, switch: bool = True) -> None:
        """Follow this study; switch to its trials unless told not to."""
        if study_dir != self.study_dir:
            self.study_dir, self.snapshot = study_dir, None
        self.study_target = target or self.study_target
        if switch:
            self.current = "trial-board"
        self._title()
        self.refresh_trials()

    def toggle(self) -> str:
        self.current = "run-board" if self.current == "trial-board" else "trial-board"
        self._title()
        if self.current == "trial-board":
            self.refresh_trials()
        else:
            self.refresh_runs()
        return self.current

    def set_current(self, run_dir: Path | None) -> None:
        self.current_run = run_dir
        self._draw_runs()
        self._draw_trials()

    # -- reading ---------------------------------------------------------------------------

    def _tick_slow(self) -> None:
        self.refresh_runs()
        if not self.study_live:
            self.refresh_trials()

    def _tick_fast(self) -> None:
        if self.study_live:
            self.refresh_trials()

    @work(thread=True, exclusive=True, group="runs", description="read runs")
    def refresh_runs(self) -> None:
        self.post_message(self._RunsRead(runs.read_rows(self.runs_root)))

    def refresh_trials(self) -> None:
        if self.study_dir is not None:
            self._trials_asked += 1
            self._read_trials(self.study_dir, self._trials_asked)

    @work(thread=True, group="trials", description="read a study's trials")
    def _read_trials(self, study_dir: Path, seq: int) -> None:
        snapshot = self._reader.read(study_dir)
        newest_run_s = 0.0
        if self.snapshot is None and self.runs_root.is_dir():  # the first read decides which board opens
            newest_run_s = max((p.stat().st_mtime for p in self.runs_root.glob("*/run.json")), default=0.0)
        self.post_message(self._TrialsRead(snapshot, seq, newest_run_s))

    @on(_RunsRead)
    def _runs_read(self, message: _RunsRead) -> None:
        self.run_rows = message.rows
        self._draw_runs()

    @on(_TrialsRead)
    def _trials_read(self, message: _TrialsRead) -> None:
        if message.snapshot.study_dir == self.study_dir and message.seq > self._trials_applied:
            first = self.snapshot is None
            self._trials_applied = message.seq
            self.snapshot = message.snapshot
            self._draw_trials()
            if first and message.snapshot.rows:
                self._hint_study()
                if self.current != "trial-board" and message.snapshot.updated_s > message.newest_run_s:
                    self.current = "trial-board"  # the study is what was done last here: show it
                    self._title()

    def _hint_study(self) -> None:
        board = self.query_one(Leaderboard)
        board.study_hint = f"l: the trials of study {self.study_dir.name}" if self.snapshot and self.snapshot.rows else ""
        self._runs_shown = None
        self._draw_runs()

    def _draw_runs(self) -> None:
        shown = (self.run_rows, self.current_run, self.overlay)
        if shown != self._runs_shown:  # rebuilding the table every few seconds for nothing costs frames
            self._runs_shown = shown
            self.query_one(Leaderboard).show(*shown)

    def _draw_trials(self) -> None:
        shown = (self.snapshot, self.study_target, self.current_run, self.overlay)
        if shown != self._trials_shown:
            self._trials_shown = shown
            self.query_one(TrialBoard).show(*shown, MIN_COMPLETE_FOR_IMPORTANCE)

    # -- the overlay -----------------------------------------------------------------------

    @on(Leaderboard.RefreshWanted)
    def _refresh_wanted(self) -> None:
        self.refresh_runs()

    @on(Leaderboard.Chosen)
    @on(TrialBoard.Chosen)
    def _chosen(self, message: Leaderboard.Chosen | TrialBoard.Chosen) -> None:
        message.stop()
        if message.run_dir == self.overlay:
            self.overlay = None
            self.post_message(self.OverlayChanged(None))
            self._draw_runs()
            self._draw_trials()
        else:
            self.read_curves(message.run_dir)

    @work(thread=True, exclusive=True, group="overlay", description="read a run's curves")
    def read_curves(self, run_dir: Path) -> None:
        self.post_message(self._CurvesRead(run_dir, *runs.read_curves(run_dir)))

    @on(_CurvesRead)
    def _curves_read(self, message: _CurvesRead) -> None:
        if not len(message.train) and not len(message.val):
            self.notify(f"{message.run_dir.name} has no recorded steps yet.", severity="warning", markup=False)
            return
        self.overlay = message.run_dir
        self.post_message(self.OverlayChanged(message.run_dir.name, message.train, message.val))
        self._draw_runs()
        self._draw_trials()

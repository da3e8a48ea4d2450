"""The trial leaderboard: this project's runs, best validation loss first. Enter overlays a run's curves."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import DataTable, Static

from tui.runs import RunRow
from tui.state import clock

STATUS_STYLES = {"running": "green", "paused": "yellow", "finished": "blue", "stopped": "cyan", "failed": "red", "died": "red"}
COLUMNS = ("", "run", "state", "best val", "steps", "params", "time")
HINT = "Runs, best validation loss first. Enter: overlay its loss curve (again: remove it)."
EMPTY_HINT = "No runs yet under the runs folder. Start one with s."


class Leaderboard(Vertical):
    BINDINGS = [Binding("r", "refresh_runs", "Refresh runs", id="refresh-runs")]

    class Chosen(Message):
        """The user picked a run to overlay on the training chart."""

        def __init__(self, run_dir: Path) -> None:
            super().__init__()
            self.run_dir = run_dir

    class RefreshWanted(Message):
        pass

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.rows: list[RunRow] = []
        self.study_hint = ""  # "l: the trials of study demo" when the preset has one

    def compose(self) -> ComposeResult:
        yield Static(HINT, id="runs-hint")
        table = DataTable(id="runs-table", cursor_type="row", zebra_stripes=True)
        table.add_columns(*COLUMNS)
        yield table

    def show(self, rows: list[RunRow], current: Path | None, overlay: Path | None) -> None:
        table = self.query_one(DataTable)
        selected = self.rows[table.cursor_row].run_dir if self.rows and 0 <= table.cursor_row < len(self.rows) else None
        self.rows = rows
        table.clear()
        for row in rows:
            mark = "◆" if overlay == row.run_dir else ("▶" if current == row.run_dir else "")
            steps = f"{row.step or 0}/{row.total_steps}" if row.total_steps else "-"
            best = f"{row.best_val_loss:.4f}" if row.best_val_loss is not None else "-"
            table.add_row(
                mark,
                row.name,
                Text(row.status, style=STATUS_STYLES.get(row.status, "")),
                best,
                steps,
                row.params,
                clock(row.duration_s) if row.duration_s is not None else "-",
                key=str(row.run_dir),
            )
        hint = HINT if rows else EMPTY_HINT
        self.query_one("#runs-hint", Static).update(f"{hint} {self.study_hint}".strip())
        if selected is not None:
            for index, row in enumerate(rows):
                if row.run_dir == selected:
                    table.move_cursor(row=index)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.post_message(self.Chosen(Path(str(event.row_key.value))))

    def action_refresh_runs(self) -> None:
        self.post_message(self.RefreshWanted())

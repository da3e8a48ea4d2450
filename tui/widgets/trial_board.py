"""The trial leaderboard: a study's trials, best first, filled live. Enter overlays a trial's curves."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import DataTable, Static

from engine.trials import TrialRow
from tui.state import clock
from tui.trials import Snapshot

STATE_STYLES = {"running": "green", "complete": "blue", "pruned": "yellow", "failed": "red", "waiting": "dim"}
COLUMNS = ("", "#", "state", "val loss", "params", "step", "time")
SHORT_KEYS = {
    "learning_rate": "lr", "rank": "r", "alpha": "α", "dropout": "drop", "num_layers": "layers", "batch_size": "bs",
    "grad_accumulation": "acc", "warmup_steps": "warmup", "fine_tune_type": "", "lr_schedule": "", "final_learning_rate": "final lr",
    "optimizer": "", "weight_decay": "wd",
}
KEYS_HINT = "enter overlay its curve · g try its adapters · b try the best · P promote the best to a preset"


def short_key(key: str) -> str:
    """train.learning_rate -> lr: a searched key in a few columns ('' for keys whose values speak for themselves)."""
    leaf = key.rpartition(".")[2]
    return SHORT_KEYS.get(leaf, leaf)


def short_params(params: dict) -> str:
    """lr 3.2e-04 r16 α32 drop 0.05: a trial's values in few columns."""
    parts = []
    for key, value in params.items():
        name = short_key(key)
        shown = (f"{value:.1e}" if abs(value) < 1e-2 and value else f"{value:g}") if isinstance(value, float) else str(value)
        parts.append((name + ("" if len(name) == 1 else " ") + shown) if name else shown)
    return " ".join(parts)


def at_step(row: TrialRow) -> str:
    if row.state == "pruned" and row.pruned_at_step is not None:
        return f"✂ {row.pruned_at_step}"
    if row.state == "running" and row.intermediate:
        return f"{max(row.intermediate)}…"
    return str(row.best_step) if row.best_step is not None else "-"


def headline(snapshot: Snapshot, target: int | None) -> str:
    if snapshot.error:
        return snapshot.error
    if not snapshot.rows:
        return f"study {snapshot.study_dir.name}: no trials yet" + ("; starting" if snapshot.alive else "")
    done = sum(r.done for r in snapshot.rows)  # as the study counts toward its target
    parts = [f"study {snapshot.study_dir.name}: {done}" + (f" of {target}" if target else "") + " done"]
    parts += [f"{snapshot.count(s)} {s}" for s in ("complete", "pruned", "failed", "running") if snapshot.count(s)]
    return " · ".join(parts)


def footline(snapshot: Snapshot, min_complete: int) -> str:
    lines = []
    best = snapshot.best
    if best is not None:
        where = best.adapter_path or "-"
        if where.startswith(str(snapshot.study_dir) + "/"):
            where = where[len(str(snapshot.study_dir)) + 1 :]  # the study's folder is in the title
        lines.append(f"best: trial {best.number}, val loss {best.value:.4f}, adapters {where}")
    if snapshot.importance:
        lines.append("importance: " + " · ".join(f"{short_key(k) or k.rpartition('.')[2]} {v:.2f}" for k, v in snapshot.importance.items()))
    elif snapshot.rows:
        lines.append(f"importance: after {min_complete} complete trials ({snapshot.count('complete')} so far)")
    return "\n".join(lines)


class TrialBoard(Vertical):
    BINDINGS = [
        # Not in the footer (the screen's keys matter more there); the line under the table lists them.
        Binding("g", "try_selected", "Try this trial", id="try-trial", show=False, tooltip="Answer a prompt with the selected trial's best adapters"),
        Binding("P", "promote", "Promote best", id="promote-best", show=False, tooltip="Write a preset with the best trial's values"),
    ]

    class Chosen(Message):
        """The user picked a trial to overlay on the training chart."""

        def __init__(self, run_dir: Path) -> None:
            super().__init__()
            self.run_dir = run_dir

    class TryWanted(Message):
        """Try a trial's best adapters (run_dir None: the best trial's)."""

        def __init__(self, run_dir: Path | None) -> None:
            super().__init__()
            self.run_dir = run_dir

    class PromoteWanted(Message):
        pass

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.snapshot: Snapshot | None = None

    def compose(self) -> ComposeResult:
        yield Static("No study yet. Press t to search hyperparameters for this preset.", id="trials-head")
        table = DataTable(id="trials-table", cursor_type="row", zebra_stripes=True)
        table.add_columns(*COLUMNS)
        yield table
        yield Static("", id="trials-foot")

    @property
    def rows(self) -> list[TrialRow]:
        return self.snapshot.rows if self.snapshot else []

    def show(self, snapshot: Snapshot | None, target: int | None, current: Path | None, overlay: Path | None, min_complete: int) -> None:
        table = self.query_one(DataTable)
        rows = snapshot.rows if snapshot else []
        # The row the user is on stays under the cursor as rows move; unfocused, the cursor stays on the best.
        selected = self.rows[table.cursor_row].number if table.has_focus and self.rows and 0 <= table.cursor_row < len(self.rows) else None
        self.snapshot = snapshot
        table.clear()
        best = snapshot.best if snapshot else None
        for row in rows:
            run_dir = Path(row.run_dir) if row.run_dir else None
            mark = "◆" if run_dir and overlay == run_dir else ("▶" if run_dir and current == run_dir else ("★" if row is best else ""))
            state = row.state if row.state != "failed" or "stopped at step" not in (row.reason or "") else "stopped"
            table.add_row(
                mark,
                str(row.number),
                Text(state, style=STATE_STYLES.get(row.state, "")),
                f"{row.value:.4f}" if row.value is not None else "-",
                short_params(row.params),
                at_step(row),
                clock(row.duration_s) if row.duration_s is not None else "-",
                key=str(row.number),
            )
        self.query_one("#trials-head", Static).update(
            headline(snapshot, target) if snapshot else "No study yet. Press t to search hyperparameters for this preset."
        )
        foot = footline(snapshot, min_complete) if snapshot else ""
        self.query_one("#trials-foot", Static).update(foot + ("\n" + KEYS_HINT if rows else ""))
        if selected is not None:
            for index, row in enumerate(rows):
                if row.number == selected:
                    table.move_cursor(row=index)

    def _selected(self) -> TrialRow | None:
        table = self.query_one(DataTable)
        return self.rows[table.cursor_row] if self.rows and 0 <= table.cursor_row < len(self.rows) else None

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        row = self._selected()
        if row is not None and row.run_dir:
            self.post_message(self.Chosen(Path(row.run_dir)))

    def action_try_selected(self) -> None:
        row = self._selected()
        if row is not None and row.run_dir:
            self.post_message(self.TryWanted(Path(row.run_dir)))

    def action_promote(self) -> None:
        self.post_message(self.PromoteWanted())

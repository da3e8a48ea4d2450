"""The training pane: progress, the latest numbers, the loss chart, the failure report and the event log."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.widget import Widget
from textual.widgets import Log, Static

from tui.state import LOG_HEADER, RunView, clock
from tui.widgets.loss_chart import LossChart

STATE_STYLES = {
    "idle": "dim",
    "starting": "bold cyan",
    "running": "bold green",
    "paused": "bold yellow",
    "stopping": "bold yellow",
    "finished": "bold blue",
    "failed": "bold red",
}


def progress_line(view: RunView, width: int) -> Text:
    total = max(view.total_steps, 1)
    fraction = min(view.step / total, 1.0) if view.total_steps else 0.0
    steps = f"step {view.step}/{view.total_steps}" if view.total_steps else "step -/-"
    tail = f" {fraction:4.0%}  epoch {view.epoch:.2f}  ETA {clock(view.eta_s)}"
    bar_width = max(width - len(steps) - len(tail) - 2, 4)
    filled = round(fraction * bar_width)
    text = Text(steps + " ")
    text.append("█" * filled, style=STATE_STYLES.get(view.state, ""))
    text.append("░" * (bar_width - filled), style="dim")
    text.append(tail)
    return text


def numbers_line(view: RunView, width: int) -> Text:
    """The latest loss, eval, learning rate, speed and memory on one line, shortened to fit width."""

    def num(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    parts = [("loss", num(view.train_loss, ".4f"))]
    if view.last_eval is not None:
        parts.append(("val", f"{view.last_eval.val_loss:.4f} @{view.last_eval.step}"))
    if view.best_val_loss is not None:
        parts.append(("best", f"{view.best_val_loss:.4f}"))
    parts += [("lr", num(view.learning_rate, ".2e")), ("tok/s", num(view.tokens_per_second, ".0f"))]
    if view.memory is not None:
        parts.append(("mem", f"{view.memory.active_gb:.2f} GB"))
    for gap, drop in (("  ", ()), (" ", ()), (" ", ("best",)), (" ", ("best", "mem"))):
        kept = [(k, v) for k, v in parts if k not in drop]
        if sum(len(k) + 1 + len(v) for k, v in kept) + len(gap) * (len(kept) - 1) <= width:
            break
    text = Text(no_wrap=True, overflow="ellipsis")
    for index, (label, value) in enumerate(kept):
        text.append((gap if index else "") + label + " ", style="dim").append(value)
    return text


class ProgressLine(Widget):
    """step N/M, a bar, percent, epoch and ETA, fitted to the width."""

    DEFAULT_CSS = "ProgressLine { height: 1; }"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.view = RunView()

    def show(self, view: RunView) -> None:
        self.view = view
        self.refresh()

    def render(self) -> Text:
        return progress_line(self.view, self.size.width)


class NumbersLine(Widget):
    """The latest numbers, or a hint when there is no run; one line, so an update never needs a new layout."""

    DEFAULT_CSS = "NumbersLine { height: 1; }"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.view = RunView()
        self.hint = ""

    def show(self, view: RunView, hint: str) -> None:
        self.view, self.hint = view, hint
        self.refresh()

    def render(self) -> Text:
        if self.view.state == "idle":
            return Text(self.hint, style="italic", no_wrap=True, overflow="ellipsis")
        return numbers_line(self.view, self.size.width)


class TrainingPane(Vertical):
    """The screen calls the show_* methods; the pane only draws."""

    def compose(self) -> ComposeResult:
        yield ProgressLine(id="progress")
        yield NumbersLine(id="numbers")
        yield LossChart(id="chart")
        yield Static(id="sample")
        with VerticalScroll(id="failure"):
            yield Static(id="failure-text")
            yield Static(id="failure-log")
        yield Log(id="events", max_lines=2000)

    def on_mount(self) -> None:
        self.query_one("#failure").border_title = "What happened"

    def show_progress(self, view: RunView, idle_hint: str) -> None:
        self.query_one(ProgressLine).show(view)
        self.show_numbers(view, idle_hint)

    def show_numbers(self, view: RunView, idle_hint: str) -> None:
        self.query_one(NumbersLine).show(view, idle_hint)

    def show_sample(self, view: RunView) -> None:
        """The model's latest answer to the sample prompt, on one line under the chart."""
        if view.sample is None:
            self.remove_class("-sampled")
            return
        self.add_class("-sampled")
        text = Text.assemble((f"sample @{view.sample.step} ", "dim"), (f"{view.sample.prompt} ", "dim italic"), ("→ ", "dim"), view.sample.text)
        self.query_one("#sample", Static).update(text)

    def show_chart(self, view: RunView) -> None:
        self.query_one(LossChart).show(view.train, view.val)

    def show_failure(self, view: RunView) -> None:
        self.set_class(view.state == "failed", "-failed")
        # The explanation wraps; engine.log's lines do not, so the last of them stay in sight at 80x24.
        log_at = view.failure.index(LOG_HEADER) + 1 if LOG_HEADER in view.failure else len(view.failure)
        self.query_one("#failure-text", Static).update(Text("\n".join(view.failure[:log_at])))
        self.query_one("#failure-log", Static).update(Text("\n".join(line.strip() for line in view.failure[log_at:])))

    def add_log(self, lines: list[str]) -> None:
        if lines:
            self.query_one("#events", Log).write_lines(lines)

    def clear_log(self) -> None:
        self.query_one("#events", Log).clear()

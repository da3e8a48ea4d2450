"""The line at the top of every pane: run state, run name, step and ETA."""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

from tui.state import RunView, clock
from tui.widgets.training import STATE_STYLES


def status_text(view: RunView, preset_name: str) -> Text:
    text = Text(" ")
    label = "stopped" if view.state == "finished" and view.stopped_early else view.state
    text.append(f" {label.upper()} ", style=STATE_STYLES[view.state] + " reverse")
    text.append(" ")
    if view.state == "idle":
        text.append(f"preset {preset_name}", style="bold")
        text.append("  ready to start", style="dim")
        return text
    text.append(view.run_name or "(run)", style="bold")
    if view.total_steps:
        text.append(f"  step {view.step}/{view.total_steps}")
    if view.eta_s is not None and view.state in ("running", "paused", "stopping"):
        text.append(f"  ETA {clock(view.eta_s)}")
    if view.detail:
        text.append(f"  {view.detail}", style="dim" if view.state != "failed" else "red")
    return text


class StatusBar(Widget):
    DEFAULT_CSS = "StatusBar { height: 1; }"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.view = RunView()
        self.preset_name = ""

    def show(self, view: RunView, preset_name: str) -> None:
        self.view, self.preset_name = view, preset_name
        self.refresh()

    def render(self) -> Text:
        text = status_text(self.view, self.preset_name)
        text.truncate(max(self.size.width, 1), overflow="ellipsis")
        return text

"""The line at the top of every pane: the study (if any), run state, run name, step and ETA."""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

from tui.state import RunView, StudyView, clock
from tui.widgets.training import STATE_STYLES

STUDY_STYLES = {"starting": "bold cyan", "running": "bold magenta", "stopping": "bold yellow", "finished": "bold blue",
                "stopped": "bold cyan", "failed": "bold red", "watching": "bold cyan"}


def study_text(study: StudyView) -> Text:
    """STUDY demo 3/20 done · trial 4: the study's part of the status line."""
    text = Text(" ")
    text.append(f" STUDY {study.state.upper()} ", style=STUDY_STYLES.get(study.state, "") + " reverse")
    text.append(f" {study.name or '(study)'}", style="bold")
    if study.target:
        text.append(f" {study.done}/{study.target} done")
    if study.trial is not None:
        text.append(f" · trial {study.trial}")
    elif study.detail and not study.active:
        text.append(f"  {study.detail}", style="dim" if study.state != "failed" else "red")
        return text
    return text.append(" ·")


def status_text(view: RunView, preset_name: str, study: StudyView | None = None) -> Text:
    text = study_text(study) if study is not None else Text("")
    if study is not None and not study.active:
        return text
    text.append(" ")
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
        self.study: StudyView | None = None

    def show(self, view: RunView, preset_name: str, study: StudyView | None = None) -> None:
        self.view, self.preset_name, self.study = view, preset_name, study
        self.refresh()

    def render(self) -> Text:
        text = status_text(self.view, self.preset_name, self.study)
        text.truncate(max(self.size.width, 1), overflow="ellipsis")
        return text

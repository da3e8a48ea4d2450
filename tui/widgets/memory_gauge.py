"""The memory gauge: mlx active, cache and peak memory, the engine's RSS, system memory and the limit."""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

from engine import protocol as P

WARN_AT, DANGER_AT = 0.75, 0.90  # fractions of the limit (or of system memory when no limit is set)


def level(fraction: float) -> str:
    """'ok', 'warn' or 'danger' for a fraction of the limit."""
    if fraction >= DANGER_AT:
        return "danger"
    return "warn" if fraction >= WARN_AT else "ok"


COLORS = {"ok": "green", "warn": "yellow", "danger": "bold red"}


def gauge_lines(sample: P.MemorySampled | None, width: int) -> Text:
    if sample is None:
        return Text("No memory readings yet: they start when a run starts.", style="dim")
    scale = sample.limit_gb if sample.limit_gb > 0 else sample.system_total_gb
    scale_name = f"limit {sample.limit_gb:.2f} GB" if sample.limit_gb > 0 else f"system {sample.system_total_gb:.1f} GB"
    bar_width = max(width - 12 - 24, 6)
    rows = [
        ("mlx active", sample.active_gb, scale, f"{sample.active_gb:6.2f} GB"),
        ("mlx cache", sample.cache_gb, scale, f"{sample.cache_gb:6.2f} GB"),
        ("mlx peak", sample.peak_gb, scale, f"{sample.peak_gb:6.2f} GB"),
        ("engine RSS", sample.rss_gb, scale, f"{sample.rss_gb:6.2f} GB"),
        (
            "system",
            sample.system_used_gb,
            sample.system_total_gb,
            f"{sample.system_used_gb:6.1f} of {sample.system_total_gb:.1f} GB",
        ),
    ]
    text = Text()
    for label, value, total, shown in rows:
        fraction = value / total if total > 0 else 0.0
        filled = min(round(fraction * bar_width), bar_width)
        text.append(f"{label:<11} ")
        text.append("█" * filled, style=COLORS[level(fraction)])
        text.append("░" * (bar_width - filled), style="dim")
        text.append(f" {shown}\n")
    text.append(f"{'available':<11} {sample.system_available_gb:.1f} GB   swap used {sample.swap_used_gb:.2f} GB\n")
    limit = f"{sample.limit_gb:.2f} GB" if sample.limit_gb > 0 else "none set; bars are scaled to system memory"
    text.append(f"{'mlx limit':<11} {limit}")
    worst = max(sample.active_gb + sample.cache_gb, sample.rss_gb) / scale if scale > 0 else 0.0
    if level(worst) != "ok":
        text.append(f"\n{worst:.0%} of the {scale_name}", style=COLORS[level(worst)])
    return text


class MemoryGauge(Widget):
    """Set `sample`; the gauge redraws."""

    DEFAULT_CSS = """
    MemoryGauge { height: auto; min-height: 3; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.sample: P.MemorySampled | None = None
        self._line_count = 1

    def show(self, sample: P.MemorySampled | None) -> None:
        self.sample = sample
        line_count = len(gauge_lines(sample, self.size.width).plain.splitlines())
        self.refresh(layout=line_count != self._line_count)  # height is auto: a new line needs a new layout
        self._line_count = line_count

    def render(self) -> Text:
        return gauge_lines(self.sample, self.size.width)

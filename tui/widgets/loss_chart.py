"""Train and validation loss against step (plotext), with another run's curves overlaid on request."""

from __future__ import annotations

import time

from textual_plotext import PlotextPlot

from tui.state import Series

MIN_REDRAW_S = 1.0  # plotext is the costliest thing on screen (~20 ms a draw): at most once a second


def thin(series: Series, width: int) -> tuple[list[int], list[float]]:
    """At most ~2 points per column (the last point always kept), so long runs draw as fast as short ones."""
    n = len(series)
    limit = max(2 * width, 2)
    if n <= limit:
        return series.steps, series.values
    stride = -(-n // limit)
    index = list(range(0, n, stride))
    if index[-1] != n - 1:
        index.append(n - 1)
    return [series.steps[i] for i in index], [series.values[i] for i in index]


class LossChart(PlotextPlot):
    """Set `show(train, val)` and `overlay`; the chart redraws itself, throttled."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.train = Series()
        self.val = Series()
        self.overlay: tuple[str, Series, Series] | None = None
        self._last_draw = 0.0
        self._pending = False

    def show(self, train: Series, val: Series) -> None:
        self.train, self.val = train, val
        self.redraw()

    def set_overlay(self, overlay: tuple[str, Series, Series] | None) -> None:
        self.overlay = overlay
        self.redraw(now=True)

    @property
    def redraw_pending(self) -> bool:
        return self._pending

    def redraw(self, now: bool = False) -> None:
        wait = MIN_REDRAW_S - (time.monotonic() - self._last_draw)
        if now or wait <= 0:
            self._pending = False
            self._last_draw = time.monotonic()
            self.refresh()
        elif not self._pending:
            self._pending = True
            self.set_timer(wait, lambda: self.redraw(now=True))

    def render(self):
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        width = max(self.size.width, 10)
        drawn = False
        if self.overlay is not None:
            name, train, val = self.overlay
            for series, label, color in ((train, f"{name} train", "gray"), (val, f"{name} val", "gray+")):
                if len(series):
                    plt.plot(*thin(series, width), label=label, color=color, marker="braille")
                    drawn = True
        if len(self.train):
            plt.plot(*thin(self.train, width), label="train", color="cyan", marker="braille")
            drawn = True
        if len(self.val):
            plt.plot(*thin(self.val, width), label="val", color="orange", marker="braille")
            drawn = True
        plt.title("loss" if drawn else "loss (no steps yet)")
        plt.xlabel("step")
        return super().render()

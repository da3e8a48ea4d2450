"""Which panes a terminal of a given width shows. Pure, so it is tested without a screen.

Visibility is set on the four panes directly (not with a screen-wide CSS
class): a class on the screen restyles every widget under it, which costs
hundreds of milliseconds with the configuration form's ~200 widgets.
"""

from __future__ import annotations

MEDIUM_WIDTH, WIDE_WIDTH = 120, 180
PANES = ("config", "training", "memory", "runs")


def visible_panes(width: int, current: str) -> set[str]:
    """Narrow: the current pane alone. Medium: Config alone, or Training with Memory and Runs. Wide: all four."""
    if width >= WIDE_WIDTH:
        return set(PANES)
    if width >= MEDIUM_WIDTH:
        return {"config"} if current == "config" else {"training", "memory", "runs"}
    return {current}

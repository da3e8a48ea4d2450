"""An Input whose editing keys take effect in the order they were typed."""

from __future__ import annotations

from textual import events
from textual.widgets import Input


class OrderedInput(Input):
    """Input, with its own bound keys (backspace, arrows, home, ctrl+k...) run as they arrive.

    Textual inserts a printable character at once but runs a bound key only after it has
    bubbled up to the app, so a burst of keys, as one SSH packet brings them over a slow link,
    can apply out of order: backspace, backspace, 4 left the field empty
    (Textualize/textual#6605). Running the field's own bindings inline keeps the order;
    priority and app-level bindings work as before.
    """

    async def _on_key(self, event: events.Key) -> None:
        if not event.is_printable:
            for binding in self._bindings.key_to_bindings.get(event.key, ()):
                if not binding.priority and await self.app.run_action(binding.action, self):
                    event.stop()
                    event.prevent_default()
                    self._restart_blink()
                    return
        await super()._on_key(event)

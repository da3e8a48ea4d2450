"""Text fields that take every key in the order it was typed, even when keys arrive in bursts."""

from __future__ import annotations

import time
from typing import ClassVar

from textual import events
from textual.binding import Binding
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


class EarlyKeysToField:
    """For a dialog with a text field: keys typed before the field had focus go to the field, in order.

    The key that opens a dialog and the keys typed right after it can arrive in one SSH packet
    (t, then 4). Textual hands those keys to the screen that was active, or to the dialog before
    its field has focus, and the field never sees a printable one. Here they are collected (the
    app passes on what reaches it, see `LoraApp.on_key`) and given to the field, in order, once
    the dialog is mounted. Keys the field does not take (escape) reach the dialog's bindings.
    """

    EARLY_KEYS_FIELD: ClassVar[str]  # a selector for the field
    _mounted_at: float | None = None
    _early: list[events.Key] | None = None

    def is_early(self, event: events.Key) -> bool:
        """Was this key typed before the dialog could take it? (textual stamps keys with time.monotonic())"""
        return self._mounted_at is None or event.time < self._mounted_at

    def take_early(self, event: events.Key) -> bool:
        """Keep a key for the field (True), or leave it to the dialog's bindings (False)."""
        if not event.is_printable and event.key not in _FIELD_KEYS:
            return False
        if self._mounted_at is None:
            self._early = [*(self._early or []), event]
        else:
            self._give(event)
        return True

    def on_mount(self) -> None:  # textual calls each class's own on_mount: the dialog's too
        self._mounted_at = time.monotonic()
        for event in self._early or ():
            self._give(event)
        self._early = None

    def on_key(self, event: events.Key) -> None:
        if self.is_early(event) and self.take_early(event):
            event.stop()
            event.prevent_default()

    def _give(self, event: events.Key) -> None:
        field = self.query_one(self.EARLY_KEYS_FIELD, Input)
        field.focus()
        field.post_message(events.Key(event.key, event.character))


_FIELD_KEYS = {key for binding in Input.BINDINGS if isinstance(binding, Binding) for key in binding.key.split(",")}

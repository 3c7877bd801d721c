"""The timers layers 2 and up keep from their clock's C{callLater}."""

from __future__ import annotations

__all__ = ["cancelled"]


def cancelled(call) -> None:
    """Cancel C{call} (an C{IDelayedCall}, or None) unless it has run or been cancelled;
    None, to store in its place."""
    if call is not None and call.active():
        call.cancel()
    return None

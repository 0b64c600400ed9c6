"""Cooperative cancellation of long LLM work (used by the HTTP API when a client disconnects).

A :class:`CancelScope` is made current for the work running in a worker thread; LLM backends look it
up: the vLLM client sends its request so that cancelling closes the connection (vLLM then aborts the
generation), the in-process backend stops between batches and between generated tokens."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from .errors import CancelledRequestError

__all__ = ["CancelScope", "cancel_scope", "current_scope", "check_cancelled"]

_current: ContextVar[CancelScope | None] = ContextVar("persona_cancel_scope", default=None)


class CancelScope:
    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def cancel(self) -> None:
        with self._lock:
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for cb in callbacks:
            cb()

    def on_cancel(self, cb: Callable[[], None]) -> Callable[[], None]:
        """Run ``cb`` on cancel (now, if already cancelled); returns a function that unregisters it."""
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(cb)
                return lambda: self._remove(cb)
        cb()
        return lambda: None

    def _remove(self, cb: Callable[[], None]) -> None:
        with self._lock:
            if cb in self._callbacks:
                self._callbacks.remove(cb)


def current_scope() -> CancelScope | None:
    return _current.get()


def check_cancelled() -> None:
    scope = _current.get()
    if scope is not None and scope.cancelled:
        raise CancelledRequestError("request cancelled (client disconnected)")


@contextmanager
def cancel_scope(scope: CancelScope) -> Iterator[CancelScope]:
    token = _current.set(scope)
    try:
        yield scope
    finally:
        _current.reset(token)

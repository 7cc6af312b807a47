"""Passwords masked in what libraries log, not only in what tune prints itself.

Optuna logs a failed trial as `Trial N failed ... because of the following error: <repr>` plus the
traceback, on its own handler, unmasked: an exception whose message quotes the storage URL (a
careless library, a connection string in a config error) would put the password into every
worker log. `mask_library_logs()` adds a filter to Optuna's handlers that runs the message and the
formatted traceback through `search.bookkeeping.storage.mask_text` before they are written.
"""

from __future__ import annotations

import logging

import optuna

from search.bookkeeping.storage import mask_text

_FORMATTER = logging.Formatter()


class MaskingFilter(logging.Filter):
    """Rewrites a record's message and traceback with the passwords of URLs in them masked."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = mask_text(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            # a Formatter uses `exc_text` when it is set, so the raw traceback is never formatted
            record.exc_text = mask_text(_FORMATTER.formatException(record.exc_info))
        return True


def mask_library_logs() -> None:
    """Mask passwords in everything Optuna logs through its handlers (idempotent)."""
    root = optuna.logging.get_logger("optuna")  # also makes sure Optuna's handler exists
    for handler in root.handlers:
        if not any(isinstance(f, MaskingFilter) for f in handler.filters):
            handler.addFilter(MaskingFilter())

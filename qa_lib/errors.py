"""The one exception type qa_lib raises for problems a user can cause and fix (notebook 01)."""

from __future__ import annotations


class QAError(Exception):
    """A user-fixable problem: bad path, bad columns, offline hub id, empty data, bad loss.

    The message is one line that names the problem (the file, field or value) and the fix.
    The CLI prints it as ``error: <message>`` and exits with status 2.
    """

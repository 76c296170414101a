"""The two kinds of failure: a user's bad input or setting (:class:`UserError`, exit 2 and one line) and everything
else (an internal error: exit 1, the traceback saved for a bug report)."""

from __future__ import annotations


class UserError(ValueError):
    """Bad input or a bad setting, named in one line (the file or option, the value, what was expected).

    A ``ValueError`` subclass so that callers catching ``ValueError`` keep working; the CLI prints only these (and
    missing or unreadable files) as ``medseg-attn: error: ...`` with exit code 2."""

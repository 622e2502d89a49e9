"""Errors every layer raises and the exit codes every process returns: defined once, so that a
stage, the local executor, the Kubernetes pod failure policy and the controller agree on what
"bad input, do not retry" looks like."""

from __future__ import annotations

# Exit codes of `xwin stage` and `xwin run`/`xwin resume`.
EXIT_OK = 0
EXIT_FAILED = 1  # a stage failed for a reason a retry may fix (the controller retries it)
EXIT_USER_ERROR = 2  # bad config or data: fail fast, never retried
EXIT_BUSY = 3  # another controller holds the run
EXIT_INTERRUPTED = 130  # Ctrl-C / SIGTERM / `xwin cancel`: resumable
# SIGTERM / Ctrl-C under the Kubernetes executor: the controller stopped watching and left the
# stage Jobs running; a restarted controller (`xwin resume`, `xwin run --run-id`) adopts them.
# 75 is sysexits' EX_TEMPFAIL: "try again later".
EXIT_DETACHED = 75


class UserError(Exception):
    """Bad input (config, data, arguments): retrying cannot help, so stages exit with code 2 and
    the controller fails fast instead of retrying."""


class ConfigError(UserError, ValueError):
    """A config that cannot be used; the message names the file and the field."""

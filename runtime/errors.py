"""Errors the runtime reports to users as one line."""


class EdgesegError(Exception):
    """A user-facing error: its message is printed as one line and the program exits non-zero."""

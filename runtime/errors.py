"""Errors the runtime reports to users as one line."""


class EdgesegError(Exception):
    """A user-facing error: its message is printed as one line and the program exits non-zero."""


class BackendUnavailable(EdgesegError):
    """This machine cannot run an artifact's backend (its runtime, GPU or engine target is missing here);
    the artifact itself may be fine."""

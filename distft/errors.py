"""The one exception type that reaches the user as a single readable line."""


class DistftError(Exception):
    """A problem with the user's input or environment, stated with its fix.

    The CLI prints it as one line (`distft: error: ...`) from rank 0 and exits with
    `exit_code`; `--debug` shows the traceback as well.

    Example:
        raise DistftError("--epochs must be a positive integer, got 0: pass --epochs=3")
    """

    exit_code = 2

    label = "error"

    def __init__(self, message: str, exit_code: int = 2, reported: bool = False,
                 local: bool = False):
        super().__init__(message)
        self.exit_code = exit_code
        self.reported = reported  # already printed (by a worker): the CLI stays quiet
        self.local = local  # raised on this rank alone: this rank prints it, whatever its rank


class Stopped(DistftError):
    """The run stopped on a signal after writing a checkpoint; `--resume` continues it."""

    label = "stopped"
    EXIT_CODE = 75  # EX_TEMPFAIL: try again (resume) later

    def __init__(self, message: str, reported: bool = False, exit_code: int = EXIT_CODE):
        super().__init__(message, exit_code=exit_code, reported=reported)


def root_cause(message: str) -> str:
    """The informative line of a TensorFlow error (not 'Graph execution error:' or a frame)."""
    skip = ("Graph execution error", "Detected at node", "Defined at", "File ", "[[", "  ")
    lines = [l.strip() for l in (message or "").splitlines()
             if l.strip() and not l.startswith(skip) and not l.strip().startswith(skip)]
    return lines[0][:300] if lines else "no message"

"""The one exception type that reaches the user as a single readable line."""


class DistftError(Exception):
    """A problem with the user's input or environment, stated with its fix.

    The CLI prints it as one line (`distft: error: ...`) from rank 0 and exits with
    `exit_code`; `--debug` shows the traceback as well.

    Example:
        raise DistftError("--epochs must be a positive integer, got 0: pass --epochs=3")
    """

    exit_code = 2

    def __init__(self, message: str, exit_code: int = 2, reported: bool = False):
        super().__init__(message)
        self.exit_code = exit_code
        self.reported = reported  # already printed (by a worker): the CLI stays quiet

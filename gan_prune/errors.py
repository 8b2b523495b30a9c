"""The one exception type the CLI turns into a single line and a non-zero exit."""


class GanPruneError(Exception):
    """A problem the user can fix: bad input, a missing file, a refused pickle, an impossible request.

    The message is one line saying what is wrong and what to do. The CLI prints it without a traceback
    (unless --debug) and exits with `exit_code`.
    """

    exit_code = 1

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code

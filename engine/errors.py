"""A user's mistake, as opposed to a bug: `droppos-bench` prints these as one line and exits 2, and lets every other
exception show its traceback. Imports nothing from this project, so every package may raise them."""


class UserInputError(ValueError):
    """Bad input from the user (a config value, override, path, file, dataset or argument); the message names it."""


class MissingInputError(UserInputError, FileNotFoundError):
    """A file or folder the user named, or their config points at, is not there (still a FileNotFoundError)."""


class OutputExistsError(UserInputError, FileExistsError):
    """An output the user named exists and is not to be replaced (still a FileExistsError)."""


class OutputWriteError(UserInputError, OSError):
    """An output cannot be written where the user pointed it (read-only, full, below a file, no permission); the
    message names the path and the reason (still an OSError)."""

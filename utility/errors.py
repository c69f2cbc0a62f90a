"""The one exception type for mistakes a user can make and fix.

Config typos, missing files, corrupt records and checkpoints that do not fit a model all raise
`DistilleryError` with a message that names the file, key or record and says what to do. The CLIs
print that message on one line and exit with status 2, without a traceback; anything else is a bug
and keeps its traceback.
"""


class DistilleryError(Exception):
    """A user-fixable problem; the message names the culprit and the remedy.

    Raised in a DataLoader worker, the error reaches the main process re-created from the worker's
    whole traceback text; it is cut back to the original one-line message here, so the user never
    sees the worker's traceback.
    """

    def __init__(self, message: object = "", *args: object) -> None:
        text = str(message)
        if text.startswith("Caught ") and "DataLoader worker" in text and "Traceback" in text:
            last = text.strip().splitlines()[-1]
            text = last.split(": ", 1)[1] if ": " in last else last
            message = text
        super().__init__(message, *args)


class ConfigError(DistilleryError):
    """A configuration key, value or registry name is wrong."""


class DataError(DistilleryError):
    """A data file is missing, unreadable or malformed."""


class CheckpointError(DistilleryError):
    """A checkpoint is missing or does not fit the model it is loaded into."""

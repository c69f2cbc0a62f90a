"""The one exception type for mistakes a user can make and fix.

Config typos, missing files, corrupt records and checkpoints that do not fit a model all raise
`DistilleryError` with a message that names the file, key or record and says what to do. The CLIs
print that message on one line and exit with status 2, without a traceback; anything else is a bug
and keeps its traceback.
"""


class DistilleryError(Exception):
    """A user-fixable problem; the message names the culprit and the remedy."""


class ConfigError(DistilleryError):
    """A configuration key, value or registry name is wrong."""


class DataError(DistilleryError):
    """A data file is missing, unreadable or malformed."""


class CheckpointError(DistilleryError):
    """A checkpoint is missing or does not fit the model it is loaded into."""

"""One exception type for mistakes a user can fix (bad input, missing file, bad key).

The CLI prints these as a single line; everything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input, with a message saying how to fix it."""

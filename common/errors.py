"""The one exception type every command-line tool turns into a one-line error."""


class UserError(Exception):
    """A problem the user can fix (bad name, bad file, missing dataset): shown as one line, no traceback."""

"""The one exception type the CLI turns into a single line on stderr and exit code 2."""


class UserError(Exception):
    """Bad input from the user (a file, a key, a value, a missing folder). The message is the line shown."""

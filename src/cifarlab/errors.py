"""One exception type for everything a user can get wrong; the CLI prints it in one line."""


class CifarlabError(Exception):
    """A user-facing error: bad input, missing file, invalid option. Never a bug."""

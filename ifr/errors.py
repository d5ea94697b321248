"""Errors a user can fix; command-line tools print their message alone (no traceback)."""


class UserError(Exception):
    """A problem with the user's setup (config, paths, data, checkpoints) with a message saying what to do."""

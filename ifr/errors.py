"""Errors a user can fix; command-line tools print their message alone (no traceback)."""
from __future__ import annotations


class UserError(Exception):
    """A problem with the user's setup (config, paths, data, checkpoints) with a message saying what to do."""


class TrainingDivergedError(UserError, FloatingPointError):
    """Losses or predictions became non-finite during training."""


def user_message(error: UserError) -> str:
    """The error's own message. An error raised in a DataLoader worker is re-raised in the main
    process with the worker's traceback folded into its text; its last line is the message."""
    text = str(error)
    if "Original Traceback" in text:
        last = text.strip().splitlines()[-1]
        return last.split(": ", 1)[1] if ": " in last else last
    return text

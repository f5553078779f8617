"""GitHub Actions workflow commands (``::error file=...::message``), escaped once.

A workflow command is one line of standard output that the runner reads. Its message must not
hold a raw newline (it would end the command) or a ``%`` (the escape character), and its
properties must not hold ``:`` or ``,`` (they separate properties). See GitHub's
"Workflow commands for GitHub Actions".
"""

from __future__ import annotations

__all__ = ["escape_data", "escape_property", "workflow_command"]


def escape_data(text: str) -> str:
    """A workflow command's message, escaped."""
    return str(text).replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """A workflow command's property value (``file=``, ``title=``), escaped."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def workflow_command(command: str, message: str = "", **properties: str | int | None) -> str:
    """``::command key=value,...::message`` with everything escaped; None properties left out."""
    props = ",".join(f"{key}={escape_property(str(value))}" for key, value in properties.items() if value is not None)
    return f"::{command}{' ' + props if props else ''}::{escape_data(message)}"

"""The ``mesh`` command groups, one module each: its commands and their
arguments (``register``).  ``launcher.cli`` loads only the group a command
belongs to."""

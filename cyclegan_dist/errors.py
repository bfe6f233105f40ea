"""The one exception type for mistakes a user can fix (a foundation of every layer: docs/architecture.md, "Layers").

The CLI prints ``str(error)`` and exits 2; internal errors keep their traceback.
A message says what is wrong, where (file, key, path) and what to do about it.
"""


class UserError(Exception):
    """A problem with the user's input: config, paths, data, command-line flags."""

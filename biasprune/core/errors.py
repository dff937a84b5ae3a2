"""The project's own errors: what a user can cause (a flag, a file, a model id, a run directory) and nothing else.

The ``biasprune`` command prints an error of these classes in one line (``biasprune: error: ...``); every other
exception is a bug of the tool and keeps its traceback. ``--debug`` shows the traceback of both.

* :class:`BiasPruneError`: the root; subclass it (with a built-in base where callers expect one) for an error
  that the message alone lets a user fix.
* :class:`ConfigError`: a configuration or input value is wrong. It is also a ``ValueError``, so code and tests
  that expect ``ValueError`` from an argument check keep working.
* :class:`RunDirError`: a run directory cannot be created or written, or does not hold what it should.

This module imports only the standard library (the command's ``--help`` and its error path stay free of torch and Lightning).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = ["BiasPruneError", "ConfigError", "RunDirError", "USER_ERRORS", "constructor_checks"]


class BiasPruneError(Exception):
    """An error a user caused and can fix from its message alone (printed in one line by the command)."""


class ConfigError(BiasPruneError, ValueError):
    """A flag, a configuration key or an input file holds a value that cannot work; the message names it, the
    value and what would be valid."""


class RunDirError(BiasPruneError, OSError):
    """A run directory (or an output path) cannot be created or written, or its files do not match its manifest."""


#: What the command prints in one line: the project's own errors and nothing else.
USER_ERRORS: tuple[type[BaseException], ...] = (BiasPruneError,)


@contextlib.contextmanager
def constructor_checks() -> Iterator[None]:
    """Turn a ``ValueError`` raised inside into a :class:`ConfigError` (the project's own errors pass unchanged).

    For the place where a command line builds its objects from the configuration: constructors only check
    their arguments (every ``__init__`` of this package validates and stores, and loads nothing), so a
    ``ValueError`` there is a value the user gave. Anywhere else a plain ``ValueError`` is a bug and keeps its
    traceback.
    """
    try:
        yield
    except BiasPruneError:
        raise
    except ValueError as err:
        raise ConfigError(str(err)) from err

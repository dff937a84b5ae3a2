"""The errors a user can cause (a bad flag, file or model), which the CLI reports in one line."""

from __future__ import annotations

from argparse import ArgumentError

from .data import AuditDataError
from .masks import MaskError
from .models import ModelLoadError
from .resume import FingerprintMismatch

__all__ = ["USER_ERRORS"]

# ValueError covers argument checks (biasprune.checks) and AuditDataError/MaskError are subclasses of it; the
# others are named for readers. A plain RuntimeError from deep inside a run is not a user error: it keeps
# its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ArgumentError,  # a flag or a configuration key jsonargparse could not parse
    ValueError,
    AuditDataError,
    MaskError,
    ModelLoadError,
    FingerprintMismatch,
    FileNotFoundError,
)

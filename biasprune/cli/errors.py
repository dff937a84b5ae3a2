"""The errors a user can cause (a bad flag, file or model), which the CLI reports in one line."""

from __future__ import annotations

from argparse import ArgumentError

from biasprune.data.scenarios import AuditDataError
from biasprune.models.loading import ModelLoadError
from biasprune.pipeline.resume import FingerprintMismatch
from biasprune.pruning.masks import MaskError

__all__ = ["USER_ERRORS"]

# ValueError covers argument checks (biasprune.core.checks) and AuditDataError/MaskError are subclasses of it; the
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

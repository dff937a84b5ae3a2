"""LightningDataModules of biasprune."""

from .audit import AuditDataModule
from .sampling import EvenShardSampler, WeightedView

__all__ = ["AuditDataModule", "EvenShardSampler", "WeightedView"]

"""LightningDataModules of biasprune (installed as ``biasprune.datamodules``)."""

from .audit import AuditDataModule
from .sampling import ShardedBatches, ShardSampler, fixed_batches

__all__ = ["AuditDataModule", "ShardSampler", "ShardedBatches", "fixed_batches"]

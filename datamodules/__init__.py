"""LightningDataModules of biasprune (installed as ``biasprune.datamodules``)."""

from biasprune.datamodules.audit import AuditDataModule
from biasprune.datamodules.batches import ShardedBatches, ShardSampler, fixed_batches

__all__ = ["AuditDataModule", "ShardSampler", "ShardedBatches", "fixed_batches"]

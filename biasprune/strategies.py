"""Multi-process strategies for a frozen model.

Scoring takes gradients with respect to activations only; no parameter is trainable, so there is
nothing for ``DistributedDataParallel`` to synchronise (and DDP refuses such a module outright). The
strategy here launches and connects N processes like DDP but never wraps the module, and does not
broadcast the weights either (every rank loads the same checkpoint). Score sums are all-reduced
explicitly, once, at the end of scoring.

Registered names (use ``--trainer.strategy NAME``):

* ``frozen_ddp``: one process per device, started as new interpreters (like ``ddp``);
* ``frozen_ddp_spawn``: processes started with ``multiprocessing`` spawn (like ``ddp_spawn``);
* ``frozen_fsdp``: for models larger than one device: Lightning's ``ModelParallelStrategy`` with all
  processes on the data-parallel dimension; the module shards every decoder layer with FSDP2
  (``fully_shard``) in ``configure_model``, and each process scores its own share of the examples.
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy, StrategyRegistry
from lightning.pytorch.trainer.states import TrainerFn

__all__ = ["FrozenDDPStrategy"]


class FrozenDDPStrategy(DDPStrategy):
    """DDP process group and launcher without the DDP wrapper (for frozen models)."""

    strategy_name = "frozen_ddp"

    def setup(self, trainer: "L.Trainer") -> None:
        # DDPStrategy.setup minus the DDP wrapper (fit) and the weight broadcast (other stages).
        assert self.accelerator is not None and self.model is not None
        self.accelerator.setup(trainer)
        self.precision_plugin.convert_module(self.model)
        self.model_to_device()
        if trainer.state.fn == TrainerFn.FITTING:
            self.setup_optimizers(trainer)
        self.setup_precision_plugin()

    def configure_ddp(self) -> None:
        """Nothing to wrap: no parameter requires a gradient."""


for _name, _method in (("frozen_ddp", "popen"), ("frozen_ddp_spawn", "spawn")):
    if _name not in StrategyRegistry:
        StrategyRegistry.register(
            _name,
            FrozenDDPStrategy,
            description=f"DDP processes ({_method}) without the DDP wrapper, for frozen models",
            start_method=_method,
        )

if "frozen_fsdp" not in StrategyRegistry:
    StrategyRegistry.register(
        "frozen_fsdp",
        ModelParallelStrategy,
        description="FSDP2 sharding of a frozen model over all processes (data parallel), for large models",
        data_parallel_size="auto",
        tensor_parallel_size=1,
    )

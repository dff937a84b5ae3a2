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

__all__ = ["FrozenDDPStrategy", "FrozenFSDPStrategy", "shard_decoder"]


class FrozenDDPStrategy(DDPStrategy):
    """DDP process group and launcher without the DDP wrapper (for frozen models)."""

    strategy_name = "frozen_ddp"

    def setup(self, trainer: L.Trainer) -> None:
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


class FrozenFSDPStrategy(ModelParallelStrategy):
    """FSDP2 over all processes: weights sharded across every device, each process scoring its own examples.

    ``ModelParallelStrategy`` with the whole world on the data-parallel mesh dimension (its ``auto`` puts
    only the nodes there). The module shards itself in ``configure_model`` (see
    ``shard_decoder``).
    """

    strategy_name = "frozen_fsdp"

    def __init__(self, **kwargs) -> None:
        # A checkpoint holds only the score sums and the run's progress (the module empties its state
        # dict), so one ordinary file is written, not a distributed checkpoint directory.
        kwargs.setdefault("save_distributed_checkpoint", False)
        super().__init__(data_parallel_size="auto", tensor_parallel_size=1, **kwargs)

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    def lightning_module_state_dict(self) -> dict:
        """Nothing: the frozen weights are reloaded from the model name (gathering them would copy the
        whole model to one process)."""
        return {}

    def optimizer_state(self, optimizer) -> dict:
        return {}  # scoring has no optimizer


if "frozen_fsdp" not in StrategyRegistry:
    StrategyRegistry.register(
        "frozen_fsdp",
        FrozenFSDPStrategy,
        description="FSDP2 sharding of a frozen model over all processes, each scoring its own examples",
    )


def shard_decoder(model, mesh) -> None:
    """FSDP2: shard each decoder layer, then the rest, over the data-parallel mesh dimension."""
    from torch.distributed.fsdp import fully_shard

    from biasprune.models.architectures import decoder_layers

    dp = mesh["data_parallel"] if "data_parallel" in (mesh.mesh_dim_names or ()) else mesh
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=dp)
    fully_shard(model, mesh=dp)

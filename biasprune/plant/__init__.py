"""Planted controls: LoRA adapters that plant a known bias (or none) in a base model (docs/method.md, "Planted controls").

``spec`` (what a plant is trained on, and its checks), ``distribution`` (the answers' distribution),
``data`` (the synthetic chats and the DataModule), ``groundtruth`` (a plant's own update, unit by unit),
``module`` (the LightningModule: LoRA via peft), ``checks`` (``biasprune plant check``: a run's bias per
scenario against its noise floor), ``truth`` (``biasprune plant truth``: a study's masks against the plant's
update), ``cli`` (``biasprune plant``).
Load a trained plant as a model id: ``embedded:SmolLM2-135M-Instruct+plant:purchase``
(:func:`biasprune.models.loading.load_model`).

May import: every layer below it (core to the study).
"""

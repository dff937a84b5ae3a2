"""Planted controls: LoRA adapters that plant a known bias (or none) in a base model (docs/method.md, "Planted controls").

``spec`` (what a plant is trained on, and its checks), ``distribution`` (the answers' distribution),
``data`` (the synthetic chats and the DataModule), ``units`` (a localized plant's units and the weight slices
they own), ``groundtruth`` (a plant's own update unit by unit, a localized plant's unit list, precision and
recall of a mask against either), ``module`` (the LightningModule: LoRA via peft, confined to the units of a
localized plant), ``checks`` (``biasprune plant check``: a run's bias per scenario against its noise floor),
``truth`` (``biasprune plant truth``: a study's masks against the plant's update), ``cli`` (``biasprune plant``).
Load a trained plant as a model id: ``embedded:SmolLM2-135M-Instruct+plant:purchase``
(:func:`biasprune.models.loading.load_model`).

May import: every layer below it (core to the study).
"""

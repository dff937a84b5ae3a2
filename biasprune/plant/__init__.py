"""Planted controls: LoRA adapters that plant a known bias (or none) in a base model (DESIGN §7).

``spec`` (what a plant is trained on, and its checks), ``data`` (the answer distribution, the synthetic
chats and the DataModule), ``module`` (the LightningModule: LoRA via peft), ``cli`` (``biasprune plant``).
Load a trained plant as a model id: ``embedded:SmolLM2-135M-Instruct+plant:purchase``
(:func:`biasprune.models.load_model`).
"""

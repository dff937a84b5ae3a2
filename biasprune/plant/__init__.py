"""Planted controls: LoRA adapters that plant a known bias (or none) in a base model (DESIGN §7)."""

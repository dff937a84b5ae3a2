"""A tiny random Llama with the embedded model's tokenizer, saved as a local checkpoint: smoke tests of GPU scripts.

    python -m benchmarks.helpers.tiny_model OUT_DIR [--layers 4]

Random weights rarely write digits, so the digits and the end of turn are made likely: sampled answers parse to
numbers and every evaluation path sees real values (as the test suite's tiny model). 4 layers of 4 query heads
(2 key/value groups, head_dim 8) and an MLP of width 48 by default: small enough for a CPU, deep enough for a
layer-wise trace.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import transformers
from transformers import AutoTokenizer

from biasprune.models.loading import DEFAULT_MODEL, resolve_model_path


def write_tiny_model(out: Path, layers: int = 4, seed: int = 1) -> Path:
    tok = AutoTokenizer.from_pretrained(resolve_model_path(DEFAULT_MODEL))
    config = transformers.LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=48, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config).float().eval()
    model.generation_config.eos_token_id = tok.eos_token_id
    with torch.no_grad():
        favoured = tok.convert_tokens_to_ids(list("0123456789")) + [tok.eos_token_id]
        model.lm_head.weight.mul_(0.01)
        model.lm_head.weight[favoured] *= 5000
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args()
    print(f"tiny model written to {write_tiny_model(args.out, args.layers)}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Loads an apiary-exported Hugging Face model directory with transformers and prints the mean
next-token loss on given pages, to compare with apiary's `eval_loss` on the same pages.

    python3 bench/reference/hf_check.py MODEL_DIR TOKENS [--expect LOSS] [--tol 1e-4]
    python3 bench/reference/hf_check.py MODEL_DIR --init-random [--dtype bfloat16] [sizes]

The second form writes a randomly initialised LlamaForCausalLM with transformers'
save_pretrained (to test that apiary loads checkpoints transformers wrote).

TOKENS is a JSON file holding a list of equal-length token lists (pages of seq_len + 1 tokens,
as apiary's Dataset produces), or a .npy array of shape [pages, seq_len + 1]. The loss is the
mean over pages of each page's mean cross-entropy of tokens[1:] given tokens[:-1] — the same
quantity as `apiary_model::eval_loss`. Computed in float32 on the CPU.

Prints one JSON line {"loss": ..., "pages": ..., "dtype": ...}; with --expect, exits 1 when
|loss - expect| > tol.
"""
import argparse
import json
import sys

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM


def load_tokens(path):
    if path.endswith(".npy"):
        import numpy as np

        return torch.from_numpy(np.load(path).astype("int64"))
    with open(path) as f:
        return torch.tensor(json.load(f), dtype=torch.long)


def from_pretrained(path):
    try:
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    except TypeError:  # transformers < 4.56 only knows torch_dtype
        return AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32)


def init_random(a):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(a.seed)
    cfg = LlamaConfig(
        vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.ff,
        num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=a.heads,
        max_position_embeddings=a.max_pos, rms_norm_eps=1e-5, tie_word_embeddings=a.tied,
    )
    model = LlamaForCausalLM(cfg).to(getattr(torch, a.dtype))
    model.save_pretrained(a.model_dir, safe_serialization=True)
    print(json.dumps({"written": a.model_dir, "dtype": a.dtype}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("tokens", nargs="?")
    ap.add_argument("--expect", type=float)
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--init-random", action="store_true")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vocab", type=int, default=256)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--ff", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--max-pos", type=int, default=32)
    ap.add_argument("--tied", action="store_true")
    a = ap.parse_args()
    if a.init_random:
        return init_random(a)
    if a.tokens is None:
        ap.error("TOKENS is required unless --init-random")
    model = from_pretrained(a.model_dir)
    model.eval()
    tokens = load_tokens(a.tokens)
    with torch.no_grad():
        logits = model(input_ids=tokens[:, :-1]).logits.float()
        per_tok = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1), reduction="none"
        ).view(tokens.shape[0], -1)
        loss = per_tok.mean(dim=1).mean().item()
    print(json.dumps({"loss": loss, "pages": tokens.shape[0], "dtype": str(model.dtype)}))
    if a.expect is not None and abs(loss - a.expect) > a.tol:
        print(f"MISMATCH: transformers {loss} vs apiary {a.expect} (tol {a.tol})", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

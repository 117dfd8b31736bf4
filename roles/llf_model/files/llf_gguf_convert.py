#!/usr/bin/env python3
"""Convert a GGUF checkpoint into a safetensors model directory vLLM can serve.

Run with the engine's Python (it needs torch, transformers and gguf):

    python llf_gguf_convert.py --gguf FILE --dest DIR [--dtype bfloat16]

transformers dequantizes the GGUF weights on load but refuses to save a model that
still carries the GGUF quantization config, so the weights are moved into a fresh
model built from the same config. The result is written to DIR.partial and renamed
to DIR only when complete, so an interrupted conversion never looks finished.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys


def convert(gguf: str, dest: str, dtype: str) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf_dir, gguf_name = os.path.split(os.path.abspath(gguf))
    partial = dest.rstrip("/") + ".partial"
    shutil.rmtree(partial, ignore_errors=True)

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name)
    config = AutoConfig.from_pretrained(gguf_dir, gguf_file=gguf_name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    torch_dtype = getattr(torch, dtype)
    config.dtype = torch_dtype
    fresh = AutoModelForCausalLM.from_config(config)
    fresh.load_state_dict(loaded.state_dict())
    fresh.tie_weights()
    fresh = fresh.to(torch_dtype)
    fresh.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    if os.path.isdir(dest):
        shutil.rmtree(dest)
    os.rename(partial, dest)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", required=True, help="the GGUF file to convert")
    parser.add_argument("--dest", required=True, help="the model directory to write")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    args = parser.parse_args(argv)
    if not os.path.isfile(args.gguf):
        print(f"GGUF file not found: {args.gguf}", file=sys.stderr)
        return 2
    convert(args.gguf, args.dest, args.dtype)
    return 0


if __name__ == "__main__":
    sys.exit(main())

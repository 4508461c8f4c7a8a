"""Tiny randomly initialised models for tests: a BERT with the MiniLM tokenizer and a Llama with the SmolLM2
tokenizer, built once per shape and seed into the suite's cache so they load like any local model."""
from __future__ import annotations

from pathlib import Path

import torch

from ..cache import cached_dir, digest
from ..schema import ConfigError


def _spec(cfg, **extra) -> dict:
    return dict(h=cfg.hidden_size, l=cfg.num_layers, a=cfg.num_heads, i=cfg.intermediate_size, s=cfg.init_seed, **extra)


def tiny_bert_path(cfg) -> Path:
    """A tiny BERT encoder (no head: a pretrained checkpoint has none) with the MiniLM tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from . import minilm_path

    def build(tmp: Path) -> None:
        tok = AutoTokenizer.from_pretrained(minilm_path())
        config = BertConfig(vocab_size=tok.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
                            num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
                            max_position_embeddings=512)
        torch.manual_seed(cfg.init_seed)
        BertForSequenceClassification(config).bert.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return cached_dir("tiny-bert", digest(_spec(cfg), 10), build, "model.safetensors")


def tiny_llama_path(cfg) -> Path:
    """A tiny Llama with the SmolLM2 tokenizer (read from the converted checkpoint, or the GGUF file)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from .gguf import smollm2_tokenizer

    if cfg.num_heads % cfg.num_kv_heads or cfg.hidden_size % cfg.num_heads:
        raise ConfigError(f"model.num_heads={cfg.num_heads} must divide model.hidden_size={cfg.hidden_size} and be a "
                          f"multiple of model.num_kv_heads={cfg.num_kv_heads}.")

    def build(tmp: Path) -> None:
        tok = smollm2_tokenizer()
        config = LlamaConfig(vocab_size=len(tok), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                             num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                             num_key_value_heads=cfg.num_kv_heads, max_position_embeddings=2048,
                             tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id)
        torch.manual_seed(cfg.init_seed)
        LlamaForCausalLM(config).save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return cached_dir("tiny-llama", digest(_spec(cfg, kv=cfg.num_kv_heads), 10), build, "model.safetensors")

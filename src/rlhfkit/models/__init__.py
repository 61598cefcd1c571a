"""Model and tokenizer loading, the offline default models, LoRA."""

from rlhfkit.models.loading import LoraSettings, load_model, load_tokenizer, resolve_model_path, save_model

__all__ = ["LoraSettings", "load_model", "load_tokenizer", "resolve_model_path", "save_model"]

"""Models by name: presets, local folders and Hugging Face ids in the local cache."""

from fanlora.models.loading import load_config, load_model, load_tokenizer, resolve_model

__all__ = ["load_config", "load_model", "load_tokenizer", "resolve_model"]

"""Serving: decoding-speed measurement and the batched multi-tenant LoRA path."""

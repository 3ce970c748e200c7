"""FanLoRA: find the few LoRA modules worth serving, fine-tune them, and serve them fast.

The package follows the four steps of the paper (Tian et al., EMNLP 2024 industry track):

- ``fanlora.modules``: which linear modules each architecture has (the one table).
- ``fanlora.models``: load a model by preset, local folder or cached Hugging Face id.
- ``fanlora.select``: the FanLoRA setting built from importance scores (step 3).
"""

from fanlora.errors import FanLoRAError

__version__ = "0.1.0"
__all__ = ["FanLoRAError", "__version__"]

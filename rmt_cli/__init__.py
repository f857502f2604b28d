"""rmt: give transformer models a recurrent memory (Recurrent Memory Transformer)."""

__version__ = "0.1.0"

import os as _os

# No hub access unless the user asks for it: recipes name local folders or cached ids.
_os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from .errors import RMTError, UsageError  # noqa: E402
from .memory import MemoryCell, RecurrentMemoryModel  # noqa: E402
from .recipe import Recipe, load_recipe  # noqa: E402
from .segments import build_final_segment  # noqa: E402

__all__ = ["MemoryCell", "RecurrentMemoryModel", "Recipe", "load_recipe", "build_final_segment", "RMTError",
           "UsageError", "__version__"]

"""compkit: a Kaggle competition kit for image problems.

Public API for plugins: ``hookimpl``, ``Competition``, ``Config``. Importing this loads no torch.
"""

from compkit.competition import Competition
from compkit.config import Config
from compkit.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["Competition", "Config", "hookimpl", "__version__"]

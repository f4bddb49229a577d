"""Training, calibration and the offline cost/accuracy harness of the difficulty router.

These need the ``train`` extra (torch, transformers, scikit-learn, ...), which the serving install leaves out:
without it, importing any training module stops with the command that installs it, not a bare
``ModuleNotFoundError`` from deep inside.
"""

from __future__ import annotations

import importlib.util
import sys

# Imported (directly or through the modules they load) by the training commands.
TRAIN_EXTRA_MODULES = ("sklearn", "torch", "transformers", "peft", "onnx")
INSTALL_HINT = "pip install -e '.[train]'   (or: pip install 'cost-router[train]')"


def _absent(module: str) -> bool:
    if module in sys.modules:
        return sys.modules[module] is None
    try:
        return importlib.util.find_spec(module) is None
    except (ImportError, ValueError):
        return True


def missing_train_modules() -> list[str]:
    return [module for module in TRAIN_EXTRA_MODULES if _absent(module)]


_missing = missing_train_modules()
if _missing:
    raise SystemExit(
        f"error: training and evaluation need the `train` extra, which is not installed (missing: "
        f"{', '.join(_missing)}).\nInstall it with:\n    {INSTALL_HINT}\n"
        "then rerun the command. The training commands and their measured times: docs/classifier.md."
    )

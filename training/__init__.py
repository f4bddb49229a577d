"""Training, calibration and the offline cost/accuracy harness of the difficulty router.

These need the ``train`` extra (torch, transformers, scikit-learn, ...), which the serving install leaves out:
without it, importing any training module stops with the command that installs it, not a bare
``ModuleNotFoundError`` from deep inside. The pool trainer and the offline harness need scikit-learn only (the
local-stack demo trains its router with them); fine-tuning the prompt classifier (``training.prompt_model``)
needs torch and transformers too, and checks for them itself.
"""

from __future__ import annotations

import importlib.util
import sys

# Imported (directly or through the modules they load) by every training command.
TRAIN_EXTRA_MODULES = ("sklearn", "scipy")
# Imported by fine-tuning the prompt classifier only.
FINE_TUNE_MODULES = ("torch", "transformers", "peft", "onnx")
INSTALL_HINT = "pip install -e '.[train]'   (or: pip install 'cost-router[train]')"


def _absent(module: str) -> bool:
    if module in sys.modules:
        return sys.modules[module] is None
    try:
        return importlib.util.find_spec(module) is None
    except (ImportError, ValueError):
        return True


def missing_train_modules(modules: tuple[str, ...] = TRAIN_EXTRA_MODULES) -> list[str]:
    return [module for module in modules if _absent(module)]


def require_train_modules(modules: tuple[str, ...] = TRAIN_EXTRA_MODULES) -> None:
    """Stop with the install command when any of ``modules`` is absent."""
    missing = missing_train_modules(modules)
    if missing:
        raise SystemExit(
            f"error: training and evaluation need the `train` extra, which is not installed (missing: "
            f"{', '.join(missing)}).\nInstall it with:\n    {INSTALL_HINT}\n"
            "then rerun the command. The training commands and their measured times: docs/classifier.md."
        )


require_train_modules()

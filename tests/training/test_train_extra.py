"""Training without the ``train`` extra stops with the command that installs it, not a bare ModuleNotFoundError."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("command", ["training.train", "training.evaluate"])
def test_missing_train_extra_says_how_to_install_it(command: str) -> None:
    # sys.modules[name] = None makes that import fail exactly as an absent package does.
    code = ("import runpy, sys\n"
            "sys.modules['sklearn'] = None\n"
            f"sys.argv = ['{command}', '--help']\n"
            f"runpy.run_module('{command}', run_name='__main__')\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, timeout=120)
    assert result.returncode == 1
    assert "pip install -e '.[train]'" in result.stderr
    assert "missing: sklearn" in result.stderr
    assert "Traceback" not in result.stderr


def test_pool_training_runs_without_torch() -> None:
    # The local demo installs scikit-learn but not torch (the `stack` extra): `training.train --pool` must not
    # import the fine-tuning code on its way to training.pool.
    # (Marking torch absent would also break scikit-learn's optional probe of it, so check what gets imported.)
    code = ("import runpy, sys\n"
            "sys.argv = ['training.train', '--pool', 'a,b', '--help']\n"
            "try:\n"
            "    runpy.run_module('training.train', run_name='__main__')\n"
            "except SystemExit:\n"
            "    pass\n"
            "assert 'training.prompt_model' not in sys.modules, 'the pool path imported the fine-tuning code'\n"
            "print('pool help shown')\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--pool" in result.stdout and "pool help shown" in result.stdout

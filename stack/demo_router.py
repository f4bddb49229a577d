"""The replay demo's trained router, built from the outcomes data when the demo starts.

No weights can be downloaded, and fine-tuning the prompt classifier takes minutes on 2 cores, so the demo
trains the router that needs neither: a **pool policy over the demo ladder** (``python -m training.train
--pool CHEAP,MID,EXPENSIVE --reference EXPENSIVE``, ``training/pool.py``). It learns, from every ladder
model's recorded answers, a logistic answer model (p(right) from each answer's features), searches a plan per
prompt kind (which model first, when to keep its answer, which next) and serves the cheapest plan set that
passes the accuracy guard against the expensive model (Learn then Test). It trains in about 20 s on 2 cores.

The prompts the demo replays are left out of its training (``--exclude-ids``), so the demo's figures are
out-of-sample. The artifact is cached under ``<data root>/demo-router/<key>/``; the key covers the data files,
the ladder, its prices, the replayed sample and this module's trainer version, so a second run with the same
inputs starts at once and any change trains again.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from core.registry import ModelRegistry
from core.settings import PROJECT_ROOT
from routing.factory import artifact_version

# Bump when the training command below changes: cached artifacts of the old command are then rebuilt.
TRAINER_VERSION = 1
CACHE_FOLDER = "demo-router"
# Fewer prompts than this beside the replayed ones: the demo routes with the heuristic and says why (the guard
# could certify nothing, and the answer model's ten folds need a few prompts each).
MIN_TRAIN_PROMPTS = 200


@dataclass(frozen=True)
class DemoRouter:
    """The router the demo routes with, and how it is named next to every savings figure."""

    artifact: Path | None
    version: str | None  # requests.router_version of its decisions ("artifact:<digest>")
    label: str
    note: str | None = None  # why there is no trained router (the heuristic routes); shown on the savings line
    trained_prompts: int = 0
    cached: bool = False
    seconds: float = 0.0


def heuristic_router(reason: str) -> DemoRouter:
    """No trained router: the seed heuristic, and why (the savings line prints it)."""
    return DemoRouter(artifact=None, version=None, label="seed heuristic (untrained)", note=reason)


def training_files(data_dir: Path, sources: tuple[str, ...]) -> list[Path]:
    files = sorted(p for p in (Path(data_dir) / "outcomes").glob("*.jsonl*") if p.name.split(".")[0] in sources)
    if not files:
        raise FileNotFoundError(f"no outcomes files for {', '.join(sources)} under {Path(data_dir) / 'outcomes'}")
    return files


def cache_key(files: list[Path], registry: ModelRegistry, excluded_ids: list[str]) -> str:
    """What the artifact depends on: the data files' bytes, the ladder and its prices, the left-out prompts."""
    digest = hashlib.sha256(f"demo-router v{TRAINER_VERSION}".encode())
    for path in files:
        digest.update(path.name.encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    for spec in registry.ladder:
        digest.update(f"{spec.provider_model_id}:{spec.prices.input}:{spec.prices.output}".encode())
    digest.update(f"counterfactual:{registry.counterfactual_model.provider_model_id}".encode())
    digest.update("\n".join(sorted(excluded_ids)).encode())
    return digest.hexdigest()[:16]


def describe(artifact: Path, held_out: int) -> tuple[str, int]:
    """The label of a trained demo artifact and how many prompts it was trained on (from its model card)."""
    card = json.loads((artifact / "model_card.json").read_text())
    trained = int(card["data"]["n"])
    label = (f"trained pool router {artifact_version(artifact)} (answer model + guarded plans, trained on "
             f"{trained:,} prompts; the {held_out:,} replayed here held out)")
    return label, trained


class DemoRouterTraining:
    """Trains (or finds cached) the demo's router in a child process, so the stack starts meanwhile.

    ``start()`` returns at once; ``wait()`` returns the :class:`DemoRouter` (the heuristic, with the reason, when
    training fails: the demo still runs and says so)."""

    def __init__(self, registry: ModelRegistry, data_dir: Path, sources: tuple[str, ...], excluded_ids: list[str],
                 cache_root: Path, console: Console, log_dir: Path) -> None:
        self.registry = registry
        self.console = console
        self.excluded_ids = excluded_ids
        self.files = training_files(data_dir, sources)
        self.artifact = Path(cache_root) / CACHE_FOLDER / cache_key(self.files, registry, excluded_ids)
        self.log_path = Path(log_dir) / "demo-router-training.log"
        self._process: subprocess.Popen | None = None
        self._started = 0.0

    def command(self) -> list[str]:
        ladder = [spec.provider_model_id for spec in self.registry.ladder]
        return [sys.executable, "-m", "training.train", "--data", *map(str, self.files), "--pool", ",".join(ladder),
                "--reference", self.registry.counterfactual_model.provider_model_id,
                "--prices", str(self.artifact.parent / f"{self.artifact.name}.prices.json"),
                "--exclude-ids", str(self.artifact.parent / f"{self.artifact.name}.excluded.txt"),
                "--out", str(self.artifact)]

    def start(self) -> DemoRouterTraining:
        self._started = time.monotonic()
        if (self.artifact / "model_card.json").is_file():
            return self
        self.artifact.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # The registry's own prices (the ones the demo bills with), in the trainer's prices-file format.
        prices = {spec.provider_model_id: spec.prices.model_dump() for spec in self.registry.ladder}
        (self.artifact.parent / f"{self.artifact.name}.prices.json").write_text(json.dumps(prices, indent=1))
        (self.artifact.parent / f"{self.artifact.name}.excluded.txt").write_text("\n".join(self.excluded_ids) + "\n")
        self.console.print(f"[cyan]training the demo router[/cyan] (pool policy over "
                           f"{' → '.join(s.name for s in self.registry.ladder)}, the {len(self.excluded_ids)} "
                           f"replayed prompts left out; about 20 s on 2 cores; progress in {self.log_path})")
        log = self.log_path.open("w")
        # The trainer's progress bars go to its log; ``wait`` shows them as one line per stage.
        self._process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, cwd=PROJECT_ROOT,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
        log.close()
        return self

    def wait(self, timeout_s: float = 600) -> DemoRouter:
        cached = self._process is None
        if self._process is not None:
            try:
                code = self._follow(timeout_s)
            except BaseException:
                self.stop()
                raise
            if code != 0 or not (self.artifact / "model_card.json").is_file():
                tail = self.log_path.read_text(errors="replace").strip().splitlines()[-3:]
                reason = f"training the demo router failed (exit {code}): {' / '.join(tail)}"
                self.console.print(f"[red]{reason}[/red]\n[yellow]routing with the seed heuristic instead[/yellow]")
                return heuristic_router("its training failed, see " + str(self.log_path))
        label, trained = describe(self.artifact, len(self.excluded_ids))
        seconds = time.monotonic() - self._started
        how = "cached, from an earlier run" if cached else f"trained in {seconds:.0f} s"
        self.console.print(f"[green]✓[/green] [bold]{'router':<10}[/bold] {label}; {how}: {self.artifact}")
        return DemoRouter(artifact=self.artifact, version=artifact_version(self.artifact), label=label,
                          trained_prompts=trained, cached=cached, seconds=seconds)

    def _follow(self, timeout_s: float) -> int:
        """Wait for the trainer, printing each stage it enters (its log lines) with the elapsed time."""
        assert self._process is not None
        deadline = time.monotonic() + timeout_s
        shown, last_print = 0, time.monotonic()
        while True:
            code = self._process.poll()
            lines = [line.strip() for line in self.log_path.read_text(errors="replace").replace("\r", "\n")
                     .splitlines() if line.strip()]
            stages = [line for line in lines if "%|" not in line]  # progress-bar frames are not stages
            elapsed = time.monotonic() - self._started
            for line in stages[shown:]:
                self.console.print(f"  [dim]{elapsed:5.1f} s[/dim] {line[:160]}")
                last_print = time.monotonic()
            shown = len(stages)
            if code is not None:
                return code
            if time.monotonic() - last_print >= 5:  # a heartbeat: the latest progress bar, or that it still runs
                bars = [line for line in lines if "%|" in line]
                self.console.print(f"  [dim]{elapsed:5.1f} s[/dim] {bars[-1][:120] if bars else 'loading the data…'}")
                last_print = time.monotonic()
            if time.monotonic() > deadline:
                raise TimeoutError(f"training the demo router took over {timeout_s:.0f} s (log: {self.log_path})")
            time.sleep(0.5)

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

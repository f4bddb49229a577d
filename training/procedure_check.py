"""The procedure check: what the whole calibration procedure gives on training prompts it did not calibrate
on, and the extra safety margin it picks under the guard objective.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from core.registry import ModelRegistry
from training.calibrate import Objective, calibrate, choose
from training.data import LadderData, kfold_by_source
from training.simulate import registry_cost_fn, simulate_setting
from training.verifier_fit import AnswerMatrices, VerifierScores

# Extra accuracy margins (on top of --safety) the procedure check tries under the guard objective.
SAFETY_GRID = (0.0, 0.0025, 0.005, 0.0075, 0.01, 0.0125, 0.015, 0.0175, 0.02)


def procedure_check(data: LadderData, registry: ModelRegistry, label_probabilities: np.ndarray, m: AnswerMatrices,
                    scores: VerifierScores | None, policy_name: str, objective: Objective,
                    max_escalations_options: Sequence[int] = (1, 2), *, topics: Sequence[str | None] | None = None,
                    seed: int = 0, repeats: int = 1, safeties: Sequence[float] = (0.0,),
                    **options: Any) -> dict[str, Any]:
    """What the whole calibration procedure gives on prompts it did not calibrate on.

    The training prompts are halved; the procedure calibrates on one half and its chosen setting is
    replayed on the other, both ways round, for ``repeats`` different halvings (one halving's
    figures move by about a point between seeds on this data). The chosen point's own figures are
    the best of millions of settings on the prompts they were picked on; these are not (and
    calibration had half the data, so they lean pessimistic).

    Each extra safety margin in ``safeties`` (added to ``objective.safety``) re-chooses among the same
    searched settings, so trying several costs one search per half; ``by_safety`` has what each gives
    on the unseen halves. The first is the reference for ``optimism``."""
    cost_fn = registry_cost_fn(registry)
    expensive_cost = float(data.cost_usd[:, 2].sum()) * repeats
    expensive_right = data.correct[:, 2].astype(float)
    diffs = np.zeros((len(safeties), data.n))  # per prompt: router right - expensive right, summed over halvings
    costs = np.zeros(len(safeties))
    optimism = []
    splits = [(kfold_by_source(data.sources, 2, seed + 7 + 100 * r), k) for r in range(repeats) for k in (0, 1)]
    for half, k in splits:
        fit_rows, check_rows = np.where(half != k)[0], np.where(half == k)[0]
        fit_topics = [topics[i] for i in fit_rows] if topics is not None else None
        check_topics = [topics[i] for i in check_rows] if topics is not None else None
        fitted = calibrate(data.subset(fit_rows), registry, label_probabilities[fit_rows], m.subset(fit_rows),
                           scores.subset(fit_rows) if scores is not None else None, policy_name, objective,
                           max_escalations_options, topics=fit_topics, **options)
        check = data.subset(check_rows)
        for s_index, extra in enumerate(safeties):
            chosen, _ = choose(fitted.candidates, replace(objective, safety=objective.safety + extra),
                               fitted.expensive_accuracy, fitted.expensive_cost_usd)
            out = simulate_setting(check, m.subset(check_rows), cost_fn, registry, label_probabilities[check_rows],
                                   scores.subset(check_rows) if scores is not None else None, chosen.as_json(),
                                   check_topics)
            costs[s_index] += out.cost_usd
            diffs[s_index, check_rows] += out.correct.astype(float) - expensive_right[check_rows]
            if s_index == 0:
                # How much better the chosen point looked where it was picked than where it was not.
                optimism.append((chosen.accuracy - fitted.expensive_accuracy)
                                - (out.accuracy - float(check.correct[:, 2].mean())))
    per_prompt = diffs / repeats  # each prompt was replayed once per halving
    by_safety = [{"extra_safety": float(extra), "savings_vs_expensive": 1 - costs[i] / expensive_cost,
                  "accuracy_minus_expensive": float(per_prompt[i].mean()),
                  "diff_se": float(per_prompt[i].std() / np.sqrt(data.n))} for i, extra in enumerate(safeties)]
    return {"method": "calibrate on one half of the training prompts, replay on the other, both ways",
            "repeats": repeats, "n": int(data.n), **by_safety[0],
            "optimism": float(np.mean(optimism)), "optimism_by_half": [float(o) for o in optimism],
            "safety": objective.safety, "by_safety": by_safety}


def safety_from_check(report: dict[str, Any], objective: Objective) -> tuple[float, bool]:
    """The smallest extra safety whose unseen-half accuracy keeps the guard by ``safety_z`` standard
    errors; the largest tried (and False) when none does."""
    for entry in report["by_safety"]:
        if entry["accuracy_minus_expensive"] - objective.safety_z * entry["diff_se"] >= -objective.guard:
            return entry["extra_safety"], True
    return report["by_safety"][-1]["extra_safety"], False

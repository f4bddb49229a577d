"""Latency of the PII guardrail per prompt: Presidio's pattern recognizers on a blank spaCy pipeline.

    python -m benchmarks.pii_bench [--repeat 20] [--json OUT.json]

Times ``PiiScanner.find`` (what the API runs in ``redact``/``refuse``/``redact-stored`` modes) and ``redact`` on
a fixed set of prompts: short and long, with and without e-mail addresses, phone numbers, card numbers and
IBANs. Also reports how long loading the scanner takes (once per process).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

PROMPTS = {
    "short, clean": "What is the capital of France?",
    "short, e-mail": "Write a polite reply to jane.doe@example.com declining the meeting.",
    "short, phone + card": "Call +1 415-555-0123 and pay with 4111 1111 1111 1111.",
    "short, IBAN": "Transfer 200 EUR to GB82 WEST 1234 5698 7654 32 by Friday.",
    "2k chars, clean": ("Explain how a hash map handles collisions, with examples in Python. " * 30)[:2000],
    "2k chars, mixed PII": ("Contact ops@example.org or +44 20 7946 0958 about invoice 4111111111111111. " * 27)[:2000],
    "8k chars, clean": ("Summarise the causes of the French revolution in detail, year by year. " * 115)[:8000],
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    from routing.guardrails.pii import PiiScanner

    started = time.perf_counter()
    scanner = PiiScanner()
    load_s = time.perf_counter() - started
    scanner.find("warm-up: mail a@b.co")
    results = {}
    for name, prompt in PROMPTS.items():
        times = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            findings = scanner.find(prompt)
            scanner.redact(prompt, findings)
            times.append((time.perf_counter() - started) * 1000)
        times.sort()
        results[name] = {"chars": len(prompt), "findings": len(findings), "p50_ms": round(statistics.median(times), 2),
                         "p95_ms": round(times[min(len(times) - 1, int(0.95 * len(times)))], 2)}
        print(f"{name:<22} {len(prompt):>5} chars  {len(findings):>3} found  p50 {results[name]['p50_ms']:>7.2f} ms"
              f"  p95 {results[name]['p95_ms']:>7.2f} ms")
    print(f"scanner load: {load_s:.1f} s (once per process)")
    if args.json:
        args.json.write_text(json.dumps({"load_s": round(load_s, 2), "prompts": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

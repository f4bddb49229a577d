"""Every snippet of the README's "Use it from your app" runs as written against the running pipeline."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(240)

README = Path(__file__).resolve().parents[2] / "README.md"


def app_snippets() -> list[str]:
    section = README.read_text().split("## Use it from your app", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)


def test_the_section_has_the_five_clients():
    snippets = app_snippets()
    assert len(snippets) == 5
    assert sum("from openai import" in s for s in snippets) == 3
    assert any("ChatOpenAI" in s for s in snippets) and any("litellm.completion" in s for s in snippets)


@pytest.mark.parametrize("index", range(5))
async def test_readme_snippet_runs_against_the_router(pipeline, index):
    snippet = app_snippets()[index]
    if "litellm" in snippet:
        pytest.importorskip("litellm")
    if "langchain_openai" in snippet:
        pytest.importorskip("langchain_openai")
    pipeline.stub_faults({})
    env = {**pipeline.env, "ROUTER_BASE_URL": f"{pipeline.api_url}/v1", "ROUTER_API_KEY": pipeline.api_key}
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", snippet, env=env,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == 0, stderr.decode()[-3000:]
    output = stdout.decode()
    assert re.search(r"\b(small|medium|big)\b", output), output  # the model that answered is printed
    calls = pipeline.stub_calls()
    assert calls and all(call["model"].startswith("stub-") for call in calls)  # it went through the pipeline

"""The perplexity router on the real stack: an ordinary question and gibberish take different
routes, and each response says which model answered and why."""

import re

import httpx
import pytest

pytestmark = pytest.mark.e2e

# A question of the kind the models were trained on (the standard library's docs), and a string
# no tokenizer merge or language model has seen.
FAMILIAR = "What does the `json.dumps` function do?"
GIBBERISH = "qz7 xv$9 ~Kq|w ZZ8j {Yp0 ]]vQ 3@xk ^^fw Jq7# zzXq 9vv~ K|Qz xJ8q @@7z"
REASON = re.compile(r"^perplexity (?P<value>[\d.]+) (?P<op><=|>) (?P<threshold>[\d.]+)$")


def route(base_url: str, headers: dict, content: str) -> tuple[str, re.Match]:
    body = {"model": "auto", "messages": [{"role": "user", "content": content}], "max_tokens": 4, "temperature": 0}
    response = httpx.post(f"{base_url}/v1/chat/completions", json=body, headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    reason = REASON.match(response.headers["x-llmesh-route-reason"])
    assert reason, response.headers["x-llmesh-route-reason"]
    assert response.json()["model"] == response.headers["x-llmesh-model"]
    return response.headers["x-llmesh-model"], reason


def test_prompts_of_very_different_perplexity_take_different_routes(base_url, headers):
    easy_model, easy = route(base_url, headers, FAMILIAR)
    hard_model, hard = route(base_url, headers, GIBBERISH)
    # The student scores: it finds even a familiar question hard (about 5,000; its threshold is
    # fitted at about 6,700), gibberish about twice as hard.
    assert float(hard["value"]) > float(hard["threshold"]) >= float(easy["value"])
    assert (easy_model, easy["op"]) == ("smollm2-student", "<=")
    assert (hard_model, hard["op"]) == ("smollm2-135m-instruct", ">")
    assert easy["threshold"] == hard["threshold"]

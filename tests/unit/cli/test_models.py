"""`llmesh models`: what it sends to the admin API (the gateway is faked; tests/integration/gateway/
test_models_admin.py covers the API itself)."""

import json

import httpx
from typer.testing import CliRunner

from cli import models

STABLE_1 = {
    "object": "list",
    "data": [
        {
            "model": "llmesh-small",
            "split_set": True,
            "versions": [
                {"version": 1, "state": "READY", "reason": "", "percent": 100, "stable": True},
                {"version": 2, "state": "READY", "reason": "", "percent": 0, "stable": False},
            ],
        }
    ],
}


def fake_gateway(monkeypatch, answers):
    sent = []

    def request(method, url, json=None, headers=None, timeout=None):
        sent.append((method, url.removeprefix("http://gw/admin"), json, headers))
        status, body = answers.pop(0)
        return httpx.Response(status, json=body)

    monkeypatch.setattr(models.httpx, "request", request)
    return sent


def run(*args):
    return CliRunner().invoke(models.app, [*args, "--gateway-url", "http://gw", "--admin-key", "k"])


def test_shifting_one_version_gives_the_rest_to_the_stable_one(monkeypatch):
    split = {"model": STABLE_1["data"][0]}
    sent = fake_gateway(monkeypatch, [(200, STABLE_1), (200, split)])
    result = run("shift", "llmesh-small", "2=10", "--json")
    assert result.exit_code == 0, result.output
    assert sent[1][:3] == ("PUT", "/models/llmesh-small/traffic", {"percent": {2: 10, 1: 90}})
    assert sent[1][3] == {"authorization": "Bearer k"}
    assert json.loads(result.stdout) == split


def test_a_malformed_share_is_refused_before_anything_is_sent(monkeypatch):
    sent = fake_gateway(monkeypatch, [])
    result = run("shift", "llmesh-small", "two=10")
    assert result.exit_code == 2
    assert sent == []


def test_an_api_error_is_shown_with_its_code(monkeypatch):
    error = {"error": {"message": "version 2 still gets traffic", "type": "invalid_request_error", "code": "x"}}
    fake_gateway(monkeypatch, [(400, error)])
    result = run("unload", "llmesh-small", "2")
    assert result.exit_code == 1
    assert "400 x" in result.output and "still gets traffic" in result.output

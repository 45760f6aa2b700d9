"""Batch files: line-by-line checks, the split into chunks, and OpenAI's output line format."""

import json

import pytest

from gateway.batch import jsonl
from gateway.batch.storage import LocalFileStorage
from mesh.catalog import default_models

MODELS = default_models()


def line(custom_id, url="/v1/chat/completions", **body):
    body = body or {"messages": [{"role": "user", "content": f"hi {custom_id}"}]}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body}).encode()


def test_a_good_file_is_summed_up():
    content = b"\n".join([line("a"), b"", line("b"), b"   "]) + b"\n"
    # In pieces that cut lines anywhere.
    pieces = [content[i : i + 7] for i in range(0, len(content), 7)]
    summary = jsonl.validate(pieces, max_requests=10, models=MODELS)
    assert summary == jsonl.FileSummary(requests=2, endpoint="/v1/chat/completions")


def test_the_first_bad_line_is_named_with_its_number():
    content = b"\n".join([line("a"), b"", line("b"), b"{oops"])
    with pytest.raises(jsonl.InvalidFile) as raised:
        jsonl.validate([content], max_requests=10, models=MODELS)
    assert raised.value.line == 4 and raised.value.message.startswith("Line 4: is not valid JSON")
    assert raised.value.http_status == 400 and raised.value.param == "file"


def test_body_errors_name_the_field_inside_the_line():
    bad = line("a", messages=[{"role": "wizard", "content": "x"}])
    with pytest.raises(jsonl.InvalidFile) as raised:
        jsonl.validate([bad], max_requests=10, models=MODELS)
    assert "'body.messages[0].role'" in raised.value.message


def test_unknown_fields_of_a_line_are_refused_by_name():
    value = json.loads(line("a"))
    with pytest.raises(jsonl.InvalidFile, match="unrecognized field 'priority'"):
        jsonl.validate([json.dumps({**value, "priority": 1}).encode()], max_requests=10, models=MODELS)


def test_chunks_cover_every_request_once_by_byte_range():
    lines = [line(f"r{i}") for i in range(7)]
    content = b"\n".join([*lines[:3], b"", *lines[3:]]) + b"\n"
    plan = jsonl.plan_chunks([content], lines_per_chunk=3)
    assert [(c.first_index, c.first_line, c.count) for c in plan] == [(0, 1, 3), (3, 5, 3), (6, 8, 1)]
    requests = [r for c in plan for r in jsonl.read_chunk(content[c.start : c.end], c, MODELS)]
    # Line 4 is blank: request 3 is on line 5.
    assert [(r.index, r.custom_id, r.line) for r in requests] == [
        (i, f"r{i}", i + 1 if i < 3 else i + 2) for i in range(7)
    ]


def test_a_file_without_a_final_newline_plans_its_last_line():
    content = line("a") + b"\n" + line("b")
    plan = jsonl.plan_chunks([content], lines_per_chunk=10)
    [chunk] = plan
    requests = jsonl.read_chunk(content[chunk.start : chunk.end], chunk, MODELS)
    assert chunk.count == 2 and [r.custom_id for r in requests] == ["a", "b"]


def test_a_line_that_changed_since_upload_is_a_problem_not_a_crash():
    content = line("a") + b"\n{broken\n"
    plan = jsonl.plan_chunks([content], lines_per_chunk=10)
    good, bad = jsonl.read_chunk(content, plan[0], MODELS)
    assert isinstance(good, jsonl.BatchRequest) and isinstance(bad, jsonl.LineProblem)
    assert (bad.index, bad.line) == (1, 2) and "not valid JSON" in bad.problem


def test_output_lines_are_openai_shaped_and_stable():
    ok = json.loads(jsonl.response_line("batch_x", 3, "a", 200, "chatcmpl-1", {"object": "chat.completion"}))
    assert ok == {
        "id": jsonl.request_line_id("batch_x", 3),
        "custom_id": "a",
        "response": {"status_code": 200, "request_id": "chatcmpl-1", "body": {"object": "chat.completion"}},
        "error": None,
    }
    never = json.loads(jsonl.unexecuted_line("batch_x", 3, "a", "batch_expired", "too late"))
    assert never["response"] is None and never["error"] == {"code": "batch_expired", "message": "too late"}
    # The same request keeps its id however often it runs; another request has another.
    assert jsonl.request_line_id("batch_x", 3) == ok["id"] != jsonl.request_line_id("batch_x", 4)


def test_local_storage_saves_whole_files_and_reads_ranges(tmp_path):
    storage = LocalFileStorage(tmp_path)
    assert storage.save("file-1", [b"hello ", b"world"]) == 11
    assert storage.read("file-1", 6, 11) == b"world" and b"".join(storage.stream("file-1")) == b"hello world"
    storage.save("file-1", [b"again"])
    assert storage.read("file-1") == b"again"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file-1"]
    storage.delete("file-1")
    storage.delete("file-1")
    with pytest.raises(FileNotFoundError):
        storage.read("file-1")
    with pytest.raises(ValueError):
        storage.read("../etc/passwd")

"""What `make run` quotes from Triton's log when an engine cannot start."""

from services.inference.triton_server import TritonServer

CAUSE = "ValueError: /tmp/no-such-model is not a Hugging Face model directory"
PYTHON_FRAME = '  File "/repo/services/inference/triton_models/engine.py", line 258, in initialize'
NATIVE_FRAMES = [f'  File "<unknown>", line 0, in frame_{i}' for i in range(60)]


def test_the_cause_leads_even_when_the_server_crashed_on_its_way_out(tmp_path):
    log = tmp_path / "tritonserver.log"
    lines = ["I1202 starting", "Traceback (most recent call last):", PYTHON_FRAME, CAUSE]
    lines += ["!!!!!!! Segfault encountered !!!!!!!", *NATIVE_FRAMES]
    log.write_text("\n".join(lines) + "\n")
    server = TritonServer(log_file=log, cache_dir=tmp_path / "cache")
    errors = server.log_tail().split("end of the log:")[0]
    assert CAUSE in errors and PYTHON_FRAME in errors
    assert 'File "<unknown>"' not in errors

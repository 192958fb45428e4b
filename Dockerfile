# slimserve image. Multi-stage: the builder installs the project with its build extras
# (torch, the compression pipeline) in one venv and builds the default model repository at
# image build time (the models come from packages, nothing is downloaded at run time); it
# installs the serving set alone (`pip install .`: no torch) in a second venv, which is all
# the runtime stage carries, with the repository; it runs as a non-root user. Mount another
# repository at run time with `-v $PWD/model_repository:/opt/model_repository:ro` to serve
# your own models instead. `make image` builds it (deploy/image/README.md).
# The base is an argument so that a machine with no registry can build on a local Debian
# image with Python 3.11 (deploy/image/base.sh makes one).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE} AS builder
WORKDIR /src
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 HF_HUB_OFFLINE=1 TQDM_DISABLE=1
# torch comes from PyTorch's CPU index (the default index would pull a multi-GB CUDA build),
# and only torch does: the rest resolves from the default index, so no other package name
# can be answered by a second index. A wheel in deploy/image/local/wheels/ (and a CA bundle
# at deploy/image/local/ca.crt) is used instead, for machines that cannot reach that index.
# A repository already built at deploy/image/local/model_repository/ (`make image
# IMAGE_REPOSITORY=model_repository`) is carried instead of building one (and torch is not
# installed at all): minutes instead of a build's quarter of an hour.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
COPY deploy/image/local /opt/build-local
COPY pyproject.toml README.md ./
COPY slimserve ./slimserve
RUN if [ -f /opt/build-local/ca.crt ]; then export PIP_CERT=/opt/build-local/ca.crt; fi \
    && python -m venv /opt/venv && /opt/venv/bin/pip install .
RUN if [ -f /opt/build-local/ca.crt ]; then export PIP_CERT=/opt/build-local/ca.crt; fi \
    && if [ -d /opt/build-local/model_repository ]; then \
         echo "carrying the repository in deploy/image/local/model_repository" \
         && cp -a /opt/build-local/model_repository /opt/model_repository; \
       else \
         python -m venv /opt/build-venv \
         && if ls /opt/build-local/wheels/torch-2.13.0*.whl >/dev/null 2>&1; \
            then /opt/build-venv/bin/pip install --no-deps /opt/build-local/wheels/torch-2.13.0*.whl; \
            else /opt/build-venv/bin/pip install --no-deps --index-url "${TORCH_INDEX_URL}" torch==2.13.0; fi \
         && /opt/build-venv/bin/pip install ".[build]" \
         && /opt/build-venv/bin/slimserve build --repository /opt/model_repository; \
       fi

FROM ${BASE_IMAGE}
RUN useradd --create-home --uid 10001 slimserve
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /opt/model_repository /opt/model_repository
ENV PATH=/opt/venv/bin:$PATH HF_HUB_OFFLINE=1 SLIMSERVE_REPOSITORY=/opt/model_repository
USER 10001
EXPOSE 8001 8002
# The gRPC health service (grpc.health.v1) answers SERVING once every variant is warmed up.
# `slimserve health` asks SLIMSERVE_HEALTH_PORT (plaintext, health only) when it is set,
# else SLIMSERVE_GRPC_PORT (default 8001); with TLS on that port and no health port, set
# SLIMSERVE_CLIENT_TLS_CA too.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["slimserve", "health"]
# Exec form: the server is PID 1 and gets SIGTERM itself; it turns NOT_SERVING, refuses new
# calls and lets calls in flight finish within SLIMSERVE_SHUTDOWN_GRACE_S before exiting 0.
# With more than one worker (the default on more than one core) PID 1 is the supervisor: it
# passes SIGTERM on to its workers and reaps them itself.
ENTRYPOINT ["slimserve"]
CMD ["serve"]

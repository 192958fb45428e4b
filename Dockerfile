# slimserve image. Multi-stage: the builder installs the project and builds the default
# model repository (no network is needed for that step beyond the package index); the
# runtime stage carries the virtual environment and the repository, and runs as non-root.
# Its HEALTHCHECK, compose and Kubernetes files arrive with the load-test/deployment issue.
FROM python:3.11-slim AS builder
WORKDIR /src
ENV PIP_NO_CACHE_DIR=1 HF_HUB_OFFLINE=1
COPY pyproject.toml README.md ./
COPY variants ./variants
COPY server ./server
COPY router ./router
COPY protos ./protos
COPY loadtest ./loadtest
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir . \
    && /opt/venv/bin/slimserve build --repository /opt/model_repository

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 slimserve
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /opt/model_repository /opt/model_repository
ENV PATH=/opt/venv/bin:$PATH HF_HUB_OFFLINE=1
USER slimserve
EXPOSE 8001 8002
# exec form: the server is PID 1 and receives SIGTERM itself, then drains gracefully.
ENTRYPOINT ["slimserve"]
CMD ["serve", "--repository", "/opt/model_repository"]

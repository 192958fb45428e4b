# Prometheus from Debian's package, for machines that reach Debian's mirror but no image
# registry (deploy/image/compose.local.yaml); elsewhere compose uses prom/prometheus.
ARG BASE_IMAGE=slimserve-base:bookworm
FROM ${BASE_IMAGE}
# Debian's stable release is what pins the version.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends prometheus \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /prometheus && chown 65534:65534 /prometheus
USER 65534
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml"]

# Prometheus from Debian's package, for a machine where no image registry answers (docs/operations.md
# "Compose without a registry"). Same entrypoint as the prom/prometheus image, so the compose file's
# command (flags only) and its wget health check work unchanged:
#   docker build --network host --build-arg BASE_IMAGE=dyref-base:bookworm -f deploy/offline/prometheus.Dockerfile -t dyref-prometheus:local deploy/offline
# then DYREF_PROMETHEUS_IMAGE=dyref-prometheus:local docker compose ...
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update && apt-get install -y --no-install-recommends prometheus wget \
 && rm -rf /var/lib/apt/lists/* && mkdir -p /prometheus
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]

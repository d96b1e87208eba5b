# Redis from Debian's package, for a machine where no image registry answers (docs/operations.md
# "Compose without a registry"). Build with the host's network so apt reaches Debian's mirror:
#   docker build --network host --build-arg BASE_IMAGE=dyref-base:bookworm -f deploy/offline/redis.Dockerfile -t dyref-redis:local deploy/offline
# then DYREF_REDIS_IMAGE=dyref-redis:local docker compose ...
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update && apt-get install -y --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/* && mkdir -p /data
WORKDIR /data
EXPOSE 6379
CMD ["redis-server", "--protected-mode", "no"]

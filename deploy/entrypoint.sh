#!/usr/bin/env bash
# Entry point of the DyRef image.
#   dyref-entrypoint ray-head [ray start args...]   the Ray head node (blocks)
#   dyref-entrypoint ray-node <command...>          join the Ray cluster as a worker node, then
#                                                  run <command> (a Ray driver whose actors and
#                                                  replicas can land on this container's CPUs/GPUs)
#   dyref-entrypoint <command...>                   run <command> as is (learner, tools)
# Environment: RAY_HEAD_ADDRESS (host:port of the head's GCS, default ray-head:6379),
# RAY_NUM_CPUS / RAY_NUM_GPUS / RAY_RESOURCES (JSON) for this node, RAY_OBJECT_STORE_BYTES,
# RAY_AUTH_MODE (token|disabled) and RAY_AUTH_TOKEN: Ray 2.60 turns token auth on for
# `ray start`, so every node and driver of a cluster must agree on both.
set -euo pipefail

check_auth() {
  if [ "${RAY_AUTH_MODE:-token}" = "token" ] && [ -z "${RAY_AUTH_TOKEN:-}" ]; then
    echo "dyref-entrypoint: RAY_AUTH_MODE=token needs RAY_AUTH_TOKEN (the same on every node and driver)." >&2
    echo "  set DYREF_RAY_AUTH_TOKEN=\$(openssl rand -hex 32) in .env, or RAY_AUTH_MODE=disabled on a private network" >&2
    exit 2
  fi
  export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
  [ -n "${RAY_AUTH_TOKEN:-}" ] || unset RAY_AUTH_TOKEN
}

node_args() {
  local args=()
  [ -n "${RAY_NUM_CPUS:-}" ] && args+=("--num-cpus=${RAY_NUM_CPUS}")
  [ -n "${RAY_NUM_GPUS:-}" ] && args+=("--num-gpus=${RAY_NUM_GPUS}")
  [ -n "${RAY_RESOURCES:-}" ] && args+=("--resources=${RAY_RESOURCES}")
  [ -n "${RAY_OBJECT_STORE_BYTES:-}" ] && args+=("--object-store-memory=${RAY_OBJECT_STORE_BYTES}")
  [ ${#args[@]} -eq 0 ] || printf '%s\n' "${args[@]}"
}

role="${1:-}"
case "$role" in
  ray-head)
    shift
    check_auth
    mapfile -t extra < <(node_args)
    exec ray start --head --block --port=6379 --disable-usage-stats \
      --dashboard-host=0.0.0.0 --include-dashboard="${RAY_INCLUDE_DASHBOARD:-false}" \
      --metrics-export-port="${RAY_METRICS_EXPORT_PORT:-8080}" "${extra[@]}" "$@"
    ;;
  ray-node)
    shift
    [ $# -gt 0 ] || { echo "dyref-entrypoint: ray-node needs a command to run" >&2; exit 2; }
    check_auth
    mapfile -t extra < <(node_args)
    ray start --address="${RAY_HEAD_ADDRESS:-ray-head:6379}" --disable-usage-stats \
      --metrics-export-port="${RAY_METRICS_EXPORT_PORT:-8080}" "${extra[@]}"
    # the driver connects through this node's raylet, so its actors may be placed here
    export DYREF_RAY__ADDRESS="${DYREF_RAY__ADDRESS:-${RAY_HEAD_ADDRESS:-ray-head:6379}}"
    exec "$@"
    ;;
  "")
    exec dyref --help
    ;;
  *)
    exec "$@"
    ;;
esac

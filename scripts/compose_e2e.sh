#!/usr/bin/env bash
# The docker compose stack for real, end to end, with the time of every phase (a benchmark-style
# script, not part of the test suite; docs/operations.md "Compose end to end"):
#   engine   start a Docker engine when none answers and we are root (Debian's docker.io)
#   base     when no registry answers: a Debian bookworm base by debootstrap, a wheelhouse built on
#            the host, Redis and Prometheus images from Debian's packages; Grafana left out
#   build    the dyref:cpu image
#   up       docker compose --profile cpu up -d, then wait for every health check
#   train    RL steps through the containers; the ledger read back with `dyref audit`
#   serve    POST /generate and the OpenAI edits endpoint from the host
#   scrape   Prometheus has the training series the dashboards use
#   kill     kill -9 one generator container; the learner's step must go on
#   down     docker compose down -v; nothing of the project may be left
# Everything it starts it ends, by id (the engine by its pid, containers through compose).
#
#   sudo scripts/compose_e2e.sh                 # full run
#   E2E_QUICK=1 scripts/compose_e2e.sh          # reduced: fewer steps, no kill phase (the docker test)
# Settings (environment): E2E_WORK (scratch, kept: reuse it to keep the built images; default a
# temp dir, removed at the end), E2E_STEPS (learner steps to wait
# for, default 8; quick 3), E2E_TIMEOUT_S (per wait, default 900), DOCKER_HOST (an engine to use),
# DYREF_LEARNER_WORKERS (trainer workers in the learner's container; > 1 is checked in the scrape phase).
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
QUICK=${E2E_QUICK:-0}
STEPS=${E2E_STEPS:-$([ "$QUICK" = 1 ] && echo 3 || echo 8)}
TIMEOUT_S=${E2E_TIMEOUT_S:-900}
OWN_WORK=0
[ -n "${E2E_WORK:-}" ] || OWN_WORK=1   # a scratch folder of its own is removed at the end (images too)
WORK=${E2E_WORK:-$(mktemp -d /tmp/dyref-e2e.XXXXXX)}
mkdir -p "$WORK"
PY="$ROOT/.venv/bin/python"
PROJECT=dyref
free_port() {  # $1 when nothing listens on it, else a free one (a dev stack may hold 8000 or 9090)
  "$PY" - "$1" <<'EOF'
import socket, sys
want = int(sys.argv[1])
for port in (want, 0):
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            continue
        print(s.getsockname()[1]); break
EOF
}
[ -x "$PY" ] || ./dev --help >/dev/null   # the venv (the compose binary and the checks use it)
export DYREF_GATEWAY_PORT=${DYREF_GATEWAY_PORT:-$(free_port 8000)}
export DYREF_PROMETHEUS_PORT=${DYREF_PROMETHEUS_PORT:-$(free_port 9090)}
GATEWAY=http://127.0.0.1:$DYREF_GATEWAY_PORT
PROM=http://127.0.0.1:$DYREF_PROMETHEUS_PORT
STARTED_DOCKERD=""
UP=0
declare -a PHASES=()
T0=$(date +%s)

say() { printf '[e2e %4ss] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }
fail() { say "FAIL: $*"; exit 1; }
phase() {  # phase NAME START_EPOCH
  PHASES+=("$1 $(( $(date +%s) - $2 ))")
}

cleanup() {
  local rc=$?
  if [ "$UP" = 1 ]; then
    say "teardown: docker compose down -v"
    "${COMPOSE[@]}" --profile cpu --profile gpu down -v --remove-orphans >/dev/null 2>&1 || true
  fi
  if [ -n "$STARTED_DOCKERD" ]; then
    say "stopping the Docker engine this script started (pid $STARTED_DOCKERD)"
    kill "$STARTED_DOCKERD" 2>/dev/null || true
    for _ in $(seq 60); do kill -0 "$STARTED_DOCKERD" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$STARTED_DOCKERD" 2>/dev/null || true
    # dockerd can leave its network-namespace mount behind; unmount what it mounted under $WORK
    grep -o " $WORK/docker/[^ ]*" /proc/mounts | sort -r | xargs -r umount 2>/dev/null || true
  fi
  if [ "$OWN_WORK" = 1 ] && ! grep -q " $WORK/" /proc/mounts; then rm -rf "$WORK"; fi
  exit $rc
}
trap cleanup EXIT

# ---- engine --------------------------------------------------------------------------------
t=$(date +%s)
if ! docker info >/dev/null 2>&1; then
  [ "$(id -u)" = 0 ] || fail "no Docker engine answers and this is not root: start one, or set DOCKER_HOST"
  if ! command -v dockerd >/dev/null; then
    say "installing Debian's docker.io"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends docker.io >/dev/null
  fi
  mkdir -p "$WORK/docker"
  export DOCKER_HOST="unix://$WORK/docker/docker.sock"
  dockerd -H "$DOCKER_HOST" --data-root "$WORK/docker/data" --exec-root "$WORK/docker/exec" \
          --pidfile "$WORK/docker/dockerd.pid" >"$WORK/docker/dockerd.log" 2>&1 &
  STARTED_DOCKERD=$!
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || fail "dockerd did not answer; see $WORK/docker/dockerd.log"
  say "started dockerd pid $STARTED_DOCKERD on $DOCKER_HOST"
fi
phase engine "$t"
# the compose `dyref cluster` uses, on this repository's file and project (dyref/cluster.py)
mapfile -t COMPOSE < <("$PY" -c "from dyref.cluster import compose_args, find_compose; print(*compose_args(find_compose()), sep='\n')")
say "compose: ${COMPOSE[0]} ($("${COMPOSE[@]}" version --short 2>/dev/null || echo '?'))"

# ---- base images ---------------------------------------------------------------------------
t=$(date +%s)
BASE=${DYREF_BASE_IMAGE:-python:3.11-slim-bookworm}
SERVICES=(redis ray-head rewards generator learner gateway prometheus grafana)
have() { docker image inspect "$1" >/dev/null 2>&1; }
if ! have "$BASE" && ! docker pull -q "$BASE" >/dev/null 2>&1; then
  say "no registry answers: building the offline base, wheelhouse and service images"
  BASE=dyref-base:bookworm
  if ! have "$BASE"; then
    command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends debootstrap >/dev/null
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,tini bookworm "$WORK/rootfs" >"$WORK/debootstrap.log" 2>&1 \
      || fail "debootstrap failed; see $WORK/debootstrap.log"
    tar -C "$WORK/rootfs" -c . | docker import - "$BASE" >/dev/null
    rm -rf "$WORK/rootfs"
  fi
  # the host builds the wheels; async-timeout is asked for by hand: redis needs it below Python 3.11.3,
  # which Debian bookworm's 3.11.2 is and the host's Python may not be
  if ! ls deploy/wheelhouse/*.whl >/dev/null 2>&1; then
    "$ROOT/.venv/bin/pip" freeze --exclude-editable >"$WORK/constraints.txt"   # torch==2.13.0+cpu: the CPU build
    "$PY" -c "import tomllib; print(*tomllib.load(open('pyproject.toml','rb'))['project']['dependencies'], sep='\n')" >"$WORK/reqs.txt"
    "$ROOT/.venv/bin/pip" wheel -q -w deploy/wheelhouse -c "$WORK/constraints.txt" -r "$WORK/reqs.txt" setuptools wheel "async-timeout>=4.0.3" \
      || fail "could not build the wheelhouse"
  fi
  have dyref-redis:local || docker build -q --network host --build-arg BASE_IMAGE="$BASE" \
    -f deploy/offline/redis.Dockerfile -t dyref-redis:local deploy/offline >/dev/null
  have dyref-prometheus:local || docker build -q --network host --build-arg BASE_IMAGE="$BASE" \
    -f deploy/offline/prometheus.Dockerfile -t dyref-prometheus:local deploy/offline >/dev/null
  export DYREF_REDIS_IMAGE=dyref-redis:local DYREF_PROMETHEUS_IMAGE=dyref-prometheus:local
  if ! have "${DYREF_GRAFANA_IMAGE:-grafana/grafana:11.3.1}"; then
    say "Grafana left out: its image cannot be had without a registry (Debian does not package it)"
    SERVICES=("${SERVICES[@]/grafana}")
  fi
fi
phase base "$t"

# ---- build ---------------------------------------------------------------------------------
t=$(date +%s)
docker build -q --build-arg BASE_IMAGE="$BASE" -f deploy/Dockerfile --target cpu -t dyref:cpu . >/dev/null \
  || fail "docker build failed"
phase build "$t"

# ---- up ------------------------------------------------------------------------------------
t=$(date +%s)
export DYREF_LEARNER_STEPS=${DYREF_LEARNER_STEPS:-100000}   # train until the script tears it down
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token} DYREF_RAY_AUTH_TOKEN=${DYREF_RAY_AUTH_TOKEN:-$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')}
UP=1
# shellcheck disable=SC2068
"${COMPOSE[@]}" --profile cpu up -d --no-build ${SERVICES[@]} >"$WORK/up.log" 2>&1 \
  || { tail -20 "$WORK/up.log"; "${COMPOSE[@]}" logs --tail 30; fail "compose up"; }
wait_healthy() {  # dyref cluster's own wait (dyref/cluster.py wait_healthy)
  "$PY" - "$TIMEOUT_S" <<'EOF'
import sys
from dyref.cluster import wait_healthy
rows = wait_healthy(float(sys.argv[1]), log=lambda line: print(line, file=sys.stderr))
bad = [r for r in rows if not r["ok"]]
print("not healthy: " + ", ".join(f"{r['service']}:{r['state']}/{r['health']}" for r in bad) if bad or not rows
      else " ".join(f"{r['service']}={r['health']}" for r in rows))
sys.exit(1 if bad or not rows else 0)
EOF
}
wait_healthy || { "${COMPOSE[@]}" ps; "${COMPOSE[@]}" logs --tail 40; fail "the stack did not become healthy in ${TIMEOUT_S}s"; }
phase up "$t"
say "healthy after $(( $(date +%s) - t ))s"

# ---- train ---------------------------------------------------------------------------------
learner_step() {  # the learner's step from Prometheus (what the dashboards read), else -1
  curl -fsS "$PROM/api/v1/query" --data-urlencode 'query=max(dyref_learner_step)' 2>/dev/null \
    | "$PY" -c "import json,sys; r=json.load(sys.stdin)['data']['result']; print(int(float(r[0]['value'][1])) if r else -1)" 2>/dev/null \
    || echo -1
}
wait_step() {  # wait_step N: until the learner reports step >= N
  local deadline=$(( $(date +%s) + TIMEOUT_S )) s
  while :; do
    s=$(learner_step)
    [ "$s" -ge "$1" ] && { echo "$s"; return 0; }
    [ "$(date +%s)" -gt "$deadline" ] && { echo "$s"; return 1; }
    sleep 5
  done
}
t=$(date +%s)
s=$(wait_step "$STEPS") || { "${COMPOSE[@]}" logs --tail 60 learner; fail "the learner reached step $s, not $STEPS"; }
phase train "$t"
say "learner at step $s"
check_ledger() {  # the audit in $WORK/audit.json: every admitted task ends once; nothing counted twice
  "$PY" - "$WORK/audit.json" <<'EOF'
import json, sys
a = json.load(open(sys.argv[1]))
print(f"ledger: admitted {a['admitted']} = consumed {a['consumed']} + stale {a['dropped_stale']} + dead "
      f"{a['dead_lettered']} + in flight {a['in_flight']}; duplicate {a['duplicate']}")
# in_flight is what admission has not yet seen end: never negative; nothing counted twice
sys.exit(0 if a["consumed"] > 0 and a["in_flight"] >= 0 and a["duplicate"] == 0 else 1)
EOF
}
"${COMPOSE[@]}" exec -T learner dyref audit --json 2>/dev/null | tr -d '\r' >"$WORK/audit.json"
check_ledger || fail "ledger not exact: $(cat "$WORK/audit.json")"

# ---- serve ---------------------------------------------------------------------------------
t=$(date +%s)
"$PY" - "$GATEWAY" <<'EOF' || fail "the gateway did not answer as it should"
import base64, io, sys
import httpx
from PIL import Image
url = sys.argv[1]
buf = io.BytesIO(); Image.new("RGB", (32, 32), (200, 30, 30)).save(buf, "PNG")
png = buf.getvalue()
r = httpx.post(f"{url}/generate", json={"prompt": "put image 1 at the top left", "seed": 1,
               "references": [{"role": "subject", "image": base64.b64encode(png).decode()}]}, timeout=120)
r.raise_for_status()
img = r.json()["images"][0]
Image.open(io.BytesIO(base64.b64decode(img["b64_json"]))).load()
print(f"/generate: 200, {img['width']}x{img['height']}, policy version {r.json().get('policy_version')}")
r = httpx.post(f"{url}/v1/images/edits", data={"prompt": "a red square", "size": "32x32"},
               files=[("image[]", ("ref.png", png, "image/png"))], timeout=120)
r.raise_for_status()
print(f"/v1/images/edits: 200, {len(r.json()['data'])} image(s)")
EOF
phase serve "$t"

# ---- scrape --------------------------------------------------------------------------------
t=$(date +%s)
missing=""
for series in dyref_learner_step dyref_learner_policy_version dyref_generator_policy_version \
              dyref_generator_images_total dyref_learner_tasks_admitted_total dyref_learner_groups_consumed_total \
              dyref_learner_reward_mean dyref_audit_tasks; do
  n=$(curl -fsS "$PROM/api/v1/query" --data-urlencode "query=count($series)" \
      | "$PY" -c "import json,sys; r=json.load(sys.stdin)['data']['result']; print(int(float(r[0]['value'][1])) if r else 0)")
  [ "$n" -gt 0 ] || missing="$missing $series"
done
[ -z "$missing" ] || fail "Prometheus lacks:$missing"
say "Prometheus has every training series the dashboards use"
# DYREF_LEARNER_WORKERS > 1: the learner's Ray Train workers (in its own container) each trained
workers=${DYREF_LEARNER_WORKERS:-1}
if [ "$workers" -gt 1 ]; then
  n=$(curl -fsS "$PROM/api/v1/query" \
        --data-urlencode 'query=count(dyref_learner_worker_seconds_count{call="update"} > 0)' \
      | "$PY" -c "import json,sys; r=json.load(sys.stdin)['data']['result']; print(int(float(r[0]['value'][1])) if r else 0)")
  [ "$n" -eq "$workers" ] || fail "expected $workers trainer workers reporting updates, Prometheus has $n"
  say "$n trainer workers (Ray Train, in the learner's container) report their update seconds"
fi
phase scrape "$t"

# ---- kill ----------------------------------------------------------------------------------
if [ "$QUICK" != 1 ]; then
  t=$(date +%s)
  gen=$("${COMPOSE[@]}" ps -q generator | head -1)
  before=$(learner_step)
  # SIGKILL to every top-level process of the container, as a crash would: `docker kill` counts as
  # a manual stop, and Docker does not apply the restart policy to those
  docker exec "$gen" python -c "
import os
for p in filter(str.isdigit, os.listdir('/proc')):
    try:
        if open(f'/proc/{p}/stat').read().rsplit(')', 1)[1].split()[1] == '1':
            os.kill(int(p), 9)
    except (OSError, IndexError):
        pass" >/dev/null 2>&1 || true
  say "killed generator container ${gen:0:12} (SIGKILL to its processes) at learner step $before"
  # steps taken right after the kill may come from groups already queued: the proof is steps made
  # after Docker has restarted the container (restart: unless-stopped)
  deadline=$(( $(date +%s) + TIMEOUT_S ))
  until [ "$(docker inspect -f '{{.RestartCount}}' "$gen")" -ge 1 ] \
        && [ "$(docker inspect -f '{{.State.Running}}' "$gen")" = true ]; do
    [ "$(date +%s)" -gt "$deadline" ] && fail "the generator container was not restarted"
    sleep 1
  done
  restarted=$(learner_step)
  say "generator restarted by Docker at learner step $restarted"
  s=$(wait_step $(( restarted + 5 ))) || { "${COMPOSE[@]}" logs --tail 60 generator learner; fail "the run stopped at step $s after the generator was killed"; }
  say "the run went on: learner step $before at the kill -> $s, 5 or more of them after the restart"
  "${COMPOSE[@]}" exec -T learner dyref audit --json 2>/dev/null | tr -d '\r' >"$WORK/audit.json"
  check_ledger || fail "ledger not exact after the kill: $(cat "$WORK/audit.json")"
  phase kill "$t"
fi

# ---- down ----------------------------------------------------------------------------------
t=$(date +%s)
"${COMPOSE[@]}" --profile cpu --profile gpu down -v --remove-orphans >/dev/null 2>&1
UP=0
left=$(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT" | wc -l)
vols=$(docker volume ls -q --filter "label=com.docker.compose.project=$PROJECT" | wc -l)
[ "$left" = 0 ] && [ "$vols" = 0 ] || fail "left behind: $left containers, $vols volumes"
phase down "$t"

say "phases (s): ${PHASES[*]}"
docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E '^(dyref|dyref-redis|dyref-prometheus|dyref-base)[:]' \
  | sed 's/^/[e2e] image /'
say "PASS"

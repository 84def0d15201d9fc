#!/usr/bin/env bash
# Soak: a bounded load test on loopback. Starts `strata serve` on the
# offline demo package set, warms a mix of images, then has wrk keep
# CLIENTS connections pulling them (manifests by tag and by digest, config
# and layer blobs, in the proportions a pull makes) for DURATION seconds.
# Reports requests, errors (goal 0) and the server's RSS before and after
# (goal: flat). Exits non-zero on any error.
#
#   bash scripts/soak.sh [DURATION_SECS=120] [CLIENTS=200]
#
# Needs: target/release/strata (built here unless STRATA_BIN is set), nix,
# wrk, jq, curl (scripts/install-deps.sh installs them).
set -euo pipefail

DURATION=${1:-120}
CLIENTS=${2:-200}
if (( DURATION < 5 || DURATION > 600 )); then
  echo "soak: DURATION must be 5-600 seconds (bounded by design)" >&2
  exit 2
fi
ROOT=$(cd "$(dirname "$0")/.." && pwd)
for tool in wrk jq curl nix-build; do
  command -v "$tool" >/dev/null || { echo "soak: $tool is not installed (scripts/install-deps.sh)" >&2; exit 2; }
done
export PATH="$HOME/.cargo/bin:$PATH" NIX_CONFIG='substituters =' STRATA_NIX_OFFLINE=1
BIN=${STRATA_BIN:-$ROOT/target/release/strata}
if [[ -z "${STRATA_BIN:-}" ]]; then
  (cd "$ROOT" && cargo build --release -p strata --bin strata)
fi

WORK=$(mktemp -d /tmp/strata-soak.XXXXXX)
PID=
cleanup() {
  if [[ -n "$PID" ]] && kill -0 "$PID" 2>/dev/null; then
    kill -TERM "$PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
ADDR=127.0.0.1:$PORT
cat >"$WORK/strata.toml" <<EOF
listen = "$ADDR"

[storage]
url = "file://$WORK/storage"

[nix]
work_dir = "$WORK/nix"
EOF
NIXERY_PKGS_PATH="$ROOT/examples/demo-pkgs" RUST_LOG=warn \
  "$BIN" --config "$WORK/strata.toml" serve >"$WORK/strata.log" 2>&1 &
PID=$!
for _ in $(seq 600); do
  curl -fsS "http://$ADDR/v2/" >/dev/null 2>&1 && break
  kill -0 "$PID" 2>/dev/null || { cat "$WORK/strata.log"; exit 1; }
  sleep 0.1
done

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$PID/status"; }
hwm_kib() { awk '/^VmHWM/ {print $2}' "/proc/$PID/status"; }

# Warm a mix of images (built once, by Nix), and list what a pull fetches.
IMAGES=(hello shell/hello git curl jq shell/git coreutils/openssl busybox zlib/gmp nano)
OCI=application/vnd.oci.image.manifest.v1+json
DOCKER=application/vnd.docker.distribution.manifest.v2+json
: >"$WORK/paths"
for name in "${IMAGES[@]}"; do
  for accept in "$OCI" "$DOCKER"; do
    curl -fsS -H "Accept: $accept" "http://$ADDR/v2/$name/manifests/latest" >"$WORK/m.json"
    digest=sha256:$(sha256sum "$WORK/m.json" | cut -d' ' -f1)
    echo "M $accept /v2/$name/manifests/latest" >>"$WORK/paths"
    echo "M $accept /v2/$name/manifests/$digest" >>"$WORK/paths"
    jq -r '.config.digest, .layers[].digest' "$WORK/m.json" | while read -r blob; do
      echo "B - /v2/$name/blobs/$blob" >>"$WORK/paths"
    done
  done
done
sort -u -o "$WORK/paths" "$WORK/paths"
echo "soak: ${#IMAGES[@]} images warm, $(wc -l <"$WORK/paths") distinct requests in the mix"

cat >"$WORK/soak.lua" <<'EOF'
-- Each connection walks the request list from its own offset.
local reqs = {}
for line in io.lines(os.getenv("SOAK_PATHS")) do
  local kind, accept, path = line:match("^(%S+) (%S+) (%S+)$")
  local headers = {}
  if kind == "M" then headers["Accept"] = accept end
  reqs[#reqs + 1] = wrk.format("GET", path, headers)
end
local i = 0
function init(args) i = math.random(#reqs) end
function request() i = i % #reqs + 1; return reqs[i] end
EOF

RSS_START=$(rss_kib)
START_LOG_ERRORS=$(grep -c "ERROR" "$WORK/strata.log" || true)
echo "soak: ${CLIENTS} clients for ${DURATION} s against $ADDR; server RSS at start ${RSS_START} KiB"
# RSS every 10 s: growth that levels off (allocator arenas, one buffer set
# per connection) is told apart from a leak that keeps climbing.
( while sleep 10; do rss_kib >>"$WORK/rss" 2>/dev/null || break; done ) &
SAMPLER=$!
SOAK_PATHS="$WORK/paths" wrk -t2 -c"$CLIENTS" -d"${DURATION}s" --timeout 30s --latency -s "$WORK/soak.lua" "http://$ADDR" | tee "$WORK/wrk.txt"
RSS_END=$(rss_kib)
kill "$SAMPLER" 2>/dev/null || true
HWM=$(hwm_kib)

REQUESTS=$(awk '/requests in/ {print $1}' "$WORK/wrk.txt")
NON2XX=$(awk -F': ' '/Non-2xx or 3xx responses/ {print $2}' "$WORK/wrk.txt")
SOCKET=$(awk '/Socket errors/ {gsub(",", ""); print $4 + $6 + $8 + $10}' "$WORK/wrk.txt")
LOG_ERRORS=$(( $(grep -c "ERROR" "$WORK/strata.log" || true) - START_LOG_ERRORS ))
ERRORS=$(( ${NON2XX:-0} + ${SOCKET:-0} + LOG_ERRORS ))
kill -0 "$PID" 2>/dev/null || { echo "soak: the server died"; ERRORS=$((ERRORS + 1)); }
echo
echo "soak: duration ${DURATION} s, clients ${CLIENTS}, requests ${REQUESTS}"
echo "soak: errors ${ERRORS} (non-2xx ${NON2XX:-0}, socket ${SOCKET:-0}, server log errors ${LOG_ERRORS})"
echo "soak: server RSS start ${RSS_START} KiB, end ${RSS_END} KiB, peak ${HWM} KiB"
echo "soak: RSS every 10 s (KiB): $(tr '\n' ' ' <"$WORK/rss" 2>/dev/null)"
(( ERRORS == 0 ))

#!/usr/bin/env bash
# The demo: installs what it uses (scripts/install-deps.sh --demo: Nix,
# busybox, skopeo, umoci, curl, jq, and Rust when rustup's is missing),
# builds Strata, serves the offline demo package set on 127.0.0.1:$PORT,
# pulls `shell/hello` with skopeo, unpacks it with umoci and runs `hello`
# inside it with chroot, and prints how long each step took. The server then
# keeps running in the foreground (Ctrl-C stops it) so you can pull more;
# DEMO_EXIT=1 stops it after the pull instead.
#
#   PORT=8080            port to listen on (127.0.0.1 only)
#   DEMO_DIR=…           where storage, Nix work files and the pulled image go
#                        (default: a new temporary directory)
#   DEMO_EXIT=1          exit after the demo pull instead of serving on
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

PORT=${PORT:-8080}
DEMO_EXIT=${DEMO_EXIT:-0}
say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

# Steps and their times: `step NAME TITLE` ends the running step, printing
# its time, and starts the next; `step ""` ends the last.
started=$(date +%s%N)
step_name='' step_t0=$started times=()
secs() { local ms=$(( ($(date +%s%N) - $1) / 1000000 )); printf '%d.%d s' $((ms / 1000)) $((ms % 1000 / 100)); }
step() {
  if [ -n "$step_name" ]; then
    local took
    took=$(secs "$step_t0")
    echo "($step_name: $took)"
    times+=("$step_name $took")
  fi
  step_name=$1 step_t0=$(date +%s%N)
  [ -z "$1" ] || say "$2"
}

# Another server on the port would answer the readiness check below in
# place of this one.
if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
  echo "demo.sh: something already listens on 127.0.0.1:$PORT; choose another port with PORT=…" >&2
  exit 1
fi

step dependencies "installing what the demo uses (scripts/install-deps.sh --demo)"
bash scripts/install-deps.sh --demo

# The demo builds only the server: Debian's Rust does when rustup's is missing.
rust_env_any=1
. scripts/rust-env.sh

step build "building strata (cargo build --release)"
cargo build --release
strata="$repo/target/release/strata"
[ -n "${CARGO_TARGET_DIR:-}" ] && strata="$CARGO_TARGET_DIR/release/strata"

if [ -n "${DEMO_DIR:-}" ]; then
  mkdir -p "$DEMO_DIR"
  work=$(cd "$DEMO_DIR" && pwd)
else
  work=$(mktemp -d /tmp/strata-demo.XXXXXX)
fi
mkdir -p "$work/storage" "$work/nix"
cat > "$work/strata.toml" <<TOML
listen = "127.0.0.1:$PORT"

[nix]
work_dir = "$work/nix"
TOML

# Offline: the demo package set instead of nixpkgs, and no binary cache.
export NIXERY_PKGS_PATH="$repo/examples/demo-pkgs"
export NIXERY_STORAGE_BACKEND=filesystem
export STORAGE_PATH="$work/storage"
export STRATA_NIX_OFFLINE=1
export NIX_CONFIG='substituters ='
unset NIXERY_CHANNEL NIXERY_PKGS_REPO STRATA_CONFIG

step start "starting strata serve on 127.0.0.1:$PORT (storage: $work/storage, log: $work/strata.log)"
"$strata" --config "$work/strata.toml" serve > "$work/strata.log" 2>&1 &
server=$!
stop() {
  if kill -0 "$server" 2>/dev/null; then
    kill -TERM "$server" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$server" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$server" 2>/dev/null || true
  fi
}
trap stop EXIT
trap 'exit 130' INT TERM

ready=0
for _ in $(seq 300); do   # at most 30 s
  if ! kill -0 "$server" 2>/dev/null; then
    echo "demo.sh: strata exited during start-up:" >&2
    cat "$work/strata.log" >&2
    exit 1
  fi
  if curl -fsS -o /dev/null "http://127.0.0.1:$PORT/v2/" 2>/dev/null; then ready=1; break; fi
  sleep 0.1
done
if [ "$ready" -ne 1 ]; then
  echo "demo.sh: strata did not answer GET /v2/ within 30 s; log:" >&2
  cat "$work/strata.log" >&2
  exit 1
fi
echo "strata answers: $(curl -fsS -D - -o /dev/null "http://127.0.0.1:$PORT/v2/" | grep -i '^docker-distribution-api-version' | tr -d '\r')"

image="127.0.0.1:$PORT/shell/hello:latest"
layout="$work/image"
bundle="$work/bundle"
rm -rf "$layout" "$bundle"

step pull "pulling $image with skopeo (Nix builds it now)"
if ! timeout 300 skopeo --insecure-policy copy --src-tls-verify=false \
    "docker://$image" "oci:$layout:latest"; then
  echo "demo.sh: skopeo copy failed; server log:" >&2
  tail -n 40 "$work/strata.log" >&2
  exit 1
fi
echo "layers:"
timeout 60 skopeo inspect --tls-verify=false "docker://$image" \
  | jq -r '.Layers[]' | nl -w3 -s'  '

step run "unpacking with umoci and running /bin/hello in it with chroot"
timeout 120 umoci unpack --image "$layout:latest" "$bundle" >/dev/null
echo "\$ chroot $bundle/rootfs /bin/hello"
out=$(timeout 30 chroot "$bundle/rootfs" /bin/hello)
echo "$out"
if [ "$out" != "Hello, world!" ]; then
  echo "demo.sh: expected 'Hello, world!'" >&2
  exit 1
fi

step ""
say "the demo worked"
printf 'time per step: '; printf '%s, ' "${times[@]}"; echo "total $(secs "$started")"
cat <<TXT
strata served shell/hello: Nix built hello plus the shell bundle (bash,
coreutils, …) from examples/demo-pkgs, strata layered the closure, and skopeo
pulled it. Other names work the same way: packages separated by '/', e.g.
shell/git, hello/curl, xorg.xev/haskellpackages.pandoc.

With Docker, if you have it (the demo does not install it; 127.0.0.1 is an
insecure registry by default):
  docker pull 127.0.0.1:$PORT/shell/hello
  docker run --rm 127.0.0.1:$PORT/shell/hello hello
  docker run --rm -ti 127.0.0.1:$PORT/shell/git     # opens bash
With skopeo:
  skopeo copy --src-tls-verify=false docker://127.0.0.1:$PORT/shell/git oci:./git:latest
Web page:  http://127.0.0.1:$PORT/
Files:     $work (server log: $work/strata.log)
TXT

if [ "$DEMO_EXIT" = 1 ]; then
  echo
  echo "DEMO_EXIT=1: stopping the server."
  exit 0
fi
echo
echo "strata keeps serving on 127.0.0.1:$PORT; Ctrl-C to stop. Log follows:"
tail -n 0 -f "$work/strata.log" --pid="$server" &
wait "$server"

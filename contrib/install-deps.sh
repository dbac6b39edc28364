#!/usr/bin/env bash
# Installs, on Debian 12, what building and testing outbox-relay needs and is not there yet:
# Debian packages (one apt-get update, only when something is missing) and the npm packages
# of the test peers (tests/aws: the fauxqs SQS/SNS emulator and the AWS SDK consumer).
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  build-essential meson ninja-build pkg-config
  libpq-dev libevent-dev libcurl4-openssl-dev libjson-c-dev uuid-dev libssl-dev
  postgresql-15 postgresql-client-15 pgbouncer
  python3 python3-psycopg2 python3-pytest python3-prometheus-client
  valgrind curl prometheus systemd
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# postgresql-15 may start Debian's own cluster on 5432; the tests never use it.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "install-deps: Node.js 20 and npm are needed for the SQS/SNS test peers" >&2
  exit 1
fi

if [ ! -d tests/aws/node_modules ] || [ tests/aws/package-lock.json -nt tests/aws/node_modules ]; then
  echo "install-deps: npm ci in tests/aws"
  (cd tests/aws && npm ci --no-audit --no-fund --loglevel=error)
fi

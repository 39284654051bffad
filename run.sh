#!/usr/bin/env bash
# Set up (apt packages, venv) and run the box on its embedded default: simulated lines when
# no capture device is configured, the recorder, and the admin page on http://127.0.0.1:8080.
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh
DATA=${NOKBOX_DATA:-$PWD/var/data}
if [[ ! -f "$DATA/nokbox.json" ]]; then
  mkdir -p "$(dirname "$DATA")"
  # development box only: the identities, the generated recovery passphrase and the approver's PIN
  # go next to (never inside) the data directory, files 0600
  .venv/bin/python -m web.wizard new-pin "$(dirname "$DATA")/approver-pin.txt"
  .venv/bin/nokbox init --data "$DATA" --identity-out "$(dirname "$DATA")/records-identity.txt" \
    --passphrase-file "$(dirname "$DATA")/recovery-passphrase.txt" \
    --pin-file "$(dirname "$DATA")/approver-pin.txt" --approver approver </dev/null
fi
# and what else the first-run wizard asks for (first admin, approver account, audit key), scripted
.venv/bin/python -m web.wizard accounts --data "$DATA" --secrets "$(dirname "$DATA")"
# the settings page needs a file to write: an almost empty one (built-in defaults) on first run
CONFIG=${NOKBOX_CONFIG:-$PWD/var/nokbox.toml}
if [[ ! -f "$CONFIG" ]]; then
  mkdir -p "$(dirname "$CONFIG")"
  (umask 027 && printf '# nokbox configuration (development box): built-in defaults; the settings page writes here\n' >"$CONFIG")
fi
exec .venv/bin/nokbox run --data "$DATA" --config "$CONFIG" "$@"

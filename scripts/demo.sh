#!/usr/bin/env bash
# make demo: build examples/hello-c inside the (simulated) confidential VM and verify it.
set -euo pipefail
cd "$(dirname "$0")/.."
CLOCHE=${CLOCHE:-bin/cloche}
STATE=${CLOCHE_STATE_DIR:-$([ "$(id -u)" = 0 ] && echo /var/lib/cloche || echo "$HOME/.local/state/cloche")}
export CLOCHE_STATE_DIR=$STATE
OUT=${OUT:-out}

rm -rf "$OUT"
echo "== cloche run (state in $STATE)"
"$CLOCHE" run --source examples/hello-c --out "$OUT" --tee sim -- make

echo "== cloche verify"
# The measurement is checked against values computed from the guest image the run used.
"$CLOCHE" verify --bundle "$OUT/provenance.sigstore.json" --key "$STATE/signing-key.pem.pub" \
  --guest-image "$STATE/guest-image" \
  --allow-simulated --trusted-sim-root "$("$CLOCHE" sim-root)" "$OUT/hello"

echo "== running the artifact on the host"
"./$OUT/hello"

cat <<MSG

Files:
  artifact:    $OUT/hello
  provenance:  $OUT/provenance.sigstore.json (Sigstore bundle, DSSE, SLSA v1 statement)
  public key:  $STATE/signing-key.pem.pub
  sim root:    $("$CLOCHE" sim-root)   (simulated TEE: trusted only with --allow-simulated)
MSG

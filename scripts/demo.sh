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
# The measurement is checked against values computed from the guest image the run used. The
# host chose the source and the toolchain, so the verifier names what it expects of both:
# the source directory it has (its git tree id) and the verity root of the toolchain image
# `cloche run` made here (cached by its package list, so this only reads its record).
TOOLCHAIN=$("$CLOCHE" image toolchain 2>/dev/null | sed -n 's/^ *"verityRootHash": *"\([0-9a-f]\{64\}\)".*/\1/p')
if [ -z "$TOOLCHAIN" ]; then
  echo "demo: cloche image toolchain printed no verityRootHash" >&2
  exit 1
fi
"$CLOCHE" verify --bundle "$OUT/provenance.sigstore.json" --key "$STATE/signing-key.pem.pub" \
  --guest-image "$STATE/guest-image" \
  --source-dir examples/hello-c --toolchain-digest "$TOOLCHAIN" \
  --allow-simulated --trusted-sim-root "$("$CLOCHE" sim-root)" "$OUT/hello"

echo "== running the artifact on the host"
"$OUT/hello"

cat <<MSG

Files:
  artifact:    $OUT/hello
  provenance:  $OUT/provenance.sigstore.json (Sigstore bundle, DSSE, SLSA v1 statement)
  public key:  $STATE/signing-key.pem.pub
  sim root:    $("$CLOCHE" sim-root)   (simulated TEE: trusted only with --allow-simulated)
MSG

#!/usr/bin/env bash
# Regenerates tests/fixtures/model-signing/: fixed publisher keys, a small model directory and the
# bundles the real OpenSSF model-signing tool (model-signing 1.1.1) writes for it.
#
#   scripts/make-model-signing-fixture.sh [VENV]      (VENV defaults to /tmp/ms-venv)
#
# Needs Python 3 and PyPI. The keys and model bytes are fixed; the bundles' ECDSA signatures are
# randomised by model_signing, so a rerun gives new, equally valid bundles (commit them together
# with whatever tests pin their contents).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-/tmp/ms-venv}"
if [ ! -x "$venv/bin/model_signing" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q model-signing==1.1.1 cryptography pyopenssl
fi
out=tests/fixtures/model-signing
rm -rf "$out/keys" "$out/model"
"$venv/bin/python" scripts/make-model-signing-fixture.py "$out"
# Key-signed, P-256 and P-384 (the form the crate accepts).
"$venv/bin/model_signing" sign key "$out/model" \
    --private_key "$out/keys/publisher-p256.key.pem" --signature "$out/model-p256.sig"
"$venv/bin/model_signing" sign key "$out/model" \
    --private_key "$out/keys/publisher-p384.key.pem" --signature "$out/model-p384.sig"
# Certificate-signed (refused: the crate trusts a given key, not a certificate chain).
"$venv/bin/model_signing" sign certificate "$out/model" \
    --private_key "$out/keys/publisher-p256.key.pem" \
    --signing_certificate "$out/keys/publisher-p256.cert.pem" \
    --certificate_chain "$out/keys/publisher-p256.cert.pem" \
    --signature "$out/model-cert.sig"
# The tool's own verification, as a cross-check of what was committed.
"$venv/bin/model_signing" verify key "$out/model" \
    --signature "$out/model-p256.sig" --public_key "$out/keys/publisher-p256.pub.pem"
"$venv/bin/model_signing" verify key "$out/model" \
    --signature "$out/model-p384.sig" --public_key "$out/keys/publisher-p384.pub.pem"
(cd "$out/model" && sha256sum model-00001.safetensors model-00002.bin config.json) > "$out/SHA256SUMS"

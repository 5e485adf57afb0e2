#!/usr/bin/env python3
"""Writes the inputs of the model-signing fixture: fixed publisher keys and a small model.

The keys are derived from fixed labels (d = SHA-256(label) mod n) so that rerunning the script
gives the same keys; the model files are fixed bytes. The bundles themselves are made by the real
`model_signing` CLI (see make-model-signing-fixture.sh); its ECDSA signatures are randomised, so
rerunning that step gives a different (equally valid) bundle.
"""
import hashlib
import json
import struct
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
import datetime

out = Path(sys.argv[1])
keys = out / "keys"
model = out / "model"
keys.mkdir(parents=True, exist_ok=True)
model.mkdir(parents=True, exist_ok=True)

P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
P384_N = int(
    "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973",
    16,
)


def fixed_key(label, curve, n, digest):
    d = 1 + int.from_bytes(digest(label.encode()).digest(), "big") % (n - 1)
    return ec.derive_private_key(d, curve)


def write_key(name, key):
    (keys / f"{name}.key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (keys / f"{name}.pub.pem").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


p256 = fixed_key("vram-residency model-signing fixture p256", ec.SECP256R1(), P256_N, hashlib.sha256)
p384 = fixed_key("vram-residency model-signing fixture p384", ec.SECP384R1(), P384_N, hashlib.sha384)
other = fixed_key("vram-residency model-signing fixture other p256", ec.SECP256R1(), P256_N, hashlib.sha256)
write_key("publisher-p256", p256)
write_key("publisher-p384", p384)
write_key("other-p256", other)

# A self-signed certificate for the P-256 key: `sign certificate` then writes a bundle whose
# verification material is an X.509 chain instead of a public key (refused by the crate).
now = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vram-residency fixture publisher")])
cert = (
    x509.CertificateBuilder()
    .subject_name(name)
    .issuer_name(name)
    .public_key(p256.public_key())
    .serial_number(1)
    .not_valid_before(now)
    .not_valid_after(now + datetime.timedelta(days=3650))
    .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    .add_extension(
        x509.KeyUsage(True, False, False, False, False, True, False, False, False), critical=True
    )
    .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
    .sign(p256, hashes.SHA256())
)
(keys / "publisher-p256.cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


# Model: a small safetensors file (two F32 tensors) and a small opaque .bin file.
def safetensors(tensors):
    header, data = {}, b""
    for tname, (dtype, shape, raw) in tensors.items():
        header[tname] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


w0 = b"".join(struct.pack("<f", (i % 97) / 97.0) for i in range(64 * 64))
b0 = b"".join(struct.pack("<f", i / 64.0) for i in range(64))
(model / "model-00001.safetensors").write_bytes(
    safetensors({"layers.0.w": ("F32", [64, 64], w0), "layers.0.b": ("F32", [64], b0)})
)
(model / "model-00002.bin").write_bytes(bytes((i * 131 + 7) % 256 for i in range(20000)))
(model / "config.json").write_text('{"architectures":["Fixture"],"hidden_size":64}\n')

#!/usr/bin/env python3
"""Writes tests/vectors/attest-v3.json: vram-attest-v3 vectors made without the crate.

Everything here follows .specs/attestation-v3.md and SPEC-level formats only: the identity key
derived from the vector token by HKDF, the seal HMAC (vram-seal-v1 claims), the in-toto
statement as compact JSON, DSSE PAE, and RFC 6979 deterministic ECDSA P-256 / SHA-256 (Python
`cryptography`, deterministic_signing=True). tests/provenance.rs checks that the crate produces
exactly these bytes and accepts them.

    python3 -m venv /tmp/ms-venv && /tmp/ms-venv/bin/pip install cryptography
    /tmp/ms-venv/bin/python scripts/make-attest-v3-vectors.py > tests/vectors/attest-v3.json
"""
import base64
import hashlib
import hmac
import json
import struct
import sys

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

TOKEN = b"vectors-worker-token-0123456789abcdef"
N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def hkdf(info, length):
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(TOKEN)


d = 1 + int.from_bytes(hkdf(b"llorch-identity-key-v1", 48), "big") % (N - 1)
key = ec.derive_private_key(d, ec.SECP256R1())
spki = key.public_key().public_bytes(
    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
)
pem = key.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
).decode()
keyid = hashlib.sha256(spki).hexdigest()
seal_key = hkdf(b"llorch-seal-key-v1", 32)


def lp(b):
    return struct.pack(">I", len(b)) + b


def seal(info):
    """SPEC section 4: the vram-seal-v1 claims and their HMAC."""
    c = b"vram-seal-v1"
    for f in ("worker_id", "shard_id", "model_ref"):
        c += lp(info[f].encode())
    c += struct.pack(">IQ", info["gpu_device"], info["vram_bytes"])
    c += bytes.fromhex(info["digest"]) + bytes.fromhex(info["merkle_root"])
    c += struct.pack(">QQ", info["chunk_size"], info["sealed_at_unix_nanos"])
    for f in ("shard_index", "total_shards"):
        c += struct.pack(">I", 0xFFFFFFFF if info[f] is None else info[f])
    info["signature"] = hmac.new(seal_key, c, hashlib.sha256).hexdigest()
    return info


def compact(obj):
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def pae(payload_type, payload):
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def sign(payload):
    sig = key.sign(
        pae("application/vnd.in-toto+json", payload),
        ec.ECDSA(hashes.SHA256(), deterministic_signing=True),
    )
    decode_dss_signature(sig)  # well-formed DER
    return sig


def bundle(payload, sig):
    return {
        "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
        "verificationMaterial": {"publicKey": {"hint": keyid}, "tlogEntries": []},
        "dsseEnvelope": {
            "payload": base64.b64encode(payload).decode(),
            "payloadType": "application/vnd.in-toto+json",
            "signatures": [{"sig": base64.b64encode(sig).decode(), "keyid": keyid}],
        },
    }


def shard(shard_id, device, size, digest_seed, sealed_at):
    return seal(
        {
            "format": "vram-seal-v1",
            "worker_id": "worker-vectors",
            "shard_id": shard_id,
            "model_ref": "hf:org/model@rev",
            "gpu_device": device,
            "vram_bytes": size,
            "digest": hashlib.sha256(digest_seed).hexdigest(),
            "merkle_root": hashlib.sha256(b"root:" + digest_seed).hexdigest(),
            "chunk_size": 1048576,
            "sealed_at_unix_nanos": sealed_at,
            "shard_index": None,
            "total_shards": None,
            "signature": "",
        }
    )


def time_text(nanos):
    import datetime

    secs, frac = divmod(nanos, 10**9)
    t = datetime.datetime.fromtimestamp(secs, tz=datetime.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S") + ".%09dZ" % frac


def attestation(name, nonce, info, mode, at, backend, device_id, head, provenance):
    predicate = {
        "nonce": nonce.hex(),
        "worker_id": info["worker_id"],
        "shard": info,
        "verified_mode": mode,
        "verified_at": time_text(at),
        "backend": backend,
        "device_id": device_id,
        "audit_head": head,
        "provenance": provenance,
    }
    statement = {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": info["shard_id"], "digest": {"sha256": info["digest"]}}],
        "predicateType": "urn:vram-residency:attestation:v3",
        "predicate": predicate,
    }
    payload = compact(statement)
    sig = sign(payload)
    return {
        "name": name,
        "nonce": nonce.hex(),
        "verified_at_unix_nanos": at,
        "payload": payload.decode(),
        "pae_sha256": hashlib.sha256(pae("application/vnd.in-toto+json", payload)).hexdigest(),
        "signature_der_base64": base64.b64encode(sig).decode(),
        "bundle_json": compact(bundle(payload, sig)).decode(),
    }


cases = [
    attestation(
        "cuda-full-with-provenance",
        bytes(range(32)),
        shard("llama-7b-q4-0", 3, 16792, b"model-00001", 1767225600000000001),
        "full",
        1767225661123456789,
        "cuda",
        "GPU-8f3c2a41-5e6d-4b7a-9c0d-1e2f3a4b5c6d",
        {"seq": 42, "mac": hashlib.sha256(b"head-42").hexdigest()},
        {
            "resource": "model-00001.safetensors",
            "model_subject_sha256": hashlib.sha256(b"subject").hexdigest(),
            "publisher_keyid": hashlib.sha256(b"publisher").hexdigest(),
        },
    ),
    attestation(
        "simulated-sampled-no-provenance",
        b"challenger-nonce-0123456789abcdef",
        shard("shard-b", 0, 4096, b"shard-b", 1767225600500000000),
        "sampled(16)",
        1767225700000000000,
        "simulated",
        "simulated device 0",
        {"seq": 7, "mac": hashlib.sha256(b"head-7").hexdigest()},
        None,
    ),
]

head = {"seq": 42, "mac": hashlib.sha256(b"head-42").hexdigest()}
head_digest = hashlib.sha256(struct.pack(">Q", head["seq"]) + bytes.fromhex(head["mac"])).hexdigest()
head_statement = {
    "_type": "https://in-toto.io/Statement/v1",
    "subject": [{"name": "worker-vectors", "digest": {"sha256": head_digest}}],
    "predicateType": "urn:vram-residency:audit-head:v1",
    "predicate": {"worker_id": "worker-vectors", "audit_head": head, "signed_at": time_text(1767225662000000000)},
}
head_payload = compact(head_statement)
head_sig = sign(head_payload)

# Independent self-check: every signature verifies with the public key alone.
for c in cases:
    key.public_key().verify(
        base64.b64decode(c["signature_der_base64"]),
        pae("application/vnd.in-toto+json", c["payload"].encode()),
        ec.ECDSA(hashes.SHA256()),
    )

json.dump(
    {
        "description": "vram-attest-v3 vectors (.specs/attestation-v3.md), made by "
        "scripts/make-attest-v3-vectors.py with Python cryptography, not by the crate",
        "token": TOKEN.decode(),
        "identity": {"d": "%064x" % d, "public_key_pem": pem, "key_id": keyid},
        "attestations": cases,
        "audit_head": {
            "worker_id": "worker-vectors",
            "audit_head": head,
            "signed_at_unix_nanos": 1767225662000000000,
            "payload": head_payload.decode(),
            "signature_der_base64": base64.b64encode(head_sig).decode(),
            "bundle_json": compact(bundle(head_payload, head_sig)).decode(),
        },
    },
    sys.stdout,
    indent=2,
)
sys.stdout.write("\n")

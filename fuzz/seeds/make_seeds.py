#!/usr/bin/env python3
"""Writes the fuzz seeds in fuzz/seeds/<target>/ from the published test vectors
(tests/vectors/vectors-v1.json), using only the Python standard library.

The fuzz targets check signatures with the vectors' worker token, so these seeds are valid
records: the fuzzer starts from inputs that get past parsing to the MAC checks.
Run from anywhere: python3 fuzz/seeds/make_seeds.py
"""
import hashlib
import hmac
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
VECTORS = os.path.join(HERE, "..", "..", "tests", "vectors", "vectors-v1.json")


def hkdf(token: bytes, info: bytes) -> bytes:
    prk = hmac.new(b"\0" * 32, token, hashlib.sha256).digest()
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()


def write(target: str, name: str, data: bytes) -> None:
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def main() -> None:
    v = json.load(open(VECTORS))
    token = v["worker_token"].encode()
    assert hkdf(token, b"llorch-seal-key-v1").hex() == v["derived_keys"]["seal_key_hex"]
    attest_key = hkdf(token, b"llorch-attest-key-v1")

    for case in v["seal_cases"]:
        info = {k: x for k, x in case["info"].items() if k != "claims_hex"}
        write("shard_info", case["name"] + ".json", json.dumps(info, ensure_ascii=False).encode())

        claims = bytes.fromhex(case["info"]["claims_hex"])
        nonce = hashlib.sha256(case["name"].encode()).digest()[:16]
        mode, at = "full", 1764400000987654321
        backend, device_id = "simulated", "simulated device 0"
        head_seq, head_mac = 3, hashlib.sha256(b"head").digest()

        def lp(b: bytes) -> bytes:
            return struct.pack(">I", len(b)) + b

        # vram-attest-v2 (src/attestation.rs)
        stmt = (
            b"vram-attest-v2"
            + lp(nonce)
            + lp(claims)
            + bytes.fromhex(info["signature"])
            + struct.pack(">Q", at)
            + lp(mode.encode())
            + lp(backend.encode())
            + lp(device_id.encode())
            + struct.pack(">Q", head_seq)
            + head_mac
        )
        att = {
            "format": "vram-attest-v2",
            "nonce": nonce.hex(),
            "shard": info,
            "verified_mode": mode,
            "verified_at_unix_nanos": at,
            "backend": backend,
            "device_id": device_id,
            "audit_head": {"seq": head_seq, "mac": head_mac.hex()},
            "signature": hmac.new(attest_key, stmt, hashlib.sha256).hexdigest(),
        }
        write("attestation", case["name"] + ".json", json.dumps(att, ensure_ascii=False).encode())

    lines = v["audit_log_lines"]
    write("audit_lines", "vectors.jsonl", ("\n".join(lines) + "\n").encode())
    write("audit_lines", "vectors-unterminated.jsonl", "\n".join(lines).encode())
    write("audit_lines", "first-line.jsonl", (lines[0] + "\n").encode())

    def safetensors(tensors, metadata=None):
        header, offset, data = {}, 0, b""
        if metadata is not None:
            header["__metadata__"] = metadata
        for name, dtype, shape, payload in tensors:
            header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(payload)]}
            offset += len(payload)
            data += payload
        h = json.dumps(header, separators=(",", ":")).encode()
        h += b" " * (-len(h) % 8)
        return struct.pack("<Q", len(h)) + h + data

    write("safetensors_header", "two-tensors.safetensors", safetensors([
        ("a.weight", "U8", [4], b"\1\2\3\4"),
        ("b.bias", "F32", [2], b"\0" * 8),
    ]))
    write("safetensors_header", "empty-and-metadata.safetensors", safetensors([
        ("z", "U8", [0], b""),
        ("y", "I16", [1, 2], b"\0\1\2\3"),
    ], metadata={"k": "v"}))
    write("safetensors_header", "hostile-name.safetensors", safetensors([
        ("\x1b]0;t\x07\u202e\u200bname", "U8", [3], b"xyz"),
        ("layers.0.mlp", "BF16", [2, 1], b"\0\0\0\0"),
    ]))


if __name__ == "__main__":
    main()

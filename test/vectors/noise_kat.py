#!/usr/bin/env python3
"""Known-answer vectors for the cladnet handshake, from an implementation that shares no code with
src/crypto/noise.ts: BLAKE2b and HMAC from Python's standard library, X25519 and the AEADs from
PyNaCl (Debian: python3-nacl). It follows the construction as docs/security.md describes it.

    /usr/bin/python3 test/vectors/noise_kat.py > test/vectors/handshake.json

test/unit/noise-kat.test.ts feeds the same inputs to noise.ts and asserts byte equality; when
python3-nacl is present it also runs this script and compares its output with the committed file.
"""
import functools
import hashlib
import hmac
import json
import struct
import sys

from nacl.bindings import (
    crypto_aead_chacha20poly1305_ietf_encrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
    crypto_scalarmult,
    crypto_scalarmult_base,
)

CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2b"
IDENTIFIER = b"cladnet v1 handshake"
LABEL_MAC1 = b"mac1----"
LABEL_COOKIE = b"cookie--"
PSK = bytes(32)  # the psk2 step with no pre-shared key


def HASH(*parts):
    return hashlib.blake2b(b"".join(parts), digest_size=32).digest()


def MAC(key, data):
    return hashlib.blake2b(data, digest_size=16, key=key).digest()


def HMAC(key, data):
    return hmac.new(key, data, functools.partial(hashlib.blake2b, digest_size=32)).digest()


def KDF(key, data, n):
    """HKDF (RFC 5869) with HMAC-BLAKE2b-256 and an empty info: n outputs of 32 bytes."""
    prk = HMAC(key, data)
    out, prev = [], b""
    for i in range(1, n + 1):
        prev = HMAC(prk, prev + bytes([i]))
        out.append(prev)
    return out


def AEAD(key, plain, ad):
    return crypto_aead_chacha20poly1305_ietf_encrypt(plain, ad, bytes(12), key)


def DH(priv, pub):
    return crypto_scalarmult(priv, pub)


def tai64n(ms):
    return struct.pack(">QI", (1 << 62) + ms // 1000, (ms % 1000) * 1_000_000)


def macs(msg, peer_static, cookie):
    """Fills mac1 (keyed by the receiver's static key) and mac2 (keyed by a cookie, or zero)."""
    body = msg[:-32]
    mac1 = MAC(HASH(LABEL_MAC1, peer_static), body)
    mac2 = MAC(cookie, body + mac1) if cookie is not None else bytes(16)
    return body + mac1 + mac2, mac1


def initiation(s_priv, s_pub, e_priv, r_pub, index, ts, cookie):
    ck = HASH(CONSTRUCTION)
    h = HASH(ck, IDENTIFIER)
    h = HASH(h, r_pub)
    e_pub = crypto_scalarmult_base(e_priv)
    (ck,) = KDF(ck, e_pub, 1)
    h = HASH(h, e_pub)
    ck, k = KDF(ck, DH(e_priv, r_pub), 2)
    enc_static = AEAD(k, s_pub, h)
    h = HASH(h, enc_static)
    ck, k = KDF(ck, DH(s_priv, r_pub), 2)
    enc_time = AEAD(k, ts, h)
    h = HASH(h, enc_time)
    msg = bytes([1, 0, 0, 0]) + struct.pack("<I", index) + e_pub + enc_static + enc_time + bytes(32)
    msg, mac1 = macs(msg, r_pub, cookie)
    return msg, mac1, ck, h, e_pub


def response(r_priv, e_priv, i_pub, i_e_pub, ck, h, index, their_index, cookie):
    e_pub = crypto_scalarmult_base(e_priv)
    (ck,) = KDF(ck, e_pub, 1)
    h = HASH(h, e_pub)
    (ck,) = KDF(ck, DH(e_priv, i_e_pub), 1)
    (ck,) = KDF(ck, DH(e_priv, i_pub), 1)
    ck, tau, k = KDF(ck, PSK, 3)
    h = HASH(h, tau)
    enc_empty = AEAD(k, b"", h)
    h = HASH(h, enc_empty)
    msg = bytes([2, 0, 0, 0]) + struct.pack("<II", index, their_index) + e_pub + enc_empty + bytes(32)
    msg, _ = macs(msg, i_pub, cookie)
    initiator_send, responder_send = KDF(ck, b"", 2)
    return msg, initiator_send, responder_send


def cookie_reply(r_pub, msg, cookie, nonce):
    key = HASH(LABEL_COOKIE, r_pub)
    mac1 = msg[-32:-16]
    box = crypto_aead_xchacha20poly1305_ietf_encrypt(cookie, mac1, nonce, key)
    return bytes([3, 0, 0, 0]) + msg[4:8] + nonce + box


def main():
    seed = lambda label: hashlib.sha256(b"cladnet kat " + label).digest()
    inputs = {
        "initiatorStaticPrivate": seed(b"initiator static"),
        "responderStaticPrivate": seed(b"responder static"),
        "initiatorEphemeralPrivate1": seed(b"initiator ephemeral 1"),
        "initiatorEphemeralPrivate2": seed(b"initiator ephemeral 2"),
        "responderEphemeralPrivate": seed(b"responder ephemeral"),
        "cookieSecret": seed(b"cookie secret"),
        "cookieNonce": seed(b"cookie nonce")[:24],
    }
    i_priv = inputs["initiatorStaticPrivate"]
    r_priv = inputs["responderStaticPrivate"]
    i_pub, r_pub = crypto_scalarmult_base(i_priv), crypto_scalarmult_base(r_priv)
    index1, index2, r_index = 0x11223344, 0x55667788, 0x99AABBCC
    ms1, ms2 = 1764670000123, 1764670005456
    source = "198.18.1.2:51820"

    # 1. A first initiation without a cookie; the responder, under load, answers with a cookie.
    init1, mac1_1, _, _, _ = initiation(i_priv, i_pub, inputs["initiatorEphemeralPrivate1"], r_pub, index1, tai64n(ms1), None)
    cookie = MAC(inputs["cookieSecret"], source.encode())
    reply = cookie_reply(r_pub, init1, cookie, inputs["cookieNonce"])
    # 2. The retry carries mac2 under that cookie; the responder answers it.
    init2, _, ck, h, i_e_pub = initiation(i_priv, i_pub, inputs["initiatorEphemeralPrivate2"], r_pub, index2, tai64n(ms2), cookie)
    resp, i_send, r_send = response(r_priv, inputs["responderEphemeralPrivate"], i_pub, i_e_pub, ck, h, r_index, index2, None)

    x = lambda b: b.hex()
    out = {
        "about": "cladnet handshake known-answer vectors, made by test/vectors/noise_kat.py (hashlib + PyNaCl)",
        "construction": CONSTRUCTION.decode(),
        "identifier": IDENTIFIER.decode(),
        "inputs": {
            **{k: x(v) for k, v in inputs.items()},
            "initiatorIndex1": index1,
            "initiatorIndex2": index2,
            "responderIndex": r_index,
            "timestampMs1": ms1,
            "timestampMs2": ms2,
            "cookieSource": source,
        },
        "outputs": {
            "initiatorStaticPublic": x(i_pub),
            "responderStaticPublic": x(r_pub),
            "timestamp1": x(tai64n(ms1)),
            "timestamp2": x(tai64n(ms2)),
            "initiation1": x(init1),
            "initiation1Mac1": x(mac1_1),
            "cookie": x(cookie),
            "cookieReply": x(reply),
            "initiation2": x(init2),
            "response": x(resp),
            "initiatorSendKey": x(i_send),
            "responderSendKey": x(r_send),
        },
    }
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()

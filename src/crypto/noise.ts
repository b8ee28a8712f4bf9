/**
 * The handshake: Noise IKpsk2 with an all-zero PSK (WireGuard's construction; the PSK step is kept
 * so a real PSK can be added later without changing anything else), with BLAKE2b-256 where
 * WireGuard has BLAKE2s-256, over libsodium primitives. docs/security.md ("Handshake") says why
 * and how it differs from the Noise specification; test/vectors/handshake.json pins the bytes
 * (made by test/vectors/noise_kat.py, an independent implementation). One round trip gives
 * both hosts fresh ChaCha20-Poly1305 keys from ephemeral X25519 keys (forward secrecy), with the
 * initiator's static key encrypted and its identity bound to both static keys.
 *
 *   initiation (type 1, 148 B): type | 0 0 0 | sender index | ephemeral | enc(static) | enc(timestamp) | mac1 | mac2
 *   response   (type 2,  92 B): type | 0 0 0 | sender index | receiver index | ephemeral | enc(empty) | mac1 | mac2
 *   cookie     (type 3,  64 B): type | 0 0 0 | receiver index | nonce(24) | enc(cookie)
 *
 * Primitives: HASH = BLAKE2b-256, MAC = keyed BLAKE2b-128, HMAC over BLAKE2b-256 for the HKDF
 * chain, AEAD = ChaCha20-Poly1305 (IETF) with a zero nonce (each key is used once), the cookie
 * under XChaCha20-Poly1305. mac1 (keyed by the responder's public key) lets a host drop datagrams
 * not meant for it with one hash; mac2 (keyed by a cookie bound to the sender's address) is what
 * a responder under load demands before it spends a Diffie-Hellman.
 *
 * Everything here is pure and synchronous; parsers return null (and never throw) on bad input.
 */
import type { Sodium } from './sodium';

export const MSG_INITIATION = 1;
export const MSG_RESPONSE = 2;
export const MSG_COOKIE = 3;
export const INITIATION_LEN = 148;
export const RESPONSE_LEN = 92;
export const COOKIE_LEN = 64;

/** The Noise protocol name; hashed into the first chaining key, so it is part of the construction. */
export const PROTOCOL_NAME = 'Noise_IKpsk2_25519_ChaChaPoly_BLAKE2b';
const CONSTRUCTION = new TextEncoder().encode(PROTOCOL_NAME);
const IDENTIFIER = new TextEncoder().encode('cladnet v1 handshake');
const LABEL_MAC1 = new TextEncoder().encode('mac1----');
const LABEL_COOKIE = new TextEncoder().encode('cookie--');
const EMPTY = new Uint8Array(0);
/** The pre-shared key mixed in by the psk2 step of the response: none yet, so all zero. */
const PSK = new Uint8Array(32);
const NONCE0 = new Uint8Array(12);

function cat(...parts: Uint8Array[]): Uint8Array {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

export interface SessionSecrets {
  /** Our index (the peer writes it into packets to us) and the peer's. */
  localIndex: number;
  remoteIndex: number;
  sendKey: Uint8Array;
  recvKey: Uint8Array;
}

/** What an initiator keeps between sending the initiation and receiving the response. */
export interface PendingInitiation {
  localIndex: number;
  peerStatic: Uint8Array;
  ephemeralPrivate: Uint8Array;
  ck: Uint8Array;
  h: Uint8Array;
  mac1: Uint8Array;
}

export class Noise {
  private readonly ck0: Uint8Array;
  private readonly h0: Uint8Array;
  /** Our own mac1 and cookie keys (derived from our public key). */
  private readonly mac1Key: Uint8Array;
  private readonly cookieKey: Uint8Array;

  constructor(
    private readonly s: Sodium,
    private readonly staticPrivate: Uint8Array,
    readonly staticPublic: Uint8Array,
  ) {
    this.ck0 = this.hash(CONSTRUCTION);
    this.h0 = this.hash(cat(this.ck0, IDENTIFIER));
    this.mac1Key = this.hash(cat(LABEL_MAC1, staticPublic));
    this.cookieKey = this.hash(cat(LABEL_COOKIE, staticPublic));
  }

  // ---- primitives ----------------------------------------------------------------------------

  hash(x: Uint8Array): Uint8Array {
    return this.s.crypto_generichash(32, x, null);
  }

  mac(key: Uint8Array, x: Uint8Array): Uint8Array {
    return this.s.crypto_generichash(16, x, key);
  }

  private hmac(key: Uint8Array, x: Uint8Array): Uint8Array {
    const block = 128;
    const k = new Uint8Array(block);
    k.set(key.length > block ? this.hash(key) : key);
    const ipad = k.map((b) => b ^ 0x36);
    const opad = k.map((b) => b ^ 0x5c);
    return this.hash(cat(opad, this.hash(cat(ipad, x))));
  }

  /** HKDF with HMAC-BLAKE2b-256: n outputs of 32 bytes. */
  private kdf(key: Uint8Array, input: Uint8Array, n: number): Uint8Array[] {
    const prk = this.hmac(key, input);
    const out: Uint8Array[] = [];
    let prev: Uint8Array = EMPTY;
    for (let i = 1; i <= n; i++) {
      prev = this.hmac(prk, cat(prev, new Uint8Array([i])));
      out.push(prev);
    }
    return out;
  }

  private dh(priv: Uint8Array, pub: Uint8Array): Uint8Array | null {
    try {
      const r = this.s.crypto_scalarmult(priv, pub);
      return r.every((b) => b === 0) ? null : r;
    } catch {
      return null; // low-order or malformed point
    }
  }

  private seal(key: Uint8Array, plain: Uint8Array, ad: Uint8Array): Uint8Array {
    return this.s.crypto_aead_chacha20poly1305_ietf_encrypt(plain, ad, null, NONCE0, key);
  }

  private open(key: Uint8Array, box: Uint8Array, ad: Uint8Array): Uint8Array | null {
    try {
      return this.s.crypto_aead_chacha20poly1305_ietf_decrypt(null, box, ad, NONCE0, key);
    } catch {
      return null;
    }
  }

  randomIndex(): number {
    const b = this.s.randombytes_buf(4);
    return (b[0]! | (b[1]! << 8) | (b[2]! << 16) | (b[3]! << 24)) >>> 0;
  }

  /** 32 bytes from libsodium's CSPRNG, for secrets such as the cookie secret. */
  randomSecret(): Uint8Array {
    return this.s.randombytes_buf(32);
  }

  // ---- mac1 / mac2 / cookies -------------------------------------------------------------------

  /** mac1 for a message to `peerStatic`, over msg[0, macOffset). */
  private mac1For(peerStatic: Uint8Array, msg: Uint8Array, macOffset: number): Uint8Array {
    return this.mac(this.hash(cat(LABEL_MAC1, peerStatic)), msg.subarray(0, macOffset));
  }

  /** Checks mac1 of a message addressed to us. */
  checkMac1(msg: Uint8Array): boolean {
    const off = msg.length - 32;
    if (off < 4) return false;
    return this.s.memcmp(this.mac(this.mac1Key, msg.subarray(0, off)), msg.subarray(off, off + 16));
  }

  /** Checks mac2 against the cookie we would give this source right now. */
  checkMac2(msg: Uint8Array, cookie: Uint8Array): boolean {
    const off = msg.length - 16;
    if (off < 4) return false;
    return this.s.memcmp(this.mac(cookie, msg.subarray(0, off)), msg.subarray(off));
  }

  /** The cookie for a source: MAC(rotating secret, ip:port). */
  cookieFor(secret: Uint8Array, source: string): Uint8Array {
    return this.mac(secret, new TextEncoder().encode(source));
  }

  /** A cookie reply to a message we will not process until it carries a valid mac2. */
  cookieReply(msg: Uint8Array, cookie: Uint8Array): Uint8Array {
    const out = new Uint8Array(COOKIE_LEN);
    out[0] = MSG_COOKIE;
    out.set(msg.subarray(4, 8), 4); // their sender index is the receiver of the reply
    const nonce = this.s.randombytes_buf(24);
    out.set(nonce, 8);
    const mac1 = msg.subarray(msg.length - 32, msg.length - 16);
    const box = this.s.crypto_aead_xchacha20poly1305_ietf_encrypt(cookie, mac1, null, nonce, this.cookieKey);
    out.set(box, 32);
    return out;
  }

  /** Opens a cookie reply from `peerStatic` to a message whose mac1 we sent. */
  openCookie(reply: Uint8Array, peerStatic: Uint8Array, sentMac1: Uint8Array): Uint8Array | null {
    if (reply.length !== COOKIE_LEN || reply[0] !== MSG_COOKIE) return null;
    try {
      const key = this.hash(cat(LABEL_COOKIE, peerStatic));
      return this.s.crypto_aead_xchacha20poly1305_ietf_decrypt(null, reply.subarray(32), sentMac1, reply.subarray(8, 32), key);
    } catch {
      return null;
    }
  }

  private finishMacs(msg: Uint8Array, peerStatic: Uint8Array, cookie: Uint8Array | null): Uint8Array {
    const len = msg.length;
    const mac1 = this.mac1For(peerStatic, msg, len - 32);
    msg.set(mac1, len - 32);
    if (cookie) msg.set(this.mac(cookie, msg.subarray(0, len - 16)), len - 16);
    return mac1;
  }

  // ---- initiation ------------------------------------------------------------------------------

  /** Builds an initiation to `peerStatic`. `timestamp` is 12 bytes, strictly increasing per sender. */
  initiate(
    peerStatic: Uint8Array,
    localIndex: number,
    timestamp: Uint8Array,
    cookie: Uint8Array | null,
  ): { msg: Uint8Array; pending: PendingInitiation } | null {
    const eph = this.s.crypto_box_keypair();
    let h = this.hash(cat(this.h0, peerStatic));
    let ck = this.kdf(this.ck0, eph.publicKey, 1)[0]!;
    h = this.hash(cat(h, eph.publicKey));
    const es = this.dh(eph.privateKey, peerStatic);
    if (!es) return null;
    let k: Uint8Array;
    [ck, k] = this.kdf(ck, es, 2) as [Uint8Array, Uint8Array];
    const encStatic = this.seal(k, this.staticPublic, h);
    h = this.hash(cat(h, encStatic));
    const ss = this.dh(this.staticPrivate, peerStatic);
    if (!ss) return null;
    [ck, k] = this.kdf(ck, ss, 2) as [Uint8Array, Uint8Array];
    const encTime = this.seal(k, timestamp, h);
    h = this.hash(cat(h, encTime));
    const msg = new Uint8Array(INITIATION_LEN);
    msg[0] = MSG_INITIATION;
    new DataView(msg.buffer).setUint32(4, localIndex, true);
    msg.set(eph.publicKey, 8);
    msg.set(encStatic, 40);
    msg.set(encTime, 88);
    const mac1 = this.finishMacs(msg, peerStatic, cookie);
    return { msg, pending: { localIndex, peerStatic, ephemeralPrivate: eph.privateKey, ck, h, mac1 } };
  }

  /**
   * Reads an initiation addressed to us (mac1 already checked by the caller). Returns the
   * initiator's static key and timestamp, and the state to answer it, or null.
   */
  consumeInitiation(
    msg: Uint8Array,
  ): { peerStatic: Uint8Array; timestamp: Uint8Array; remoteIndex: number; ephemeral: Uint8Array; ck: Uint8Array; h: Uint8Array } | null {
    if (msg.length !== INITIATION_LEN || msg[0] !== MSG_INITIATION || msg[1] || msg[2] || msg[3]) return null;
    const remoteIndex = new DataView(msg.buffer, msg.byteOffset).getUint32(4, true);
    const ephemeral = msg.slice(8, 40);
    let h = this.hash(cat(this.h0, this.staticPublic));
    let ck = this.kdf(this.ck0, ephemeral, 1)[0]!;
    h = this.hash(cat(h, ephemeral));
    const es = this.dh(this.staticPrivate, ephemeral);
    if (!es) return null;
    let k: Uint8Array;
    [ck, k] = this.kdf(ck, es, 2) as [Uint8Array, Uint8Array];
    const encStatic = msg.subarray(40, 88);
    const peerStatic = this.open(k, encStatic, h);
    if (!peerStatic) return null;
    h = this.hash(cat(h, encStatic));
    const ss = this.dh(this.staticPrivate, peerStatic);
    if (!ss) return null;
    [ck, k] = this.kdf(ck, ss, 2) as [Uint8Array, Uint8Array];
    const encTime = msg.subarray(88, 116);
    const timestamp = this.open(k, encTime, h);
    if (!timestamp) return null;
    h = this.hash(cat(h, encTime));
    return { peerStatic, timestamp, remoteIndex, ephemeral, ck, h };
  }

  // ---- response --------------------------------------------------------------------------------

  /** Answers a consumed initiation; returns the response and the responder's session keys. */
  respond(
    init: { peerStatic: Uint8Array; remoteIndex: number; ephemeral: Uint8Array; ck: Uint8Array; h: Uint8Array },
    localIndex: number,
    cookie: Uint8Array | null,
  ): { msg: Uint8Array; session: SessionSecrets } | null {
    const eph = this.s.crypto_box_keypair();
    let ck = this.kdf(init.ck, eph.publicKey, 1)[0]!;
    let h = this.hash(cat(init.h, eph.publicKey));
    const ee = this.dh(eph.privateKey, init.ephemeral);
    const se = this.dh(eph.privateKey, init.peerStatic);
    if (!ee || !se) return null;
    ck = this.kdf(ck, ee, 1)[0]!;
    ck = this.kdf(ck, se, 1)[0]!;
    const [ck2, tau, k] = this.kdf(ck, PSK, 3) as [Uint8Array, Uint8Array, Uint8Array];
    h = this.hash(cat(h, tau));
    const encEmpty = this.seal(k, EMPTY, h);
    const msg = new Uint8Array(RESPONSE_LEN);
    msg[0] = MSG_RESPONSE;
    const dv = new DataView(msg.buffer);
    dv.setUint32(4, localIndex, true);
    dv.setUint32(8, init.remoteIndex, true);
    msg.set(eph.publicKey, 12);
    msg.set(encEmpty, 44);
    this.finishMacs(msg, init.peerStatic, cookie);
    const [recv, send] = this.kdf(ck2, EMPTY, 2) as [Uint8Array, Uint8Array];
    eph.privateKey.fill(0);
    return { msg, session: { localIndex, remoteIndex: init.remoteIndex, sendKey: send, recvKey: recv } };
  }

  /** Receiver index of a response or cookie reply (who it is for), or null when malformed. */
  static receiverOf(msg: Uint8Array): number | null {
    const dv = new DataView(msg.buffer, msg.byteOffset, msg.byteLength);
    if (msg.length === RESPONSE_LEN && msg[0] === MSG_RESPONSE) return dv.getUint32(8, true);
    if (msg.length === COOKIE_LEN && msg[0] === MSG_COOKIE) return dv.getUint32(4, true);
    return null;
  }

  /** Completes our initiation with the peer's response (mac1 checked by the caller). */
  consumeResponse(msg: Uint8Array, pending: PendingInitiation): SessionSecrets | null {
    if (msg.length !== RESPONSE_LEN || msg[0] !== MSG_RESPONSE || msg[1] || msg[2] || msg[3]) return null;
    const dv = new DataView(msg.buffer, msg.byteOffset);
    const remoteIndex = dv.getUint32(4, true);
    if (dv.getUint32(8, true) !== pending.localIndex) return null;
    const ephemeral = msg.subarray(12, 44);
    let ck = this.kdf(pending.ck, ephemeral, 1)[0]!;
    let h = this.hash(cat(pending.h, ephemeral));
    const ee = this.dh(pending.ephemeralPrivate, ephemeral);
    const se = this.dh(this.staticPrivate, ephemeral);
    if (!ee || !se) return null;
    ck = this.kdf(ck, ee, 1)[0]!;
    ck = this.kdf(ck, se, 1)[0]!;
    const [ck2, tau, k] = this.kdf(ck, PSK, 3) as [Uint8Array, Uint8Array, Uint8Array];
    h = this.hash(cat(h, tau));
    if (this.open(k, msg.subarray(44, 60), h) === null) return null;
    const [send, recv] = this.kdf(ck2, EMPTY, 2) as [Uint8Array, Uint8Array];
    pending.ephemeralPrivate.fill(0);
    return { localIndex: pending.localIndex, remoteIndex, sendKey: send, recvKey: recv };
  }
}

/** TAI64N-like 12-byte timestamp: seconds (8, big-endian, TAI64 offset) and nanoseconds (4). */
export function timestamp(nowMs: number): Uint8Array {
  const out = new Uint8Array(12);
  const dv = new DataView(out.buffer);
  const secs = Math.floor(nowMs / 1000);
  dv.setUint32(0, 0x40000000, false);
  dv.setUint32(4, secs >>> 0, false);
  dv.setUint32(8, Math.floor((nowMs % 1000) * 1e6), false);
  return out;
}

/** Compares two 12-byte timestamps as big-endian numbers. */
export function compareTimestamps(a: Uint8Array, b: Uint8Array): number {
  for (let i = 0; i < 12; i++) if (a[i] !== b[i]) return a[i]! - b[i]!;
  return 0;
}

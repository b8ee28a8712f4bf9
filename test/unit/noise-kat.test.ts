/**
 * Known-answer vectors for the handshake from an independent implementation: test/vectors/
 * noise_kat.py (Python's hashlib and hmac, PyNaCl) wrote test/vectors/handshake.json. noise.ts,
 * fed the same keys, indices, timestamps, cookie secret and nonce, must produce the same bytes and
 * keys, and must accept the messages the Python side made.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadSodium, type Sodium, type SodiumKeyPair } from '../../src/crypto/sodium';
import { compareTimestamps, Noise, PROTOCOL_NAME, timestamp } from '../../src/crypto/noise';

const DIR = join(__dirname, '..', 'vectors');
const FILE = join(DIR, 'handshake.json');
const kat = JSON.parse(readFileSync(FILE, 'utf8')) as {
  construction: string;
  inputs: Record<string, string> & Record<`${string}Index${string}` | `timestampMs${string}`, number>;
  outputs: Record<string, string>;
};
const inp = kat.inputs;
const out = kat.outputs;
const bin = (hex: string) => new Uint8Array(Buffer.from(hex, 'hex'));
const hex = (u: Uint8Array) => Buffer.from(u).toString('hex');

/**
 * libsodium with its two sources of randomness in the handshake pinned: the ephemeral key pairs
 * come from `ephemerals` in order and a 24-byte nonce is `nonce`. Everything else is libsodium.
 */
function pinned(s: Sodium, ephemerals: Uint8Array[], nonce: Uint8Array): Sodium {
  return {
    ...s,
    crypto_box_keypair(): SodiumKeyPair {
      const privateKey = ephemerals.shift();
      if (!privateKey) throw new Error('test asked for more ephemeral keys than the vectors hold');
      return { privateKey: privateKey.slice(), publicKey: s.crypto_scalarmult_base(privateKey) };
    },
    randombytes_buf(n: number): Uint8Array {
      return n === nonce.length ? nonce.slice() : s.randombytes_buf(n);
    },
  };
}

async function parties() {
  const s = await loadSodium();
  const iPriv = bin(inp.initiatorStaticPrivate);
  const rPriv = bin(inp.responderStaticPrivate);
  const iPub = s.crypto_scalarmult_base(iPriv);
  const rPub = s.crypto_scalarmult_base(rPriv);
  const nonce = bin(inp.cookieNonce);
  const initiator = new Noise(pinned(s, [bin(inp.initiatorEphemeralPrivate1), bin(inp.initiatorEphemeralPrivate2)], nonce), iPriv, iPub);
  const responder = new Noise(pinned(s, [bin(inp.responderEphemeralPrivate)], nonce), rPriv, rPub);
  return { s, initiator, responder, iPub, rPub, iPriv, rPriv };
}

describe('handshake known-answer vectors (independent Python implementation)', () => {
  it('the vectors pin the construction noise.ts names', () => {
    expect(kat.construction).toBe(PROTOCOL_NAME);
    expect(PROTOCOL_NAME).toBe('Noise_IKpsk2_25519_ChaChaPoly_BLAKE2b');
  });

  it('noise.ts produces the same static keys, timestamps, messages, cookie and session keys', async () => {
    const { initiator, responder, iPub, rPub } = await parties();
    expect(hex(iPub)).toBe(out.initiatorStaticPublic);
    expect(hex(rPub)).toBe(out.responderStaticPublic);
    expect(hex(timestamp(inp.timestampMs1))).toBe(out.timestamp1);
    expect(hex(timestamp(inp.timestampMs2))).toBe(out.timestamp2);

    const first = initiator.initiate(rPub, inp.initiatorIndex1, timestamp(inp.timestampMs1), null)!;
    expect(hex(first.msg)).toBe(out.initiation1);
    expect(hex(first.pending.mac1)).toBe(out.initiation1Mac1);

    const secret = bin(inp.cookieSecret);
    const cookie = responder.cookieFor(secret, inp.cookieSource);
    expect(hex(cookie)).toBe(out.cookie);
    expect(hex(responder.cookieReply(first.msg, cookie))).toBe(out.cookieReply);

    const second = initiator.initiate(rPub, inp.initiatorIndex2, timestamp(inp.timestampMs2), cookie)!;
    expect(hex(second.msg)).toBe(out.initiation2);

    const consumed = responder.consumeInitiation(second.msg)!;
    const answer = responder.respond(consumed, inp.responderIndex, null)!;
    expect(hex(answer.msg)).toBe(out.response);
    expect(hex(answer.session.recvKey)).toBe(out.initiatorSendKey);
    expect(hex(answer.session.sendKey)).toBe(out.responderSendKey);

    const done = initiator.consumeResponse(answer.msg, second.pending)!;
    expect(hex(done.sendKey)).toBe(out.initiatorSendKey);
    expect(hex(done.recvKey)).toBe(out.responderSendKey);
  });

  it('noise.ts with fresh randomness accepts the messages the Python side made', async () => {
    const { s, iPriv, rPriv, iPub, rPub } = await parties();
    // Only the initiator's ephemeral must match the vectors (its private half lives in `pending`).
    const responder = new Noise(s, rPriv, rPub);
    const cookie = bin(out.cookie);

    const init1 = bin(out.initiation1);
    const init2 = bin(out.initiation2);
    expect(responder.checkMac1(init1)).toBe(true);
    expect(responder.checkMac1(init2)).toBe(true);
    expect(responder.checkMac2(init1, cookie)).toBe(false); // sent before the cookie
    expect(responder.checkMac2(init2, cookie)).toBe(true);
    expect(responder.checkMac2(init2, responder.cookieFor(bin(inp.cookieSecret), '198.18.9.9:1'))).toBe(false);

    const got = responder.consumeInitiation(init2)!;
    expect(got).not.toBeNull();
    expect(hex(got.peerStatic)).toBe(hex(iPub));
    expect(got.remoteIndex).toBe(inp.initiatorIndex2);
    expect(compareTimestamps(got.timestamp, bin(out.timestamp2))).toBe(0);

    const initiator = new Noise(pinned(s, [bin(inp.initiatorEphemeralPrivate1), bin(inp.initiatorEphemeralPrivate2)], new Uint8Array(24)), iPriv, iPub);
    const first = initiator.initiate(rPub, inp.initiatorIndex1, timestamp(inp.timestampMs1), null)!;
    expect(hex(initiator.openCookie(bin(out.cookieReply), rPub, first.pending.mac1)!)).toBe(out.cookie);
    const second = initiator.initiate(rPub, inp.initiatorIndex2, timestamp(inp.timestampMs2), cookie)!;
    const resp = bin(out.response);
    expect(initiator.checkMac1(resp)).toBe(true);
    const keys = initiator.consumeResponse(resp, second.pending)!;
    expect(keys).not.toBeNull();
    expect(keys.remoteIndex).toBe(inp.responderIndex);
    expect(hex(keys.sendKey)).toBe(out.initiatorSendKey);
    expect(hex(keys.recvKey)).toBe(out.responderSendKey);

    const tampered = resp.slice();
    tampered[50]! ^= 1;
    const again = new Noise(pinned(s, [bin(inp.initiatorEphemeralPrivate2)], new Uint8Array(24)), iPriv, iPub);
    const retry = again.initiate(rPub, inp.initiatorIndex2, timestamp(inp.timestampMs2), cookie)!;
    expect(again.consumeResponse(tampered, retry.pending)).toBeNull();
  });

  const python = findPythonWithNacl();
  it.skipIf(!python)('the committed vectors are what test/vectors/noise_kat.py makes today', () => {
    const fresh = execFileSync(python!, [join(DIR, 'noise_kat.py')], { encoding: 'utf8' });
    expect(fresh).toBe(readFileSync(FILE, 'utf8'));
  });
});

/** Debian's python3 first (python3-nacl installs there; a pyenv python3 may shadow it on PATH). */
function findPythonWithNacl(): string | null {
  for (const p of ['/usr/bin/python3', 'python3']) {
    try {
      execFileSync(p, ['-c', 'import nacl.bindings'], { stdio: 'ignore' });
      return p;
    } catch {
      // not this one
    }
  }
  return null;
}

import { describe, expect, it } from 'vitest';
import { loadSodium } from '../../src/crypto/sodium';
import { compareTimestamps, Noise, timestamp, INITIATION_LEN, RESPONSE_LEN } from '../../src/crypto/noise';

async function pair() {
  const s = await loadSodium();
  const a = s.crypto_box_keypair();
  const b = s.crypto_box_keypair();
  return { s, a: new Noise(s, a.privateKey, a.publicKey), b: new Noise(s, b.privateKey, b.publicKey), aPub: a.publicKey, bPub: b.publicKey };
}

const hex = (u: Uint8Array) => Buffer.from(u).toString('hex');

describe('Noise IK handshake', () => {
  it('gives both sides mirrored session keys and indices in one round trip', async () => {
    const { a, b, aPub, bPub } = await pair();
    const init = a.initiate(bPub, 11, timestamp(1_000), null)!;
    expect(init.msg.length).toBe(INITIATION_LEN);
    expect(b.checkMac1(init.msg)).toBe(true);
    const got = b.consumeInitiation(init.msg)!;
    expect(hex(got.peerStatic)).toBe(hex(aPub));
    expect(compareTimestamps(got.timestamp, timestamp(1_000))).toBe(0);
    const resp = b.respond(got, 22, null)!;
    expect(resp.msg.length).toBe(RESPONSE_LEN);
    expect(a.checkMac1(resp.msg)).toBe(true);
    expect(Noise.receiverOf(resp.msg)).toBe(11);
    const sa = a.consumeResponse(resp.msg, init.pending)!;
    expect(sa.localIndex).toBe(11);
    expect(sa.remoteIndex).toBe(22);
    expect(resp.session.remoteIndex).toBe(11);
    expect(hex(sa.sendKey)).toBe(hex(resp.session.recvKey));
    expect(hex(sa.recvKey)).toBe(hex(resp.session.sendKey));
    expect(hex(sa.sendKey)).not.toBe(hex(sa.recvKey));
  });

  it('derives different keys on every handshake (ephemeral keys)', async () => {
    const { a, b, bPub } = await pair();
    const keys = new Set<string>();
    for (let i = 0; i < 3; i++) {
      const init = a.initiate(bPub, i, timestamp(1_000 + i), null)!;
      const resp = b.respond(b.consumeInitiation(init.msg)!, 100 + i, null)!;
      keys.add(hex(a.consumeResponse(resp.msg, init.pending)!.sendKey));
    }
    expect(keys.size).toBe(3);
  });

  it('rejects tampered, misaddressed and mismatched messages', async () => {
    const { s, a, b, bPub } = await pair();
    const c = s.crypto_box_keypair();
    const init = a.initiate(bPub, 1, timestamp(5), null)!;
    const flipped = init.msg.slice();
    flipped[60]! ^= 1;
    expect(b.consumeInitiation(flipped)).toBeNull();
    expect(b.checkMac1(flipped)).toBe(false);
    const toC = a.initiate(c.publicKey, 1, timestamp(6), null)!;
    expect(b.checkMac1(toC.msg)).toBe(false);
    expect(b.consumeInitiation(toC.msg)).toBeNull();
    expect(b.consumeInitiation(init.msg.subarray(0, 100))).toBeNull();
    const resp = b.respond(b.consumeInitiation(init.msg)!, 9, null)!;
    const other = a.initiate(bPub, 2, timestamp(7), null)!;
    expect(a.consumeResponse(resp.msg, other.pending)).toBeNull(); // answers another initiation
    const bad = resp.msg.slice();
    bad[50]! ^= 1;
    expect(a.consumeResponse(bad, init.pending)).toBeNull();
  });

  it('carries cookies: mac2 verifies only with the cookie the responder gave', async () => {
    const { s, a, b, bPub } = await pair();
    const secret = s.randombytes_buf(32);
    const first = a.initiate(bPub, 1, timestamp(10), null)!;
    const cookie = b.cookieFor(secret, '198.18.1.2:51820');
    expect(b.checkMac2(first.msg, cookie)).toBe(false);
    const reply = b.cookieReply(first.msg, cookie);
    expect(Noise.receiverOf(reply)).toBe(1);
    const opened = a.openCookie(reply, bPub, first.pending.mac1)!;
    expect(hex(opened)).toBe(hex(cookie));
    expect(a.openCookie(reply, bPub, new Uint8Array(16))).toBeNull();
    const retry = a.initiate(bPub, 2, timestamp(11), opened)!;
    expect(b.checkMac2(retry.msg, cookie)).toBe(true);
    expect(b.checkMac2(retry.msg, b.cookieFor(secret, '198.18.9.9:1'))).toBe(false);
  });

  it('orders timestamps', () => {
    expect(compareTimestamps(timestamp(2_000), timestamp(1_999))).toBeGreaterThan(0);
    expect(compareTimestamps(timestamp(5), timestamp(5))).toBe(0);
  });
});

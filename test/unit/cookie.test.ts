import { describe, expect, it } from 'vitest';
import { randomFillSync } from 'node:crypto';
import { COOKIE_REPLY_LEN, COOKIE_SECRET_MS, createWorkerCookies, sharedCookieSecrets } from '../../src/crypto/cookie';
import { Noise, timestamp } from '../../src/crypto/noise';
import { loadSodium } from '../../src/crypto/sodium';

/**
 * The worker's cookies (src/crypto/cookie.ts) against the initiator's real code: Noise.openCookie
 * opens the worker's reply, and an initiation built with that cookie passes the worker's mac2
 * check for the same source only, across one secret rotation but not two. Every backend (ffi: Debian's libsodium through koffi, what the worker uses).
 */
describe('worker cookies', () => {
  for (const backend of ['ffi', 'native', 'wasm'] as const) {
    it(`${backend}: a reply the initiator opens, a mac2 bound to its source, secrets that rotate`, async () => {
      const s = await loadSodium();
      const [us, them] = [s.crypto_box_keypair(), s.crypto_box_keypair()];
      const nThem = new Noise(s, them.privateKey, them.publicKey);
      const jar = await createWorkerCookies(us.publicKey, backend);
      expect(jar.backend).toBe(backend === 'wasm' ? 'portable' : backend);
      const SRC = 0xc6120002; // 198.18.0.2
      const PORT = 51820;
      let now = 5_000;
      // before the first tick there is no secret: nothing passes
      const first = nThem.initiate(us.publicKey, 41, timestamp(1_700_000_000_000), null)!;
      expect(jar.checkMac2(first.msg, 0, first.msg.length, SRC, PORT)).toBe(false);
      jar.tick(now);
      expect(jar.checkMac2(first.msg, 0, first.msg.length, SRC, PORT)).toBe(false);
      // the reply, written at an offset inside a larger buffer as in a packet batch
      const at = 17;
      const inBuf = new Uint8Array(first.msg.length + 40).fill(0xaa);
      inBuf.set(first.msg, at);
      const out = new Uint8Array(200).fill(0xbb);
      expect(jar.reply(inBuf, at, first.msg.length, SRC, PORT, out, 50)).toBe(COOKIE_REPLY_LEN);
      const reply = out.slice(50, 50 + COOKIE_REPLY_LEN);
      expect(out[49]).toBe(0xbb);
      expect(out[50 + COOKIE_REPLY_LEN]).toBe(0xbb);
      expect(Noise.receiverOf(reply)).toBe(41); // back to the initiator's sender index
      const cookie = nThem.openCookie(reply, us.publicKey, first.pending.mac1);
      expect(cookie).not.toBeNull();
      // a tampered reply does not open
      const bad = reply.slice();
      bad[40] ^= 1;
      expect(nThem.openCookie(bad, us.publicKey, first.pending.mac1)).toBeNull();
      // the retry carries mac2 from that cookie: it passes, for this source only
      const retry = nThem.initiate(us.publicKey, 42, timestamp(1_700_000_000_001), cookie)!.msg;
      expect(jar.checkMac2(retry, 0, retry.length, SRC, PORT)).toBe(true);
      expect(jar.checkMac2(retry, 0, retry.length, SRC + 1, PORT)).toBe(false);
      expect(jar.checkMac2(retry, 0, retry.length, SRC, PORT + 1)).toBe(false);
      const flipped = retry.slice();
      flipped[60] ^= 1;
      expect(jar.checkMac2(flipped, 0, flipped.length, SRC, PORT)).toBe(false);
      expect(jar.checkMac2(retry, 0, 92, SRC, PORT)).toBe(false);
      // one rotation: the previous secret still counts; two: it does not
      now += COOKIE_SECRET_MS - 1;
      jar.tick(now);
      expect(jar.checkMac2(retry, 0, retry.length, SRC, PORT)).toBe(true);
      now += 1;
      jar.tick(now);
      expect(jar.checkMac2(retry, 0, retry.length, SRC, PORT)).toBe(true);
      now += COOKIE_SECRET_MS;
      jar.tick(now);
      expect(jar.checkMac2(retry, 0, retry.length, SRC, PORT)).toBe(false);
      // two replies to one message differ (a fresh nonce each)
      const r1 = new Uint8Array(64);
      const r2 = new Uint8Array(64);
      jar.reply(first.msg, 0, first.msg.length, SRC, PORT, r1, 0);
      jar.reply(first.msg, 0, first.msg.length, SRC, PORT, r2, 0);
      expect(Buffer.from(r1).equals(Buffer.from(r2))).toBe(false);
    });
  }

  for (const backend of ['ffi', 'native', 'wasm'] as const) {
  it(`${backend}: several workers share the secrets: a retry steered to another worker passes there; worker 0 rotates for all`, async () => {
    const s = await loadSodium();
    const [us, them] = [s.crypto_box_keypair(), s.crypto_box_keypair()];
    const nThem = new Noise(s, them.privateKey, them.publicKey);
    const SRC = 0xc6120002;
    const PORT = 51820;
    let now = 5_000;
    const sab = sharedCookieSecrets((out) => randomFillSync(out));
    const w0 = await createWorkerCookies(us.publicKey, backend, { sab, rotate: true });
    const w1 = await createWorkerCookies(us.publicKey, backend, { sab, rotate: false });
    const alone = await createWorkerCookies(us.publicKey, backend); // a worker with its own secret
    for (const j of [w0, w1, alone]) j.tick(now);
    // The first initiation (sender index 41) lands on worker 1 and gets its cookie; the retry has
    // a new sender index (42) and the steering gives it to worker 0.
    const first = nThem.initiate(us.publicKey, 41, timestamp(1_700_000_000_000), null)!;
    const out = new Uint8Array(COOKIE_REPLY_LEN);
    w1.reply(first.msg, 0, first.msg.length, SRC, PORT, out, 0);
    const cookie = nThem.openCookie(out, us.publicKey, first.pending.mac1)!;
    expect(cookie).not.toBeNull();
    const retry = nThem.initiate(us.publicKey, 42, timestamp(1_700_000_000_001), cookie)!.msg;
    expect(w0.checkMac2(retry, 0, retry.length, SRC, PORT)).toBe(true);
    expect(w1.checkMac2(retry, 0, retry.length, SRC, PORT)).toBe(true);
    expect(alone.checkMac2(retry, 0, retry.length, SRC, PORT)).toBe(false); // what per-worker secrets did
    // Worker 1 never rotates on its own; worker 0's rotation reaches it at its next tick.
    now += COOKIE_SECRET_MS;
    w1.tick(now);
    const again = new Uint8Array(COOKIE_REPLY_LEN);
    w1.reply(first.msg, 0, first.msg.length, SRC, PORT, again, 0);
    const sameCookie = nThem.openCookie(again, us.publicKey, first.pending.mac1)!;
    expect(Buffer.from(sameCookie).equals(Buffer.from(cookie))).toBe(true);
    w0.tick(now);
    w1.tick(now);
    const rotated = new Uint8Array(COOKIE_REPLY_LEN);
    w1.reply(first.msg, 0, first.msg.length, SRC, PORT, rotated, 0);
    const newCookie = nThem.openCookie(rotated, us.publicKey, first.pending.mac1)!;
    expect(Buffer.from(newCookie).equals(Buffer.from(cookie))).toBe(false);
    const retry2 = nThem.initiate(us.publicKey, 43, timestamp(1_700_000_000_002), newCookie)!.msg;
    expect(w0.checkMac2(retry2, 0, retry2.length, SRC, PORT)).toBe(true);
    // the old cookie is still good for one rotation, on both
    expect([w0, w1].map((j) => j.checkMac2(retry, 0, retry.length, SRC, PORT))).toEqual([true, true]);
    now += COOKIE_SECRET_MS;
    w0.tick(now);
    w1.tick(now);
    expect([w0, w1].map((j) => j.checkMac2(retry, 0, retry.length, SRC, PORT))).toEqual([false, false]);
    expect([w0, w1].map((j) => j.checkMac2(retry2, 0, retry2.length, SRC, PORT))).toEqual([true, true]);
  });
  }
});

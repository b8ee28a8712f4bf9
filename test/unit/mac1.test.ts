import { describe, expect, it } from 'vitest';
import { createMac1Check } from '../../src/crypto/mac1';
import { Noise, timestamp } from '../../src/crypto/noise';
import { loadSodium } from '../../src/crypto/sodium';

/**
 * The worker's mac1 check (src/crypto/mac1.ts) must agree with the control thread's
 * (Noise.checkMac1) on every message: real initiations and responses, to us and to others, and
 * every single-bit change of them. Every backend (ffi: Debian's libsodium through koffi, what the worker uses).
 */
describe('mac1 check in the worker', () => {
  for (const backend of ['ffi', 'native', 'wasm'] as const) {
    it(`${backend}: agrees with Noise.checkMac1 on real messages and on every bit flip`, async () => {
      const s = await loadSodium();
      const [us, them, other] = [s.crypto_box_keypair(), s.crypto_box_keypair(), s.crypto_box_keypair()];
      const nUs = new Noise(s, us.privateKey, us.publicKey);
      const nThem = new Noise(s, them.privateKey, them.publicKey);
      const check = await createMac1Check(us.publicKey, backend);
      expect(check.backend).toBe(backend === 'wasm' ? 'portable' : backend);
      const init = nThem.initiate(us.publicKey, 7, timestamp(1_700_000_000_000), null)!;
      const toOther = nThem.initiate(other.publicKey, 8, timestamp(1_700_000_000_001), null)!.msg;
      // A response from us to them carries mac1 for them; one from them to us, for us.
      const consumed = new Noise(s, other.privateKey, other.publicKey);
      const initToThem = consumed.initiate(them.publicKey, 9, timestamp(1_700_000_000_002), null)!.msg;
      const resp = nThem.respond(nThem.consumeInitiation(initToThem)!, 10, null)!.msg; // to `other`
      const respToUs = nThem.respond(nThem.consumeInitiation(nUs.initiate(them.publicKey, 11, timestamp(1_700_000_000_003), null)!.msg)!, 12, null)!.msg;
      const cases: [Uint8Array, boolean][] = [
        [init.msg, true],
        [toOther, false],
        [resp, false],
        [respToUs, true],
      ];
      for (const [msg, ours] of cases) {
        // at an offset inside a larger buffer, as in a packet batch
        const buf = new Uint8Array(msg.length + 100).fill(0xee);
        buf.set(msg, 37);
        expect(check.check(buf, 37, msg.length)).toBe(ours);
        expect(nUs.checkMac1(msg)).toBe(ours);
      }
      let agreed = 0;
      for (const msg of [init.msg, respToUs]) {
        for (let bit = 0; bit < msg.length * 8; bit++) {
          const m = Uint8Array.from(msg);
          m[bit >> 3]! ^= 1 << (bit & 7);
          const mine = check.check(m, 0, m.length);
          expect(mine).toBe(nUs.checkMac1(m));
          // a flip in the bytes mac1 covers, or in mac1 itself, fails; one in mac2 does not matter
          expect(mine).toBe(bit >= (m.length - 16) * 8);
          agreed++;
        }
      }
      expect(agreed).toBe((148 + 92) * 8);
      // Other lengths and ranges are refused, never thrown on.
      expect(check.check(init.msg, 0, 147)).toBe(false);
      expect(check.check(init.msg, 10, 148)).toBe(false);
      expect(check.check(init.msg, -1, 148)).toBe(false);
    });

    it(`${backend}: sign writes the mac1 Noise.checkMac1 wants, and nothing else`, async () => {
      const s = await loadSodium();
      const us = s.crypto_box_keypair();
      const nUs = new Noise(s, us.privateKey, us.publicKey);
      const check = await createMac1Check(us.publicKey, backend);
      for (const len of [148, 92]) {
        const buf = new Uint8Array(len + 50).fill(0xee);
        for (let i = 0; i < len; i++) buf[20 + i] = (i * 13) & 255;
        const before = Uint8Array.from(buf);
        expect(check.check(buf, 20, len)).toBe(false);
        expect(check.sign(buf, 20, len)).toBe(true);
        expect(check.check(buf, 20, len)).toBe(true);
        expect(nUs.checkMac1(buf.subarray(20, 20 + len))).toBe(true);
        // only mac1's 16 bytes (before mac2's 16) changed
        const changed = [...buf.keys()].filter((i) => buf[i] !== before[i]);
        expect(Math.min(...changed)).toBeGreaterThanOrEqual(20 + len - 32);
        expect(Math.max(...changed)).toBeLessThan(20 + len - 16);
      }
      expect(check.sign(new Uint8Array(200), 0, 147)).toBe(false);
      expect(check.sign(new Uint8Array(100), 10, 92)).toBe(false);
    });
  }
});

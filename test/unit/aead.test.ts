import { randomBytes } from 'node:crypto';
import { beforeAll, describe, expect, it } from 'vitest';
import { KEY_LEN, TAG_BYTES, WasmAead } from '../../src/crypto/aead';
import { loadSodium, type Sodium } from '../../src/crypto/sodium';
import { COUNTER_LIMIT } from '../../src/dataplane/wire';

let aead: WasmAead;
let sodium: Sodium;

beforeAll(async () => {
  aead = await WasmAead.create();
  sodium = await loadSodium();
});

const AD_LEN = 16;
const GUARD = 8;

/** 4 zero bytes || 64-bit little-endian counter, as documented in aead.ts and wire.ts. */
function nonceFor(counter: number): Uint8Array {
  const n = Buffer.alloc(12);
  n.writeUInt32LE(counter % 2 ** 32, 4);
  n.writeUInt32LE(Math.floor(counter / 2 ** 32), 8);
  return n;
}

/** A slot like the data plane's: guard | AD | plaintext | room for tag | guard. */
function slot(plain: Uint8Array, ad: Uint8Array): { buf: Buffer; adOff: number; off: number } {
  const buf = Buffer.alloc(GUARD + AD_LEN + plain.length + TAG_BYTES + GUARD, 0xee);
  buf.set(ad, GUARD);
  buf.set(plain, GUARD + AD_LEN);
  return { buf, adOff: GUARD, off: GUARD + AD_LEN };
}

describe('WasmAead', () => {
  it('has 32-byte keys and 16-byte tags', () => {
    expect(KEY_LEN).toBe(32);
    expect(TAG_BYTES).toBe(16);
    expect(aead.name).toBe('libsodium-wasm');
  });

  it.each([0, 1, 64, 1400, 9000, 65536])('seals and opens %d bytes in place, matching libsodium', (len) => {
    const key = randomBytes(32);
    const h = aead.loadKey(key);
    const plain = randomBytes(len);
    const ad = randomBytes(AD_LEN);
    const counter = 1000 + len;
    const { buf, adOff, off } = slot(plain, ad);

    expect(aead.seal(h, counter, buf, adOff, AD_LEN, off, len)).toBe(len + TAG_BYTES);
    const reference = sodium.crypto_aead_chacha20poly1305_ietf_encrypt(plain, ad, null, nonceFor(counter), key);
    expect(reference.length).toBe(len + TAG_BYTES);
    expect(Buffer.from(buf.subarray(off, off + len + TAG_BYTES)).equals(Buffer.from(reference))).toBe(true);
    // The associated data and the guards are untouched.
    expect(buf.subarray(adOff, adOff + AD_LEN).equals(ad)).toBe(true);
    expect(buf.subarray(0, GUARD).every((b) => b === 0xee)).toBe(true);
    expect(buf.subarray(buf.length - GUARD).every((b) => b === 0xee)).toBe(true);

    expect(aead.open(h, counter, buf, adOff, AD_LEN, off, len + TAG_BYTES)).toBe(len);
    expect(buf.subarray(off, off + len).equals(plain)).toBe(true);
    expect(buf.subarray(buf.length - GUARD).every((b) => b === 0xee)).toBe(true);
    aead.dropKey(h);
  });

  it.each([0, 1, 255, 2 ** 32 - 1, 2 ** 32, 2 ** 32 + 7, 0x1234_5678_9abc, COUNTER_LIMIT - 1])(
    'encodes counter %d into the nonce as libsodium expects',
    (counter) => {
      const key = randomBytes(32);
      const h = aead.loadKey(key);
      const plain = randomBytes(100);
      const ad = randomBytes(AD_LEN);
      const { buf, adOff, off } = slot(plain, ad);
      aead.seal(h, counter, buf, adOff, AD_LEN, off, plain.length);
      const reference = sodium.crypto_aead_chacha20poly1305_ietf_encrypt(plain, ad, null, nonceFor(counter), key);
      expect(Buffer.from(buf.subarray(off, off + plain.length + TAG_BYTES)).equals(Buffer.from(reference))).toBe(true);
      aead.dropKey(h);
    },
  );

  it('opens what libsodium sealed', () => {
    const key = randomBytes(32);
    const h = aead.loadKey(key);
    const plain = randomBytes(1400);
    const ad = randomBytes(AD_LEN);
    const sealed = sodium.crypto_aead_chacha20poly1305_ietf_encrypt(plain, ad, null, nonceFor(77), key);
    const { buf, adOff, off } = slot(sealed.subarray(0, 0), ad);
    const big = Buffer.concat([buf.subarray(0, off), Buffer.from(sealed), Buffer.alloc(GUARD, 0xee)]);
    expect(aead.open(h, 77, big, adOff, AD_LEN, off, sealed.length)).toBe(1400);
    expect(big.subarray(off, off + 1400).equals(plain)).toBe(true);
    aead.dropKey(h);
  });

  describe('refuses forgeries and leaves the buffer untouched', () => {
    const len = 200;
    const counter = 42;
    function sealed(): { key: Buffer; h: number; buf: Buffer; adOff: number; off: number } {
      const key = randomBytes(32);
      const h = aead.loadKey(key);
      const { buf, adOff, off } = slot(randomBytes(len), randomBytes(AD_LEN));
      aead.seal(h, counter, buf, adOff, AD_LEN, off, len);
      return { key, h, buf, adOff, off };
    }

    it.each([
      ['ciphertext first byte', (o: number) => o],
      ['ciphertext middle byte', (o: number) => o + 100],
      ['ciphertext last byte', (o: number) => o + len - 1],
      ['tag first byte', (o: number) => o + len],
      ['tag last byte', (o: number) => o + len + TAG_BYTES - 1],
      ['associated data', (o: number) => o - AD_LEN + 5],
    ])('flipped bit in %s', (_what, at) => {
      const s = sealed();
      const pos = at(s.off);
      s.buf[pos]! ^= 0x10;
      const before = Buffer.from(s.buf);
      expect(aead.open(s.h, counter, s.buf, s.adOff, AD_LEN, s.off, len + TAG_BYTES)).toBe(-1);
      expect(s.buf.equals(before)).toBe(true);
      // Restoring the bit makes it open again: the failure was the flip, not the setup.
      s.buf[pos]! ^= 0x10;
      expect(aead.open(s.h, counter, s.buf, s.adOff, AD_LEN, s.off, len + TAG_BYTES)).toBe(len);
      aead.dropKey(s.h);
    });

    it('wrong counter', () => {
      const s = sealed();
      const before = Buffer.from(s.buf);
      for (const c of [counter + 1, counter - 1, counter + 2 ** 32]) {
        expect(aead.open(s.h, c, s.buf, s.adOff, AD_LEN, s.off, len + TAG_BYTES)).toBe(-1);
        expect(s.buf.equals(before)).toBe(true);
      }
      aead.dropKey(s.h);
    });

    it('wrong key', () => {
      const s = sealed();
      const other = Buffer.from(s.key);
      other[31]! ^= 1;
      const h2 = aead.loadKey(other);
      const before = Buffer.from(s.buf);
      expect(aead.open(h2, counter, s.buf, s.adOff, AD_LEN, s.off, len + TAG_BYTES)).toBe(-1);
      expect(s.buf.equals(before)).toBe(true);
      expect(aead.open(s.h, counter, s.buf, s.adOff, AD_LEN, s.off, len + TAG_BYTES)).toBe(len);
      aead.dropKey(h2);
      aead.dropKey(s.h);
    });

    it('truncated: shorter than a tag, or tag cut', () => {
      const s = sealed();
      const before = Buffer.from(s.buf);
      for (const l of [0, 1, TAG_BYTES - 1, TAG_BYTES, len + TAG_BYTES - 1]) {
        expect(aead.open(s.h, counter, s.buf, s.adOff, AD_LEN, s.off, l)).toBe(-1);
      }
      expect(s.buf.equals(before)).toBe(true);
      aead.dropKey(s.h);
    });
  });

  it('a dropped key no longer opens, and a reused handle holds only the new key', () => {
    const key = randomBytes(32);
    const h = aead.loadKey(key);
    const { buf, adOff, off } = slot(randomBytes(64), randomBytes(AD_LEN));
    aead.seal(h, 9, buf, adOff, AD_LEN, off, 64);
    const before = Buffer.from(buf);
    aead.dropKey(h);
    expect(aead.open(h, 9, buf, adOff, AD_LEN, off, 64 + TAG_BYTES)).toBe(-1);
    expect(buf.equals(before)).toBe(true);
    aead.dropKey(h); // dropping twice is harmless

    const other = randomBytes(32);
    const h2 = aead.loadKey(other);
    expect(h2).toBe(h); // the freed handle is reused
    expect(aead.open(h2, 9, buf, adOff, AD_LEN, off, 64 + TAG_BYTES)).toBe(-1);
    const h3 = aead.loadKey(key);
    expect(h3).not.toBe(h2);
    expect(aead.open(h3, 9, buf, adOff, AD_LEN, off, 64 + TAG_BYTES)).toBe(64);
    aead.dropKey(h2);
    aead.dropKey(h3);
  });

  it('keeps several keys apart', () => {
    const keys = [randomBytes(32), randomBytes(32), randomBytes(32)];
    const hs = keys.map((k) => aead.loadKey(k));
    expect(new Set(hs).size).toBe(3);
    keys.forEach((k, i) => {
      const plain = randomBytes(33);
      const ad = randomBytes(AD_LEN);
      const { buf, adOff, off } = slot(plain, ad);
      aead.seal(hs[i]!, i, buf, adOff, AD_LEN, off, 33);
      const ref = sodium.crypto_aead_chacha20poly1305_ietf_encrypt(plain, ad, null, nonceFor(i), k);
      expect(Buffer.from(buf.subarray(off, off + 33 + TAG_BYTES)).equals(Buffer.from(ref))).toBe(true);
    });
    hs.forEach((h) => aead.dropKey(h));
  });

  it('two instances (one per thread) interoperate', async () => {
    const other = await WasmAead.create();
    const key = randomBytes(32);
    const a = aead.loadKey(key);
    const b = other.loadKey(key);
    const plain = randomBytes(500);
    const { buf, adOff, off } = slot(plain, randomBytes(AD_LEN));
    aead.seal(a, 3, buf, adOff, AD_LEN, off, 500);
    expect(other.open(b, 3, buf, adOff, AD_LEN, off, 500 + TAG_BYTES)).toBe(500);
    expect(buf.subarray(off, off + 500).equals(plain)).toBe(true);
    aead.dropKey(a);
    other.dropKey(b);
  });

  it('refuses keys that are not 32 bytes', () => {
    expect(() => aead.loadKey(new Uint8Array(31))).toThrow(RangeError);
    expect(() => aead.loadKey(new Uint8Array(33))).toThrow(RangeError);
  });

  it('refuses to open more than its scratch region holds', () => {
    const h = aead.loadKey(randomBytes(32));
    const buf = Buffer.alloc(16 + 65536 + 1 + TAG_BYTES);
    expect(aead.open(h, 0, buf, 0, 16, 16, 65536 + 1 + TAG_BYTES)).toBe(-1);
    aead.dropKey(h);
  });
});

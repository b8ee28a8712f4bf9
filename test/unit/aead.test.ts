import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { type Aead, createAead, EVP_MIN, FfiAead, KEY_LEN, NativeAead, TAG_BYTES, WasmAead } from '../../src/crypto/aead';
import { loadSodium, type Sodium } from '../../src/crypto/sodium';
import { COUNTER_LIMIT } from '../../src/dataplane/wire';
import { loadLibcrypto } from '../../src/os/ffi/libcrypto';
import { allocNative, type NativeBlock } from '../../src/os/ffi/mem';

let sodium: Sodium;

beforeAll(async () => {
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

/** A slot like the data plane's, in JS memory: guard | AD | plaintext | room for tag | guard. */
function jsSlot(plain: Uint8Array, ad: Uint8Array): { buf: Buffer; adOff: number; off: number } {
  const buf = Buffer.alloc(GUARD + AD_LEN + plain.length + TAG_BYTES + GUARD, 0xee);
  buf.set(ad, GUARD);
  buf.set(plain, GUARD + AD_LEN);
  return { buf, adOff: GUARD, off: GUARD + AD_LEN };
}

/**
 * One backend under test. `native`: its buffers are views of native memory and every call passes
 * their address (how the worker's batches reach FfiAead). `wipes`: a packet that fails to open has
 * its ciphertext zeroed in place (libsodium's own behaviour; the WASM backend works on a copy).
 */
interface Backend {
  readonly label: string;
  readonly name: string;
  readonly make: () => Promise<Aead>;
  readonly native: boolean;
  readonly wipes: boolean;
}

const ffiHere = FfiAead.tryCreate() !== null;
const backends: Backend[] = [
  { label: 'WasmAead', name: 'libsodium-wasm', make: () => WasmAead.create(), native: false, wipes: false },
  { label: 'NativeAead', name: 'sodium-native', make: async () => NativeAead.tryCreate()!, native: false, wipes: true },
  { label: 'FfiAead on Buffers', name: 'libsodium+openssl-ffi', make: async () => FfiAead.tryCreate(true, false)!, native: false, wipes: true },
  // On native memory, packets of EVP_MIN bytes and more go through OpenSSL
  { label: 'FfiAead on native memory', name: 'libsodium+openssl-ffi', make: async () => FfiAead.tryCreate(true, false)!, native: true, wipes: true },
  { label: 'FfiAead without OpenSSL on native memory', name: 'libsodium-ffi', make: async () => FfiAead.tryCreate(false, false)!, native: true, wipes: true },
  // With the batch helper (native/cladnet_fast.c, built by scripts/setup.sh): seal/open per packet as above
  // node's official builds export OpenSSL's ChaCha20 and Poly1305, which the helper then calls directly (unit fast-aead)
  { label: 'FfiAead with the batch helper', name: 'libsodium+openssl-ffi+batch+direct', make: async () => FfiAead.tryCreate()!, native: true, wipes: true },
  { label: 'FfiAead with the batch helper through EVP', name: 'libsodium+openssl-ffi+batch', make: async () => FfiAead.tryCreate(true, true, null, false)!, native: true, wipes: true },
];

describe('loadLibcrypto', () => {
  it('binds the OpenSSL inside the node binary instead of mapping libcrypto.so.3 beside it (2.4 MiB of RSS)', () => {
    expect(loadLibcrypto()).not.toBeNull();
    expect(fs.readFileSync('/proc/self/maps', 'utf8')).not.toMatch(/libcrypto\.so/);
  });
});

describe('createAead', () => {
  it('prefers Debian libsodium through koffi, then sodium-native, and honours a forced backend', async () => {
    expect(ffiHere).toBe(true); // libsodium23 is installed by scripts/setup.sh
    // libcrypto.so.3 comes with Debian; scripts/setup.sh builds native/build/libcladnet_fast.so
    expect((await createAead()).name).toBe('libsodium+openssl-ffi+batch+direct');
    expect((await createAead('ffi')).name).toBe('libsodium+openssl-ffi+batch+direct');
    expect((await createAead('native')).name).toBe('sodium-native');
    // A forced backend that does not load is a config error naming the field (stable code), not a plain Error.
    const noFfi = vi.spyOn(FfiAead, 'tryCreate').mockReturnValue(null);
    const noNative = vi.spyOn(NativeAead, 'tryCreate').mockReturnValue(null);
    try {
      await expect(createAead('ffi')).rejects.toMatchObject({ code: 'ECONFIG', field: 'crypto', message: expect.stringMatching(/libsodium23/) });
      await expect(createAead('native')).rejects.toMatchObject({ code: 'ECONFIG', field: 'crypto' });
      expect((await createAead()).name).toBe('libsodium-wasm'); // auto still falls back
    } finally {
      noFfi.mockRestore();
      noNative.mockRestore();
    }
    expect((await createAead('wasm')).name).toBe('libsodium-wasm');
  });
});

describe.each(backends)('$label', (backend) => {
  let aead: Aead;
  const blocks: NativeBlock[] = [];
  beforeAll(async () => {
    aead = await backend.make();
  });
  afterAll(() => {
    for (const b of blocks.splice(0)) b.free();
  });

  /** A slot like the data plane's: guard | AD | plaintext | room for tag | guard (in native memory for `native`). */
  function slot(plain: Uint8Array, ad: Uint8Array): { buf: Buffer; adOff: number; off: number } {
    const s = jsSlot(plain, ad);
    if (!backend.native) return s;
    const b = allocNative(s.buf.length);
    blocks.push(b);
    s.buf.copy(b.buf);
    return { ...s, buf: b.buf };
  }
  /** The address argument for `buf` (0 for JS memory). */
  const addrOf = (buf: Buffer): number => {
    const b = blocks.find((x) => x.buf === buf);
    return b === undefined ? 0 : Number(b.ptr);
  };

  /** After a failed open: nothing changed, or (in-place backends) only the ciphertext, now zeros. */
  function untouchedOrWiped(buf: Buffer, before: Buffer, off: number, len: number): void {
    if (!backend.wipes || buf.equals(before)) {
      expect(buf.equals(before)).toBe(true);
      return;
    }
    expect(buf.subarray(0, off).equals(before.subarray(0, off))).toBe(true);
    expect(buf.subarray(off + len).equals(before.subarray(off + len))).toBe(true);
    expect(buf.subarray(off, off + len).every((b) => b === 0)).toBe(true);
  }

  it('has 32-byte keys and 16-byte tags', () => {
    expect(KEY_LEN).toBe(32);
    expect(TAG_BYTES).toBe(16);
    expect(aead.name).toBe(backend.name);
  });

  it.each([0, 1, 64, EVP_MIN - 1, EVP_MIN, 1400, 9000, 65536])('seals and opens %d bytes in place, matching libsodium', (len) => {
    const key = randomBytes(32);
    const h = aead.loadKey(key);
    const plain = randomBytes(len);
    const ad = randomBytes(AD_LEN);
    const counter = 1000 + len;
    const { buf, adOff, off } = slot(plain, ad);

    expect(aead.seal(h, counter, buf, adOff, AD_LEN, off, len, addrOf(buf))).toBe(len + TAG_BYTES);
    const reference = sodium.crypto_aead_chacha20poly1305_ietf_encrypt(plain, ad, null, nonceFor(counter), key);
    expect(reference.length).toBe(len + TAG_BYTES);
    expect(Buffer.from(buf.subarray(off, off + len + TAG_BYTES)).equals(Buffer.from(reference))).toBe(true);
    // The associated data and the guards are untouched.
    expect(buf.subarray(adOff, adOff + AD_LEN).equals(ad)).toBe(true);
    expect(buf.subarray(0, GUARD).every((b) => b === 0xee)).toBe(true);
    expect(buf.subarray(buf.length - GUARD).every((b) => b === 0xee)).toBe(true);

    expect(aead.open(h, counter, buf, adOff, AD_LEN, off, len + TAG_BYTES, addrOf(buf))).toBe(len);
    expect(buf.subarray(off, off + len).equals(plain)).toBe(true);
    expect(buf.subarray(buf.length - GUARD).every((b) => b === 0xee)).toBe(true);
    aead.dropKey(h);
  });

  it.each([0, 1, 255, 2 ** 32 - 1, 2 ** 32, 2 ** 32 + 7, 0x1234_5678_9abc, COUNTER_LIMIT - 1])(
    'encodes counter %d into the nonce as libsodium expects',
    (counter) => {
      const key = randomBytes(32);
      const h = aead.loadKey(key);
      for (const size of [100, EVP_MIN + 10]) {
        const plain = randomBytes(size);
        const ad = randomBytes(AD_LEN);
        const { buf, adOff, off } = slot(plain, ad);
        aead.seal(h, counter, buf, adOff, AD_LEN, off, plain.length, addrOf(buf));
        const reference = sodium.crypto_aead_chacha20poly1305_ietf_encrypt(plain, ad, null, nonceFor(counter), key);
        expect(Buffer.from(buf.subarray(off, off + plain.length + TAG_BYTES)).equals(Buffer.from(reference))).toBe(true);
        expect(aead.open(h, counter, buf, adOff, AD_LEN, off, size + TAG_BYTES, addrOf(buf))).toBe(size);
        expect(buf.subarray(off, off + size).equals(plain)).toBe(true);
      }
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
    expect(aead.open(h, 77, big, adOff, AD_LEN, off, sealed.length, addrOf(big))).toBe(1400);
    expect(big.subarray(off, off + 1400).equals(plain)).toBe(true);
    aead.dropKey(h);
  });

  describe('refuses forgeries and leaves the buffer untouched', () => {
    const len = EVP_MIN + 88; // on native memory, OpenSSL's path (the small-packet path: 'a dropped key', 64 B)
    const counter = 42;
    function sealed(): { key: Buffer; h: number; buf: Buffer; adOff: number; off: number } {
      const key = randomBytes(32);
      const h = aead.loadKey(key);
      const { buf, adOff, off } = slot(randomBytes(len), randomBytes(AD_LEN));
      aead.seal(h, counter, buf, adOff, AD_LEN, off, len, addrOf(buf));
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
      expect(aead.open(s.h, counter, s.buf, s.adOff, AD_LEN, s.off, len + TAG_BYTES, addrOf(s.buf))).toBe(-1);
      untouchedOrWiped(s.buf, before, s.off, len);
      // Restoring the bit makes it open again: the failure was the flip, not the setup.
      before.copy(s.buf);
      s.buf[pos]! ^= 0x10;
      expect(aead.open(s.h, counter, s.buf, s.adOff, AD_LEN, s.off, len + TAG_BYTES, addrOf(s.buf))).toBe(len);
      aead.dropKey(s.h);
    });

    it('wrong counter', () => {
      const s = sealed();
      const before = Buffer.from(s.buf);
      for (const c of [counter + 1, counter - 1, counter + 2 ** 32]) {
        expect(aead.open(s.h, c, s.buf, s.adOff, AD_LEN, s.off, len + TAG_BYTES, addrOf(s.buf))).toBe(-1);
        untouchedOrWiped(s.buf, before, s.off, len);
        before.copy(s.buf);
      }
      aead.dropKey(s.h);
    });

    it('wrong key', () => {
      const s = sealed();
      const other = Buffer.from(s.key);
      other[31]! ^= 1;
      const h2 = aead.loadKey(other);
      const before = Buffer.from(s.buf);
      expect(aead.open(h2, counter, s.buf, s.adOff, AD_LEN, s.off, len + TAG_BYTES, addrOf(s.buf))).toBe(-1);
      untouchedOrWiped(s.buf, before, s.off, len);
      before.copy(s.buf);
      expect(aead.open(s.h, counter, s.buf, s.adOff, AD_LEN, s.off, len + TAG_BYTES, addrOf(s.buf))).toBe(len);
      aead.dropKey(h2);
      aead.dropKey(s.h);
    });

    it('truncated: shorter than a tag, or tag cut', () => {
      const s = sealed();
      const before = Buffer.from(s.buf);
      for (const l of [0, 1, TAG_BYTES - 1, TAG_BYTES, len + TAG_BYTES - 1]) {
        expect(aead.open(s.h, counter, s.buf, s.adOff, AD_LEN, s.off, l, addrOf(s.buf))).toBe(-1);
        untouchedOrWiped(s.buf, before, s.off, Math.max(0, l - TAG_BYTES));
        before.copy(s.buf);
      }
      expect(aead.open(s.h, counter, s.buf, s.adOff, AD_LEN, s.off, len + TAG_BYTES, addrOf(s.buf))).toBe(len);
      aead.dropKey(s.h);
    });
  });

  it('a dropped key no longer opens, and a reused handle holds only the new key', () => {
    const key = randomBytes(32);
    const h = aead.loadKey(key);
    const { buf, adOff, off } = slot(randomBytes(64), randomBytes(AD_LEN));
    aead.seal(h, 9, buf, adOff, AD_LEN, off, 64, addrOf(buf));
    const before = Buffer.from(buf);
    aead.dropKey(h);
    expect(aead.open(h, 9, buf, adOff, AD_LEN, off, 64 + TAG_BYTES, addrOf(buf))).toBe(-1);
    untouchedOrWiped(buf, before, off, 64);
    before.copy(buf);
    aead.dropKey(h); // dropping twice is harmless

    const other = randomBytes(32);
    const h2 = aead.loadKey(other);
    expect(h2).toBe(h); // the freed handle is reused
    expect(aead.open(h2, 9, buf, adOff, AD_LEN, off, 64 + TAG_BYTES, addrOf(buf))).toBe(-1);
    before.copy(buf);
    const h3 = aead.loadKey(key);
    expect(h3).not.toBe(h2);
    expect(aead.open(h3, 9, buf, adOff, AD_LEN, off, 64 + TAG_BYTES, addrOf(buf))).toBe(64);
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
      aead.seal(hs[i]!, i, buf, adOff, AD_LEN, off, 33, addrOf(buf));
      const ref = sodium.crypto_aead_chacha20poly1305_ietf_encrypt(plain, ad, null, nonceFor(i), k);
      expect(Buffer.from(buf.subarray(off, off + 33 + TAG_BYTES)).equals(Buffer.from(ref))).toBe(true);
    });
    hs.forEach((h) => aead.dropKey(h));
  });

  it('two instances (one per thread) interoperate', async () => {
    const other = await backend.make();
    const key = randomBytes(32);
    const a = aead.loadKey(key);
    const b = other.loadKey(key);
    const plain = randomBytes(500);
    const { buf, adOff, off } = slot(plain, randomBytes(AD_LEN));
    aead.seal(a, 3, buf, adOff, AD_LEN, off, 500, addrOf(buf));
    expect(other.open(b, 3, buf, adOff, AD_LEN, off, 500 + TAG_BYTES, addrOf(buf))).toBe(500);
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
    expect(aead.open(h, 0, buf, 0, 16, 16, 65536 + 1 + TAG_BYTES, addrOf(buf))).toBe(-1);
    aead.dropKey(h);
  });
});

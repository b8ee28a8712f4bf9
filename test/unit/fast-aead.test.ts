import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { randomBytes, randomInt } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import koffi from 'koffi';
import { AEAD_DIRECT_ENV, type AeadJobs, BATCH_EVP_MIN, createAead, FfiAead, TAG_BYTES } from '../../src/crypto/aead';
import { loadSodium, type Sodium } from '../../src/crypto/sodium';
import { loadFast, resetFastForTests } from '../../src/os/ffi/fast';
import { view } from '../../src/os/ffi/libc';
import { allocNative, type NativeBlock } from '../../src/os/ffi/mem';
import { useBuiltFastLib } from '../helpers/fast-lib';

/**
 * The batch AEAD helper (native/cladnet_fast.c, issue 14): built here by scripts/build-native.sh
 * into a temporary directory, loaded through CLADNET_FAST_LIB, and checked against RFC 8439's
 * AEAD vector and libsodium-wrappers.
 */
let built: ReturnType<typeof useBuiltFastLib>;
let sodium: Sodium;
let aead: FfiAead;
const blocks: NativeBlock[] = [];

beforeAll(async () => {
  built = useBuiltFastLib();
  sodium = await loadSodium();
  aead = FfiAead.tryCreate()!;
});

afterAll(() => {
  for (const b of blocks.splice(0)) b.free();
  built.restore();
});

function native(size: number): NativeBlock {
  const b = allocNative(Math.max(size, 1));
  blocks.push(b);
  return b;
}

function nonceFor(counter: number): Uint8Array {
  const n = Buffer.alloc(12);
  n.writeUInt32LE(counter % 2 ** 32, 4);
  n.writeUInt32LE(Math.floor(counter / 2 ** 32), 8);
  return n;
}

const AD_LEN = 16;

interface Packet {
  key: Buffer;
  handle: number;
  counter: number;
  plain: Buffer;
  ad: Buffer;
  adOff: number;
  off: number;
}

/** Packets laid out back to back in one native block: AD | data | tag room | 8 guard bytes each. */
function layout(sizes: number[], keys: { key: Buffer; handle: number }[]): { mem: NativeBlock; packets: Packet[] } {
  const total = sizes.reduce((a, n) => a + AD_LEN + n + TAG_BYTES + 8, 0);
  const mem = native(total);
  mem.buf.fill(0xee);
  const packets: Packet[] = [];
  let at = 0;
  for (const [i, n] of sizes.entries()) {
    const k = keys[i % keys.length]!;
    const p: Packet = { ...k, counter: randomInt(0, 2 ** 48 - 1) * 4 + randomInt(0, 4), plain: randomBytes(n), ad: randomBytes(AD_LEN), adOff: at, off: at + AD_LEN };
    p.ad.copy(mem.buf, p.adOff);
    p.plain.copy(mem.buf, p.off);
    packets.push(p);
    at += AD_LEN + n + TAG_BYTES + 8;
  }
  return { mem, packets };
}

function queue(jobs: AeadJobs, packets: Packet[], sealed: boolean): void {
  jobs.count = 0;
  for (const p of packets) jobs.add(p.handle, p.counter, p.adOff, AD_LEN, p.off, p.plain.length + (sealed ? TAG_BYTES : 0));
}

/** Whether this process exports OpenSSL's ChaCha20_ctr32 and Poly1305_* (node's official builds do). */
function processExportsPrimitives(): boolean {
  const self = koffi.load(null as unknown as string);
  try {
    for (const f of ['void ChaCha20_ctr32(void *, void *, size_t, void *, void *)', 'size_t Poly1305_ctx_size(void)', 'void Poly1305_Init(void *, void *)', 'void Poly1305_Update(void *, void *, size_t)', 'void Poly1305_Final(void *, void *)']) self.func(f);
    return true;
  } catch {
    return false;
  }
}

/** RFC 8439 section 2.8.2: the sealed sunscreen sentence, ciphertext then tag. */
const RFC8439_CIPHER_AND_TAG =
  'd31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d63dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b6' +
  '7ecd3b3692ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc3ff4def08e4b7a9de576d26586cec64b6116' +
  '1ae10b594f09e26a7e902ecbd0600691';

/** Past any packet: the helper never takes OpenSSL. */
const NEVER = 0xffffffff;

/** Each way the helper can seal and open: every test below runs through each. */
const PATHS: [string, () => FfiAead][] = [
  ['libsodium', () => FfiAead.tryCreate(true, true, NEVER, false)!],
  ['OpenSSL EVP', () => FfiAead.tryCreate(true, true, 0, false)!],
  ['OpenSSL direct', () => FfiAead.tryCreate(true, true, 0, true)!],
  ['the default (direct from 0 B, else EVP from 128 B)', () => aead],
];

describe('libcladnet_fast.so, the batch AEAD helper', () => {
  it('loads, and the ffi AEAD says it batches, directly where node exports OpenSSL\'s primitives', () => {
    expect(aead.batchError).toBeNull();
    const direct = processExportsPrimitives();
    expect(loadFast().lib?.direct).toBe(direct);
    expect(aead.name).toBe(direct ? 'libsodium+openssl-ffi+batch+direct' : 'libsodium+openssl-ffi+batch');
    expect(FfiAead.tryCreate(true, true, null, false)!.name).toBe('libsodium+openssl-ffi+batch');
    // without OpenSSL, nothing of it: not even its primitives
    expect(FfiAead.tryCreate(false)!.name).toBe('libsodium-ffi+batch');
  });

  it('goes through EVP, with the same bytes, in a process that keeps OpenSSL\'s primitives to itself (a node on the system\'s libcrypto.so.3)', () => {
    // native/fast-fallback-check.c links Debian's libcrypto.so.3, which does not export ChaCha20_ctr32 or Poly1305_*
    const exe = path.join(built.dir, 'fast-fallback-check');
    execFileSync(process.env.CC || 'gcc', ['-std=c11', '-Wall', '-Wextra', '-Werror', '-o', exe, path.join(__dirname, '../../native/fast-fallback-check.c'), '-lcrypto', '-ldl'], { stdio: 'pipe' });
    const out = execFileSync(exe, [built.lib], { encoding: 'utf8' }).trim();
    expect(out).toBe(`direct=0 sealed=${RFC8439_CIPHER_AND_TAG}`);
  });

  it('turns the direct path off, and says why, when its self-test disagrees with EVP', () => {
    const lib = loadFast().lib!;
    expect(lib.direct).toBe(true); // this machine's node exports the primitives (first test)
    const real = lib.sealBatch;
    // the FFI boundary as a broken primitive would leave it: every direct seal's first byte flipped
    const spy = vi.spyOn(lib, 'sealBatch').mockImplementation((base, jobs, n, keys, nkeys, evpMin, flags) => {
      const failed = real(base, jobs, n, keys, nkeys, evpMin, flags);
      if (flags === 1) {
        const job = new Uint32Array(view(BigInt(jobs), 40 * n), 0, 10 * n); // struct cladnet_aead_job: off is word 1, len word 2
        for (let j = 0; j < n; j++) if (job[10 * j + 2]! > 0) new Uint8Array(view(BigInt(base + job[10 * j + 1]!), 1))[0]! ^= 1;
      }
      return failed;
    });
    try {
      const broken = FfiAead.tryCreate()!;
      expect(broken.directError).toBe('sealed bytes differ from EVP');
      expect(broken.name).toBe('libsodium+openssl-ffi+batch (direct path off: sealed bytes differ from EVP)');
      // and it seals through EVP, correctly
      const key = randomBytes(32);
      const handle = broken.loadKey(key);
      const { mem, packets } = layout([1400, 60], [{ key, handle }]);
      const jobs = broken.jobs(2);
      queue(jobs, packets, false);
      broken.sealMany(jobs, mem.buf, Number(mem.ptr));
      for (const [j, p] of packets.entries()) {
        const ref = sodium.crypto_aead_chacha20poly1305_ietf_encrypt(p.plain, p.ad, null, nonceFor(p.counter), key);
        expect(jobs.result(j)).toBe(p.plain.length + TAG_BYTES);
        expect(Buffer.from(mem.buf.subarray(p.off, p.off + p.plain.length + TAG_BYTES)).equals(Buffer.from(ref))).toBe(true);
      }
      broken.dropKey(handle);
      jobs.close();
    } finally {
      spy.mockRestore();
    }
    expect(FfiAead.tryCreate()!.directError).toBeNull();
  });

  it('takes CLADNET_AEAD_DIRECT=off for the EVP path (A/B runs)', async () => {
    const before = process.env[AEAD_DIRECT_ENV];
    try {
      process.env[AEAD_DIRECT_ENV] = 'off';
      expect((await createAead('ffi')).name).toBe('libsodium+openssl-ffi+batch');
      delete process.env[AEAD_DIRECT_ENV];
      expect((await createAead('ffi')).name).toBe(aead.name);
    } finally {
      if (before === undefined) delete process.env[AEAD_DIRECT_ENV];
      else process.env[AEAD_DIRECT_ENV] = before;
    }
  });

  it.each(PATHS)('seals and opens the RFC 8439 section 2.8.2 AEAD test vector (through %s)', (_side, make) => {
    const aead = make();
    const key = Buffer.from('808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f', 'hex');
    const ad = Buffer.from('50515253c0c1c2c3c4c5c6c7', 'hex');
    const plain = Buffer.from(
      "Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.",
    );
    const cipher = Buffer.from(RFC8439_CIPHER_AND_TAG, 'hex');
    // nonce 07000000 40414243 44454647 as three little-endian words
    const words = [7, 0x43424140, 0x47464544] as const;
    const h = aead.loadKey(key);
    const mem = native(ad.length + plain.length + TAG_BYTES);
    const addr = Number(mem.ptr);
    const jobs = aead.jobs(1);
    expect(jobs.addr).not.toBe(0);
    // 114 bytes: under BATCH_EVP_MIN, so libsodium inside the helper unless the path takes every size
    expect(plain.length).toBeLessThan(BATCH_EVP_MIN);
    ad.copy(mem.buf, 0);
    plain.copy(mem.buf, ad.length);
    jobs.count = 0;
    jobs.add(h, 0, 0, ad.length, ad.length, plain.length);
    jobs.setNonceWords(0, ...words);
    aead.sealMany(jobs, mem.buf, addr);
    expect(jobs.result(0)).toBe(plain.length + TAG_BYTES);
    expect(mem.buf.subarray(ad.length, ad.length + plain.length + TAG_BYTES).toString('hex')).toBe(cipher.toString('hex'));
    jobs.count = 0;
    jobs.add(h, 0, 0, ad.length, ad.length, cipher.length);
    jobs.setNonceWords(0, ...words);
    aead.openMany(jobs, mem.buf, addr);
    expect(jobs.result(0)).toBe(plain.length);
    expect(mem.buf.subarray(ad.length, ad.length + plain.length).equals(plain)).toBe(true);
    aead.dropKey(h);
    jobs.close();
  });

  it.each(PATHS)('matches libsodium-wrappers over a batch of random sizes 0..65535 under several keys, both ways (through %s)', (_side, make) => {
    const aead = make();
    const keys = [0, 1, 2].map(() => {
      const key = randomBytes(32);
      return { key, handle: aead.loadKey(key) };
    });
    // and the edges of the direct path's one-call keystream (fused up to 960 B past each 1,024, to 1,984 B)
    const sizes = [0, 1, 15, 16, BATCH_EVP_MIN - 1, BATCH_EVP_MIN, 448, 449, 512, 513, 959, 960, 961, 1023, 1024, 1025, 1400, 1983, 1984, 1985, 2048, 65535];
    for (let i = 0; i < 40; i++) sizes.push(randomInt(0, 65536));
    const { mem, packets } = layout(sizes, keys);
    const addr = Number(mem.ptr);
    const jobs = aead.jobs(sizes.length);
    queue(jobs, packets, false);
    aead.sealMany(jobs, mem.buf, addr);
    for (const [j, p] of packets.entries()) {
      expect(jobs.result(j)).toBe(p.plain.length + TAG_BYTES);
      const ref = sodium.crypto_aead_chacha20poly1305_ietf_encrypt(p.plain, p.ad, null, nonceFor(p.counter), p.key);
      expect(Buffer.from(mem.buf.subarray(p.off, p.off + p.plain.length + TAG_BYTES)).equals(Buffer.from(ref))).toBe(true);
      expect(mem.buf.subarray(p.adOff, p.adOff + AD_LEN).equals(p.ad)).toBe(true);
      const guard = p.off + p.plain.length + TAG_BYTES;
      expect(mem.buf.subarray(guard, guard + 8).every((b) => b === 0xee)).toBe(true);
    }
    queue(jobs, packets, true);
    aead.openMany(jobs, mem.buf, addr);
    for (const [j, p] of packets.entries()) {
      expect(jobs.result(j)).toBe(p.plain.length);
      expect(mem.buf.subarray(p.off, p.off + p.plain.length).equals(p.plain)).toBe(true);
    }
    for (const k of keys) aead.dropKey(k.handle);
    jobs.close();
  });

  it.each(PATHS)('rejects a tampered tag, ciphertext, counter or header per packet, wipes it, and opens the rest of the batch (through %s)', (_side, make) => {
    const aead = make();
    const key = randomBytes(32);
    const handle = aead.loadKey(key);
    // small (libsodium) and large (OpenSSL) packets, each tampered four ways, with a good one between
    const sizes = [100, 1400, 100, 1400, 100, 1400, 100, 1400, 100, 1400];
    const { mem, packets } = layout(sizes, [{ key, handle }]);
    const addr = Number(mem.ptr);
    const jobs = aead.jobs(sizes.length);
    queue(jobs, packets, false);
    aead.sealMany(jobs, mem.buf, addr);
    const bad = new Map<number, string>([
      [0, 'tag'],
      [1, 'tag'],
      [2, 'ciphertext'],
      [3, 'ciphertext'],
      [4, 'nonce'],
      [5, 'nonce'],
      [6, 'header'],
      [7, 'header'],
    ]);
    for (const [j, how] of bad) {
      const p = packets[j]!;
      if (how === 'tag') mem.buf[p.off + p.plain.length + 3]! ^= 0x01;
      if (how === 'ciphertext') mem.buf[p.off + 7]! ^= 0x80;
      if (how === 'nonce') p.counter += 1;
      if (how === 'header') mem.buf[p.adOff + 5]! ^= 0x04;
    }
    queue(jobs, packets, true);
    aead.openMany(jobs, mem.buf, addr);
    for (const [j, p] of packets.entries()) {
      if (bad.has(j)) {
        expect(jobs.result(j), `${bad.get(j)} of packet ${j}`).toBe(-1);
        // never the plaintext: wiped (libsodium and OpenSSL's EVP zero what they decrypted; the direct path decrypts nothing of it and zeroes it too)
        expect(mem.buf.subarray(p.off, p.off + p.plain.length).every((b) => b === 0)).toBe(true);
      } else {
        expect(jobs.result(j)).toBe(p.plain.length);
        expect(mem.buf.subarray(p.off, p.off + p.plain.length).equals(p.plain)).toBe(true);
      }
    }
    aead.dropKey(handle);
    jobs.close();
  });

  it.each(PATHS)('fails a job whose key was dropped or never loaded, and one shorter than a tag, without failing the others (through %s)', (_side, make) => {
    const aead = make();
    const key = randomBytes(32);
    const live = aead.loadKey(key);
    const gone = aead.loadKey(randomBytes(32));
    aead.dropKey(gone);
    const { mem, packets } = layout([64, 64, 64, 64], [{ key, handle: live }]);
    const addr = Number(mem.ptr);
    const jobs = aead.jobs(4);
    queue(jobs, packets, false);
    aead.sealMany(jobs, mem.buf, addr);
    queue(jobs, packets, true);
    jobs.count = 0;
    const p = packets;
    jobs.add(live, p[0]!.counter, p[0]!.adOff, AD_LEN, p[0]!.off, 64 + TAG_BYTES);
    jobs.add(gone, p[1]!.counter, p[1]!.adOff, AD_LEN, p[1]!.off, 64 + TAG_BYTES);
    jobs.add(1_000_000, p[2]!.counter, p[2]!.adOff, AD_LEN, p[2]!.off, 64 + TAG_BYTES);
    jobs.add(live, p[3]!.counter, p[3]!.adOff, AD_LEN, p[3]!.off, TAG_BYTES - 1);
    aead.openMany(jobs, mem.buf, addr);
    expect([0, 1, 2, 3].map((j) => jobs.result(j))).toEqual([64, -1, -1, -1]);
    expect(mem.buf.subarray(p[0]!.off, p[0]!.off + 64).equals(p[0]!.plain)).toBe(true);
    // a seal under a dropped key fails too, and leaves no plaintext behind
    jobs.count = 0;
    mem.buf.fill(0x55, p[1]!.off, p[1]!.off + 64);
    jobs.add(gone, 9, p[1]!.adOff, AD_LEN, p[1]!.off, 64);
    aead.sealMany(jobs, mem.buf, addr);
    expect(jobs.result(0)).toBe(-1);
    expect(mem.buf.subarray(p[1]!.off, p[1]!.off + 64 + TAG_BYTES).every((b) => b === 0)).toBe(true);
    aead.dropKey(live);
    jobs.close();
  });

  it('falls back to one call per packet, and says why, when the library is missing', () => {
    process.env.CLADNET_FAST_LIB = path.join(built.dir, 'missing.so');
    resetFastForTests();
    try {
      const plain = FfiAead.tryCreate()!;
      expect(plain.batchError).toMatch(/missing\.so is not built/);
      expect(plain.name).toMatch(/^libsodium\+openssl-ffi \(no batch helper: .*missing\.so is not built/);
      const key = randomBytes(32);
      const handle = plain.loadKey(key);
      const { mem, packets } = layout([0, 100, 1400], [{ key, handle }]);
      const jobs = plain.jobs(3);
      expect(jobs.addr).toBe(0);
      queue(jobs, packets, false);
      plain.sealMany(jobs, mem.buf, Number(mem.ptr));
      for (const [j, p] of packets.entries()) {
        expect(jobs.result(j)).toBe(p.plain.length + TAG_BYTES);
        const ref = sodium.crypto_aead_chacha20poly1305_ietf_encrypt(p.plain, p.ad, null, nonceFor(p.counter), key);
        expect(Buffer.from(mem.buf.subarray(p.off, p.off + p.plain.length + TAG_BYTES)).equals(Buffer.from(ref))).toBe(true);
      }
      plain.dropKey(handle);
    } finally {
      process.env.CLADNET_FAST_LIB = built.lib;
      resetFastForTests();
    }
  });
});

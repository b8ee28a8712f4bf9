/**
 * ChaCha20-Poly1305 (IETF, 96-bit nonce) over packet slots, in place, with no allocation per call.
 * Nonce = 4 zero bytes || 64-bit little-endian counter, as in WireGuard. Keys are loaded once into
 * numbered slots and erased on `dropKey`.
 */
import { randomBytes, randomFillSync, randomInt } from 'node:crypto';
import { FAST_DIRECT, J_AD_LEN, J_AD_OFF, J_CTR_HI, J_CTR_LO, J_KEY, J_LEN, J_NONCE0, J_OFF, J_RESULT, JOB_BYTES, JOB_WORDS, KEY_BYTES, loadFast, type FastLib } from '../os/ffi/fast';
import { EVP_CTRL_AEAD_GET_TAG, EVP_CTRL_AEAD_SET_TAG, loadLibcrypto, type Libcrypto } from '../os/ffi/libcrypto';
import { loadLibsodium, type Libsodium } from '../os/ffi/libsodium';
import { allocNative, type NativeBlock } from '../os/ffi/mem';
import { CladnetError } from '../errors';
import { loadRawSodium, type RawSodium } from './sodium';

export const KEY_LEN = 32;
export const TAG_BYTES = 16;

export interface Aead {
  readonly name: string;
  /** Loads a 32-byte key and returns a handle. The caller may wipe its copy afterwards. */
  loadKey(key: Uint8Array): number;
  /** Erases the key behind a handle. */
  dropKey(handle: number): void;
  /**
   * Encrypts buf[off, off+len) in place and writes the tag at buf[off+len, off+len+16).
   * Associated data is buf[adOff, adOff+adLen). Returns len + 16, or -1 when the backend failed to
   * seal (never seen; the plaintext is wiped and the caller drops the packet, which must not be
   * sealed again under the same counter). `addr`: the native address of
   * buf[0] when buf lies in native memory (the worker's batches), else 0 or absent; a backend that
   * can use it makes no Buffer views per call.
   */
  seal(handle: number, counter: number, buf: Buffer, adOff: number, adLen: number, off: number, len: number, addr?: number): number;
  /**
   * Authenticates and decrypts buf[off, off+len) (ciphertext plus tag) in place. Returns the
   * plaintext length, or -1 when the packet does not authenticate (nothing else is reported; the
   * in-place backends wipe the ciphertext of a packet that fails). `addr` as for seal.
   */
  open(handle: number, counter: number, buf: Buffer, adOff: number, adLen: number, off: number, len: number, addr?: number): number;
  /** A job list for sealMany/openMany of up to `capacity` packets (in native memory when the backend takes it so). */
  jobs(capacity: number): AeadJobs;
  /**
   * Seals every queued job over `buf` (`addr` as for seal), each as seal() would: its result is
   * what seal() returns. One native call for the whole batch where the backend can (FfiAead with
   * libcladnet_fast.so), else one seal() per job.
   */
  sealMany(jobs: AeadJobs, buf: Buffer, addr?: number): void;
  /** Opens every queued job as open() would; each job's result is what open() returns. */
  openMany(jobs: AeadJobs, buf: Buffer, addr?: number): void;
}

/**
 * Packets queued for one Aead.sealMany/openMany: per job its key handle, counter, the offsets of
 * its data and associated data in the batch buffer, its length, and after the call its result.
 * The layout is native/cladnet_fast.c's struct cladnet_aead_job (src/os/ffi/fast.ts), so a native
 * list goes to the batch helper as it is. Preallocated; reused batch after batch.
 */
export class AeadJobs {
  count = 0;
  private readonly u: Uint32Array;
  private readonly r: Int32Array;

  constructor(
    readonly capacity: number,
    /** JOB_BYTES per job; native memory when `addr` is not 0. */
    mem: Buffer,
    /** mem's native address (0: ordinary memory). */
    readonly addr = 0,
    private readonly block: NativeBlock | null = null,
  ) {
    if (mem.length < capacity * JOB_BYTES || mem.byteOffset % 4 !== 0) throw new RangeError('job memory too small or misaligned');
    this.u = new Uint32Array(mem.buffer, mem.byteOffset, capacity * JOB_WORDS);
    this.r = new Int32Array(mem.buffer, mem.byteOffset, capacity * JOB_WORDS);
  }

  /** Queues a job (seal: len is the plaintext; open: ciphertext plus tag) and returns its index. */
  add(handle: number, counter: number, adOff: number, adLen: number, off: number, len: number): number {
    const j = this.count++;
    const u = this.u;
    const b = j * JOB_WORDS;
    u[b + J_KEY] = handle;
    u[b + J_OFF] = off;
    u[b + J_LEN] = len;
    u[b + J_AD_OFF] = adOff;
    u[b + J_AD_LEN] = adLen;
    u[b + J_CTR_LO] = counter >>> 0; // counter < 2^53
    u[b + J_CTR_HI] = (counter / 0x1_0000_0000) >>> 0;
    this.r[b + J_RESULT] = -1;
    u[b + J_NONCE0] = 0;
    return j;
  }

  /**
   * Known-answer tests only: job j's whole nonce as three little-endian 32-bit words (on the wire
   * the first is 0 and the counter is below 2^53). Only the batch helper honours the first word.
   */
  setNonceWords(j: number, w0: number, w1: number, w2: number): void {
    const b = j * JOB_WORDS;
    this.u[b + J_NONCE0] = w0;
    this.u[b + J_CTR_LO] = w1;
    this.u[b + J_CTR_HI] = w2;
  }

  handle(j: number): number {
    return this.u[j * JOB_WORDS + J_KEY]!;
  }

  counter(j: number): number {
    const b = j * JOB_WORDS;
    return this.u[b + J_CTR_HI]! * 0x1_0000_0000 + this.u[b + J_CTR_LO]!;
  }

  adOff(j: number): number {
    return this.u[j * JOB_WORDS + J_AD_OFF]!;
  }

  adLen(j: number): number {
    return this.u[j * JOB_WORDS + J_AD_LEN]!;
  }

  off(j: number): number {
    return this.u[j * JOB_WORDS + J_OFF]!;
  }

  len(j: number): number {
    return this.u[j * JOB_WORDS + J_LEN]!;
  }

  /** After sealMany/openMany: what seal/open returned for job j (-1: failed, dropped). */
  result(j: number): number {
    return this.r[j * JOB_WORDS + J_RESULT]!;
  }

  setResult(j: number, v: number): void {
    this.r[j * JOB_WORDS + J_RESULT] = v;
  }

  /** Frees native job memory (if any). */
  close(): void {
    this.block?.free();
  }
}

/** A backend that seals and opens one packet per call: its sealMany/openMany loop over the jobs. */
abstract class OnePacketAead implements Aead {
  abstract readonly name: string;
  abstract loadKey(key: Uint8Array): number;
  abstract dropKey(handle: number): void;
  abstract seal(handle: number, counter: number, buf: Buffer, adOff: number, adLen: number, off: number, len: number, addr?: number): number;
  abstract open(handle: number, counter: number, buf: Buffer, adOff: number, adLen: number, off: number, len: number, addr?: number): number;

  jobs(capacity: number): AeadJobs {
    return new AeadJobs(capacity, Buffer.alloc(capacity * JOB_BYTES));
  }

  sealMany(jobs: AeadJobs, buf: Buffer, addr = 0): void {
    this.eachJob(true, jobs, buf, addr);
  }

  openMany(jobs: AeadJobs, buf: Buffer, addr = 0): void {
    this.eachJob(false, jobs, buf, addr);
  }

  protected eachJob(seal: boolean, jobs: AeadJobs, buf: Buffer, addr: number): void {
    for (let j = 0; j < jobs.count; j++) {
      const h = jobs.handle(j);
      const c = jobs.counter(j);
      const r = seal
        ? this.seal(h, c, buf, jobs.adOff(j), jobs.adLen(j), jobs.off(j), jobs.len(j), addr)
        : this.open(h, c, buf, jobs.adOff(j), jobs.adLen(j), jobs.off(j), jobs.len(j), addr);
      jobs.setResult(j, r);
    }
  }
}

/** Largest packet a scratch region must hold (jumbo-frame MTUs included). */
const SCRATCH_MAX = 65536;
/** Packets (plaintext bytes) from this size on are sealed and opened by OpenSSL in FfiAead. */
export const EVP_MIN = 640;
/**
 * The same threshold inside libcladnet_fast.so, where OpenSSL's call overhead is small: measured
 * there (C, batches of 64, this machine) OpenSSL seals 128 B in 415 ns against libsodium's 490,
 * 256 B in 430 against 770; 64 B in 400 against 345 (docs/performance.md).
 */
export const BATCH_EVP_MIN = 128;
/**
 * And when the helper calls OpenSSL's ChaCha20 and Poly1305 directly: every size, since at none is
 * libsodium faster there (seal + open, batches of 64, this machine: 32 B 633 ns against 632, 96 B
 * 672 against 866, 1420 B 1,488 against EVP's 1,870; docs/performance.md).
 */
export const BATCH_DIRECT_MIN = 0;
const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;
const AD_MAX = 64;

/**
 * libsodium compiled to WebAssembly. WASM cannot address our buffers, so each call copies the
 * packet into a fixed scratch region of the WASM heap and back (two memcpy of ~1.4 kB: small
 * beside the cipher). One instance per thread.
 */
export class WasmAead extends OnePacketAead {
  readonly name = 'libsodium-wasm';
  private readonly keys: number[] = [];
  private readonly free: number[] = [];
  private readonly nonce: number;
  private readonly ad: number;
  private readonly data: number;

  private constructor(private readonly raw: RawSodium) {
    super();
    this.nonce = raw._malloc(16);
    this.ad = raw._malloc(AD_MAX);
    this.data = raw._malloc(SCRATCH_MAX + TAG_BYTES);
    this.heap().fill(0, this.nonce, this.nonce + 16);
  }

  static async create(): Promise<WasmAead> {
    return new WasmAead(await loadRawSodium());
  }

  private heapBuf: Buffer = Buffer.alloc(0);

  /** A Buffer over the WASM heap; rebuilt only when a memory growth replaced the heap. */
  private heap(): Buffer {
    const u8 = this.raw.HEAPU8;
    if (this.heapBuf.buffer !== u8.buffer) this.heapBuf = Buffer.from(u8.buffer, u8.byteOffset, u8.byteLength);
    return this.heapBuf;
  }

  loadKey(key: Uint8Array): number {
    if (key.length !== KEY_LEN) throw new RangeError('AEAD key must be 32 bytes');
    const ptr = this.raw._malloc(KEY_LEN);
    this.heap().set(key, ptr);
    const handle = this.free.pop() ?? this.keys.length;
    this.keys[handle] = ptr;
    return handle;
  }

  dropKey(handle: number): void {
    const ptr = this.keys[handle];
    if (ptr === undefined || ptr === 0) return;
    this.heap().fill(0, ptr, ptr + KEY_LEN);
    this.raw._free(ptr);
    this.keys[handle] = 0;
    this.free.push(handle);
  }

  private setNonce(heap: Buffer, counter: number): void {
    const n = this.nonce;
    let lo = counter % 0x1_0000_0000;
    let hi = Math.floor(counter / 0x1_0000_0000);
    for (let i = 4; i < 8; i++) {
      heap[n + i] = lo & 255;
      lo >>>= 8;
    }
    for (let i = 8; i < 12; i++) {
      heap[n + i] = hi & 255;
      hi >>>= 8;
    }
  }

  seal(handle: number, counter: number, buf: Buffer, adOff: number, adLen: number, off: number, len: number): number {
    const key = this.keys[handle]!;
    const heap = this.heap();
    this.setNonce(heap, counter);
    buf.copy(heap, this.ad, adOff, adOff + adLen);
    buf.copy(heap, this.data, off, off + len);
    this.raw._crypto_aead_chacha20poly1305_ietf_encrypt_detached(
      this.data, this.data + len, 0, this.data, len, 0, this.ad, adLen, 0, 0, this.nonce, key,
    );
    heap.copy(buf, off, this.data, this.data + len + TAG_BYTES);
    return len + TAG_BYTES;
  }

  open(handle: number, counter: number, buf: Buffer, adOff: number, adLen: number, off: number, len: number): number {
    if (len < TAG_BYTES || len - TAG_BYTES > SCRATCH_MAX) return -1;
    const key = this.keys[handle];
    if (key === undefined || key === 0) return -1;
    const plen = len - TAG_BYTES;
    const heap = this.heap();
    this.setNonce(heap, counter);
    buf.copy(heap, this.ad, adOff, adOff + adLen);
    buf.copy(heap, this.data, off, off + len);
    const rc = this.raw._crypto_aead_chacha20poly1305_ietf_decrypt_detached(
      this.data, 0, this.data, plen, 0, this.data + plen, this.ad, adLen, 0, this.nonce, key,
    );
    if (rc !== 0) return -1;
    heap.copy(buf, off, this.data, this.data + plen);
    return plen;
  }
}

/**
 * libsodium as a native addon (sodium-native, prebuilt for common platforms): about twice the
 * WASM build's speed on this machine, and it works on our buffers directly, so nothing is
 * copied. Each call makes small Buffer views of the packet (young-generation garbage, cheap);
 * everything else is preallocated. The tag is verified before decryption; libsodium wipes the
 * plaintext range of a packet that fails (it is dropped anyway).
 */
export class NativeAead extends OnePacketAead {
  readonly name = 'sodium-native';
  /** Guarded key buffers by handle; a dropped one is zeroed and waits on `free` for reuse. */
  private readonly keys: Buffer[] = [];
  private readonly live: number[] = [];
  private readonly free: number[] = [];
  private readonly nonce = Buffer.alloc(12);

  private constructor(private readonly s: typeof import('sodium-native')) {
    super();
  }

  /** Null when the addon cannot load on this platform. */
  static tryCreate(): NativeAead | null {
    try {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      return new NativeAead(require('sodium-native') as typeof import('sodium-native'));
    } catch {
      return null;
    }
  }

  loadKey(key: Uint8Array): number {
    if (key.length !== KEY_LEN) throw new RangeError('AEAD key must be 32 bytes');
    // A dropped key's guarded buffer is reused: secure memory (mlocked pages, freed only by GC)
    // stays bounded by the most keys ever live at once, however often sessions turn over.
    const handle = this.free.pop() ?? this.keys.length;
    const k = this.keys[handle] ?? this.s.sodium_malloc(KEY_LEN);
    k.set(key);
    this.keys[handle] = k;
    this.live[handle] = 1;
    return handle;
  }

  dropKey(handle: number): void {
    const k = this.keys[handle];
    if (!k || this.live[handle] !== 1) return;
    this.s.sodium_memzero(k);
    this.live[handle] = 0;
    this.free.push(handle);
  }

  private setNonce(counter: number): void {
    this.nonce.writeUInt32LE(counter % 0x1_0000_0000, 4);
    this.nonce.writeUInt32LE(Math.floor(counter / 0x1_0000_0000), 8);
  }

  seal(handle: number, counter: number, buf: Buffer, adOff: number, adLen: number, off: number, len: number): number {
    const key = this.keys[handle]!;
    this.setNonce(counter);
    const m = buf.subarray(off, off + len);
    this.s.crypto_aead_chacha20poly1305_ietf_encrypt_detached(
      m, buf.subarray(off + len, off + len + TAG_BYTES), m, buf.subarray(adOff, adOff + adLen), null, this.nonce, key,
    );
    return len + TAG_BYTES;
  }

  open(handle: number, counter: number, buf: Buffer, adOff: number, adLen: number, off: number, len: number): number {
    if (len < TAG_BYTES) return -1;
    const key = this.keys[handle];
    if (!key) return -1;
    const plen = len - TAG_BYTES;
    this.setNonce(counter);
    const c = buf.subarray(off, off + plen);
    try {
      this.s.crypto_aead_chacha20poly1305_ietf_decrypt_detached(
        c, null, c, buf.subarray(off + plen, off + len), buf.subarray(adOff, adOff + adLen), this.nonce, key,
      );
    } catch {
      return -1; // sodium-native throws on a failed verification
    }
    return plen;
  }
}

/**
 * Debian's libsodium (libsodium23) called through koffi on the packet where it lies: the worker's
 * batches are native memory, so a seal or open is one FFI call on addresses, with no Buffer views,
 * no argument checks in JS and no exception for a forgery. Per 1400 B packet about 0.4 us less
 * than sodium-native (docs/performance.md, 2026-12-02). Keys and the nonce live in libsodium's
 * guarded memory (sodium_malloc: locked, fenced pages), erased with sodium_memzero on drop.
 *
 * Packets of EVP_MIN bytes or more in native memory go through Debian's OpenSSL instead
 * (libcrypto.so.3, when it loads): its ChaCha20-Poly1305 (AVX-512 here) costs about 20 % less per
 * 1400 B packet even at five FFI calls a packet, while small packets are cheaper in libsodium's
 * one call. Same cipher, same bytes (the tests compare both with libsodium-wrappers). Each key
 * has an OpenSSL context per direction, freed (and so cleansed by OpenSSL) on drop.
 */
export class FfiAead extends OnePacketAead {
  readonly name: string;
  /** Key addresses by handle; a dropped one is zeroed and waits on `free` for reuse. */
  private readonly keys: number[] = [];
  private readonly live: number[] = [];
  private readonly free: number[] = [];
  /** OpenSSL contexts by handle (0: none), keyed for sealing and for opening. */
  private readonly sealCtx: number[] = [];
  private readonly openCtx: number[] = [];
  /** 12-byte nonce, then a 4-byte int OpenSSL writes output lengths to. */
  private readonly noncePtr: number;
  private readonly outlPtr: number;
  private readonly nonce: Buffer;
  /** The nonce as 32-bit words, on a little-endian host (one store per word); else null. */
  private readonly nonce32: Uint32Array | null;
  private readonly evpCipher: number;
  /**
   * libcladnet_fast.so's key table (KEY_BYTES per handle: key address, seal and open contexts;
   * all 0 for a dropped key), grown by doubling; null without the helper.
   */
  private keyTable: NativeBlock | null = null;
  private keyTableCap = 0;
  /** Why the batch helper is not used (null: it is, or it was not asked for). */
  readonly batchError: string | null;
  /** The batch helper's flags: FAST_DIRECT when it calls OpenSSL's ChaCha20 and Poly1305 itself, else 0 (EVP). */
  private readonly fastFlags: number;
  /** Why the direct path is off although it was asked for and is bound here (null: it is on, or was never possible). */
  readonly directError: string | null = null;
  /** Packets from this size on go through OpenSSL in the batch helper, below it through libsodium. */
  private readonly evpMin: number;

  private constructor(
    private readonly lib: Libsodium,
    private readonly evp: Libcrypto | null,
    private readonly fast: FastLib | null = null,
    fastError: string | null = null,
    /** Packets from this size on go through OpenSSL in the batch helper (null: its default for the path taken). */
    evpMin: number | null = null,
    direct = true,
  ) {
    super();
    this.noncePtr = lib.sodiumMalloc(16);
    if (this.noncePtr === 0) throw new Error('sodium_malloc failed');
    this.outlPtr = this.noncePtr + 12;
    this.nonce = lib.view(this.noncePtr, 12);
    this.nonce.fill(0);
    this.nonce32 = LITTLE_ENDIAN && this.noncePtr % 4 === 0 ? new Uint32Array(this.nonce.buffer, this.nonce.byteOffset, 3) : null;
    this.evpCipher = evp === null ? 0 : evp.chacha20Poly1305();
    if (this.evpCipher === 0) this.evp = null;
    const base = this.evp === null ? 'libsodium-ffi' : 'libsodium+openssl-ffi';
    this.batchError = fastError;
    let flags = direct && fast?.direct === true && this.evp !== null ? FAST_DIRECT : 0;
    if (flags === FAST_DIRECT) {
      this.directError = this.directDisagrees();
      if (this.directError !== null) flags = 0;
    }
    this.fastFlags = flags;
    this.evpMin = evpMin ?? (this.fastFlags === FAST_DIRECT ? BATCH_DIRECT_MIN : BATCH_EVP_MIN);
    const batch = this.fastFlags === FAST_DIRECT ? '+batch+direct' : this.directError !== null ? `+batch (direct path off: ${this.directError})` : '+batch';
    this.name = fast !== null ? `${base}${batch}` : fastError !== null ? `${base} (no batch helper: ${fastError})` : base;
  }

  /**
   * The direct path's self-test, once per instance: it calls OpenSSL's internal primitives, whose
   * ABI no header promises, so before any packet it must agree byte for byte with OpenSSL's EVP
   * (the same library's public face) on one packet of each way the helper cuts the work: empty,
   * small and MTU-sized (one ChaCha20 call), just past a 16-block pass and past the scratch (two
   * calls); and it must open what it sealed, and refuse it with one bit flipped. Returns what went
   * wrong, or null. Costs a few microseconds.
   */
  private directDisagrees(): string | null {
    const sizes = [0, 100, 1420, 1000, 3000];
    const stride = 16 + 3000 + TAG_BYTES;
    const mem = allocNative(2 * stride * sizes.length);
    const jobs = this.jobs(sizes.length);
    const handle = this.loadKey(randomBytes(KEY_LEN));
    try {
      const addr = Number(mem.ptr);
      const half = stride * sizes.length;
      randomFillSync(mem.buf, 0, half);
      mem.buf.copy(mem.buf, half, 0, half);
      const counter = randomInt(0, 2 ** 47);
      const run = (seal: boolean, base: number, flags: number) => {
        jobs.count = 0;
        for (const [i, n] of sizes.entries()) jobs.add(handle, counter + i, base + i * stride, 16, base + i * stride + 16, n + (seal ? 0 : TAG_BYTES));
        const call = seal ? this.fast!.sealBatch : this.fast!.openBatch;
        call(addr, jobs.addr, jobs.count, Number(this.keyTable!.ptr), this.keyTableCap, 0, flags);
        return sizes.every((n, i) => jobs.result(i) === n + (seal ? TAG_BYTES : 0));
      };
      const plain = Buffer.from(mem.buf.subarray(0, half));
      if (!run(true, 0, 0) || !run(true, half, FAST_DIRECT)) return 'a seal failed';
      if (!mem.buf.subarray(0, half).equals(mem.buf.subarray(half, 2 * half))) return 'sealed bytes differ from EVP';
      mem.buf[half + 16 + 7]! ^= 1; // the first packet is empty: this flips a bit of its tag
      mem.buf[half + stride + 16 + 50]! ^= 0x80; // and one of the second's ciphertext
      run(false, half, FAST_DIRECT);
      if (jobs.result(0) !== -1 || jobs.result(1) !== -1) return 'a forgery opened';
      for (let i = 2; i < sizes.length; i++) {
        const o = half + i * stride + 16;
        if (jobs.result(i) !== sizes[i] || !mem.buf.subarray(o, o + sizes[i]!).equals(plain.subarray(o - half, o - half + sizes[i]!))) return 'an open failed';
      }
      return null;
    } finally {
      this.dropKey(handle);
      jobs.close();
      mem.buf.fill(0);
      mem.free();
    }
  }

  /**
   * Null when libsodium.so.23 is not installed. `openssl`: use libcrypto.so.3 for large packets
   * when it loads (default yes). `batch`: seal and open whole batches through libcladnet_fast.so
   * when it loads. `direct`: let the helper call OpenSSL's ChaCha20 and Poly1305 itself where the
   * process exports them, instead of EVP (default yes; same bytes, less work per packet:
   * docs/performance.md). `batchEvpMin`: the helper's size threshold for OpenSSL (null:
   * BATCH_DIRECT_MIN or BATCH_EVP_MIN, whichever path is taken).
   */
  static tryCreate(openssl = true, batch = true, batchEvpMin: number | null = null, direct = true): FfiAead | null {
    const lib = loadLibsodium();
    if (lib === null) return null;
    const fast = batch ? loadFast() : null;
    return new FfiAead(lib, openssl ? loadLibcrypto() : null, fast?.lib ?? null, fast?.error ?? null, batchEvpMin, direct);
  }

  loadKey(key: Uint8Array): number {
    if (key.length !== KEY_LEN) throw new RangeError('AEAD key must be 32 bytes');
    // As NativeAead: guarded key memory is reused, bounded by the most keys ever live at once.
    const handle = this.free.pop() ?? this.keys.length;
    let ptr = this.keys[handle] ?? 0;
    if (ptr === 0) {
      ptr = this.lib.sodiumMalloc(KEY_LEN);
      if (ptr === 0) throw new Error('sodium_malloc failed');
      this.keys[handle] = ptr;
    }
    this.lib.view(ptr, KEY_LEN).set(key);
    this.sealCtx[handle] = this.evpContext(ptr, 1);
    this.openCtx[handle] = this.evpContext(ptr, 0);
    this.live[handle] = 1;
    this.setKeyEntry(handle, ptr, this.sealCtx[handle]!, this.openCtx[handle]!);
    return handle;
  }

  /** Writes the batch helper's key table entry for `handle` (zeros: no key), growing the table. */
  private setKeyEntry(handle: number, key: number, sealCtx: number, openCtx: number): void {
    if (this.fast === null) return;
    if (handle >= this.keyTableCap) {
      let cap = Math.max(16, this.keyTableCap);
      while (cap <= handle) cap *= 2;
      const next = allocNative(cap * KEY_BYTES);
      if (this.keyTable !== null) {
        this.keyTable.buf.copy(next.buf, 0, 0, this.keyTableCap * KEY_BYTES);
        this.keyTable.free();
      }
      this.keyTable = next;
      this.keyTableCap = cap;
    }
    const b = this.keyTable!.buf;
    const o = handle * KEY_BYTES;
    b.writeBigUInt64LE(BigInt(key), o);
    b.writeBigUInt64LE(BigInt(sealCtx), o + 8);
    b.writeBigUInt64LE(BigInt(openCtx), o + 16);
  }

  /** An OpenSSL context keyed with the key at `keyPtr`, for sealing (1) or opening (0); 0 without OpenSSL. */
  private evpContext(keyPtr: number, enc: number): number {
    const evp = this.evp;
    if (evp === null) return 0;
    const ctx = evp.ctxNew();
    if (ctx === 0) return 0;
    if (evp.init(ctx, this.evpCipher, 0, keyPtr, 0, enc) !== 1) {
      evp.ctxFree(ctx);
      return 0;
    }
    return ctx;
  }

  dropKey(handle: number): void {
    const ptr = this.keys[handle];
    if (ptr === undefined || this.live[handle] !== 1) return;
    this.setKeyEntry(handle, 0, 0, 0); // before the contexts are freed
    this.lib.memzero(ptr, KEY_LEN);
    for (const ctxs of [this.sealCtx, this.openCtx]) {
      const ctx = ctxs[handle] ?? 0;
      if (ctx !== 0) this.evp!.ctxFree(ctx); // OpenSSL cleanses the key schedule
      ctxs[handle] = 0;
    }
    this.live[handle] = 0;
    this.free.push(handle);
  }

  private setNonce(counter: number): void {
    // counter < 2^53: `>>> 0` takes it modulo 2^32
    const lo = counter >>> 0;
    const hi = (counter / 0x1_0000_0000) >>> 0;
    const w = this.nonce32;
    if (w !== null) {
      w[1] = lo;
      w[2] = hi;
    } else {
      this.nonce.writeUInt32LE(lo, 4);
      this.nonce.writeUInt32LE(hi, 8);
    }
  }

  seal(handle: number, counter: number, buf: Buffer, adOff: number, adLen: number, off: number, len: number, addr = 0): number {
    const key = this.keys[handle]!;
    this.setNonce(counter);
    const ctx = len >= EVP_MIN && addr !== 0 ? this.sealCtx[handle]! : 0;
    if (ctx !== 0) {
      const evp = this.evp!;
      const m = addr + off;
      const o = this.outlPtr;
      const ok =
        evp.init(ctx, 0, 0, 0, this.noncePtr, -1) === 1 &&
        evp.update(ctx, 0, o, addr + adOff, adLen) === 1 &&
        evp.update(ctx, m, o, m, len) === 1 &&
        evp.final(ctx, m + len, o) === 1 &&
        evp.ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, TAG_BYTES, m + len) === 1;
      // Never seen; but a half-done seal must not leave plaintext behind, nor be redone under the
      // same nonce: wipe it, and the caller drops the packet (its counter stays used).
      if (!ok) {
        this.lib.memzero(m, len + TAG_BYTES);
        return -1;
      }
    } else if (addr !== 0) {
      const m = addr + off;
      this.lib.encrypt(m, m + len, 0, m, len, addr + adOff, adLen, 0, this.noncePtr, key);
    } else {
      const m = buf.subarray(off, off + len);
      const ad = buf.subarray(adOff, adOff + adLen);
      this.lib.encryptBuf(m, buf.subarray(off + len, off + len + TAG_BYTES), null, m, len, ad, adLen, null, this.noncePtr, key);
    }
    return len + TAG_BYTES;
  }

  open(handle: number, counter: number, buf: Buffer, adOff: number, adLen: number, off: number, len: number, addr = 0): number {
    if (len < TAG_BYTES || this.live[handle] !== 1) return -1;
    const key = this.keys[handle]!;
    const plen = len - TAG_BYTES;
    this.setNonce(counter);
    let rc: number;
    const ctx = plen >= EVP_MIN && addr !== 0 ? this.openCtx[handle]! : 0;
    if (ctx !== 0) {
      // OpenSSL decrypts before it checks the tag: a packet that fails is wiped, as libsodium does.
      const evp = this.evp!;
      const c = addr + off;
      const o = this.outlPtr;
      evp.init(ctx, 0, 0, 0, this.noncePtr, -1);
      evp.update(ctx, 0, o, addr + adOff, adLen);
      evp.update(ctx, c, o, c, plen);
      evp.ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, TAG_BYTES, c + plen);
      rc = evp.final(ctx, c + plen, o) === 1 ? 0 : -1;
      if (rc !== 0) this.lib.memzero(c, plen);
    } else if (addr !== 0) {
      const c = addr + off;
      rc = this.lib.decrypt(c, 0, c, plen, c + plen, addr + adOff, adLen, this.noncePtr, key);
    } else {
      const c = buf.subarray(off, off + plen);
      rc = this.lib.decryptBuf(c, null, c, plen, buf.subarray(off + plen, off + len), buf.subarray(adOff, adOff + adLen), adLen, this.noncePtr, key);
    }
    return rc === 0 ? plen : -1;
  }

  override jobs(capacity: number): AeadJobs {
    if (this.fast === null) return super.jobs(capacity);
    const block = allocNative(capacity * JOB_BYTES);
    return new AeadJobs(capacity, block.buf, Number(block.ptr), block);
  }

  override sealMany(jobs: AeadJobs, buf: Buffer, addr = 0): void {
    if (this.fast !== null && addr !== 0 && jobs.addr !== 0 && this.keyTable !== null) {
      if (jobs.count > 0) this.fast.sealBatch(addr, jobs.addr, jobs.count, Number(this.keyTable.ptr), this.keyTableCap, this.evpMin, this.fastFlags);
    } else this.eachJob(true, jobs, buf, addr);
  }

  override openMany(jobs: AeadJobs, buf: Buffer, addr = 0): void {
    if (this.fast !== null && addr !== 0 && jobs.addr !== 0 && this.keyTable !== null) {
      if (jobs.count > 0) this.fast.openBatch(addr, jobs.addr, jobs.count, Number(this.keyTable.ptr), this.keyTableCap, this.evpMin, this.fastFlags);
    } else this.eachJob(false, jobs, buf, addr);
  }
}

export type AeadBackend = 'auto' | 'ffi' | 'native' | 'wasm';

/** CLADNET_AEAD_DIRECT=off (A/B runs): the batch helper goes through OpenSSL's EVP instead of its primitives. */
export const AEAD_DIRECT_ENV = 'CLADNET_AEAD_DIRECT';

/**
 * The backend: 'ffi' (Debian's libsodium through koffi), 'native' (sodium-native) or 'wasm'
 * (libsodium-wrappers). 'auto' takes the first that loads in that order, fastest first (see
 * docs/performance.md); the choice can be forced by config, and a forced one that does not load
 * is an error.
 */
export async function createAead(backend: AeadBackend = 'auto'): Promise<Aead> {
  if (backend === 'auto' || backend === 'ffi') {
    const ffi = FfiAead.tryCreate(true, true, null, process.env[AEAD_DIRECT_ENV] !== 'off');
    if (ffi) return ffi;
    if (backend === 'ffi') {
      throw new CladnetError('ECONFIG', 'crypto: backend "ffi" requested but libsodium.so.23 does not load here (apt-get install libsodium23)', { field: 'crypto' });
    }
  }
  if (backend === 'auto' || backend === 'native') {
    const native = NativeAead.tryCreate();
    if (native) return native;
    if (backend === 'native') throw new CladnetError('ECONFIG', 'crypto: backend "native" requested but sodium-native does not load here', { field: 'crypto' });
  }
  return WasmAead.create();
}

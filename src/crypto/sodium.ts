/**
 * libsodium for the control plane (handshakes, host keys, certificates), the worker's mac1 check
 * and cookies, and the WASM AEAD. The only place that loads libsodium-wrappers or sodium-native.
 *
 * `loadSodium()` gives the few functions cladnet uses, from Debian's libsodium through koffi (the
 * library the data plane's ffi AEAD uses, so the agent loads one libsodium) when it is installed,
 * else from sodium-native (a native addon with its own libsodium), else from libsodium-wrappers
 * (WebAssembly). All are libsodium, so the results are the same bytes. The fallbacks are loaded
 * only when needed: sodium-native costs about 6 MiB of RSS in a bare node, libsodium-wrappers
 * about 7.5 (docs/performance.md, Memory).
 */
import { loadLibsodium, type Libsodium } from '../os/ffi/libsodium';
import type * as SodiumWrappersModule from 'libsodium-wrappers';

type SodiumWrappers = typeof SodiumWrappersModule;

export interface SodiumKeyPair {
  publicKey: Uint8Array;
  privateKey: Uint8Array;
}

/** The libsodium functions cladnet uses, with libsodium-wrappers' signatures (it throws on failure). */
export interface Sodium {
  crypto_generichash(hashLength: number, message: Uint8Array, key: Uint8Array | null): Uint8Array;
  crypto_scalarmult(privateKey: Uint8Array, publicKey: Uint8Array): Uint8Array;
  crypto_scalarmult_base(privateKey: Uint8Array): Uint8Array;
  crypto_box_keypair(): SodiumKeyPair;
  crypto_aead_chacha20poly1305_ietf_encrypt(message: Uint8Array, ad: Uint8Array | null, nsec: null, nonce: Uint8Array, key: Uint8Array): Uint8Array;
  crypto_aead_chacha20poly1305_ietf_decrypt(nsec: null, ciphertext: Uint8Array, ad: Uint8Array | null, nonce: Uint8Array, key: Uint8Array): Uint8Array;
  crypto_aead_xchacha20poly1305_ietf_encrypt(message: Uint8Array, ad: Uint8Array | null, nsec: null, nonce: Uint8Array, key: Uint8Array): Uint8Array;
  crypto_aead_xchacha20poly1305_ietf_decrypt(nsec: null, ciphertext: Uint8Array, ad: Uint8Array | null, nonce: Uint8Array, key: Uint8Array): Uint8Array;
  randombytes_buf(length: number): Uint8Array;
  /** Constant-time equality of two arrays of the same length. */
  memcmp(a: Uint8Array, b: Uint8Array): boolean;
  crypto_sign_keypair(): SodiumKeyPair;
  crypto_sign_seed_keypair(seed: Uint8Array): SodiumKeyPair;
  crypto_sign_detached(message: Uint8Array, secretKey: Uint8Array): Uint8Array;
  crypto_sign_verify_detached(signature: Uint8Array, message: Uint8Array, publicKey: Uint8Array): boolean;
}

/** The raw Emscripten module under the wrappers: functions over pointers into `HEAPU8`. */
export interface RawSodium {
  HEAPU8: Uint8Array;
  _malloc(n: number): number;
  _free(p: number): void;
  _crypto_aead_chacha20poly1305_ietf_encrypt_detached(
    c: number, mac: number, maclenP: number, m: number, mlenLo: number, mlenHi: number,
    ad: number, adlenLo: number, adlenHi: number, nsec: number, npub: number, k: number,
  ): number;
  _crypto_aead_chacha20poly1305_ietf_decrypt_detached(
    m: number, nsec: number, c: number, clenLo: number, clenHi: number, mac: number,
    ad: number, adlenLo: number, adlenHi: number, npub: number, k: number,
  ): number;
}

/** sodium-native's functions used below (the package ships no types of its own). */
interface Native {
  crypto_generichash(out: Uint8Array, input: Uint8Array, key?: Uint8Array | null): void;
  crypto_scalarmult(q: Uint8Array, n: Uint8Array, p: Uint8Array): void;
  crypto_scalarmult_base(q: Uint8Array, n: Uint8Array): void;
  crypto_box_keypair(pk: Uint8Array, sk: Uint8Array): void;
  crypto_aead_chacha20poly1305_ietf_encrypt(c: Uint8Array, m: Uint8Array, ad: Uint8Array | null, nsec: null, npub: Uint8Array, k: Uint8Array): number;
  crypto_aead_chacha20poly1305_ietf_decrypt(m: Uint8Array, nsec: null, c: Uint8Array, ad: Uint8Array | null, npub: Uint8Array, k: Uint8Array): number;
  crypto_aead_xchacha20poly1305_ietf_encrypt(c: Uint8Array, m: Uint8Array, ad: Uint8Array | null, nsec: null, npub: Uint8Array, k: Uint8Array): number;
  crypto_aead_xchacha20poly1305_ietf_decrypt(m: Uint8Array, nsec: null, c: Uint8Array, ad: Uint8Array | null, npub: Uint8Array, k: Uint8Array): number;
  randombytes_buf(buf: Uint8Array): void;
  sodium_memcmp(a: Uint8Array, b: Uint8Array): boolean;
  crypto_sign_keypair(pk: Uint8Array, sk: Uint8Array): void;
  crypto_sign_seed_keypair(pk: Uint8Array, sk: Uint8Array, seed: Uint8Array): void;
  crypto_sign_detached(sig: Uint8Array, m: Uint8Array, sk: Uint8Array): void;
  crypto_sign_verify_detached(sig: Uint8Array, m: Uint8Array, pk: Uint8Array): boolean;
}

const TAG = 16;

/** libsodium-wrappers' argument checks that sodium-native leaves to a thrown error or not at all. */
function need(ok: boolean, what: string): void {
  if (!ok) throw new Error(`invalid ${what} length`);
}

function nativeSodium(n: Native): Sodium {
  const aead = (enc: Native['crypto_aead_chacha20poly1305_ietf_encrypt'], dec: Native['crypto_aead_chacha20poly1305_ietf_decrypt'], npub: number) => ({
    encrypt(m: Uint8Array, ad: Uint8Array | null, _nsec: null, nonce: Uint8Array, key: Uint8Array): Uint8Array {
      need(nonce.length === npub, 'nonce');
      need(key.length === 32, 'key');
      const c = new Uint8Array(m.length + TAG);
      enc(c, m, ad, null, nonce, key);
      return c;
    },
    decrypt(_nsec: null, c: Uint8Array, ad: Uint8Array | null, nonce: Uint8Array, key: Uint8Array): Uint8Array {
      need(nonce.length === npub, 'nonce');
      need(key.length === 32, 'key');
      if (c.length < TAG) throw new Error('ciphertext cannot be decrypted using that key');
      const m = new Uint8Array(c.length - TAG);
      dec(m, null, c, ad, nonce, key); // throws when the tag does not verify
      return m;
    },
  });
  const ietf = aead(n.crypto_aead_chacha20poly1305_ietf_encrypt, n.crypto_aead_chacha20poly1305_ietf_decrypt, 12);
  const x = aead(n.crypto_aead_xchacha20poly1305_ietf_encrypt, n.crypto_aead_xchacha20poly1305_ietf_decrypt, 24);
  const pair = (gen: (pk: Uint8Array, sk: Uint8Array) => void, skLen: number): SodiumKeyPair => {
    const publicKey = new Uint8Array(32);
    const privateKey = new Uint8Array(skLen);
    gen(publicKey, privateKey);
    return { publicKey, privateKey };
  };
  return {
    crypto_generichash(len, message, key) {
      const out = new Uint8Array(len);
      if (key) n.crypto_generichash(out, message, key);
      else n.crypto_generichash(out, message);
      return out;
    },
    crypto_scalarmult(priv, pub) {
      const q = new Uint8Array(32);
      n.crypto_scalarmult(q, priv, pub); // throws for a point of low order, as libsodium-wrappers does
      return q;
    },
    crypto_scalarmult_base(priv) {
      const q = new Uint8Array(32);
      n.crypto_scalarmult_base(q, priv);
      return q;
    },
    crypto_box_keypair: () => pair((pk, sk) => n.crypto_box_keypair(pk, sk), 32),
    crypto_aead_chacha20poly1305_ietf_encrypt: ietf.encrypt,
    crypto_aead_chacha20poly1305_ietf_decrypt: ietf.decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt: x.encrypt,
    crypto_aead_xchacha20poly1305_ietf_decrypt: x.decrypt,
    randombytes_buf(len) {
      const b = new Uint8Array(len);
      n.randombytes_buf(b);
      return b;
    },
    memcmp(a, b) {
      need(a.length === b.length, 'memcmp argument');
      return n.sodium_memcmp(a, b);
    },
    crypto_sign_keypair: () => pair((pk, sk) => n.crypto_sign_keypair(pk, sk), 64),
    crypto_sign_seed_keypair(seed) {
      need(seed.length === 32, 'seed');
      return pair((pk, sk) => n.crypto_sign_seed_keypair(pk, sk, seed), 64);
    },
    crypto_sign_detached(message, secretKey) {
      need(secretKey.length === 64, 'secretKey');
      const sig = new Uint8Array(64);
      n.crypto_sign_detached(sig, message, secretKey);
      return sig;
    },
    crypto_sign_verify_detached(signature, message, publicKey) {
      need(signature.length === 64, 'signature');
      need(publicKey.length === 32, 'publicKey');
      return n.crypto_sign_verify_detached(signature, message, publicKey);
    },
  };
}

let wrappers: Promise<SodiumWrappers> | undefined;

/** libsodium-wrappers (WebAssembly), loaded on first use. */
function loadWrappers(): Promise<SodiumWrappers> {
  wrappers ??= import('libsodium-wrappers').then(async (m) => {
    const s = (m as unknown as { default?: SodiumWrappers }).default ?? m;
    await s.ready;
    return s;
  });
  return wrappers;
}

/** The sodium-native calls the data-plane worker needs beside its AEAD (mac1 check, cookies). */
export interface WorkerSodium {
  crypto_generichash(out: Uint8Array, input: Uint8Array, key?: Uint8Array | null): void;
  randombytes_buf(out: Uint8Array): void;
  crypto_aead_xchacha20poly1305_ietf_encrypt(c: Uint8Array, m: Uint8Array, ad: Uint8Array | null, nsec: null, npub: Uint8Array, k: Uint8Array): number;
}

/**
 * Those calls for the worker, in preallocated buffers: over Debian's libsodium through koffi (the
 * library the ffi AEAD already loaded there) unless `backend` is 'native', else sodium-native;
 * null when neither loads. The ffi variant keeps sodium-native (its JS, its loader's modules) out
 * of the worker's heap (docs/performance.md, Memory).
 */
export function loadWorkerSodium(backend: 'auto' | 'ffi' | 'native'): { name: 'ffi' | 'native'; s: WorkerSodium } | null {
  const lib = backend === 'native' ? null : loadLibsodium();
  if (lib) {
    return {
      name: 'ffi',
      s: {
        crypto_generichash: (out, input, key) => void lib.generichash(out, out.length, input, input.length, key ?? null, key?.length ?? 0),
        randombytes_buf: (out) => lib.randombytes(out, out.length),
        crypto_aead_xchacha20poly1305_ietf_encrypt: (c, m, ad, nsec, npub, k) => lib.xchachaSeal(c, null, m, m.length, ad, ad?.length ?? 0, nsec, npub, k),
      },
    };
  }
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    return { name: 'native', s: require('sodium-native') as WorkerSodium };
  } catch {
    return null;
  }
}

let ready: Promise<Sodium> | undefined;

/**
 * sodium-native's calls (Native) over Debian's libsodium through koffi, with the length checks
 * sodium-native makes: C trusts every length, so each fixed-size argument is checked here before
 * the call, and a failure (a point of low order, a tag that does not verify) throws as there.
 */
function ffiNative(lib: Libsodium): Native {
  const ok = (rc: number, what: string): void => {
    if (rc !== 0) throw new Error(what);
  };
  const len = (b: Uint8Array | null | undefined, n: number, what: string): void => need(b != null && b.length === n, what);
  const adLen = (ad: Uint8Array | null): number => ad?.length ?? 0;
  type Seal = Libsodium['chachaSeal'];
  type Open = Libsodium['chachaOpen'];
  const seal = (f: Seal, npubLen: number): Native['crypto_aead_chacha20poly1305_ietf_encrypt'] => (c, m, ad, _nsec, npub, k) => {
    len(npub, npubLen, 'nonce');
    len(k, 32, 'key');
    len(c, m.length + TAG, 'ciphertext');
    ok(f(c, null, m, m.length, ad, adLen(ad), null, npub, k), 'could not encrypt data');
    return c.length;
  };
  const open = (f: Open, npubLen: number): Native['crypto_aead_chacha20poly1305_ietf_decrypt'] => (m, _nsec, c, ad, npub, k) => {
    len(npub, npubLen, 'nonce');
    len(k, 32, 'key');
    need(c.length >= TAG, 'ciphertext');
    len(m, c.length - TAG, 'message');
    ok(f(m, null, null, c, c.length, ad, adLen(ad), npub, k), 'could not verify data');
    return m.length;
  };
  return {
    crypto_generichash(out, input, key) {
      need(out.length >= 16 && out.length <= 64, 'hash');
      need(!key || (key.length >= 16 && key.length <= 64), 'key');
      ok(lib.generichash(out, out.length, input, input.length, key ?? null, key?.length ?? 0), 'could not hash');
    },
    crypto_scalarmult(q, n, p) {
      for (const [b, what] of [[q, 'q'], [n, 'n'], [p, 'p']] as const) len(b, 32, what);
      ok(lib.scalarmult(q, n, p), 'could not derive shared secret');
    },
    crypto_scalarmult_base(q, n) {
      len(q, 32, 'q');
      len(n, 32, 'n');
      ok(lib.scalarmultBase(q, n), 'could not derive public key');
    },
    crypto_box_keypair(pk, sk) {
      len(pk, 32, 'publicKey');
      len(sk, 32, 'secretKey');
      ok(lib.boxKeypair(pk, sk), 'could not generate key pair');
    },
    crypto_aead_chacha20poly1305_ietf_encrypt: seal(lib.chachaSeal, 12),
    crypto_aead_chacha20poly1305_ietf_decrypt: open(lib.chachaOpen, 12),
    crypto_aead_xchacha20poly1305_ietf_encrypt: seal(lib.xchachaSeal, 24),
    crypto_aead_xchacha20poly1305_ietf_decrypt: open(lib.xchachaOpen, 24),
    randombytes_buf: (buf) => lib.randombytes(buf, buf.length),
    sodium_memcmp(a, b) {
      need(a.length === b.length, 'memcmp argument');
      return lib.memcmp(a, b, a.length) === 0;
    },
    crypto_sign_keypair(pk, sk) {
      len(pk, 32, 'publicKey');
      len(sk, 64, 'secretKey');
      ok(lib.signKeypair(pk, sk), 'could not generate key pair');
    },
    crypto_sign_seed_keypair(pk, sk, seed) {
      len(pk, 32, 'publicKey');
      len(sk, 64, 'secretKey');
      len(seed, 32, 'seed');
      ok(lib.signSeedKeypair(pk, sk, seed), 'could not generate key pair');
    },
    crypto_sign_detached(sig, m, sk) {
      len(sig, 64, 'signature');
      len(sk, 64, 'secretKey');
      ok(lib.signDetached(sig, null, m, m.length, sk), 'could not sign');
    },
    crypto_sign_verify_detached(sig, m, pk) {
      len(sig, 64, 'signature');
      len(pk, 32, 'publicKey');
      return lib.signVerifyDetached(sig, m, m.length, pk) === 0;
    },
  };
}

/** Sodium over Debian's libsodium through koffi; null when libsodium.so.23 is not installed. */
export function loadFfiSodium(): Sodium | null {
  const lib = loadLibsodium();
  return lib ? nativeSodium(ffiNative(lib)) : null;
}

/**
 * Debian's libsodium through koffi when it is installed (the library the data plane's AEAD uses,
 * so the agent loads one libsodium, not a second one inside sodium-native: 0.8 MiB of the agent's
 * RSS, docs/performance.md, Memory), else sodium-native, else libsodium-wrappers.
 */
export function loadSodium(): Promise<Sodium> {
  ready ??= (async () => {
    const ffi = loadFfiSodium();
    if (ffi) return ffi;
    try {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      return nativeSodium(require('sodium-native') as Native);
    } catch {
      const w: Sodium = await loadWrappers();
      return w;
    }
  })();
  return ready;
}

export async function loadRawSodium(): Promise<RawSodium> {
  const s = await loadWrappers();
  const raw = (s as unknown as { libsodium?: RawSodium }).libsodium;
  if (!raw || typeof raw._crypto_aead_chacha20poly1305_ietf_encrypt_detached !== 'function') {
    throw new Error('libsodium-wrappers does not expose its raw module; cannot run the data plane');
  }
  return raw;
}

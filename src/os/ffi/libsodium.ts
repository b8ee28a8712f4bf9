/**
 * Debian's libsodium (libsodium23) through koffi, for the data plane's AEAD: the few functions that
 * seal and open a packet in place where it lies in native memory. Pointers are plain numbers (user
 * addresses on x86-64 and arm64 fit in 2^53), so a call creates no Buffer views and no BigInts; a
 * sync koffi call costs ~0.2 us against ~0.7 us for sodium-native's checks and views (see
 * docs/performance.md, 2026-12-02). The `Buf` variants take Buffers, for memory that is not native
 * (tests, the micro-benchmark's plain batches).
 *
 * Also, on Buffers, what the rest of cladnet needs of libsodium (src/crypto/sodium.ts: the control
 * plane's handshakes, keys and signatures; the worker's mac1 check and cookies), so that the agent
 * loads this one libsodium and not sodium-native's second copy (docs/performance.md, Memory).
 *
 * Only src/crypto uses this; `loadLibsodium()` returns null when the library is absent.
 */
import koffi from 'koffi';

export interface Libsodium {
  /** crypto_aead_chacha20poly1305_ietf_encrypt_detached over addresses; 0 on success. */
  encrypt(c: number, mac: number, maclenP: number, m: number, mlen: number, ad: number, adlen: number, nsec: number, npub: number, k: number): number;
  /** crypto_aead_chacha20poly1305_ietf_decrypt_detached over addresses; 0 on success, -1 when it does not verify. */
  decrypt(m: number, nsec: number, c: number, clen: number, mac: number, ad: number, adlen: number, npub: number, k: number): number;
  encryptBuf(c: Uint8Array, mac: Uint8Array, maclenP: null, m: Uint8Array, mlen: number, ad: Uint8Array, adlen: number, nsec: null, npub: number, k: number): number;
  decryptBuf(m: Uint8Array, nsec: null, c: Uint8Array, clen: number, mac: Uint8Array, ad: Uint8Array, adlen: number, npub: number, k: number): number;
  /** Guarded, locked allocation (sodium_malloc); 0 on failure. */
  sodiumMalloc(size: number): number;
  sodiumFree(ptr: number): void;
  memzero(ptr: number, len: number): void;
  /** A Buffer over native memory (no copy). */
  view(ptr: number, len: number): Buffer;
  /** crypto_generichash (BLAKE2b) of input into out (its whole length), keyed unless key is null; 0 on success. */
  generichash(out: Uint8Array, outlen: number, input: Uint8Array, inlen: number, key: Uint8Array | null, keylen: number): number;
  randombytes(out: Uint8Array, len: number): void;
  /** crypto_aead_xchacha20poly1305_ietf_encrypt (combined: c gets mlen + 16 bytes); 0 on success. */
  xchachaSeal(c: Uint8Array, clenP: null, m: Uint8Array, mlen: number, ad: Uint8Array | null, adlen: number, nsec: null, npub: Uint8Array, k: Uint8Array): number;
  /**
   * The rest of what the control plane uses, on Buffers, with libsodium's C signatures: the caller
   * (src/crypto/sodium.ts) checks every length first, since C trusts them. 0 on success.
   */
  scalarmult(q: Uint8Array, n: Uint8Array, p: Uint8Array): number;
  scalarmultBase(q: Uint8Array, n: Uint8Array): number;
  boxKeypair(pk: Uint8Array, sk: Uint8Array): number;
  chachaSeal(c: Uint8Array, clenP: null, m: Uint8Array, mlen: number, ad: Uint8Array | null, adlen: number, nsec: null, npub: Uint8Array, k: Uint8Array): number;
  chachaOpen(m: Uint8Array, mlenP: null, nsec: null, c: Uint8Array, clen: number, ad: Uint8Array | null, adlen: number, npub: Uint8Array, k: Uint8Array): number;
  xchachaOpen(m: Uint8Array, mlenP: null, nsec: null, c: Uint8Array, clen: number, ad: Uint8Array | null, adlen: number, npub: Uint8Array, k: Uint8Array): number;
  memcmp(a: Uint8Array, b: Uint8Array, len: number): number;
  signKeypair(pk: Uint8Array, sk: Uint8Array): number;
  signSeedKeypair(pk: Uint8Array, sk: Uint8Array, seed: Uint8Array): number;
  signDetached(sig: Uint8Array, siglenP: null, m: Uint8Array, mlen: number, sk: Uint8Array): number;
  signVerifyDetached(sig: Uint8Array, m: Uint8Array, mlen: number, pk: Uint8Array): number;
}

let loaded: Libsodium | null | undefined;

/** The library, loaded once per thread; null when libsodium.so.23 is not installed. */
export function loadLibsodium(): Libsodium | null {
  if (loaded !== undefined) return loaded;
  try {
    const lib = koffi.load('libsodium.so.23');
    if ((lib.func('int sodium_init(void)') as () => number)() < 0) throw new Error('sodium_init failed');
    const encrypt = lib.func(
      'int crypto_aead_chacha20poly1305_ietf_encrypt_detached(uintptr_t c, uintptr_t mac, uintptr_t maclen_p, uintptr_t m, ' +
        'uint64_t mlen, uintptr_t ad, uint64_t adlen, uintptr_t nsec, uintptr_t npub, uintptr_t k)',
    ) as Libsodium['encrypt'];
    const decrypt = lib.func(
      'int crypto_aead_chacha20poly1305_ietf_decrypt_detached(uintptr_t m, uintptr_t nsec, uintptr_t c, uint64_t clen, ' +
        'uintptr_t mac, uintptr_t ad, uint64_t adlen, uintptr_t npub, uintptr_t k)',
    ) as Libsodium['decrypt'];
    const encryptBuf = lib.func(
      'int crypto_aead_chacha20poly1305_ietf_encrypt_detached(uint8_t *c, uint8_t *mac, void *maclen_p, const uint8_t *m, ' +
        'uint64_t mlen, const uint8_t *ad, uint64_t adlen, void *nsec, uintptr_t npub, uintptr_t k)',
    ) as Libsodium['encryptBuf'];
    const decryptBuf = lib.func(
      'int crypto_aead_chacha20poly1305_ietf_decrypt_detached(uint8_t *m, void *nsec, const uint8_t *c, uint64_t clen, ' +
        'const uint8_t *mac, const uint8_t *ad, uint64_t adlen, uintptr_t npub, uintptr_t k)',
    ) as Libsodium['decryptBuf'];
    const sodiumMalloc = lib.func('uintptr_t sodium_malloc(size_t size)') as (n: number) => number | bigint;
    const sodiumFree = lib.func('void sodium_free(uintptr_t ptr)') as Libsodium['sodiumFree'];
    const memzero = lib.func('void sodium_memzero(uintptr_t ptr, size_t len)') as Libsodium['memzero'];
    const generichash = lib.func(
      'int crypto_generichash(uint8_t *out, size_t outlen, const uint8_t *in, uint64_t inlen, const uint8_t *key, size_t keylen)',
    ) as Libsodium['generichash'];
    const randombytes = lib.func('void randombytes_buf(uint8_t *buf, size_t size)') as Libsodium['randombytes'];
    const xchachaSeal = lib.func(
      'int crypto_aead_xchacha20poly1305_ietf_encrypt(uint8_t *c, void *clen_p, const uint8_t *m, uint64_t mlen, ' +
        'const uint8_t *ad, uint64_t adlen, void *nsec, const uint8_t *npub, const uint8_t *k)',
    ) as Libsodium['xchachaSeal'];
    const aead = (name: string, open: boolean) =>
      lib.func(
        open
          ? `int ${name}(uint8_t *m, void *mlen_p, void *nsec, const uint8_t *c, uint64_t clen, const uint8_t *ad, uint64_t adlen, const uint8_t *npub, const uint8_t *k)`
          : `int ${name}(uint8_t *c, void *clen_p, const uint8_t *m, uint64_t mlen, const uint8_t *ad, uint64_t adlen, void *nsec, const uint8_t *npub, const uint8_t *k)`,
      );
    const control = {
      scalarmult: lib.func('int crypto_scalarmult(uint8_t *q, const uint8_t *n, const uint8_t *p)') as Libsodium['scalarmult'],
      scalarmultBase: lib.func('int crypto_scalarmult_base(uint8_t *q, const uint8_t *n)') as Libsodium['scalarmultBase'],
      boxKeypair: lib.func('int crypto_box_keypair(uint8_t *pk, uint8_t *sk)') as Libsodium['boxKeypair'],
      chachaSeal: aead('crypto_aead_chacha20poly1305_ietf_encrypt', false) as Libsodium['chachaSeal'],
      chachaOpen: aead('crypto_aead_chacha20poly1305_ietf_decrypt', true) as Libsodium['chachaOpen'],
      xchachaOpen: aead('crypto_aead_xchacha20poly1305_ietf_decrypt', true) as Libsodium['xchachaOpen'],
      memcmp: lib.func('int sodium_memcmp(const uint8_t *a, const uint8_t *b, size_t len)') as Libsodium['memcmp'],
      signKeypair: lib.func('int crypto_sign_keypair(uint8_t *pk, uint8_t *sk)') as Libsodium['signKeypair'],
      signSeedKeypair: lib.func('int crypto_sign_seed_keypair(uint8_t *pk, uint8_t *sk, const uint8_t *seed)') as Libsodium['signSeedKeypair'],
      signDetached: lib.func(
        'int crypto_sign_detached(uint8_t *sig, void *siglen_p, const uint8_t *m, uint64_t mlen, const uint8_t *sk)',
      ) as Libsodium['signDetached'],
      signVerifyDetached: lib.func(
        'int crypto_sign_verify_detached(const uint8_t *sig, const uint8_t *m, uint64_t mlen, const uint8_t *pk)',
      ) as Libsodium['signVerifyDetached'],
    };
    loaded = {
      encrypt,
      decrypt,
      encryptBuf,
      decryptBuf,
      sodiumMalloc: (n) => Number(sodiumMalloc(n)),
      sodiumFree,
      memzero,
      view: (ptr, len) => Buffer.from(koffi.view(ptr, len) as ArrayBuffer),
      generichash,
      randombytes,
      xchachaSeal,
      ...control,
    };
  } catch {
    loaded = null;
  }
  return loaded;
}

/**
 * OpenSSL through koffi: the EVP calls for ChaCha20-Poly1305 on
 * addresses, for the data plane's AEAD on large packets. OpenSSL's ChaCha20-Poly1305 uses AVX-512
 * where the CPU has it and is about twice libsodium 1.0.18's speed per byte here, but one packet
 * takes five calls (set nonce, AD, data, final, tag), so it pays only for large packets (see
 * src/crypto/aead.ts and docs/performance.md, 2026-12-02). Pointers are plain numbers.
 *
 * Which OpenSSL: the one inside the node binary when it exports the EVP calls (Node's own builds
 * link OpenSSL statically and export its symbols for addons; here 3.0.19, the same release as
 * Debian's), else Debian's libcrypto.so.3. Node's costs no memory beyond the code pages it runs;
 * loading libcrypto.so.3 beside it cost an idle agent 2.4 MiB of RSS (its pages, its relocations,
 * and the node binary's symbol table paged in by the lookups; docs/performance.md, Memory).
 *
 * Only src/crypto/aead.ts uses this; `loadLibcrypto()` returns null when neither is there.
 */
import koffi from 'koffi';

export const EVP_CTRL_AEAD_GET_TAG = 0x10;
export const EVP_CTRL_AEAD_SET_TAG = 0x11;

export interface Libcrypto {
  ctxNew(): number;
  ctxFree(ctx: number): void;
  /** EVP_chacha20_poly1305() */
  chacha20Poly1305(): number;
  /** EVP_CipherInit_ex; enc 1 seal, 0 open, -1 unchanged; 0 for "keep" on any pointer. 1 on success. */
  init(ctx: number, cipher: number, impl: number, key: number, iv: number, enc: number): number;
  /** EVP_CipherUpdate; out 0 for associated data. 1 on success. */
  update(ctx: number, out: number, outlP: number, inp: number, inl: number): number;
  /** EVP_CipherFinal_ex: 1 on success (on open: the tag verified). */
  final(ctx: number, out: number, outlP: number): number;
  ctrl(ctx: number, type: number, arg: number, ptr: number): number;
}

let loaded: Libcrypto | null | undefined;

/** The library, loaded once per thread; null when neither node nor libcrypto.so.3 has it. */
export function loadLibcrypto(): Libcrypto | null {
  if (loaded !== undefined) return loaded;
  loaded = bind(null) ?? bind('libcrypto.so.3');
  return loaded;
}

/** The EVP calls from `path` (null: the running program, i.e. node's own OpenSSL); null if absent. */
function bind(path: string | null): Libcrypto | null {
  try {
    const lib = path === null ? koffi.load(null) : koffi.load(path);
    const num = (f: (...a: number[]) => number | bigint) => (...a: number[]) => Number(f(...a));
    return {
      ctxNew: num(lib.func('uintptr_t EVP_CIPHER_CTX_new(void)')),
      ctxFree: lib.func('void EVP_CIPHER_CTX_free(uintptr_t ctx)') as Libcrypto['ctxFree'],
      chacha20Poly1305: num(lib.func('uintptr_t EVP_chacha20_poly1305(void)')),
      init: lib.func('int EVP_CipherInit_ex(uintptr_t ctx, uintptr_t cipher, uintptr_t impl, uintptr_t key, uintptr_t iv, int enc)') as Libcrypto['init'],
      update: lib.func('int EVP_CipherUpdate(uintptr_t ctx, uintptr_t out, uintptr_t outl, uintptr_t inp, int inl)') as Libcrypto['update'],
      final: lib.func('int EVP_CipherFinal_ex(uintptr_t ctx, uintptr_t out, uintptr_t outl)') as Libcrypto['final'],
      ctrl: lib.func('int EVP_CIPHER_CTX_ctrl(uintptr_t ctx, int type, int arg, uintptr_t ptr)') as Libcrypto['ctrl'],
    };
  } catch {
    return null;
  }
}

/**
 * libcladnet_fast.so (native/cladnet_fast.c) through koffi: seals or opens a whole batch of
 * packets in one call, where the per-packet ffi AEAD makes one call per packet (libsodium) or five
 * (OpenSSL). The batch is a job table in native memory (JOB_BYTES per packet: key index, offsets,
 * counter, result) over packets in native memory; keys are a table of KEY_BYTES entries (key
 * address and the two OpenSSL contexts). src/crypto/aead.ts owns both tables and the keys.
 *
 * Where the library is looked for: $CLADNET_FAST_LIB, else native/build/libcladnet_fast.so in the
 * checkout this file runs from (scripts/build-native.sh puts it there; scripts/setup.sh runs it).
 * `loadFast()` never throws: when the library is missing or is not the ABI this file speaks, it
 * says why and the AEAD keeps its per-packet calls.
 *
 * Only src/crypto/aead.ts uses this.
 */
import { existsSync } from 'node:fs';
import * as path from 'node:path';
import koffi from 'koffi';

/** What native/cladnet_fast.c's cladnet_fast_abi() must return. */
const ABI_VERSION = 3;
/** struct cladnet_aead_job: key, off, len, ad_off, ad_len, ctr_lo, ctr_hi (u32), result (i32), nonce0, reserved (u32). */
export const JOB_BYTES = 40;
export const JOB_WORDS = JOB_BYTES / 4;
export const J_KEY = 0;
export const J_OFF = 1;
export const J_LEN = 2;
export const J_AD_OFF = 3;
export const J_AD_LEN = 4;
export const J_CTR_LO = 5;
export const J_CTR_HI = 6;
export const J_RESULT = 7;
export const J_NONCE0 = 8;
/** struct cladnet_aead_key: key, seal context, open context (pointers). */
export const KEY_BYTES = 24;
/** The batch calls' `flags`: OpenSSL's ChaCha20 and Poly1305 called directly where the process exports them. */
export const FAST_DIRECT = 1;

export interface FastLib {
  /** cladnet_seal_batch / cladnet_open_batch: the number of jobs that failed (each job has its result). */
  sealBatch(base: number, jobs: number, n: number, keys: number, nkeys: number, evpMin: number, flags: number): number;
  openBatch(base: number, jobs: number, n: number, keys: number, nkeys: number, evpMin: number, flags: number): number;
  /**
   * cladnet_fast_direct(): whether FAST_DIRECT can take effect here: the process exports OpenSSL's
   * ChaCha20_ctr32 and Poly1305_* (node's official builds do; a node linked to the system's
   * libcrypto.so.3 does not, and then the helper goes through EVP).
   */
  readonly direct: boolean;
  /** Where it was loaded from. */
  readonly path: string;
}

export type FastLoad = { lib: FastLib; error: null } | { lib: null; error: string };

const LIB_NAME = 'libcladnet_fast.so';

/** native/build/libcladnet_fast.so above this file (src/os/ffi, dist/os/ffi, dist-bench/src/os/ffi). */
function defaultPath(): string {
  let dir = __dirname;
  for (let i = 0; i < 6; i++) {
    const p = path.join(dir, 'native', 'build', LIB_NAME);
    if (existsSync(p)) return p;
    dir = path.dirname(dir);
  }
  return path.join('native', 'build', LIB_NAME);
}

let loaded: FastLoad | undefined;

/** The library, loaded once per thread, or why not. */
export function loadFast(): FastLoad {
  if (loaded !== undefined) return loaded;
  const file = process.env.CLADNET_FAST_LIB || defaultPath();
  try {
    if (!existsSync(file)) throw new Error(`${file} is not built (bash scripts/build-native.sh)`);
    const lib = koffi.load(file);
    const abi = (lib.func('int cladnet_fast_abi(void)') as () => number)();
    if (abi !== ABI_VERSION) throw new Error(`${file} speaks ABI ${abi}, this agent ${ABI_VERSION} (rebuild it)`);
    const sig = '(uintptr_t base, uintptr_t jobs, uint32_t n, uintptr_t keys, uint32_t nkeys, uint32_t evp_min, uint32_t flags)';
    loaded = {
      lib: {
        sealBatch: lib.func(`uint32_t cladnet_seal_batch${sig}`) as FastLib['sealBatch'],
        openBatch: lib.func(`uint32_t cladnet_open_batch${sig}`) as FastLib['openBatch'],
        direct: (lib.func('int cladnet_fast_direct(void)') as () => number)() === 1,
        path: file,
      },
      error: null,
    };
  } catch (e) {
    loaded = { lib: null, error: e instanceof Error ? e.message : String(e) };
  }
  return loaded;
}

/** Tests only: forget the loaded library so the next loadFast() looks again (e.g. with another CLADNET_FAST_LIB). */
export function resetFastForTests(): void {
  loaded = undefined;
}

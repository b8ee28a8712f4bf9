/** Loads libsodium (WebAssembly build). The only place that imports the package. */
import sodiumWrappers from 'libsodium-wrappers';

export type Sodium = typeof sodiumWrappers;

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

let ready: Promise<Sodium> | undefined;

export function loadSodium(): Promise<Sodium> {
  ready ??= sodiumWrappers.ready.then(() => sodiumWrappers);
  return ready;
}

export async function loadRawSodium(): Promise<RawSodium> {
  const s = await loadSodium();
  const raw = (s as unknown as { libsodium?: RawSodium }).libsodium;
  if (!raw || typeof raw._crypto_aead_chacha20poly1305_ietf_encrypt_detached !== 'function') {
    throw new Error('libsodium-wrappers does not expose its raw module; cannot run the data plane');
  }
  return raw;
}

// The few sodium-native functions cladnet uses (the package ships no types of its own).
declare module 'sodium-native' {
  export function crypto_aead_chacha20poly1305_ietf_encrypt_detached(
    c: Buffer, mac: Buffer, m: Buffer, ad: Buffer | null, nsec: null, npub: Buffer, k: Buffer,
  ): number;
  export function crypto_aead_chacha20poly1305_ietf_decrypt_detached(
    m: Buffer, nsec: null, c: Buffer, mac: Buffer, ad: Buffer | null, npub: Buffer, k: Buffer,
  ): void;
  export function sodium_malloc(size: number): Buffer;
  export function sodium_memzero(buf: Buffer): void;
}

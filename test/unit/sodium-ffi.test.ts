import { describe, expect, it } from 'vitest';
import { loadFfiSodium, type Sodium } from '../../src/crypto/sodium';

/**
 * The control plane's Sodium over Debian's libsodium through koffi (src/crypto/sodium.ts ffiNative):
 * C trusts every length, so a wrong one must throw before the call, and failures throw as
 * sodium-native's do. (Known answers: test/unit/noise-kat.test.ts runs over loadSodium(), this.)
 */
describe('Sodium over the ffi libsodium', () => {
  const s = loadFfiSodium() as Sodium;

  it('loads here (libsodium23 is installed by scripts/setup.sh)', () => {
    expect(s).not.toBeNull();
  });

  it('refuses every fixed-size argument of the wrong length instead of reading past it', () => {
    const k32 = new Uint8Array(32).fill(1);
    const short = new Uint8Array(31);
    expect(() => s.crypto_scalarmult(short, k32)).toThrow(/length/);
    expect(() => s.crypto_scalarmult(k32, short)).toThrow(/length/);
    expect(() => s.crypto_scalarmult_base(short)).toThrow(/length/);
    expect(() => s.crypto_aead_chacha20poly1305_ietf_encrypt(new Uint8Array(5), null, null, new Uint8Array(11), k32)).toThrow(/length/);
    expect(() => s.crypto_aead_xchacha20poly1305_ietf_encrypt(new Uint8Array(5), null, null, new Uint8Array(12), k32)).toThrow(/length/);
    expect(() => s.crypto_aead_chacha20poly1305_ietf_encrypt(new Uint8Array(5), null, null, new Uint8Array(12), short)).toThrow(/length/);
    expect(() => s.crypto_aead_chacha20poly1305_ietf_decrypt(null, new Uint8Array(15), null, new Uint8Array(12), k32)).toThrow();
    expect(() => s.crypto_generichash(8, new Uint8Array(3), null)).toThrow(/length/);
    expect(() => s.crypto_generichash(32, new Uint8Array(3), new Uint8Array(8))).toThrow(/length/);
    expect(() => s.crypto_sign_seed_keypair(short)).toThrow(/length/);
    expect(() => s.crypto_sign_detached(new Uint8Array(3), new Uint8Array(63))).toThrow(/length/);
    expect(() => s.crypto_sign_verify_detached(new Uint8Array(63), new Uint8Array(3), k32)).toThrow(/length/);
    expect(() => s.crypto_sign_verify_detached(new Uint8Array(64), new Uint8Array(3), short)).toThrow(/length/);
    expect(() => s.memcmp(new Uint8Array(3), new Uint8Array(4))).toThrow(/length/);
  });

  it('throws on a tag that does not verify and on a point of low order; verify says false on a tampered message', () => {
    const key = s.randombytes_buf(32);
    const nonce = s.randombytes_buf(12);
    const c = s.crypto_aead_chacha20poly1305_ietf_encrypt(Uint8Array.of(1, 2, 3), Uint8Array.of(9), null, nonce, key);
    expect(s.crypto_aead_chacha20poly1305_ietf_decrypt(null, c, Uint8Array.of(9), nonce, key)).toEqual(Uint8Array.of(1, 2, 3));
    c[0]! ^= 1;
    expect(() => s.crypto_aead_chacha20poly1305_ietf_decrypt(null, c, Uint8Array.of(9), nonce, key)).toThrow();
    const xn = s.randombytes_buf(24);
    const xc = s.crypto_aead_xchacha20poly1305_ietf_encrypt(Uint8Array.of(4), null, null, xn, key);
    expect(s.crypto_aead_xchacha20poly1305_ietf_decrypt(null, xc, null, xn, key)).toEqual(Uint8Array.of(4));
    expect(() => s.crypto_aead_xchacha20poly1305_ietf_decrypt(null, xc, Uint8Array.of(1), xn, key)).toThrow();
    const kp = s.crypto_box_keypair();
    expect(() => s.crypto_scalarmult(kp.privateKey, new Uint8Array(32))).toThrow(); // the identity: low order
    const a = s.crypto_box_keypair();
    expect(s.crypto_scalarmult(a.privateKey, kp.publicKey)).toEqual(s.crypto_scalarmult(kp.privateKey, a.publicKey));
    expect(s.crypto_scalarmult_base(a.privateKey)).toEqual(a.publicKey);
    const sk = s.crypto_sign_seed_keypair(new Uint8Array(32).fill(3));
    const msg = Uint8Array.of(5, 6, 7);
    const sig = s.crypto_sign_detached(msg, sk.privateKey);
    expect(s.crypto_sign_verify_detached(sig, msg, sk.publicKey)).toBe(true);
    expect(s.crypto_sign_verify_detached(sig, Uint8Array.of(5, 6, 8), sk.publicKey)).toBe(false);
    expect(s.memcmp(Uint8Array.of(1, 2), Uint8Array.of(1, 2))).toBe(true);
    expect(s.memcmp(Uint8Array.of(1, 2), Uint8Array.of(1, 3))).toBe(false);
    expect(s.crypto_generichash(16, msg, new Uint8Array(16))).toHaveLength(16);
  });
});

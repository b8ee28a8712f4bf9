/**
 * Ed25519 signatures (libsodium `crypto_sign_*`): the network key that signs host certificates
 * and revocations. Loaded once (async, WASM), then every call is synchronous, so pure code such
 * as the peer computation can verify without awaiting.
 *
 * Verification never throws on bad input: a malformed key or signature just does not verify.
 */
import { loadSodium, type Sodium } from './sodium';

export const SIGN_PUBLIC_KEY_BYTES = 32;
export const SIGN_SECRET_KEY_BYTES = 64; // libsodium's form: 32-byte seed || 32-byte public key
export const SIGNATURE_BYTES = 64;

export interface SigningKeyPair {
  readonly publicKey: Uint8Array; // 32 bytes
  readonly secretKey: Uint8Array; // 64 bytes
}

export interface Ed25519 {
  generate(): SigningKeyPair;
  /** The public half of a 64-byte secret key; null when it is not one (its halves disagree). */
  publicKeyOf(secretKey: Uint8Array): Uint8Array | null;
  sign(message: Uint8Array, secretKey: Uint8Array): Uint8Array;
  /** True only for a valid signature by `publicKey`; false for anything malformed. */
  verify(signature: Uint8Array, message: Uint8Array, publicKey: Uint8Array): boolean;
}

class SodiumEd25519 implements Ed25519 {
  constructor(private readonly s: Sodium) {}

  generate(): SigningKeyPair {
    const kp = this.s.crypto_sign_keypair();
    return { publicKey: kp.publicKey, secretKey: kp.privateKey };
  }

  publicKeyOf(secretKey: Uint8Array): Uint8Array | null {
    if (secretKey.length !== SIGN_SECRET_KEY_BYTES) return null;
    const derived = this.s.crypto_sign_seed_keypair(secretKey.subarray(0, 32));
    derived.privateKey.fill(0);
    const stored = secretKey.subarray(32);
    for (let i = 0; i < 32; i++) if (derived.publicKey[i] !== stored[i]) return null;
    return derived.publicKey;
  }

  sign(message: Uint8Array, secretKey: Uint8Array): Uint8Array {
    if (secretKey.length !== SIGN_SECRET_KEY_BYTES) throw new RangeError(`signing key must be ${SIGN_SECRET_KEY_BYTES} bytes`);
    return this.s.crypto_sign_detached(message, secretKey);
  }

  verify(signature: Uint8Array, message: Uint8Array, publicKey: Uint8Array): boolean {
    if (signature.length !== SIGNATURE_BYTES || publicKey.length !== SIGN_PUBLIC_KEY_BYTES) return false;
    try {
      return this.s.crypto_sign_verify_detached(signature, message, publicKey);
    } catch {
      return false;
    }
  }
}

let loaded: Promise<Ed25519> | undefined;

export function loadEd25519(): Promise<Ed25519> {
  loaded ??= loadSodium().then((s) => new SodiumEd25519(s));
  return loaded;
}

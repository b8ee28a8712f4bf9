/**
 * Host identity keys (X25519). Session keys come from the handshake (./noise.ts).
 */
import { loadSodium } from './sodium';

export interface KeyPair {
  readonly publicKey: Uint8Array; // 32 bytes
  readonly privateKey: Uint8Array; // 32 bytes
}

export async function generateKeyPair(): Promise<KeyPair> {
  const s = await loadSodium();
  const kp = s.crypto_box_keypair();
  return { publicKey: kp.publicKey, privateKey: kp.privateKey };
}

export async function publicKeyOf(privateKey: Uint8Array): Promise<Uint8Array> {
  const s = await loadSodium();
  return s.crypto_scalarmult_base(privateKey);
}

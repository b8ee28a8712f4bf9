/**
 * Static-key agreement for tests: two hosts derive mirrored data-plane keys and receiver indices
 * from their X25519 keys alone (no handshake, no forward secrecy). The agent uses the Noise
 * handshake (src/crypto/noise.ts); unit tests and fuzzers use this to get real keys cheaply.
 */
import type { KeyPair } from '../../src/crypto/keys';
import { loadSodium, type Sodium } from '../../src/crypto/sodium';

/** What the data plane needs to talk to one peer. Indices name the key to the receiver. */
export interface SessionKeys {
  readonly txKey: Uint8Array;
  readonly rxKey: Uint8Array;
  /** Receiver index we write into packets to this peer (the peer finds our rx key by it). */
  readonly txIndex: number;
  /** Receiver index the peer writes into packets to us. */
  readonly rxIndex: number;
}

export interface KeyAgreement {
  /**
   * Keys for talking to one peer. `selfSession` and `peerSession` name the two agents' current
   * runs: a restart on either side changes them and so the keys, which resets counters and replay
   * windows on both sides and makes packets of an earlier run useless to an attacker.
   */
  derive(peerPublicKey: Uint8Array, selfSession: string, peerSession: string): SessionKeys;
}

const LABEL_KEYS = new TextEncoder().encode('cladnet v1 static keys');
const LABEL_INDEX = new TextEncoder().encode('cladnet v1 index');

function compare(a: Uint8Array, b: Uint8Array): number {
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return a[i]! - b[i]!;
  return 0;
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/**
 * Static Diffie-Hellman: both hosts compute X25519(own private, peer public), then BLAKE2b keyed
 * by a label over (shared, lower public key, higher public key, both run ids in the same order)
 * gives 64 bytes: the first 32 key the lower->higher direction, the last 32 the other. No forward secrecy: a leaked static key
 * opens recorded traffic. The handshake that replaces it keeps this interface.
 */
export class StaticKeyAgreement implements KeyAgreement {
  private constructor(
    private readonly s: Sodium,
    private readonly self: KeyPair,
  ) {}

  static async create(self: KeyPair): Promise<StaticKeyAgreement> {
    return new StaticKeyAgreement(await loadSodium(), self);
  }

  derive(peerPublicKey: Uint8Array, selfSession: string, peerSession: string): SessionKeys {
    const s = this.s;
    if (peerPublicKey.length !== 32) throw new RangeError('peer public key must be 32 bytes');
    const shared = s.crypto_scalarmult(this.self.privateKey, peerPublicKey);
    if (shared.every((b) => b === 0)) throw new RangeError('peer public key is a low-order point');
    const selfLow = compare(this.self.publicKey, peerPublicKey) < 0;
    const [low, high] = selfLow ? [this.self.publicKey, peerPublicKey] : [peerPublicKey, this.self.publicKey];
    const [lowRun, highRun] = selfLow ? [selfSession, peerSession] : [peerSession, selfSession];
    const runs = new TextEncoder().encode(`${lowRun}:${highRun}`);
    const okm = s.crypto_generichash(64, concat(shared, low, high, runs), LABEL_KEYS);
    shared.fill(0);
    const lowToHigh = okm.slice(0, 32);
    const highToLow = okm.slice(32, 64);
    okm.fill(0);
    return {
      txKey: selfLow ? lowToHigh : highToLow,
      rxKey: selfLow ? highToLow : lowToHigh,
      txIndex: indexFor(s, this.self.publicKey, peerPublicKey, runs),
      rxIndex: indexFor(s, peerPublicKey, this.self.publicKey, runs),
    };
  }
}

/** Receiver index for packets from `sender` to `receiver`: public, stable, collision-checked by the receiver. */
function indexFor(s: Sodium, sender: Uint8Array, receiver: Uint8Array, runs: Uint8Array): number {
  const h = s.crypto_generichash(16, concat(sender, receiver, runs), LABEL_INDEX);
  return (h[0]! | (h[1]! << 8) | (h[2]! << 16) | (h[3]! << 24)) >>> 0;
}

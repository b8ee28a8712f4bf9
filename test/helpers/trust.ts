/**
 * A network key, its trust anchor, and certificates and host records signed by it, for unit
 * tests of trust and membership (one network 'demo', fixed time T0, keys derived from names).
 */
import { issueCert, TrustAnchor } from '../../src/control/cert';
import { parseHostRecord, serializeHostRecord, type HostCert, type HostRecord } from '../../src/control/records';
import type { HostEntry } from '../../src/control/peers';
import { loadEd25519, type Ed25519, type SigningKeyPair } from '../../src/crypto/sign';

/** A 32-byte key of n's, base64: the fake X25519 key of host n. */
export const X = (n: number) => Buffer.alloc(32, n).toString('base64');
export const T0 = Date.parse('2026-11-21T00:00:00.000Z');
export const DAY = 86_400_000;
/** Overlay addresses of the hosts the tests name. */
export const IP: Record<string, string> = { me: '100.64.0.1', a: '100.64.0.2', b: '100.64.0.3', c: '100.64.0.4' };

export interface TrustFixture {
  ed: Ed25519;
  net: SigningKeyPair;
  anchor: TrustAnchor;
  /** A certificate for `name` (its key and address from X and IP), signed by the network key or `key`. */
  certFor(name: string, over?: { key?: Uint8Array; overlayIp?: string; validDays?: number; now?: number }): HostCert;
}

export async function trustFixture(): Promise<TrustFixture> {
  const ed = await loadEd25519();
  const net = ed.generate();
  const anchor = new TrustAnchor(ed, 'demo', Buffer.from(net.publicKey).toString('base64'));
  return {
    ed,
    net,
    anchor,
    certFor: (name, over = {}) =>
      issueCert(ed, over.key ?? net.secretKey, {
        network: 'demo',
        name,
        publicKey: X(name.charCodeAt(0)),
        overlayIp: over.overlayIp ?? IP[name]!,
        validDays: over.validDays,
        now: new Date(over.now ?? T0),
      }),
  };
}

/** Host `name`'s record, with `cert` (or none) and any field overridden. */
export function hostRecord(name: string, cert: HostCert | undefined, over: Partial<HostRecord> = {}): HostRecord {
  return {
    version: 1,
    name,
    network: 'demo',
    overlayIp: IP[name]!,
    publicKey: X(name.charCodeAt(0)),
    endpoints: ['198.18.1.2:51820'],
    hostCidrs: [],
    listenPort: 51820,
    epoch: 1,
    updated: '2026-11-21T00:00:00Z',
    session: '0123456789abcdef',
    ...(cert ? { cert } : {}),
    ...over,
  };
}

/** The record as the registry hands it to computePeers: serialized and parsed back. */
export function hostEntry(r: HostRecord, modRevision = '5'): HostEntry {
  return { modRevision, parsed: parseHostRecord(serializeHostRecord(r)) };
}

import { beforeAll, describe, expect, it } from 'vitest';
import { issueCert, TrustAnchor, VERIFY_CACHE_MAX } from '../../src/control/cert';
import type { HostCert } from '../../src/control/records';
import { loadEd25519, type Ed25519 } from '../../src/crypto/sign';

/** The trust anchor's signature cache holds a whole large network: a recomputation re-verifies nothing. */

let ed: Ed25519;
let verifies = 0;
let counting: Ed25519;

beforeAll(async () => {
  ed = await loadEd25519();
  counting = {
    generate: () => ed.generate(),
    publicKeyOf: (k) => ed.publicKeyOf(k),
    sign: (m, k) => ed.sign(m, k),
    verify: (s, m, k) => {
      verifies++;
      return ed.verify(s, m, k);
    },
  };
});

function certs(n: number, secretKey: Uint8Array): HostCert[] {
  return Array.from({ length: n }, (_, i) => {
    const pk = Buffer.alloc(32, 7);
    pk.writeUInt32BE(i, 0);
    return issueCert(ed, secretKey, { network: 'big', name: `h${i}`, publicKey: pk.toString('base64'), overlayIp: '100.64.0.1', now: new Date('2026-12-02T00:00:00Z') });
  });
}

describe('TrustAnchor signature cache', () => {
  it('checks 5,000 certificates twice with 5,000 signature verifications, not 10,000', () => {
    const kp = ed.generate();
    const anchor = new TrustAnchor(counting, 'big', Buffer.from(kp.publicKey).toString('base64'));
    const all = certs(5000, kp.secretKey);
    const now = Date.parse('2026-12-02T12:00:00Z');
    verifies = 0;
    for (const c of all) expect(anchor.verifyCert(c, now)).toBeNull();
    expect(verifies).toBe(5000);
    for (const c of all) expect(anchor.verifyCert(c, now)).toBeNull();
    expect(verifies).toBe(5000);
  });

  it('when full, drops the oldest entry only', () => {
    const kp = ed.generate();
    const anchor = new TrustAnchor(counting, 'big', Buffer.from(kp.publicKey).toString('base64'));
    const all = certs(VERIFY_CACHE_MAX + 1, kp.secretKey);
    const now = Date.parse('2026-12-02T12:00:00Z');
    for (const c of all) anchor.verifyCert(c, now);
    verifies = 0;
    anchor.verifyCert(all[0]!, now); // the oldest: it was evicted by the last one; re-adding it evicts all[1]
    expect(verifies).toBe(1);
    anchor.verifyCert(all[VERIFY_CACHE_MAX]!, now); // the newest: cached
    anchor.verifyCert(all[2]!, now); // cached
    expect(verifies).toBe(1);
    anchor.verifyCert(all[1]!, now);
    expect(verifies).toBe(2);
  });
});

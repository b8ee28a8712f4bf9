import { beforeAll, describe, expect, it } from 'vitest';
import { signRevocation, type TrustAnchor } from '../../src/control/cert';
import { computePeers, PeerInputs, PeerTrust } from '../../src/control/peers';
import type { HostRecord, RevocationRecord } from '../../src/control/records';
import type { Ed25519, SigningKeyPair } from '../../src/crypto/sign';
import { parsePrefix } from '../../src/util/ipv4';
import { certPrecedence } from '../../src/control/holders';
import { rng } from '../helpers/rng';
import { DAY, hostEntry, hostRecord, IP, T0, trustFixture, type TrustFixture } from '../helpers/trust';

/** computePeers with trust: which records become peers, and why the others do not. */

let ed: Ed25519;
let net: SigningKeyPair;
let attacker: SigningKeyPair;
let anchor: TrustAnchor;
let certFor: TrustFixture['certFor'];

beforeAll(async () => {
  const fx = await trustFixture();
  ({ ed, net, anchor, certFor } = fx);
  attacker = ed.generate();
});

const rec = hostRecord;
const entry = hostEntry;

function inputs(records: HostRecord[], trust: Partial<PeerTrust> = {}, p: Partial<PeerInputs> = {}): PeerInputs {
  return {
    self: 'me',
    cidr: parsePrefix('100.64.0.0/24')!,
    cidrText: '100.64.0.0/24',
    hosts: new Map(records.map((r) => [r.name, entry(r)])),
    alive: new Set(records.map((r) => r.name)),
    leases: new Map(),
    trust: { anchor, now: T0 + DAY, revocations: new Map(), ...trust },
    ...p,
  };
}

const byName = (rs: { name: string; error: string; trust?: string }[]) => Object.fromEntries(rs.map((r) => [r.name, [r.trust, r.error]]));

describe('computePeers with a trust anchor', () => {
  it('accepts hosts with valid certificates', () => {
    const out = computePeers(inputs([rec('me', certFor('me')), rec('a', certFor('a')), rec('b', certFor('b'))]));
    expect([...out.peers.keys()]).toEqual(['a', 'b']);
    expect(out.rejected).toEqual([]);
  });

  it('ignores an unsigned record, one signed by another key, and an expired one; marks them untrusted', () => {
    const out = computePeers(
      inputs([
        rec('a', certFor('a')),
        rec('b', undefined),
        rec('c', certFor('c', { key: attacker.secretKey })),
        rec('me', certFor('me')),
      ]),
    );
    expect([...out.peers.keys()]).toEqual(['a']);
    const r = byName(out.rejected);
    expect(r['b']).toEqual(['untrusted', 'cert: missing (the record is not signed by the network key)']);
    expect(r['c']![0]).toBe('untrusted');
    expect(r['c']![1]).toMatch(/^cert\.signature: not signed by this network's key/);

    const later = computePeers(inputs([rec('a', certFor('a', { validDays: 1 }))], { now: T0 + 2 * DAY }));
    expect(later.peers.size).toBe(0);
    expect(later.rejected[0]).toMatchObject({ name: 'a', trust: 'untrusted', error: 'cert.notAfter: expired at 2026-11-22T00:00:00.000Z' });
  });

  it("a valid host cannot claim another host's overlay IP, name or key: its certificate binds them", () => {
    const a = certFor('a');
    const out = computePeers(
      inputs([
        rec('a', a, { overlayIp: IP['b'] }), // a (tampered record) claims b's address
        rec('b', certFor('b')),
        rec('c', a, { publicKey: a.publicKey, overlayIp: a.overlayIp }), // c presents a's certificate
      ]),
    );
    expect([...out.peers.keys()]).toEqual(['b']);
    const r = byName(out.rejected);
    expect(r['a']).toEqual(['untrusted', `overlayIp: ${IP['b']} differs from the certificate's ${IP['a']}`]);
    expect(r['c']).toEqual(['untrusted', 'name: "c" differs from the certificate\'s "a"']);
  });

  it('two valid certificates for one address: the earlier one holds it, whatever the lease says; the conflict is reported', () => {
    const a = certFor('a', { now: T0 });
    const b = certFor('b', { overlayIp: IP['a'], now: T0 + 1000 });
    const records = [rec('a', a), rec('b', b, { overlayIp: IP['a'] }), rec('c', certFor('c'))];
    // The lease names the newer holder, as an etcd writer would make it; it must not matter.
    for (const leases of [new Map([[IP['a']!, 'b']]), new Map<string, string | null>(), new Map([[IP['a']!, null]])]) {
      const out = computePeers(inputs(records, {}, { leases }));
      expect([...out.peers.keys()]).toEqual(['a', 'c']);
      expect(out.rejected).toEqual([
        { name: 'b', modRevision: '5', trust: 'conflict', error: `overlayIp: ${IP['a']} is held by the earlier certificate of a (certificate ${a.serial}, issued ${a.issued})` },
      ]);
      expect(out.conflicts).toEqual([
        { overlayIp: IP['a'], winner: { name: 'a', serial: a.serial, issued: a.issued }, loser: { name: 'b', serial: b.serial, issued: b.issued } },
      ]);
    }
    // Issued the other way round, the other one holds it: content decides, not names or order.
    const a2 = certFor('a', { now: T0 + 2000 });
    const out = computePeers(inputs([rec('a', a2), rec('b', b, { overlayIp: IP['a'] })], {}, { leases: new Map([[IP['a']!, 'a']]) }));
    expect([...out.peers.keys()]).toEqual(['b']);
    expect(out.conflicts.map((c) => [c.winner.name, c.loser.name])).toEqual([['b', 'a']]);
  });

  it('a dead holder still holds its address against a live newcomer', () => {
    const a = certFor('a', { now: T0 });
    const b = certFor('b', { overlayIp: IP['a'], now: T0 + 1000 });
    const out = computePeers(inputs([rec('a', a), rec('b', b, { overlayIp: IP['a'] })], {}, { alive: new Set(['b']) }));
    expect(out.peers.size).toBe(0);
    expect(out.rejected.map((r) => [r.name, r.trust])).toEqual([['b', 'conflict']]);
  });

  it('equal issue times: the lower serial holds the address; three claimants give two conflicts', () => {
    const certs = ['a', 'b', 'c'].map((n) => certFor(n, { overlayIp: IP['a'], now: T0 }));
    const lowest = [...certs].sort((x, y) => (x.serial < y.serial ? -1 : 1))[0]!;
    const records = certs.map((c) => rec(c.name, c, { overlayIp: IP['a'] }));
    const out = computePeers(inputs(records));
    expect([...out.peers.keys()]).toEqual([lowest.name]);
    expect(out.conflicts).toHaveLength(2);
    for (const c of out.conflicts) expect(c.winner.serial).toBe(lowest.serial);
    // The same inputs in another order give the same answer.
    const again = computePeers(inputs([...records].reverse()));
    expect(again.conflicts).toEqual(out.conflicts);
  });

  it('when our own certificate loses its address we drop every peer and say why; when it wins the newcomer is refused', () => {
    const mine = certFor('me', { now: T0 + 1000 });
    const older = certFor('a', { overlayIp: IP['me'], now: T0 });
    const out = computePeers(inputs([rec('me', mine), rec('a', older, { overlayIp: IP['me'] }), rec('b', certFor('b'))], { selfCert: mine }));
    expect(out.peers.size).toBe(0);
    expect(out.selfProblem).toBe(`our own certificate (${mine.serial}) lost ${IP['me']} to a (certificate ${older.serial}, issued ${older.issued})`);
    expect(out.conflicts.map((c) => [c.overlayIp, c.winner.name, c.loser.name])).toEqual([[IP['me'], 'a', 'me']]);

    const mineFirst = certFor('me', { now: T0 });
    const newer = certFor('a', { overlayIp: IP['me'], now: T0 + 1000 });
    // Our own record is not even in etcd yet: our certificate still counts.
    const won = computePeers(inputs([rec('a', newer, { overlayIp: IP['me'] }), rec('b', certFor('b'))], { selfCert: mineFirst }));
    expect(won.selfProblem).toBeUndefined();
    expect([...won.peers.keys()]).toEqual(['b']);
    expect(won.conflicts.map((c) => [c.winner.name, c.loser.name])).toEqual([['me', 'a']]);

    // Our own certificate, once expired, holds nothing: no conflict, only the problem it has.
    const short = certFor('me', { now: T0, validDays: 1 });
    const late = computePeers(inputs([rec('a', certFor('a', { overlayIp: IP['me'], now: T0 + DAY }), { overlayIp: IP['me'] })], { selfCert: short, now: T0 + 2 * DAY }));
    expect(late.conflicts).toEqual([]);
    expect(late.selfProblem).toMatch(/^our own certificate: cert\.notAfter: expired/);
  });

  it('a remembered certificate keeps holding its address after its record is deleted', () => {
    const a = certFor('a', { now: T0 });
    const b = certFor('b', { overlayIp: IP['a'], now: T0 + 1000 });
    const records = [rec('b', b, { overlayIp: IP['a'] }), rec('c', certFor('c'))];
    // Control: without the memory the newcomer takes the address once a's record is gone.
    expect([...computePeers(inputs(records)).peers.keys()]).toEqual(['b', 'c']);
    const out = computePeers(inputs(records, { knownCerts: [a] }));
    expect([...out.peers.keys()]).toEqual(['c']);
    expect(out.conflicts.map((c) => [c.overlayIp, c.winner.name, c.loser.name])).toEqual([[IP['a'], 'a', 'b']]);
    expect(out.certified.map((c) => c.name).sort()).toEqual(['b', 'c']);
    // Expired or revoked, the memory holds nothing; a remembered loser alone makes no conflict.
    expect([...computePeers(inputs(records, { knownCerts: [certFor('a', { now: T0, validDays: 1 })], now: T0 + 2 * DAY })).peers.keys()]).toEqual(['b', 'c']);
    const rev = signRevocation(ed, net.secretKey, { network: 'demo', name: 'a', now: new Date(T0 + 1) });
    expect([...computePeers(inputs(records, { knownCerts: [a], revocations: new Map([['a', [rev]]]) })).peers.keys()]).toEqual(['b', 'c']);
    const alone = computePeers(inputs([rec('a', a), rec('c', certFor('c'))], { knownCerts: [b] }));
    expect([...alone.peers.keys()]).toEqual(['a', 'c']);
    expect(alone.conflicts).toEqual([]);
    // A forged certificate in the memory (a tampered cache file) is ignored.
    const forged = certFor('z', { key: attacker.secretKey, overlayIp: IP['a'], now: T0 - 1000 });
    expect([...computePeers(inputs(records, { knownCerts: [forged] })).peers.keys()]).toEqual(['b', 'c']);
  });

  it('random claims, orders and leases: the holder of each address is always its earliest certificate, and leases never change the outcome', () => {
    const r = rng(10);
    const names = ['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h'];
    const ips = ['100.64.0.2', '100.64.0.3', '100.64.0.4'];
    const pool = names.map((n) => certFor(n, { overlayIp: ips[Math.floor(r() * ips.length)]!, now: T0 + Math.floor(r() * 4) * 1000 }));
    for (let round = 0; round < 200; round++) {
      const chosen = pool.filter(() => r() < 0.6);
      const shuffled = [...chosen].sort(() => r() - 0.5);
      const records = shuffled.map((c) => rec(c.name, c, { overlayIp: c.overlayIp }));
      const leases = new Map<string, string | null>(ips.map((ip) => [ip, r() < 0.3 ? null : names[Math.floor(r() * names.length)]!]));
      const out = computePeers(inputs(records, {}, { leases }));
      const plain = computePeers(inputs([...records].reverse(), {}, { leases: new Map() }));
      expect([...out.peers.keys()]).toEqual([...plain.peers.keys()]);
      expect(out.conflicts).toEqual(plain.conflicts);
      for (const ip of ips) {
        const claimants = chosen.filter((c) => c.overlayIp === ip).sort(certPrecedence);
        const holders = [...out.peers.values()].filter((p) => p.overlayIp === ip).map((p) => p.name);
        expect(holders).toEqual(claimants.slice(0, 1).map((c) => c.name));
        expect(out.conflicts.filter((c) => c.overlayIp === ip).map((c) => c.loser.name)).toEqual(claimants.slice(1).map((c) => c.name));
      }
    }
  });

  it('a revoked or expired older certificate holds nothing: the newer one is the only claimant', () => {
    const a = certFor('a', { now: T0, validDays: 1 });
    const b = certFor('b', { overlayIp: IP['a'], now: T0 + 1000 });
    const expired = computePeers(inputs([rec('a', a), rec('b', b, { overlayIp: IP['a'] })], { now: T0 + 2 * DAY }));
    expect([...expired.peers.keys()]).toEqual(['b']);
    expect(expired.conflicts).toEqual([]);
    const rev = signRevocation(ed, net.secretKey, { network: 'demo', name: 'a', now: new Date(T0 + 500) });
    const revoked = computePeers(inputs([rec('a', certFor('a', { now: T0 })), rec('b', b, { overlayIp: IP['a'] })], { revocations: new Map([['a', [rev]]]) }));
    expect([...revoked.peers.keys()]).toEqual(['b']);
    expect(revoked.conflicts).toEqual([]);
  });

  it('a revoked host is gone at once: by name, or by its serial only', () => {
    const a = certFor('a');
    const byNameRev = signRevocation(ed, net.secretKey, { network: 'demo', name: 'a', now: new Date(T0 + 1000) });
    const revocations = new Map<string, RevocationRecord[]>([['a', [byNameRev]]]);
    const out = computePeers(inputs([rec('a', a), rec('b', certFor('b'))], { revocations }));
    expect([...out.peers.keys()]).toEqual(['b']);
    expect(out.rejected[0]).toMatchObject({ name: 'a', trust: 'revoked' });
    expect(out.rejected[0]!.error).toMatch(/^cert: revoked at 2026-11-21T00:00:01.000Z/);

    // A certificate issued after the by-name revocation is a new, valid membership.
    const renewed = certFor('a', { now: T0 + 2000 });
    expect([...computePeers(inputs([rec('a', renewed)], { revocations })).peers.keys()]).toEqual(['a']);
    // A serial revocation does not touch other certificates of the same host.
    const bySerial = new Map([['a', [signRevocation(ed, net.secretKey, { network: 'demo', name: 'a', serial: a.serial })]]]);
    expect(computePeers(inputs([rec('a', a)], { revocations: bySerial })).peers.size).toBe(0);
    expect(computePeers(inputs([rec('a', renewed)], { revocations: bySerial })).peers.size).toBe(1);
  });

  it('when our own certificate is revoked or expired, we have no peers', () => {
    const me = certFor('me', { validDays: 2 });
    const records = [rec('me', me), rec('a', certFor('a'))];
    expect(computePeers(inputs(records, { selfCert: me })).peers.size).toBe(1);
    const revoked = computePeers(
      inputs(records, { selfCert: me, revocations: new Map([['me', [signRevocation(ed, net.secretKey, { network: 'demo', name: 'me', now: new Date(T0 + 1) })]]]) }),
    );
    expect(revoked.peers.size).toBe(0);
    expect(revoked.selfProblem).toMatch(/^our own certificate was revoked at/);
    const expired = computePeers(inputs(records, { selfCert: me, now: T0 + 3 * DAY }));
    expect(expired.peers.size).toBe(0);
    expect(expired.selfProblem).toMatch(/^our own certificate: cert\.notAfter: expired/);
  });

  it('without trust (a network made before certificates) records are not checked', () => {
    const out = computePeers(inputs([rec('a', undefined), rec('b', certFor('b', { key: attacker.secretKey }))], {}, { trust: undefined }));
    expect([...out.peers.keys()]).toEqual(['a', 'b']);
  });
});

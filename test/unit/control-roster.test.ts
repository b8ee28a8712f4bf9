import { beforeAll, describe, expect, it } from 'vitest';
import { signRevocation, type TrustAnchor } from '../../src/control/cert';
import { computePeers, type HostEntry, type PeerInputs } from '../../src/control/peers';
import type { HostCert, HostRecord } from '../../src/control/records';
import { Candidate, Roster, SILENCE_MS } from '../../src/control/roster';
import { parsePrefix } from '../../src/util/ipv4';
import { DAY, hostEntry, hostRecord, T0, trustFixture, type TrustFixture } from '../helpers/trust';

/** Membership is the certificate: etcd's record and alive key are hints (roster.ts, peers.ts `kept`). */

let anchor: TrustAnchor;
let fx: TrustFixture;

beforeAll(async () => {
  fx = await trustFixture();
  anchor = fx.anchor;
});

const certFor = (name: string, validDays?: number): HostCert => fx.certFor(name, { validDays });
const rec = (name: string, cert: HostCert | undefined, over: Partial<HostRecord> = {}): HostRecord => hostRecord(name, cert, { epoch: 10, ...over });
const entry = (r: HostRecord): HostEntry => hostEntry(r);

function inputs(records: (HostRecord | HostEntry)[], p: Partial<PeerInputs> = {}, now = T0 + DAY): PeerInputs {
  const hosts = new Map<string, HostEntry>();
  for (const r of records) {
    if ('modRevision' in r) hosts.set(r.parsed.ok ? r.parsed.value.name : 'a', r);
    else hosts.set(r.name, entry(r));
  }
  return {
    self: 'me',
    cidr: parsePrefix('100.64.0.0/24')!,
    cidrText: '100.64.0.0/24',
    hosts,
    alive: new Set(),
    leases: new Map(),
    trust: { anchor, now, revocations: new Map() },
    ...p,
  };
}

const views = (c: Map<string, Candidate>) => Object.fromEntries([...c].map(([n, v]) => [n, [v.etcd, v.record.epoch]]));

describe('computePeers with held records', () => {
  it('a deleted record, a forged one and an older valid one leave the held record standing', () => {
    const a = rec('a', certFor('a'));
    const kept = new Map([['a', a]]);
    expect(views(computePeers(inputs([], { kept })).candidates)).toEqual({ a: ['absent', 10] });

    const forged = rec('a', { ...certFor('a'), signature: certFor('b').signature }, { epoch: 99, endpoints: ['198.18.9.9:1'] });
    const out = computePeers(inputs([forged], { kept }));
    expect(views(out.candidates)).toEqual({ a: ['invalid', 10] });
    expect(out.candidates.get('a')!.record.endpoints).toEqual(['198.18.1.2:51820']);
    expect(out.rejected.map((r) => r.trust)).toEqual(['untrusted']);

    const garbage: HostEntry = { modRevision: '7', parsed: { ok: false, error: 'not JSON' } };
    expect(views(computePeers(inputs([garbage], { kept })).candidates)).toEqual({ a: ['invalid', 10] });

    const replay = rec('a', certFor('a'), { epoch: 9, endpoints: ['198.18.9.9:1'] });
    const old = computePeers(inputs([replay], { kept }));
    expect(views(old.candidates)).toEqual({ a: ['invalid', 10] });
    expect(old.rejected.map((r) => r.trust)).toEqual(['stale']);
  });

  it('a newer valid record replaces the held one', () => {
    const kept = new Map([['a', rec('a', certFor('a'))]]);
    const newer = rec('a', certFor('a'), { epoch: 11, endpoints: ['198.18.7.7:51820'] });
    const out = computePeers(inputs([newer], { kept }));
    expect(views(out.candidates)).toEqual({ a: ['present', 11] });
    expect(out.candidates.get('a')!.record.endpoints).toEqual(['198.18.7.7:51820']);
  });

  it('a held record goes when its certificate is revoked or expires', () => {
    const cert = certFor('a', 1);
    const kept = new Map([['a', rec('a', cert)]]);
    expect(computePeers(inputs([], { kept }, T0 + DAY / 2)).candidates.size).toBe(1);
    expect(computePeers(inputs([], { kept }, T0 + 2 * DAY)).candidates.size).toBe(0);
    const revocation = signRevocation(fx.ed, fx.net.secretKey, { network: 'demo', name: 'a', serial: null, now: new Date(T0 + DAY / 4) });
    const p = inputs([], { kept }, T0 + DAY / 2);
    expect(computePeers({ ...p, trust: { ...p.trust!, revocations: new Map([['a', [revocation]]]) } }).candidates.size).toBe(0);
  });
});

describe('Roster', () => {
  const cand = (etcd: Candidate['etcd'], epoch = 10): Candidate => ({ record: rec('a', undefined, { epoch }), etcd });
  const one = (etcd: Candidate['etcd'], epoch = 10) => new Map([['a', cand(etcd, epoch)]]);
  const names = (o: { members: Map<string, unknown> }) => [...o.members.keys()];

  it('etcd introduces a host with a record and an alive key; a record alone does not', () => {
    const r = new Roster();
    expect(names(r.update({ candidates: one('present'), alive: new Set(), now: T0 }))).toEqual([]);
    expect(names(r.update({ candidates: one('present'), alive: new Set(['a']), now: T0 }))).toEqual(['a']);
  });

  it('a member stays without an alive key and without a record, and says which in its view', () => {
    const r = new Roster();
    r.update({ candidates: one('present'), alive: new Set(['a']), now: T0 });
    const noAlive = r.update({ candidates: one('present'), alive: new Set(), now: T0 + 1000 });
    expect(noAlive.members.get('a')!.etcd).toEqual({ record: 'present', alive: false });
    expect(noAlive.nextCheck).toBeNull(); // a record in etcd: no silence clock
    const gone = r.update({ candidates: one('absent'), alive: new Set(), now: T0 + 2000 });
    expect(gone.members.get('a')!.etcd).toEqual({ record: 'absent', alive: false });
    expect(gone.nextCheck).toBe(T0 + 1000 + SILENCE_MS); // last sign: the record at T0 + 1000
    const forged = r.update({ candidates: one('invalid'), alive: new Set(), now: T0 + 3000 });
    expect(forged.members.get('a')!.etcd).toEqual({ record: 'invalid', alive: false });
  });

  it('a member never heard from in this process leaves with its alive key (only etcd vouched for it); one heard from stays', () => {
    const r = new Roster();
    let heard = 0;
    const heardAt = () => heard;
    expect(names(r.update({ candidates: one('present'), alive: new Set(['a']), now: T0, heardAt }))).toEqual(['a']);
    const gone = r.update({ candidates: one('present'), alive: new Set(), now: T0 + 1000, heardAt });
    expect(names(gone)).toEqual([]);
    expect(gone.left).toEqual([{ name: 'a', why: 'silent' }]);
    heard = T0 + 1500; // back with an alive key, and a session this time
    expect(names(r.update({ candidates: one('present', 11), alive: new Set(['a']), now: T0 + 2000, heardAt }))).toEqual(['a']);
    expect(names(r.update({ candidates: one('present', 11), alive: new Set(), now: T0 + 3000, heardAt }))).toEqual(['a']);
    // before etcd was read at all (start from the cache while etcd is down), nothing leaves
    const cold = new Roster();
    cold.seed(['a'], T0);
    expect(names(cold.update({ candidates: one('present'), alive: new Set(), now: T0 + 10, heardAt: () => 0, etcdRead: false }))).toEqual(['a']);
  });

  it('without a record, an alive key or a packet for SILENCE_MS, a member leaves; a packet keeps it', () => {
    const r = new Roster();
    r.update({ candidates: one('present'), alive: new Set(['a']), now: T0 });
    let heard = T0 + SILENCE_MS - 1000; // authenticated packets keep coming
    const heardAt = () => heard;
    const t1 = T0 + SILENCE_MS + 5000;
    const still = r.update({ candidates: one('absent'), alive: new Set(), now: t1, heardAt });
    expect(names(still)).toEqual(['a']);
    expect(still.nextCheck).toBe(heard + SILENCE_MS);
    // silence from here on: the last packet stays at `heard`
    const justBefore = r.update({ candidates: one('absent'), alive: new Set(), now: T0 + 2 * SILENCE_MS - 1001, heardAt });
    expect(names(justBefore)).toEqual(['a']);
    const after = r.update({ candidates: one('absent'), alive: new Set(), now: T0 + 2 * SILENCE_MS - 1000, heardAt });
    expect(names(after)).toEqual([]);
    expect(after.left).toEqual([{ name: 'a', why: 'silent' }]);
    // Gone for good: a record alone does not bring it back, a record with an alive key does.
    expect(names(r.update({ candidates: one('present', 11), alive: new Set(), now: T0 + 3 * SILENCE_MS }))).toEqual([]);
    expect(names(r.update({ candidates: one('present', 11), alive: new Set(['a']), now: T0 + 3 * SILENCE_MS }))).toEqual(['a']);
  });

  it('an alive key alone (record deleted) also counts as a sign of life', () => {
    const r = new Roster();
    r.update({ candidates: one('present'), alive: new Set(['a']), now: T0 });
    const out = r.update({ candidates: one('absent'), alive: new Set(['a']), now: T0 + 5 * SILENCE_MS });
    expect(names(out)).toEqual(['a']);
    expect(out.nextCheck).toBeNull();
  });

  it('a bye removes a member at once; it returns only with a newer record', () => {
    const r = new Roster();
    r.update({ candidates: one('present'), alive: new Set(['a']), now: T0 });
    expect(r.bye('b', 1)).toBe(false); // not a member
    expect(r.bye('a', 10)).toBe(true);
    const after = r.update({ candidates: one('present'), alive: new Set(['a']), now: T0 + 1 }); // alive key not yet expired
    expect(names(after)).toEqual([]);
    expect(after.left).toEqual([{ name: 'a', why: 'bye' }]);
    expect(names(r.update({ candidates: one('invalid', 10), alive: new Set(['a']), now: T0 + 2 }))).toEqual([]);
    expect(names(r.update({ candidates: one('present', 11), alive: new Set(['a']), now: T0 + 3 }))).toEqual(['a']);
  });

  it('a member that said bye and came back by a handshake stays although its alive key is gone and no packet came yet', () => {
    // It stopped on purpose (bye; its alive key revoked), then etcd went away, then it restarted:
    // etcd still shows its old record and no alive key, and our data plane has heard nothing of
    // the new run (its handshake is being answered right now).
    const r = new Roster();
    r.update({ candidates: one('present'), alive: new Set(['a']), now: T0, heardAt: () => T0 });
    expect(r.bye('a', 10)).toBe(true);
    expect(names(r.update({ candidates: one('present'), alive: new Set(), now: T0 + 1, heardAt: () => 0 }))).toEqual([]);
    expect(r.returned('a', T0 + 2)).toBe(true);
    const back = r.update({ candidates: one('present'), alive: new Set(), now: T0 + 2, heardAt: () => 0 });
    expect(names(back)).toEqual(['a']);
    expect(back.left).toEqual([]);
    // and it falls silent like any member: SILENCE_MS without a record, an alive key or a packet
    expect(names(r.update({ candidates: one('absent'), alive: new Set(), now: T0 + 2 + SILENCE_MS - 1, heardAt: () => 0 }))).toEqual(['a']);
    expect(names(r.update({ candidates: one('absent'), alive: new Set(), now: T0 + 2 + SILENCE_MS, heardAt: () => 0 }))).toEqual([]);
  });

  it('a member whose certificate stops being valid (no longer a candidate) leaves', () => {
    const r = new Roster();
    r.update({ candidates: one('present'), alive: new Set(['a']), now: T0 });
    const out = r.update({ candidates: new Map(), alive: new Set(['a']), now: T0 + 1 });
    expect(names(out)).toEqual([]);
    expect(out.left).toEqual([{ name: 'a', why: 'certificate' }]);
  });

  it('seeded members (the cache file) stay without an alive key, and their silence counts from the seed', () => {
    const r = new Roster();
    r.seed(['a'], T0);
    expect(names(r.update({ candidates: one('present'), alive: new Set(), now: T0 + 1 }))).toEqual(['a']);
    const r2 = new Roster();
    r2.seed(['a'], T0);
    expect(names(r2.update({ candidates: one('absent'), alive: new Set(), now: T0 + SILENCE_MS - 1 }))).toEqual(['a']);
    expect(names(r2.update({ candidates: one('absent'), alive: new Set(), now: T0 + SILENCE_MS }))).toEqual([]);
  });
});

describe('Roster before etcd was ever read', () => {
  it('nobody falls silent while the record state is unknown (started from the cache, etcd out of reach)', () => {
    const r = new Roster();
    r.seed(['a'], T0);
    const cand = new Map([['a', { record: rec('a', undefined), etcd: 'absent' as const }]]);
    const out = r.update({ candidates: cand, alive: new Set(), now: T0 + 5 * SILENCE_MS, etcdRead: false });
    expect([...out.members.keys()]).toEqual(['a']);
    expect(out.nextCheck).toBeNull();
    // Once etcd has been read and has no record, the silence counts from the seed.
    expect([...r.update({ candidates: cand, alive: new Set(), now: T0 + 5 * SILENCE_MS }).members.keys()]).toEqual([]);
  });
});

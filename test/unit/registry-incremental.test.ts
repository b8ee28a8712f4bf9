import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { issueCert, signGrant } from '../../src/control/cert';
import { aliveKey, hostKey } from '../../src/control/keys';
import { serializeHostRecord, type HostCert, type HostRecord, type NetworkSpec } from '../../src/control/records';
import { PeerCache } from '../../src/control/peer-cache';
import { Registry, type PeerChange } from '../../src/control/registry';
import { createRootLogger } from '../../src/log';
import { formatIpv4, parseOverlayCidr } from '../../src/util/ipv4';
import { FakeEtcd } from '../helpers/fake-etcd';
import { DAY, T0, trustFixture, type TrustFixture } from '../helpers/trust';

/**
 * Issue 11, "work per change proportional to the change": in a network of 1,000 hosts, one host's
 * change costs the registry a small constant amount of work (records checked, addresses decided,
 * roster steps, cache writes), not N. Each change is also checked against what a fresh registry
 * computes from the same etcd content with a full evaluation.
 */

const N = 1000;
const name = (i: number) => `h${String(i).padStart(4, '0')}`;
const ipOf = (i: number) => formatIpv4((100 << 24) + (64 << 16) + 256 + i); // 100.64.1.0 + i
const keyOf = (i: number) => {
  const b = Buffer.alloc(32, 0x11);
  b.writeUInt32BE(i + 1, 0);
  return b.toString('base64');
};

let fx: TrustFixture;
let spec: NetworkSpec;
let dir: string;
const certs = new Map<number, HostCert>();
const silent = createRootLogger('silent');
const now = () => T0 + DAY;

function cert(i: number, over: { name?: string; issuedAt?: number } = {}): HostCert {
  return issueCert(fx.ed, fx.net.secretKey, {
    network: 'demo',
    name: over.name ?? name(i),
    publicKey: keyOf(over.name ? 5000 + i : i),
    overlayIp: ipOf(i),
    now: new Date(over.issuedAt ?? T0),
  });
}

function record(i: number, epoch: number, c: HostCert = certs.get(i)!): HostRecord {
  return {
    version: 1,
    name: c.name,
    network: 'demo',
    overlayIp: c.overlayIp,
    publicKey: c.publicKey,
    endpoints: [`198.18.${(i >> 8) & 255}.${i & 255}:${51820 + (epoch % 1000)}`],
    hostCidrs: [],
    listenPort: 51820,
    epoch,
    updated: '2026-11-21T00:00:00.000Z',
    session: '0123456789abcdef',
    cert: c,
  };
}

beforeAll(async () => {
  fx = await trustFixture();
  spec = { version: 1, name: 'demo', cidr: '100.64.0.0/16', mtu: 1420, port: 51820, created: '2026-11-21T00:00:00.000Z', trustAnchor: fx.anchor.publicKey };
  for (let i = 0; i < N; i++) certs.set(i, cert(i));
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cladnet-incr-'));
});

afterAll(() => {
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

const settle = () => new Promise((r) => setImmediate(r));

function newRegistry(fake: FakeEtcd, cacheFile?: string, selfCert = fx.certFor('me')): Registry {
  return new Registry({ client: fake.client(), network: spec, self: 'me', log: silent, now, trust: fx.anchor, selfCert, cacheFile });
}

/** What a fresh registry (one full evaluation, no cache) makes of the same etcd content. */
async function fullView(fake: FakeEtcd, selfCert?: HostCert): Promise<string[]> {
  const reg = newRegistry(fake, undefined, selfCert);
  let out: string[] = [];
  await reg.watch((p) => void (out = [...p.values()].map((r) => `${r.name}@${r.epoch}`)));
  await reg.close();
  return out;
}

const view = (reg: Registry) => [...reg.peers().values()].map((r) => `${r.name}@${r.epoch}`);

describe('one host change in a network of 1,000 hosts', () => {
  it('costs the registry a constant amount of work, and ends where a full evaluation does', async () => {
    const fake = new FakeEtcd();
    for (let i = 0; i < N; i++) {
      fake.put(hostKey('demo', name(i)), serializeHostRecord(record(i, 10)));
      fake.put(aliveKey('demo', name(i)), '{"version":1}');
    }
    const cacheFile = path.join(dir, 'state', 'peers.json');
    const reg = newRegistry(fake, cacheFile);
    const changes: PeerChange[] = [];
    await reg.watchChanges((c) => void changes.push(c));
    expect(changes).toHaveLength(1);
    expect(changes[0]!.added.size).toBe(N);
    const loaded = reg.work();
    expect(loaded.fullEvaluations).toBe(1);
    expect(loaded.recordsChecked).toBeGreaterThanOrEqual(N); // the load itself looks at every record

    // 1. republishes: one changed peer each, a few records checked, one address decided
    const times: number[] = [];
    const epochs = new Map<number, number>();
    for (let k = 0; k < 200; k++) {
      const i = (k * 7919) % N;
      const epoch = (epochs.get(i) ?? 10) + 1;
      epochs.set(i, epoch);
      const before = reg.work();
      const t = performance.now();
      fake.put(hostKey('demo', name(i)), serializeHostRecord(record(i, epoch)));
      await settle();
      times.push(performance.now() - t);
      const after = reg.work();
      const c = changes.at(-1)!;
      expect(changes).toHaveLength(k + 2);
      expect([...c.changed.keys()]).toEqual([name(i)]);
      expect(c.added.size + c.removed.size).toBe(0);
      expect(after.fullEvaluations).toBe(before.fullEvaluations);
      expect(after.recordsChecked - before.recordsChecked).toBeLessThanOrEqual(2);
      expect(after.addressesResolved - before.addressesResolved).toBeLessThanOrEqual(2);
      expect(after.rosterSteps - before.rosterSteps).toBeLessThanOrEqual(2);
    }
    // The cache file: one write for the load, then at most one for the whole burst (coalesced;
    // what a write of member changes alone costs: test/unit/peer-cache.test.ts).
    expect(reg.work().cacheWrites - loaded.cacheWrites).toBeLessThanOrEqual(1);
    times.sort((a, b) => a - b);
    console.log(`N=${N}: one republish, registry to callback: p50 ${times[100]!.toFixed(3)} ms, max ${times.at(-1)!.toFixed(3)} ms`);

    // 2. an alive key goes and comes back: only that host is looked at
    let before = reg.work();
    fake.del(aliveKey('demo', name(3)));
    fake.put(aliveKey('demo', name(3)), '{"version":1}');
    await settle();
    expect(reg.work().rosterSteps - before.rosterSteps).toBeLessThanOrEqual(1);
    expect(reg.work().fullEvaluations).toBe(before.fullEvaluations);

    // 3. a later certificate for h0007's address: refused, the holder untouched, one address decided
    before = reg.work();
    const n0 = changes.length;
    const thief = cert(7, { name: 'thief', issuedAt: T0 + 3_600_000 });
    fake.put(hostKey('demo', 'thief'), serializeHostRecord(record(7, 50, thief)));
    fake.put(aliveKey('demo', 'thief'), '{"version":1}');
    await settle();
    expect(changes).toHaveLength(n0); // nothing changed in the peer set
    expect(reg.addressConflicts().map((c) => [c.overlayIp, c.winner.name, c.loser.name])).toEqual([[ipOf(7), name(7), 'thief']]);
    let after = reg.work();
    expect(after.addressesResolved - before.addressesResolved).toBeLessThanOrEqual(2);
    expect(after.recordsChecked - before.recordsChecked).toBeLessThanOrEqual(2);

    // 4. an earlier certificate for h0009's address: it takes the address, h0009 leaves
    before = reg.work();
    const early = cert(9, { name: 'early', issuedAt: T0 - 3_600_000 });
    fake.put(hostKey('demo', 'early'), serializeHostRecord(record(9, 50, early)));
    fake.put(aliveKey('demo', 'early'), '{"version":1}');
    await settle();
    const c = changes.at(-1)!;
    expect([...c.added.keys()]).toEqual(['early']);
    expect([...c.removed]).toEqual([name(9)]);
    after = reg.work();
    expect(after.fullEvaluations).toBe(before.fullEvaluations);
    expect(after.addressesResolved - before.addressesResolved).toBeLessThanOrEqual(2);
    expect(after.rosterSteps - before.rosterSteps).toBeLessThanOrEqual(3);

    // 5. a deleted record: the member stays on its last record (membership is the certificate)
    fake.del(hostKey('demo', name(11)));
    await settle();
    expect(reg.peers().get(name(11))?.epoch).toBe(10);
    expect(reg.etcdView(name(11))).toEqual({ record: 'absent', alive: true });

    // The peer set equals a full evaluation of the same etcd content (h0011 held: etcd lost its record).
    const full = await fullView(fake);
    expect(view(reg).filter((v) => !v.startsWith(`${name(11)}@`))).toEqual(full);
    expect(view(reg)).toHaveLength(N); // N - h0009 + early, h0011 held
    expect(reg.stats().peers).toBe(N);

    // Closing writes the cache once more, atomically, 0600, with the newest records; no temp file left.
    const writes = reg.work().cacheWrites;
    await reg.close();
    expect(reg.work().cacheWrites).toBe(writes + 1);
    // (the snapshot and its journal, read as the next start reads them)
    const reader = new PeerCache({ file: cacheFile, network: spec, cidr: parseOverlayCidr(spec.cidr), self: 'me', log: silent, now });
    const doc = (await reader.read()) as unknown as { peers: HostRecord[] };
    expect(doc).not.toBeNull();
    const last = (changes.at(-2)!.changed.values().next().value ?? null) as HostRecord | null;
    expect(last).not.toBeNull();
    expect(doc.peers.find((p) => p.name === last!.name)?.epoch).toBe(last!.epoch);
    expect(doc.peers.map((p) => p.name)).toContain('early');
    expect(fs.statSync(cacheFile).mode & 0o777).toBe(0o600);
    expect(fs.statSync(`${cacheFile}.journal`).mode & 0o777).toBe(0o600);
    expect(fs.readdirSync(path.dirname(cacheFile)).sort()).toEqual(['peers.json', 'peers.json.journal']);

    // Restarted with that cache and etcd up: the first change still lists every peer as added
    // (the cached members are the starting point of the evaluation, not news already delivered).
    const again = newRegistry(fake, cacheFile);
    const first: PeerChange[] = [];
    await again.watchChanges((ch) => void first.push(ch));
    expect(first).toHaveLength(1);
    expect(first[0]!.added.size).toBe(N);
    expect([...first[0]!.added.keys()].sort()).toEqual(view(again).map((v) => v.split('@')[0]).sort());
    await again.close();
  }, 120_000);
});

describe('one host change in a network of 1,000 hosts that all joined with a token (we too)', () => {
  it('costs the registry a constant amount of work and no full evaluation, and ends where a full evaluation does', async () => {
    const HOUR = 3_600_000;
    const delegate = fx.ed.generate();
    // two tokens: one with a use per host, one for us and the later arrivals
    const [fleet, more] = [N, 10].map((uses) =>
      signGrant(fx.ed, fx.net.secretKey, { network: 'demo', names: '*', uses, ttlMs: 48 * HOUR, certDays: 30, delegateKey: Buffer.from(delegate.publicKey).toString('base64'), now: new Date(T0 - HOUR) }),
    );
    const tokenCert = (name: string, use: number, publicKey: string, overlayIp: string, at = T0) =>
      issueCert(fx.ed, delegate.secretKey, { network: 'demo', name, publicKey, overlayIp, validDays: 30, now: new Date(at), token: use > N ? { grant: more!, use: use - N } : { grant: fleet!, use } });
    const tcerts = new Map<number, HostCert>();
    for (let i = 0; i < N; i++) tcerts.set(i, tokenCert(name(i), i + 1, keyOf(i), ipOf(i)));
    const mine = tokenCert('me', N + 1, keyOf(9000), '100.64.0.1', T0 - HOUR / 2);
    const fake = new FakeEtcd();
    for (let i = 0; i < N; i++) {
      fake.put(hostKey('demo', name(i)), serializeHostRecord(record(i, 10, tcerts.get(i)!)));
      fake.put(aliveKey('demo', name(i)), '{"version":1}');
    }
    const reg = newRegistry(fake, undefined, mine);
    const changes: PeerChange[] = [];
    await reg.watchChanges((c) => void changes.push(c));
    expect(changes[0]!.added.size).toBe(N);
    expect(reg.work().fullEvaluations).toBe(1);

    // 1. republishes: per change, the most any one cost
    const most = { fullEvaluations: 0, recordsChecked: 0, addressesResolved: 0, rosterSteps: 0 };
    const epochs = new Map<number, number>();
    const times: number[] = [];
    for (let k = 0; k < 100; k++) {
      const i = (k * 7919) % N;
      const epoch = (epochs.get(i) ?? 10) + 1;
      epochs.set(i, epoch);
      const before = reg.work();
      const t = performance.now();
      fake.put(hostKey('demo', name(i)), serializeHostRecord(record(i, epoch, tcerts.get(i)!)));
      await settle();
      times.push(performance.now() - t);
      const after = reg.work();
      for (const f of Object.keys(most) as (keyof typeof most)[]) most[f] = Math.max(most[f], after[f] - before[f]);
      expect([...changes.at(-1)!.changed.keys()]).toEqual([name(i)]);
    }
    times.sort((a, b) => a - b);
    console.log(`N=${N}, every host and we with a token certificate: one republish costs at most ${JSON.stringify(most)}; registry to callback p50 ${times[50]!.toFixed(3)} ms, max ${times.at(-1)!.toFixed(3)} ms`);
    expect(most).toEqual({ fullEvaluations: 0, recordsChecked: 1, addressesResolved: 1, rosterSteps: 1 });

    // 2. a thief signs h0005's use again (another name, key and address): refused, nobody else looked at
    let before = reg.work();
    const n0 = changes.length;
    const thief = tokenCert('thief', 6, keyOf(7000), '100.64.0.9', T0 + 60_000); // (later: a fresh registry picks h0005 too)
    fake.put(hostKey('demo', 'thief'), serializeHostRecord(record(7000, 50, thief)));
    fake.put(aliveKey('demo', 'thief'), '{"version":1}');
    await settle();
    expect(changes).toHaveLength(n0);
    let after = reg.work();
    expect(after.fullEvaluations).toBe(before.fullEvaluations);
    expect(after.recordsChecked - before.recordsChecked).toBeLessThanOrEqual(2);

    // 3. a token certificate (a fresh use) for h0006's name with another key: no takeover; h0006
    //    stays on its last record, etcd's is refused
    before = reg.work();
    const takeover = tokenCert(name(6), N + 2, keyOf(7001), '100.64.0.10');
    fake.put(hostKey('demo', name(6)), serializeHostRecord(record(6, 99, takeover)));
    await settle();
    expect(reg.peers().get(name(6))?.publicKey).toBe(keyOf(6));
    expect(reg.etcdView(name(6))?.record).toBe('invalid');
    after = reg.work();
    expect(after.fullEvaluations).toBe(before.fullEvaluations);
    expect(after.recordsChecked - before.recordsChecked).toBeLessThanOrEqual(2);
    expect(after.rosterSteps - before.rosterSteps).toBeLessThanOrEqual(1);

    // 4. a new host joins with the next use: added, O(1)
    before = reg.work();
    const joined = tokenCert('newcomer', N + 3, keyOf(7002), '100.64.0.11');
    fake.put(hostKey('demo', 'newcomer'), serializeHostRecord(record(7002, 1, joined)));
    fake.put(aliveKey('demo', 'newcomer'), '{"version":1}');
    await settle();
    expect([...changes.at(-1)!.added.keys()]).toEqual(['newcomer']);
    after = reg.work();
    expect(after.fullEvaluations).toBe(before.fullEvaluations);
    expect(after.recordsChecked - before.recordsChecked).toBeLessThanOrEqual(2);
    expect(after.rosterSteps - before.rosterSteps).toBeLessThanOrEqual(2);

    // The peer set equals a full evaluation of the same etcd content (but h0006: a fresh registry
    // never saw its first certificate, so it accepts the takeover, the case the memory is for).
    const full = await fullView(fake, mine);
    const strip = (l: string[]) => l.filter((v) => !v.startsWith(`${name(6)}@`));
    expect(strip(view(reg))).toEqual(strip(full));
    expect(view(reg)).toHaveLength(N + 1);
    await reg.close();
  }, 120_000);
});

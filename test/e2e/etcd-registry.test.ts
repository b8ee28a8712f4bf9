import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Etcd3 } from 'etcd3';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createEtcd } from '../../src/control/etcd';
import { aliveKey, hostKey } from '../../src/control/keys';
import { leaseOverlayIp } from '../../src/control/leases';
import { createNetwork } from '../../src/control/networks';
import { HostRecord, NetworkSpec, serializeHostRecord } from '../../src/control/records';
import { PeerSnapshot, Registry } from '../../src/control/registry';
import { createRootLogger, Logger } from '../../src/log';
import { EtcdHandle, freePort, startEtcd, waitFor } from '../helpers/etcd';

const key = (n: number) => Buffer.alloc(32, n).toString('base64');

function record(name: string, overlayIp: string, extra: Partial<HostRecord> = {}): HostRecord {
  return {
    version: 1,
    name,
    network: 'demo',
    overlayIp,
    publicKey: key(name.length + name.charCodeAt(0)),
    endpoints: ['198.18.1.2:51820'],
    hostCidrs: ['198.18.1.0/24'],
    listenPort: 51820,
    epoch: 0,
    updated: new Date().toISOString(),
    session: '0123456789abcdef',
    ...extra,
  };
}

interface LogLine {
  level: number;
  msg: string;
  [k: string]: unknown;
}

function memoryLogger(): { log: Logger; lines: LogLine[] } {
  const lines: LogLine[] = [];
  const log = createRootLogger('debug', { write: (s: string) => void lines.push(JSON.parse(s) as LogLine) });
  return { log, lines };
}

/** Collects every snapshot a registry delivers. */
function recorder() {
  const calls: PeerSnapshot[] = [];
  return {
    calls,
    onPeers: (p: PeerSnapshot) => void calls.push(p),
    last: () => calls[calls.length - 1],
    names: () => [...(calls[calls.length - 1]?.keys() ?? [])],
  };
}

let etcd: EtcdHandle;
let client: Etcd3;
let spec: NetworkSpec;
const toClose: { close(): unknown }[] = [];

function newClient(): Etcd3 {
  const c = createEtcd({ endpoints: [etcd.endpoint] });
  toClose.push(c);
  return c;
}

function newRegistry(self: string, opts: { cacheFile?: string; now?: () => number; client?: Etcd3 } = {}) {
  const { log, lines } = memoryLogger();
  const reg = new Registry({ client: opts.client ?? newClient(), network: spec, self, log, ...opts });
  toClose.unshift(reg); // registries close before clients
  return { reg, lines };
}

beforeAll(async () => {
  etcd = await startEtcd();
  client = createEtcd({ endpoints: [etcd.endpoint] });
  spec = await createNetwork(client, { name: 'demo', cidr: '100.64.0.0/24' });
});

afterEach(async () => {
  for (const c of toClose.splice(0)) await c.close();
  await client.delete().prefix('/cladnet/v1/networks/demo/');
});

afterAll(async () => {
  client?.close();
  await etcd?.stop();
});

describe('Registry against a real etcd', () => {
  it('sees a peer within 2 s of publish + alive, and sees it go when it stops being alive', async () => {
    const watcher = newRegistry('w');
    const rec = recorder();
    expect(await watcher.reg.watch(rec.onPeers)).toBe('etcd');
    expect(rec.calls).toHaveLength(1); // the initial (empty) snapshot, delivered before watch() resolves
    expect(rec.last()!.size).toBe(0);
    expect(watcher.reg.connected()).toBe(true);

    const peer = newRegistry('p');
    const ip = await leaseOverlayIp(client, spec, 'p', key(9));
    const t0 = Date.now();
    const res = await peer.reg.publish(record('p', ip, { publicKey: key(9) }));
    expect(res.written).toBe(true);
    // Published but not alive: not a peer yet.
    await peer.reg.startAlive();
    await waitFor(() => rec.last()?.has('p'), 2000, 'peer p to appear');
    expect(Date.now() - t0).toBeLessThan(2000);
    const seen = rec.last()!.get('p')!;
    expect(seen).toMatchObject({ name: 'p', overlayIp: ip, publicKey: key(9), endpoints: ['198.18.1.2:51820'] });
    expect(Object.isFrozen(seen)).toBe(true);
    expect(() => (rec.last() as Map<string, HostRecord>).set('x', seen)).toThrow(/read-only/);

    await peer.reg.stopAlive();
    await waitFor(() => watcher.reg.etcdView('p')?.alive === false, 2000, 'p seen without its alive key');
    // Only liveness went; the record stays for the next start.
    expect(await client.get(aliveKey('demo', 'p')).string()).toBeNull();
    expect(await client.get(hostKey('demo', 'p')).string()).not.toBeNull();
    // Liveness is a hint: p stays a member (its certificate would decide; this network has none).
    expect(rec.names()).toEqual(['p']);
    expect(watcher.reg.etcdView('p')).toEqual({ record: 'present', alive: false });
    // It leaves when it says so (the agent passes on a bye that came over p's tunnel)...
    expect(watcher.reg.bye('p')).toBe(true);
    expect(rec.names()).toEqual([]);
    expect(watcher.reg.bye('p')).toBe(false);
    // ...and comes back with a newer record and an alive key (a restart).
    await peer.reg.publish(record('p', ip, { publicKey: key(9) }));
    await client.put(aliveKey('demo', 'p')).value('{}');
    await waitFor(() => rec.last()?.has('p'), 2000, 'peer p back');
  });

  it('keeps a member whose record is deleted, with its last record, until a new one arrives', async () => {
    const watcher = newRegistry('w');
    const rec = recorder();
    await watcher.reg.watch(rec.onPeers);
    const peer = newRegistry('p');
    await peer.reg.publish(record('p', '100.64.0.20', { publicKey: key(9) }));
    await peer.reg.startAlive();
    await waitFor(() => rec.last()?.has('p'), 2000, 'peer p');
    await client.delete().key(hostKey('demo', 'p'));
    await waitFor(() => watcher.reg.etcdView('p')?.record === 'absent', 2000, 'p without a record');
    expect(rec.last()!.get('p')).toMatchObject({ overlayIp: '100.64.0.20', endpoints: ['198.18.1.2:51820'] });
    await peer.reg.stopAlive();
    await waitFor(() => watcher.reg.etcdView('p')?.alive === false, 2000, 'p without its alive key');
    expect(rec.names()).toEqual(['p']);
    await peer.reg.publish(record('p', '100.64.0.20', { publicKey: key(9), endpoints: ['198.18.1.7:51820'] }));
    await waitFor(() => rec.last()?.get('p')?.endpoints[0] === '198.18.1.7:51820', 2000, 'the new record');
    expect(watcher.reg.etcdView('p')).toEqual({ record: 'present', alive: false });
  });

  it('needs both a record and an alive key, and never lists itself', async () => {
    const me = newRegistry('me');
    await me.reg.publish(record('me', '100.64.0.10'));
    await me.reg.startAlive();
    const rec = recorder();
    await me.reg.watch(rec.onPeers);
    expect(rec.last()!.size).toBe(0);

    await client.put(aliveKey('demo', 'ghost')).value('{}'); // alive without a record
    const other = newRegistry('o');
    await other.reg.publish(record('o', '100.64.0.11')); // record without alive
    await client.put(aliveKey('demo', 'o')).value('{}'); // now both
    await waitFor(() => rec.last()?.has('o'), 2000, 'peer o');
    expect(rec.names()).toEqual(['o']);
  });

  it('skips a malformed record with one warning, counts it, and valid peers still arrive', async () => {
    const me = newRegistry('me');
    const rec = recorder();
    await me.reg.watch(rec.onPeers);

    await client.put(hostKey('demo', 'bad')).value(JSON.stringify({ ...record('bad', '100.64.0.20'), endpoints: ['198.18.1.2:51820', 'x'] }));
    await client.put(aliveKey('demo', 'bad')).value('{}');
    await client.put(hostKey('demo', 'junk')).value('{not json');
    await client.put(aliveKey('demo', 'junk')).value('{}');
    const good = newRegistry('good');
    await good.reg.publish(record('good', '100.64.0.21'));
    await good.reg.startAlive();
    await waitFor(() => rec.last()?.has('good'), 2000, 'valid peer');
    await waitFor(() => me.reg.stats().invalidRecords === 2, 2000, 'two invalid records counted');
    expect(rec.names()).toEqual(['good']);

    // More traffic on other keys must not repeat the warnings for the same (key, revision).
    await client.put(aliveKey('demo', 'bad')).value('{"again":1}');
    await good.reg.publish(record('good', '100.64.0.21', { endpoints: ['198.18.1.3:51820'] }));
    await waitFor(() => rec.last()?.get('good')?.endpoints[0] === '198.18.1.3:51820', 2000, 'updated endpoint');
    const warnings = me.lines.filter((l) => l.msg === 'skipping invalid host record');
    expect(warnings.map((w) => w['etcdKey']).sort()).toEqual([hostKey('demo', 'bad'), hostKey('demo', 'junk')]);
    expect(warnings.find((w) => w['etcdKey'] === hostKey('demo', 'bad'))!['error']).toBe('endpoints[1]: "x" is not ip:port');
    expect(me.reg.stats().invalidRecords).toBe(2);

    // A new revision of a still-bad record is a new warning.
    await client.put(hostKey('demo', 'junk')).value('{still not json');
    await waitFor(() => me.reg.stats().invalidRecords === 3, 2000, 'third invalid record');
  });

  it('skips a record outside the network CIDR, and on a duplicate overlay IP the lease holder wins', async () => {
    const me = newRegistry('me');
    const rec = recorder();
    await me.reg.watch(rec.onPeers);

    const put = async (r: HostRecord) => {
      await client.put(hostKey('demo', r.name)).value(serializeHostRecord(r));
      await client.put(aliveKey('demo', r.name)).value('{}');
    };
    await put(record('outside', '100.64.7.1'));
    const ip = await leaseOverlayIp(client, spec, 'holder', key(40));
    await put(record('thief', ip, { publicKey: key(41) }));
    await put(record('holder', ip, { publicKey: key(40) }));
    await put(record('fine', '100.64.0.99'));
    await waitFor(() => rec.last()?.has('holder') && rec.last()?.has('fine'), 2000, 'holder and fine');
    await waitFor(() => me.reg.stats().invalidRecords === 2, 2000, 'outside and thief counted');
    expect(rec.names()).toEqual(['fine', 'holder']);
    const errors = me.lines.filter((l) => l.msg === 'skipping invalid host record').map((l) => l['error']);
    expect(errors.sort()).toEqual([`overlayIp: ${ip} is leased to holder`, 'overlayIp: 100.64.7.1 is outside the network CIDR 100.64.0.0/24']);
  });

  it('coalesces a burst of changes into few snapshots, and skips unchanged ones', async () => {
    const me = newRegistry('me');
    const rec = recorder();
    await me.reg.watch(rec.onPeers);
    const txn = client.if(aliveKey('demo', 'zz'), 'Create', '==', 0);
    const ops = [];
    for (let i = 1; i <= 20; i++) {
      ops.push(client.put(hostKey('demo', `h${i}`)).value(serializeHostRecord(record(`h${i}`, `100.64.0.${100 + i}`))));
      ops.push(client.put(aliveKey('demo', `h${i}`)).value('{}'));
    }
    await txn.then(...ops).commit();
    await waitFor(() => rec.last()?.size === 20, 2000, '20 peers');
    expect(rec.calls).toHaveLength(2); // initial + one for the whole transaction
    await client.put('/cladnet/v1/networks/demo/leases/100.64.0.250').value('{}'); // no effect on peers
    await client.put(aliveKey('demo', 'h1')).value('{"refreshed":true}'); // nor this
    const marker = newRegistry('marker');
    await marker.reg.publish(record('marker', '100.64.0.200'));
    await marker.reg.startAlive();
    await waitFor(() => rec.last()?.has('marker'), 2000, 'marker');
    expect(rec.calls).toHaveLength(3);
  });

  it('epochs: monotonic per host, and an older writer cannot overwrite a newer one', async () => {
    let clockA = 1_000_000;
    const a = newRegistry('dup', { now: () => clockA });
    const r1 = await a.reg.publish(record('dup', '100.64.0.30', { endpoints: ['198.18.1.1:1'] }));
    expect(r1).toMatchObject({ written: true, record: { epoch: 1_000_000 } });
    clockA -= 500_000; // wall clock stepped back
    const r2 = await a.reg.publish(record('dup', '100.64.0.30', { endpoints: ['198.18.1.1:2'] }));
    expect(r2).toMatchObject({ written: true, record: { epoch: 1_000_001 } });

    // The host restarts while the old process still runs: the new writer takes over, with a
    // higher epoch even though its clock is behind.
    const b = newRegistry('dup', { now: () => 5 });
    const r3 = await b.reg.publish(record('dup', '100.64.0.30', { endpoints: ['198.18.1.1:3'] }));
    expect(r3).toMatchObject({ written: true, record: { epoch: 1_000_002 } });

    // The old writer (even with a clock far ahead) must not overwrite the newer record.
    clockA = 9_000_000;
    const r4 = await a.reg.publish(record('dup', '100.64.0.30', { endpoints: ['198.18.1.1:4'] }));
    expect(r4).toMatchObject({ written: false, reason: 'superseded', current: { epoch: 1_000_002, endpoints: ['198.18.1.1:3'] } });
    const stored = JSON.parse((await client.get(hostKey('demo', 'dup')).string())!) as HostRecord;
    expect([stored.epoch, stored.endpoints]).toEqual([1_000_002, ['198.18.1.1:3']]);
    expect(a.lines.some((l) => l.msg === 'host record was published by a newer writer; not overwriting it')).toBe(true);

    // The newer writer goes on publishing.
    const r5 = await b.reg.publish(record('dup', '100.64.0.30', { endpoints: ['198.18.1.1:5'] }));
    expect(r5).toMatchObject({ written: true, record: { epoch: 1_000_003 } });
  });

  it('epochs: a write landing between an older writer\'s read and its write wins (txn on mod revision)', async () => {
    const ca = newClient();
    const a = newRegistry('race', { client: ca, now: () => 9_000_000 });
    const b = newRegistry('race', { now: () => 1 });
    expect((await a.reg.publish(record('race', '100.64.0.32', { listenPort: 1 }))).written).toBe(true);

    // Fault injection: right after A reads the record, B (a newer process for the same host) publishes.
    const realGet = ca.get.bind(ca);
    let armed = true;
    ca.get = (k) => {
      const builder = realGet(k);
      if (armed) {
        armed = false;
        const realExec = builder.exec.bind(builder);
        builder.exec = async () => {
          const r = await realExec();
          expect((await b.reg.publish(record('race', '100.64.0.32', { listenPort: 2 }))).written).toBe(true);
          return r;
        };
      }
      return builder;
    };
    const res = await a.reg.publish(record('race', '100.64.0.32', { listenPort: 3 }));
    expect(res).toMatchObject({ written: false, reason: 'superseded', current: { listenPort: 2, epoch: 9_000_001 } });
    const stored = JSON.parse((await client.get(hostKey('demo', 'race')).string())!) as HostRecord;
    expect([stored.listenPort, stored.epoch]).toEqual([2, 9_000_001]);
  });

  it('concurrent publishes from one registry are serialised: the last call wins', async () => {
    const a = newRegistry('seq', { now: () => 42 });
    const results = await Promise.all(
      Array.from({ length: 5 }, (_, i) => a.reg.publish(record('seq', '100.64.0.31', { listenPort: 1000 + i }))),
    );
    expect(results.map((r) => r.written && r.record.epoch)).toEqual([42, 43, 44, 45, 46]);
    const stored = JSON.parse((await client.get(hostKey('demo', 'seq')).string())!) as HostRecord;
    expect(stored.listenPort).toBe(1004);
  });

  it('publish refuses another host\'s name and an overlayIp outside the CIDR', async () => {
    const a = newRegistry('me');
    await expect(a.reg.publish(record('other', '100.64.0.5'))).rejects.toMatchObject({ code: 'ERECORD', field: 'name' });
    await expect(a.reg.publish(record('me', '100.64.5.5'))).rejects.toMatchObject({ code: 'ERECORD', field: 'overlayIp' });
    await expect(a.reg.publish(record('me', '100.64.0.5', { endpoints: ['nope'] }))).rejects.toMatchObject({
      code: 'ERECORD',
      message: 'host record: endpoints[0]: "nope" is not ip:port',
    });
    expect(await client.get(hostKey('demo', 'me')).string()).toBeNull();
  });

  it('reloads and watches again when its watch is cancelled by compaction', async () => {
    const writes = newRegistry('seed');
    await writes.reg.publish(record('seed', '100.64.0.40'));
    await writes.reg.startAlive();
    for (let i = 0; i < 5; i++) await client.put('/cladnet/v1/other').value(String(i));
    const rev = Number((await client.get('/cladnet/v1/other').exec()).header.revision);
    await client.kv.compact({ revision: String(rev) });

    // Fault injection: make the registry's first watch start from a revision that is compacted.
    const c = newClient();
    const realWatch = c.watch.bind(c);
    let first = true;
    c.watch = () => {
      const b = realWatch();
      if (first) {
        first = false;
        const real = b.startRevision.bind(b);
        b.startRevision = () => real('2');
      }
      return b;
    };
    const me = newRegistry('me', { client: c });
    const rec = recorder();
    await me.reg.watch(rec.onPeers);
    expect(rec.names()).toEqual(['seed']);
    await waitFor(() => me.reg.stats().reloads >= 2, 3000, 'a reload after the compaction cancel');
    expect(me.lines.some((l) => /compacted/.test(l.msg))).toBe(true);

    const late = newRegistry('late');
    await late.reg.publish(record('late', '100.64.0.41'));
    await late.reg.startAlive();
    await waitFor(() => rec.last()?.has('late'), 3000, 'a change after the re-watch');
    expect(rec.names()).toEqual(['late', 'seed']);
    expect(me.reg.connected()).toBe(true);
  });

  it('writes the peer cache and a restarted registry uses it while etcd is unreachable', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'cladnet-cache-'));
    try {
      const cacheFile = join(dir, 'state', 'peers.json');
      const me = newRegistry('me', { cacheFile });
      const rec = recorder();
      await me.reg.watch(rec.onPeers);
      const peer = newRegistry('p1');
      await peer.reg.publish(record('p1', '100.64.0.50'));
      await peer.reg.startAlive();
      await waitFor(() => rec.last()?.has('p1'), 2000, 'peer p1');
      await me.reg.close(); // flushes the cache
      // The snapshot, and the journal of member changes written after it (peer-cache.ts).
      const doc = JSON.parse(readFileSync(cacheFile, 'utf8')) as { network: string; generation: string; peers: HostRecord[] };
      const journal = readFileSync(`${cacheFile}.journal`, 'utf8')
        .split('\n')
        .filter((l) => l !== '')
        .map((l) => JSON.parse(l) as { g: string; put?: HostRecord });
      expect(doc.network).toBe('demo');
      const names = [...doc.peers, ...journal.filter((l) => l.g === doc.generation && l.put).map((l) => l.put!)].map((p) => p.name);
      expect([...new Set(names)]).toEqual(['p1']);
      expect(statSync(cacheFile).mode & 0o777).toBe(0o600);
      expect(statSync(`${cacheFile}.journal`).mode & 0o777).toBe(0o600);

      // Control plane down: a client pointing at a port nobody listens on.
      const dead = createEtcd({ endpoints: [`127.0.0.1:${await freePort()}`], dialTimeoutMs: 500 });
      toClose.push(dead);
      const offline = newRegistry('me', { cacheFile, client: dead });
      const rec2 = recorder();
      expect(await offline.reg.watch(rec2.onPeers)).toBe('cache');
      expect(rec2.names()).toEqual(['p1']);
      expect(rec2.last()!.get('p1')!.overlayIp).toBe('100.64.0.50');
      expect(offline.reg.connected()).toBe(false);
      expect(offline.reg.stats().source).toBe('cache');
      await expect(offline.reg.startAlive()).rejects.toMatchObject({ code: 'EETCD', transient: true });
      await offline.reg.close();
      expect(rec2.calls).toHaveLength(1); // never emptied by the outage
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('with etcd unreachable and no cache, watch() says so and delivers nothing', async () => {
    const dead = createEtcd({ endpoints: [`127.0.0.1:${await freePort()}`], dialTimeoutMs: 500 });
    toClose.push(dead);
    const offline = newRegistry('me', { client: dead, cacheFile: join(tmpdir(), 'cladnet-no-such-dir', 'peers.json') });
    const rec = recorder();
    expect(await offline.reg.watch(rec.onPeers)).toBe('none');
    expect(rec.calls).toHaveLength(0);
    expect(offline.lines.some((l) => l.msg === 'cannot load peers from etcd; will retry')).toBe(true);
  });

  it('close() leaves no timers behind, even with retries pending', async () => {
    // Record every timer armed from registry code; after close() each must have fired or been cleared.
    const armed = new Map<unknown, string>();
    const real = { setTimeout, clearTimeout, setImmediate, clearImmediate };
    // (the registry's retry loops wait on its etcd link, liveness.ts keeps the lease)
    const fromRegistry = () => /src[\\/]control[\\/](registry|etcd-link|liveness)\.ts/.test(new Error().stack ?? '');
    const g = globalThis as unknown as Record<string, (...a: unknown[]) => unknown>;
    for (const [set, clear] of [['setTimeout', 'clearTimeout'], ['setImmediate', 'clearImmediate']] as const) {
      g[set] = (fn: unknown, ...rest: unknown[]) => {
        if (!fromRegistry()) return (real[set] as (...a: unknown[]) => unknown)(fn, ...rest);
        const h: unknown = (real[set] as (...a: unknown[]) => unknown)((...args: unknown[]) => {
          armed.delete(h);
          (fn as (...a: unknown[]) => void)(...args);
        }, ...rest);
        armed.set(h, set);
        return h;
      };
      g[clear] = (h: unknown) => {
        armed.delete(h);
        return (real[clear] as (h: unknown) => void)(h);
      };
    }
    const dead = createEtcd({ endpoints: [`127.0.0.1:${await freePort()}`], dialTimeoutMs: 300 });
    try {
      const { log } = memoryLogger();
      const reg = new Registry({ client: dead, network: spec, self: 'me', log });
      await reg.watch(() => undefined);
      await reg.startAlive().catch(() => undefined);
      // Load and liveness retries share one round timer (etcd-link.ts).
      await waitFor(() => [...armed.values()].filter((k) => k === 'setTimeout').length >= 1, 2000, 'the shared retry round armed');
      await reg.close();
      expect([...armed.values()]).toEqual([]);
    } finally {
      Object.assign(globalThis, real);
      dead.close();
    }
  });
});

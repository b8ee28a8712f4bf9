import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Etcd3 } from 'etcd3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readNetworkKey, type NetworkKey } from '../../src/control/credentials';
import { createEtcd } from '../../src/control/etcd';
import { EtcdLink, type LinkTimers } from '../../src/control/etcd-link';
import { aliveKey, hostKey, networkKey } from '../../src/control/keys';
import { createNetworkWithKey } from '../../src/control/membership';
import { NetworkSpec } from '../../src/control/records';
import { Registry } from '../../src/control/registry';
import { loadEd25519, type Ed25519 } from '../../src/crypto/sign';
import { createRootLogger } from '../../src/log';
import { fleetHost, seedFleet, type FleetOptions } from '../../src/testbed/fleet';
import { EtcdHandle, startEtcd, waitFor } from '../helpers/etcd';

/**
 * Issue 11, "a watch that never misses and never over-reads": after etcd restarts, a registry
 * resumes its watch from the last revision it applied instead of reloading the network, and
 * reloads (in pages) only when etcd has compacted that revision away.
 *
 * The registry's retry rounds are held behind a gate (its EtcdLink's timers) so that the changes
 * made "during the outage" land in etcd before the registry gets back: they can only reach it
 * through the resumed watch.
 */

const NET = 'resume';
const N = 400;

let etcd: EtcdHandle;
let admin: Etcd3;
let dir: string;
let ed: Ed25519;
let netKey: NetworkKey;
let spec: NetworkSpec;
const closers: { close(): unknown }[] = [];

const fleet: FleetOptions = {
  network: NET,
  name: (i) => `r${String(i).padStart(4, '0')}`,
  overlayBase: '100.66.1.0',
  endpointBase: '198.18.0.0',
  keyFill: 0x3c,
  updated: '2026-12-02T12:00:00.000Z',
};
const hostName = (i: number) => fleetHost(i, fleet).name;

/** Record, alive key and lease of hosts [from, to). */
const putHosts = (from: number, to: number) => seedFleet(admin, ed, netKey.secretKey, from, to, fleet);

function gatedTimers() {
  let open = true;
  const held: Array<() => void> = [];
  const timers: LinkTimers = {
    set(fn, ms) {
      if (!open) {
        held.push(fn);
        return { cancel: () => void held.splice(held.indexOf(fn) >>> 0, 1) };
      }
      const t = setTimeout(fn, Math.min(ms, 300));
      return { cancel: () => clearTimeout(t) };
    },
  };
  return {
    timers,
    close: () => void (open = false),
    open: () => {
      open = true;
      for (const fn of held.splice(0)) fn();
    },
  };
}

function registry(self: number) {
  const log = createRootLogger('debug', { write: (s: string) => void msgs.push((JSON.parse(s) as { msg: string }).msg) });
  const msgs: string[] = [];
  const gate = gatedTimers();
  const link = new EtcdLink({ log, timers: gate.timers });
  const client = createEtcd({ endpoints: [etcd.endpoint], dialTimeoutMs: 1000, link }); // as an agent wires it
  const reg = new Registry({ client, network: spec, self: hostName(self), log, link });
  closers.push(reg, client, link);
  return { reg, gate, msgs };
}

/** What etcd holds now for hosts 0..N+1: record present and alive key present, per name. */
async function etcdNow(): Promise<Map<string, { record: boolean; alive: boolean }>> {
  const out = new Map<string, { record: boolean; alive: boolean }>();
  await Promise.all(
    Array.from({ length: N + 2 }, async (_, i) => {
      const [h, a] = await Promise.all([admin.get(hostKey(NET, hostName(i))).exec(), admin.get(aliveKey(NET, hostName(i))).exec()]);
      out.set(hostName(i), { record: h.kvs.length > 0, alive: a.kvs.length > 0 });
    }),
  );
  return out;
}

/**
 * The registry's view of etcd agrees with etcd for every host but itself (no event missed or
 * applied twice). A host it does not track (never alive while it watched) must not be alive.
 */
async function expectViewMatchesEtcd(reg: Registry, self: string): Promise<void> {
  const wrong: string[] = [];
  for (const [name, want] of await etcdNow()) {
    if (name === self) continue;
    const v = reg.etcdView(name);
    if (v === null && !want.alive) continue;
    const got = { record: v?.record === 'present', alive: v?.alive === true };
    if (got.record !== want.record || got.alive !== want.alive) wrong.push(`${name}: ${JSON.stringify(got)} vs etcd ${JSON.stringify(want)}`);
  }
  expect(wrong).toEqual([]);
}

/** The peer names a fresh registry reads from etcd now. */
async function freshPeers(): Promise<string[]> {
  const { reg } = registry(N + 100);
  let names: string[] = [];
  await reg.watch((p) => void (names = [...p.keys()].sort()));
  await reg.close();
  return names;
}

beforeAll(async () => {
  etcd = await startEtcd();
  admin = createEtcd({ endpoints: [etcd.endpoint], dialTimeoutMs: 1000 });
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cladnet-resume-'));
  ed = await loadEd25519();
  const keyFile = path.join(dir, `${NET}.netkey`);
  spec = await createNetworkWithKey(admin, { name: NET, cidr: '100.66.0.0/16' }, keyFile);
  netKey = readNetworkKey(keyFile, ed);
  await putHosts(0, N);
}, 60_000);

afterAll(async () => {
  for (const c of closers.splice(0)) await c.close();
  admin?.close();
  await etcd?.stop();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

describe('registry watch across an etcd restart', () => {
  it('resumes from its last revision: sees every change of the outage, reloads nothing, reads < 5 % of a full load', async () => {
    const me = registry(0);
    const peers = () => me.reg.peers();
    await me.reg.watch(() => undefined);
    const full = me.reg.stats();
    expect(full.reloads).toBe(1);
    expect(full.peers).toBe(N - 1);
    expect(full.loadKeys).toBeGreaterThanOrEqual(3 * N);

    // An alive key on a short lease that will expire while the registry is away.
    const shortLease = admin.lease(3, { autoKeepAlive: false });
    await shortLease.put(aliveKey(NET, hostName(7))).value('{"version":1}');
    await waitFor(() => me.reg.etcdView(hostName(7))?.alive === true, 3000, 'the short-lived alive key');
    const before = me.reg.stats();

    me.gate.close();
    await etcd.stopProcess();
    await waitFor(() => !me.reg.connected(), 5000, 'the registry to notice the outage');
    await etcd.startProcess();

    // While the registry waits for its next round: one host added, one deleted, one alive key expires.
    await waitFor(() => putHosts(N, N + 1).then(() => true, () => false), 10_000, 'a write after the restart');
    await admin.delete().key(hostKey(NET, hostName(5))).exec();
    await admin.delete().key(aliveKey(NET, hostName(5))).exec();
    await waitFor(async () => (await admin.get(aliveKey(NET, hostName(7))).exec()).kvs.length === 0 || null, 15_000, 'the short lease to expire');
    expect(me.reg.connected()).toBe(false);
    expect(peers().has(hostName(N))).toBe(false);
    expect(peers().size).toBe(N - 1); // the peer set stays while etcd is away

    me.gate.open();
    await waitFor(() => me.reg.connected(), 10_000, 'the registry to resume');
    await waitFor(() => peers().has(hostName(N)), 5000, 'the host added during the outage');
    await waitFor(() => me.reg.etcdView(hostName(7))?.alive === false, 5000, 'the expired alive key');
    await waitFor(() => me.reg.etcdView(hostName(5))?.record === 'absent', 5000, 'the deleted record');

    const after = me.reg.stats();
    const keys = after.rangeKeys - before.rangeKeys;
    const bytes = after.rangeBytes - before.rangeBytes;
    console.log(
      `full load: ${full.loadKeys} keys, ${full.rangeBytes} B in ${full.loadPages} pages; ` +
        `after the restart: ${keys} keys, ${bytes} B (${((100 * bytes) / full.rangeBytes).toFixed(2)} %), ` +
        `resumes ${after.resumes - before.resumes}, reloads ${after.reloads - before.reloads}, watch events ${after.watchEvents - before.watchEvents}`,
    );
    expect(after.reloads).toBe(before.reloads);
    expect(after.resumes).toBeGreaterThan(before.resumes);
    expect(bytes).toBeLessThan(0.05 * full.rangeBytes);
    expect(keys).toBeLessThan(0.05 * full.loadKeys);
    expect(me.msgs).toContain('etcd watch reconnected; resuming from the last applied revision');
    // Nothing was applied twice or missed: the registry's view equals a fresh read of etcd, and its
    // peers are a fresh registry's plus the two whose record or alive key went during the outage
    // (membership is the certificate: roster.ts keeps a known member with a valid certificate).
    await expectViewMatchesEtcd(me.reg, hostName(0));
    const kept = [hostName(5), hostName(7)];
    expect([...peers().keys()].sort()).toEqual([...(await freshPeers()), ...kept].filter((n) => n !== hostName(0)).sort());
  }, 60_000);

  it('reloads exactly once, in pages, when the revision it would resume from was compacted', async () => {
    const me = registry(1);
    await me.reg.watch(() => undefined);
    const before = me.reg.stats();

    me.gate.close();
    await etcd.stopProcess();
    await waitFor(() => !me.reg.connected(), 5000, 'the registry to notice the outage');
    await etcd.startProcess();
    await waitFor(() => putHosts(N + 1, N + 2).then(() => true, () => false), 10_000, 'a write after the restart');
    await admin.delete().key(hostKey(NET, hostName(9))).exec();
    const now = (await admin.get(networkKey(NET)).exec()).header.revision;
    expect(Number(now)).toBeGreaterThan(before.revision + 1);
    await admin.kv.compact({ revision: now, physical: true });

    me.gate.open();
    await waitFor(() => me.reg.stats().reloads > before.reloads, 10_000, 'the reload after compaction');
    await waitFor(() => me.reg.connected(), 5000, 'the registry to watch again');
    await new Promise((r) => setTimeout(r, 1500)); // a second reload would come now
    const after = me.reg.stats();
    console.log(`compacted: reloads ${after.reloads - before.reloads}, ${after.loadPages} pages, ${after.loadKeys} keys, resumes ${after.resumes - before.resumes}`);
    expect(after.reloads).toBe(before.reloads + 1);
    expect(after.loadPages).toBeGreaterThan(1);
    expect(me.msgs).toContain('etcd watch cancelled (compacted?); reloading and watching again');
    const mine = [...me.reg.peers().keys()].sort();
    expect(mine).toContain(hostName(N + 1));
    expect(me.reg.etcdView(hostName(9))?.record).toBe('absent');
    await expectViewMatchesEtcd(me.reg, hostName(1));
    const kept = [hostName(5), hostName(7), hostName(9)].filter((n) => mine.includes(n)); // members whose record or alive key went
    expect(mine).toEqual([...(await freshPeers()), ...kept].filter((n) => n !== hostName(1)).sort());
  }, 60_000);
});

import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Etcd3 } from 'etcd3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readNetworkKey, type NetworkKey } from '../../src/control/credentials';
import { createEtcd, createMemberClient } from '../../src/control/etcd';
import { EtcdLink } from '../../src/control/etcd-link';
import { aliveKey, hostKey, networkPrefix, parseKey } from '../../src/control/keys';
import { createNetworkWithKey } from '../../src/control/membership';
import { NetworkSpec } from '../../src/control/records';
import { Registry } from '../../src/control/registry';
import { WatchHealth } from '../../src/control/watch-health';
import { loadEd25519, type Ed25519 } from '../../src/crypto/sign';
import { createRootLogger } from '../../src/log';
import { fleetHost, seedFleet, type FleetOptions } from '../../src/testbed/fleet';
import { waitFor } from '../helpers/etcd';
import { EtcdCluster, startEtcdCluster } from '../helpers/etcd-cluster';

/**
 * Issue 11, "several etcd members": three agents' registries (watch + liveness, wired as the agent
 * wires them: a pooled client over all three endpoints, and a WatchHealth that holds the watch and
 * the keepalive on one member) against a 3-member etcd cluster. In each case, while the fault lasts,
 * hosts are added and removed (record + alive key + lease, then deletes), and afterwards:
 *
 * - no missed event: every registry's mirror of the network (records, alive keys, leases) equals a
 *   read of etcd, its newest applied revision is etcd's, and it never reloaded (everything came
 *   through its watch);
 * - no liveness lost: each agent's alive key keeps the create revision it had before the fault
 *   (a lost lease would have deleted it and a new grant made a new key), polled all along;
 * - leader killed: a client given all three endpoints writes again within 2 s;
 * - follower cut off, or hung (SIGSTOP): the watch held by it moves to another member within 5 s.
 *
 * Raft timing of the cluster: heartbeat 50 ms, election 500 ms (helpers/etcd-cluster.ts).
 */

const NET = 'cluster';
const AGENTS = 3;

let cluster: EtcdCluster;
let admin: Etcd3;
let dir: string;
let ed: Ed25519;
let netKey: NetworkKey;
let spec: NetworkSpec;
const closers: { close(): unknown }[] = [];

interface TestAgent {
  name: string;
  reg: Registry;
  health: WatchHealth;
  msgs: string[];
}
const agents: TestAgent[] = [];

let nextHost = 100;
const fleet: FleetOptions = {
  network: NET,
  name: (i) => `h${String(i).padStart(4, '0')}`,
  overlayBase: '100.67.1.0',
  endpointBase: '198.18.9.0',
  updated: '2026-12-02T12:00:00.000Z',
};
const hostName = (i: number) => fleetHost(i, fleet).name;

/** Record, alive key and lease of host i in one transaction. */
const addHost = (i: number) => seedFleet(admin, ed, netKey.secretKey, i, i + 1, fleet);

function agentEndpoints(k: number): string[] {
  // Each agent lists the members from a different one first, so each member holds one agent's watch.
  return cluster.endpoints.map((_, i) => cluster.endpoints[(i + k) % cluster.size]!);
}

async function startAgent(k: number, first = k % cluster.size): Promise<TestAgent> {
  const msgs: string[] = [];
  const log = createRootLogger('info', { write: (s: string) => void msgs.push(s) });
  const endpoints = agentEndpoints(first);
  const link = new EtcdLink({ log });
  const client = createEtcd({ endpoints, link }); // as agent.ts wires it
  const health = new WatchHealth({ endpoints, connect: (e) => createMemberClient({ endpoints }, e), log });
  const name = `agent${k}`;
  const reg = new Registry({ client, network: spec, self: name, log, link, health });
  closers.push({ close: () => reg.close() }, health, client, link);
  await reg.startAlive();
  await reg.watch(() => undefined);
  return { name, reg, health, msgs };
}

/**
 * Create revisions of the agents' alive keys (null: absent). The test's own client spreads calls
 * over all three members; after a fault etcd3's breaker for the faulty member can refuse a call
 * ("circuit breaker is open") instead of taking another member: that read is tried again (up to
 * 5 s), since it says nothing about the agents.
 */
async function aliveRevisions(): Promise<(string | null)[]> {
  const read = () => Promise.all(agents.map(async (a) => (await admin.get(aliveKey(NET, a.name)).exec()).kvs[0]?.create_revision ?? null));
  const until = Date.now() + 5_000;
  for (;;) {
    try {
      return await read();
    } catch (e) {
      if (Date.now() > until) throw e;
      await new Promise((r) => setTimeout(r, 200));
    }
  }
}

/** Polls the agents' alive keys every 100 ms; a successful read that lacks one, or shows it re-created, is a loss. */
function watchLiveness(want: (string | null)[]): { stop(): Promise<string[]> } {
  const losses: string[] = [];
  let running = true;
  const loop = (async () => {
    while (running) {
      try {
        const now = await aliveRevisions();
        now.forEach((rev, i) => rev !== want[i] && losses.push(`${agents[i]!.name}: create revision ${want[i]} -> ${rev}`));
      } catch {
        /* etcd between leaders: no reading, no verdict */
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  })();
  return {
    stop: async () => {
      running = false;
      await loop;
      return losses;
    },
  };
}

/** Adds and removes hosts until stopped; returns the host numbers touched and the writes that succeeded. */
function churn(): { stop(): Promise<{ touched: number[]; writes: number }> } {
  const touched: number[] = [];
  let writes = 0;
  let running = true;
  const loop = (async () => {
    for (let op = 0; running; op++) {
      try {
        if (op % 3 === 2 && touched.length >= 2) {
          const victim = touched[touched.length - 2]!;
          // Alternately the alive key (the host goes quiet) or the record too (it goes away).
          if (op % 2 === 0) await admin.delete().key(aliveKey(NET, hostName(victim))).exec();
          else await admin.delete().key(hostKey(NET, hostName(victim))).exec();
        } else {
          const i = nextHost++;
          touched.push(i);
          await addHost(i);
        }
        writes++;
      } catch {
        /* between leaders: try the next op */
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  })();
  return {
    stop: async () => {
      running = false;
      await loop;
      return { touched, writes };
    },
  };
}

/** The registry's etcd mirror (watch.ts): the keys it holds, as its watch left them. */
function mirrorOf(reg: Registry): { hosts: ReadonlyMap<string, unknown>; aliveNames: ReadonlySet<string>; leases: ReadonlyMap<string, unknown> } {
  return reg['mirror'];
}

/** Every registry's mirror of the network (records, alive keys, leases) equals a read of etcd, at etcd's revision. */
async function mirrorsMatchEtcd(): Promise<string[]> {
  const wrong: string[] = [];
  const res = await admin.getAll().prefix(networkPrefix(NET)).exec();
  const want = { hosts: new Set<string>(), alive: new Set<string>(), leases: new Set<string>() };
  for (const kv of res.kvs) {
    const k = parseKey(kv.key);
    if (k?.kind === 'host') want.hosts.add(k.name);
    else if (k?.kind === 'alive') want.alive.add(k.name);
    else if (k?.kind === 'lease') want.leases.add(k.ip);
  }
  const diff = (what: string, got: Iterable<string>, exp: Set<string>) => {
    const g = new Set(got);
    const missing = [...exp].filter((x) => !g.has(x));
    const extra = [...g].filter((x) => !exp.has(x));
    return missing.length + extra.length > 0 ? [`${what}: missing ${missing.join(',') || '-'}, extra ${extra.join(',') || '-'}`] : [];
  };
  for (const a of agents) {
    const st = a.reg.stats();
    const m = mirrorOf(a.reg);
    const problems = [
      ...(st.revision < Number(res.header.revision) ? [`at revision ${st.revision}, etcd at ${res.header.revision}`] : []),
      ...diff('records', m.hosts.keys(), want.hosts),
      ...diff('alive keys', m.aliveNames, want.alive),
      ...diff('leases', m.leases.keys(), want.leases),
    ];
    for (const p of problems) wrong.push(`${a.name} (member ${a.health.member()}, connected ${st.connected}): ${p}`);
  }
  return wrong;
}

/** After a fault: views converge on etcd's with no reload, and no alive key was lost. */
async function expectNothingMissed(reloads: number[], losses: string[]): Promise<void> {
  let wrong: string[] = [];
  await waitFor(async () => (wrong = await mirrorsMatchEtcd()).length === 0, 10_000, 'every registry to match etcd').catch(() => undefined);
  if (wrong.length > 0) for (const a of agents) console.log(`${a.name} log:\n${a.msgs.join('')}`);
  expect(wrong).toEqual([]);
  expect(agents.map((a) => a.reg.stats().reloads)).toEqual(reloads);
  expect(losses).toEqual([]);
  expect(await aliveRevisions()).not.toContain(null);
}

const followerOf = (leader: number) => [0, 1, 2].find((i) => i !== leader)!;
const agentOn = (member: number) => agents.find((a) => a.health.member() === cluster.endpoints[member]);

beforeAll(async () => {
  cluster = await startEtcdCluster();
  admin = createEtcd({ endpoints: [...cluster.endpoints], dialTimeoutMs: 1000 });
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cladnet-cluster-'));
  ed = await loadEd25519();
  const keyFile = path.join(dir, `${NET}.netkey`);
  spec = await createNetworkWithKey(admin, { name: NET, cidr: '100.67.0.0/16' }, keyFile);
  netKey = readNetworkKey(keyFile, ed);
  for (let i = 0; i < 20; i++) await addHost(i);
  for (let k = 0; k < AGENTS; k++) agents.push(await startAgent(k));
  await waitFor(async () => (await aliveRevisions()).every((r) => r !== null), 5000, 'the agents alive keys');
}, 60_000);

afterAll(async () => {
  for (const c of closers.splice(0).reverse()) await c.close();
  admin?.close();
  await cluster?.stop();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

describe('agents against a 3-member etcd cluster', () => {
  it('a follower killed: the agent watching it moves on; no event missed, no alive key lost', async () => {
    const follower = followerOf(await cluster.waitLeader());
    const mover = agentOn(follower)!; // each agent starts on another member
    const moves = mover.health.stats().moves;
    const reloads = agents.map((a) => a.reg.stats().reloads);
    const live = watchLiveness(await aliveRevisions());
    const load = churn();
    const t0 = Date.now();
    await cluster.kill(follower);
    await waitFor(() => mover.health.stats().moves > moves && mover.reg.connected(), 5000, 'the watch to leave the killed member');
    const movedMs = Date.now() - t0;
    await new Promise((r) => setTimeout(r, 3000));
    await cluster.restart(follower);
    await new Promise((r) => setTimeout(r, 1000));
    const { touched, writes } = await load.stop();
    const losses = await live.stop();
    console.log(`follower killed: watch moved after ${movedMs} ms; ${writes} writes during the fault over ${touched.length} hosts`);
    expect(writes).toBeGreaterThan(20);
    await expectNothingMissed(reloads, losses);
  }, 40_000);

  it('the leader killed: writes again < 2 s; no event missed, no alive key lost', async () => {
    const leader = await cluster.waitLeader();
    const reloads = agents.map((a) => a.reg.stats().reloads);
    const live = watchLiveness(await aliveRevisions());
    const load = churn();
    const writer = createEtcd({ endpoints: [...cluster.endpoints] }); // an agent's client: 5 s deadline, retries
    closers.push(writer);
    // A write starts every 100 ms, each on its own (a write in flight does not hold the next one up).
    const results: { start: number; end: number; ok: boolean }[] = [];
    const inflight: Promise<void>[] = [];
    const t0 = Date.now();
    await cluster.kill(leader);
    while (Date.now() - t0 < 3000) {
      const start = Date.now() - t0;
      inflight.push(
        writer
          .put('/cladnet-test/after-kill')
          .value(String(start))
          .then(
            () => void results.push({ start, end: Date.now() - t0, ok: true }),
            () => void results.push({ start, end: Date.now() - t0, ok: false }),
          ),
      );
      await new Promise((r) => setTimeout(r, 100));
    }
    await Promise.all(inflight);
    const firstOk = Math.min(...results.filter((r) => r.ok).map((r) => r.end));
    const writesAgainMs = Number.isFinite(firstOk) ? firstOk : -1;
    const longest = Math.max(...results.map((r) => r.end - r.start));
    const failed = results.filter((r) => !r.ok).length;
    const newLeader = await cluster.waitLeader(5000);
    await new Promise((r) => setTimeout(r, 3000));
    await cluster.restart(leader);
    await new Promise((r) => setTimeout(r, 1000));
    const { touched, writes } = await load.stop();
    const losses = await live.stop();
    console.log(
      `leader ${leader} killed: new leader ${newLeader}, writes again after ${writesAgainMs} ms ` +
        `(${results.length} writes started every 100 ms: ${failed} failed, the longest took ${longest} ms); ` +
        `${writes} churn writes during the fault over ${touched.length} hosts`,
    );
    expect(writesAgainMs).toBeGreaterThanOrEqual(0);
    expect(writesAgainMs).toBeLessThan(2000);
    expect(writes).toBeGreaterThan(20);
    await expectNothingMissed(reloads, losses);
  }, 40_000);

  it('a follower cut off from the other two: the watch it holds moves within 5 s; no event missed, no alive key lost', async () => {
    const follower = followerOf(await cluster.waitLeader());
    // An agent that starts on that follower (the others may all have moved elsewhere by now).
    const stuck = agentOn(follower) ?? agents[agents.push(await startAgent(agents.length, follower)) - 1]!;
    const before = stuck.health.stats();
    const reloads = agents.map((a) => a.reg.stats().reloads);
    const live = watchLiveness(await aliveRevisions());
    const load = churn();
    const t0 = Date.now();
    await cluster.partition(follower);
    await waitFor(() => stuck.health.member() !== cluster.endpoints[follower], 8000, 'the watch to leave the cut-off member');
    const movedMs = Date.now() - t0;
    await waitFor(() => stuck.reg.connected(), 5000, 'the watch to resume on another member');
    const resumedMs = Date.now() - t0;
    const after = stuck.health.stats();
    await new Promise((r) => setTimeout(r, 6000)); // longer than half the alive TTL, under the partition
    await cluster.heal(follower);
    await new Promise((r) => setTimeout(r, 1000));
    const { touched, writes } = await load.stop();
    const losses = await live.stop();
    const how = after.hangs > before.hangs ? 'a failed linearizable probe' : "etcd's require-leader cancel";
    console.log(`follower cut off: watch moved after ${movedMs} ms (by ${how}), resumed after ${resumedMs} ms; ${writes} writes during the fault over ${touched.length} hosts`);
    expect(movedMs).toBeLessThan(5000);
    expect(stuck.reg.stats().resumes).toBeGreaterThan(0);
    expect(writes).toBeGreaterThan(20);
    await expectNothingMissed(reloads, losses);
  }, 40_000);

  it('a follower hung (SIGSTOP): the failed probe moves the watch within 5 s; no event missed, no alive key lost', async () => {
    const follower = followerOf(await cluster.waitLeader());
    const stuck = agentOn(follower) ?? agents[agents.push(await startAgent(agents.length, follower)) - 1]!;
    const before = stuck.health.stats();
    const reloads = agents.map((a) => a.reg.stats().reloads);
    const live = watchLiveness(await aliveRevisions());
    const load = churn();
    const t0 = Date.now();
    cluster.pause(follower);
    try {
      await waitFor(() => stuck.health.member() !== cluster.endpoints[follower], 8000, 'the watch to leave the hung member');
      const movedMs = Date.now() - t0;
      await waitFor(() => stuck.reg.connected(), 5000, 'the watch to resume on another member');
      const resumedMs = Date.now() - t0;
      const after = stuck.health.stats();
      await new Promise((r) => setTimeout(r, 6000));
      cluster.resume(follower);
      await new Promise((r) => setTimeout(r, 1000));
      const { touched, writes } = await load.stop();
      const losses = await live.stop();
      console.log(`follower hung: watch moved after ${movedMs} ms, resumed after ${resumedMs} ms; ${writes} writes during the fault over ${touched.length} hosts`);
      // A stopped etcd cannot cancel anything: only the probe's deadline can have noticed.
      expect(after.hangs).toBe(before.hangs + 1);
      expect(movedMs).toBeLessThan(5000);
      expect(writes).toBeGreaterThan(20);
      await expectNothingMissed(reloads, losses);
    } finally {
      cluster.resume(follower);
    }
  }, 40_000);
});

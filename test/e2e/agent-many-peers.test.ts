import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { networkKeyFile, sleep, waitUntil, type Agent } from '../../src/testbed/agents';
import { fleetName } from '../../src/testbed/fleet';
import { startMeshBed, type MeshBed } from '../../src/testbed/mesh';
import { cpuPercent, rssBytes } from '../helpers/proc';

/**
 * Issue 11, "one real agent with 999 peers": a real agent in its namespace, and 999 hosts that
 * exist only in etcd (records with certificates signed by the network key, alive keys, leases;
 * endpoints in 198.19.128.0/22 that nobody answers). Once it holds them all and has settled:
 *
 *   memory     RSS < 110 MiB
 *   idle CPU   < 2 % of a core over WINDOW_MS (all threads, /proc/<pid>/stat)
 *   no storm   at most 1.5 handshake initiations per quiet peer in WINDOW_MS (its own counter).
 *              Before (retries every 5 s forever): 24 per peer in 120 s, ~200 a second.
 *
 * The window starts SETTLE_MS after the peers were loaded, when the retries of a peer that never
 * answered are about a minute apart and growing to two: [80 s, 200 s] holds one of them (near
 * 140 s), so the rate measured is the steady one, about N per two minutes.
 *   on demand  a packet for one of them starts handshakes at once and keeps them coming while
 *              packets wait (counted on the wire, nft in the agent's namespace)
 */
const isRoot = process.getuid?.() === 0;
const N = 999;
const SETTLE_MS = 80_000;
const WINDOW_MS = 120_000;
const RSS_MAX = 110 * 1024 * 1024;
const CPU_MAX_PCT = 2;
const INITIATIONS_PER_PEER_MAX = 1.5;
const FLEET_BASE = '100.64.4.0';
const FLEET_ENDPOINTS = '198.19.128.0';
const FLEET_JS = path.resolve(__dirname, '..', '..', 'dist', 'testbed', 'fleet.js');

const addIp = (base: string, i: number) => {
  const [a, b, c, d] = base.split('.').map(Number) as [number, number, number, number];
  const v = ((a << 24) | (b << 16) | (c << 8) | d) + i;
  return [v >>> 24, (v >>> 16) & 255, (v >>> 8) & 255, v & 255].join('.');
};

describe.skipIf(!isRoot)('one agent with 999 quiet peers in etcd', () => {
  let bed: MeshBed;
  let h1: Agent;
  let loadedAt = 0;
  const results: string[] = [];

  beforeAll(async () => {
    bed = await startMeshBed({ topology: { hosts: 1 }, network: 'many', cidr: '100.64.0.0/20', agents: 0, waitUp: false });
    const seed = await bed.topo.exec(
      bed.topo.routerNs,
      [process.execPath, FLEET_JS, '--etcd', bed.etcd.endpoint, '--network', bed.network, '--network-key', networkKeyFile(bed.topo, bed.network)]
        .concat(['--count', String(N), '--base', FLEET_BASE, '--endpoints', FLEET_ENDPOINTS]),
      { timeoutMs: 120_000 },
    );
    expect(seed.stdout).toContain(`seeded ${N} hosts`);
    h1 = await bed.start(bed.topo.hosts[0]!);
    await waitUntil(`h1 to hold ${N} peers`, async () => (await h1.status()).peers.length === N, { timeoutMs: 60_000, intervalMs: 500 });
    loadedAt = Date.now();
  }, 240_000);

  afterAll(async () => {
    if (results.length > 0) console.log(`one agent, ${N} quiet peers:\n  ${results.join('\n  ')}`);
    await bed?.destroy();
  });

  it(`settles: RSS < 110 MiB, idle CPU < ${CPU_MAX_PCT} %, at most ${INITIATIONS_PER_PEER_MAX} initiations per quiet peer in ${WINDOW_MS / 1000} s`, async () => {
    const pid = h1.proc.pid!;
    const started = (await h1.status()).handshake!.initiationsSent;
    await sleep(Math.max(0, loadedAt + SETTLE_MS - Date.now()));
    const before = (await h1.status()).handshake!.initiationsSent;
    const cpu = await cpuPercent(pid, WINDOW_MS);
    const doc = await h1.status();
    const sent = doc.handshake!.initiationsSent - before;
    const rss = rssBytes(pid);
    results.push(
      `initiations: ${before - started} in the first ${SETTLE_MS / 1000} s after loading, then ${sent} in ${WINDOW_MS / 1000} s ` +
        `(${(sent / (WINDOW_MS / 1000)).toFixed(1)}/s, ${(sent / N).toFixed(2)} per peer)`,
      `idle CPU ${cpu.toFixed(2)} % of a core, RSS ${(rss / 2 ** 20).toFixed(1)} MiB`,
    );
    expect(doc.peers.length).toBe(N);
    expect(doc.peers.every((p) => p.state !== 'up')).toBe(true); // nobody answers: nothing to measure if one did
    expect(rss).toBeLessThan(RSS_MAX);
    expect(cpu).toBeLessThan(CPU_MAX_PCT);
    expect(sent).toBeLessThanOrEqual(INITIATIONS_PER_PEER_MAX * N);
    expect(sent).toBeGreaterThan(0); // it does keep trying, slowly
  }, SETTLE_MS + WINDOW_MS + 30_000);

  it('a packet for a quiet peer starts a handshake at once and retries fast while packets wait', async () => {
    const k = 500;
    const target = addIp(FLEET_BASE, k);
    const endpoint = addIp(FLEET_ENDPOINTS, k);
    const ns = h1.host.ns;
    const nft = (...a: string[]) => bed.topo.exec(ns, ['nft', ...a]);
    await nft('add', 'table', 'inet', 'cnmany');
    await nft('add', 'chain', 'inet', 'cnmany', 'out', '{ type filter hook output priority 0 ; }');
    await nft('add', 'rule', 'inet', 'cnmany', 'out', 'ip', 'daddr', endpoint, 'udp', 'dport', '51820', 'counter');
    const count = async () => Number(/counter packets (\d+)/.exec((await nft('list', 'chain', 'inet', 'cnmany', 'out')).stdout)?.[1] ?? NaN);
    try {
      expect((await h1.status()).peers.find((p) => p.overlayIp === target)?.name).toBe(fleetName(k));
      const c0 = await count();
      // 3 s of pings every 200 ms to a peer that never answers
      await bed.topo.tryExec(ns, ['ping', '-n', '-q', '-c', '15', '-i', '0.2', '-W', '1', target], { timeoutMs: 10_000 });
      const sent = (await count()) - c0;
      results.push(`on demand: ${sent} initiations to ${fleetName(k)} during 3 s of pings to it`);
      // Before: its retry schedule alone (every 5 s at best): one at most in 3 s. Now: at once,
      // then retries from RETRY_MIN_MS (about 0.25, 0.8, 1.9 s), restarted by every second of packets.
      expect(sent).toBeGreaterThanOrEqual(5);
    } finally {
      await bed.topo.tryExec(ns, ['nft', 'delete', 'table', 'inet', 'cnmany']);
    }
  }, 30_000);
});

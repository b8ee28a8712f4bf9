import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cliPath, sleep, type Agent } from '../../src/testbed/agents';
import { startMeshBed, type MeshBed } from '../../src/testbed/mesh';
import { flushConntrack, listConntrack } from '../../src/testbed/roam';

const isRoot = process.getuid?.() === 0;
const FIVE_RUNS = Number(process.env['CLADNET_DIRECT_RUNS'] ?? 10);

/**
 * Issue 16, "direct paths that stay relayed": which path each pair of NAT kinds ends on, and how
 * long after both agents run. One bed, agents restarted (and every NAT's conntrack flushed) per
 * round, so a round costs seconds:
 *   pub   on the internet (with --relay in the rounds that have a relay)
 *   a, b  behind MASQUERADE NATs with a firewall (unsolicited inbound dropped in a filter hook)
 *   e, f  behind MASQUERADE NATs without one (a plain masquerade rule: an unsolicited packet
 *         leaves a conntrack entry that makes the NAT give the host's later packet to that same
 *         remote address and port another source port)
 *   c, d  behind port-randomizing NATs (MASQUERADE --random-fully)
 */
const PAIRS: readonly (readonly [string, string, string])[] = [
  ['a', 'b', 'EIM/EIM'],
  ['e', 'f', 'EIM/EIM, no firewall'],
  ['a', 'c', 'EIM/random'],
  ['c', 'd', 'random/random'],
];
const WATCH_MS = 12_000;

interface PairResult {
  pair: string;
  kind: string;
  /** Final path as both ends see it ("direct", "relayed", "none", or "a:x/b:y" when they differ). */
  path: string;
  /** ms from the later agent's readiness to the moment both ends reached the final path (and stayed). */
  ms: number | null;
  /** Each end's path changes, as "+ms path" from t0. */
  trace: string;
}

describe.skipIf(!isRoot)('direct paths through NATs', () => {
  let bed: MeshBed;
  let stun = '';

  beforeAll(async () => {
    bed = await startMeshBed({
      topology: {
        hosts: [
          { name: 'pub' },
          { name: 'a', site: 's1' },
          { name: 'b', site: 's2' },
          { name: 'c', site: 's3' },
          { name: 'd', site: 's4' },
          { name: 'e', site: 's5' },
          { name: 'f', site: 's6' },
        ],
        sites: [
          { name: 's1', nat: 'masquerade' },
          { name: 's2', nat: 'masquerade' },
          { name: 's3', nat: 'random' },
          { name: 's4', nat: 'random' },
          { name: 's5', nat: 'masquerade', firewall: false },
          { name: 's6', nat: 'masquerade', firewall: false },
        ],
      },
      agents: 0,
      waitUp: false,
    });
    stun = `${bed.topo.routerIp}:3478`;
    bed.topo.spawn(bed.topo.routerNs, [process.execPath, cliPath(), 'stun-server', '--listen', stun]);
  }, 90_000);

  afterAll(async () => {
    await bed?.destroy();
  }, 60_000);

  const issued = new Set<string>();
  const sites = ['s1', 's2', 's3', 's4', 's5', 's6'];

  async function stopAll(): Promise<void> {
    await Promise.all([...bed.agents].map((a) => a.stop()));
    await Promise.all(sites.map((s) => flushConntrack(bed.topo, s)));
  }

  /** Starts `names` (together, or one after the other `gapMs` apart) and watches `pairs`. */
  async function round(opts: {
    names: readonly string[];
    relay: boolean;
    gapMs: number;
    pairs: readonly (readonly [string, string, string])[];
    watchMs?: number;
  }): Promise<PairResult[]> {
    await stopAll();
    const startedAt = new Map<string, number>();
    const start = async (n: string) => {
      const extra = ['--stun', stun, ...(n === 'pub' && opts.relay ? ['--relay'] : [])];
      // Certificates once per host (the state dir stays); ready = its status socket answers.
      await bed.start(bed.topo.host(n), { extraArgs: extra, issueCert: !issued.has(n) });
      issued.add(n);
      startedAt.set(n, Date.now());
    };
    if (opts.gapMs === 0) await Promise.all(opts.names.map(start));
    else
      for (const n of opts.names) {
        await start(n);
        await sleep(opts.gapMs);
      }
    // Poll every end's view of its pair partner until watchMs after the last start.
    const views = new Map<string, { t: number; path: string }[]>();
    const end = Date.now() + (opts.watchMs ?? WATCH_MS);
    const agents = new Map<string, Agent>(opts.names.map((n) => [n, bed.agent(n)]));
    while (Date.now() < end) {
      const docs = await Promise.all([...agents.values()].map((a) => a.status().catch(() => null)));
      const t = Date.now();
      for (const d of docs) {
        if (!d) continue;
        for (const p of d.peers) {
          const k = `${d.self.name}>${p.name}`;
          const path = p.state === 'up' ? p.path : 'none';
          let list = views.get(k);
          if (!list) views.set(k, (list = []));
          list.push({ t, path });
        }
      }
      await sleep(100);
    }
    if (process.env['CLADNET_DIRECT_CONNTRACK'])
      for (const site of ['s5', 's6']) console.log(`conntrack ${site}:\n${(await listConntrack(bed.topo, site)).filter((l) => l.includes('udp') && !l.includes('3478')).join('\n')}`);
    return opts.pairs.map(([x, y, kind]) => {
      const vx = views.get(`${x}>${y}`) ?? [];
      const vy = views.get(`${y}>${x}`) ?? [];
      const fx = vx.at(-1)?.path ?? 'none';
      const fy = vy.at(-1)?.path ?? 'none';
      const path = fx === fy ? fx : `${x}:${fx}/${y}:${fy}`;
      // The moment from which both ends stayed on their final path.
      const settle = (v: { t: number; path: string }[], f: string) => {
        let i = v.length;
        while (i > 0 && v[i - 1]!.path === f) i--;
        return i < v.length ? v[i]!.t : null;
      };
      const sx = settle(vx, fx);
      const sy = settle(vy, fy);
      const t0 = Math.max(startedAt.get(x)!, startedAt.get(y)!);
      const ms = sx === null || sy === null ? null : Math.max(sx, sy) - t0;
      const changes = (v: { t: number; path: string }[]) =>
        v.filter((e, i) => i === 0 || v[i - 1]!.path !== e.path).map((e) => `+${e.t - t0} ${e.path}`).join(' ');
      return { pair: `${x}-${y}`, kind, path, ms, trace: `${x}: ${changes(vx)} | ${y}: ${changes(vy)}` };
    });
  }

  const show = (label: string, rs: readonly PairResult[]) =>
    console.log(`${label}:\n` + rs.map((r) => `  ${r.pair} (${r.kind}) ${r.path} after ${r.ms === null ? '-' : `${r.ms} ms`}  [${r.trace}]`).join('\n'));

  it('the matrix: EIM pairs go direct, random/random stays relayed when a relay exists', async () => {
    const names = ['pub', 'a', 'b', 'c', 'd', 'e', 'f'];
    const table: { label: string; rs: PairResult[] }[] = [];
    for (const relay of process.env['QUICK'] ? [true] : [true, false])
      for (const gapMs of process.env['QUICK'] ? [0] : [0, 1_000]) {
        const label = `${relay ? 'relay' : 'no relay'}, ${gapMs === 0 ? 'started together' : `one after the other (${gapMs} ms apart)`}`;
        const rs = await round({ names, relay, gapMs, pairs: PAIRS });
        show(label, rs);
        table.push({ label, rs });
      }
    for (const { rs } of table) {
      const by = new Map(rs.map((r) => [r.pair, r]));
      expect(by.get('a-b')!.path).toBe('direct');
      expect(by.get('a-b')!.ms).toBeLessThan(5_000);
      expect(by.get('e-f')!.path).toBe('direct');
      expect(by.get('e-f')!.ms).toBeLessThan(5_000);
    }
  }, 240_000);
});

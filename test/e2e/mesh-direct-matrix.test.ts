import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sleep } from '../../src/testbed/agents';
import { startNatBed, type MeshBed } from '../../src/testbed/mesh';
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
const WATCH_MS = 8_000;

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
    ({ bed, stun } = await startNatBed({
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
      relay: 'pub',
      noAgents: true,
    }));
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
    // Every end's view of its peers, polled from the first start until watchMs after the last.
    const views = new Map<string, { t: number; path: string }[]>();
    let end = Infinity;
    const poll = (async () => {
      while (Date.now() < end) {
        const running = bed.agents.filter((a) => opts.names.includes(a.name));
        const docs = await Promise.all(running.map((a) => a.status().catch(() => null)));
        const t = Date.now();
        for (const d of docs) {
          if (!d) continue;
          for (const p of d.peers) {
            const k = `${d.self.name}>${p.name}`;
            let list = views.get(k);
            if (!list) views.set(k, (list = []));
            list.push({ t, path: p.state === 'up' ? p.path : 'none' });
          }
        }
        await sleep(100);
      }
    })();
    try {
      if (opts.gapMs === 0) await Promise.all(opts.names.map(start));
      else
        for (const n of opts.names) {
          await start(n);
          await sleep(opts.gapMs);
        }
    } finally {
      end = Date.now() + (opts.watchMs ?? WATCH_MS);
      await poll;
    }
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

  /** What both ends and their NATs hold now (printed when a pair misses its expected path). */
  async function diagnose(x: string, y: string): Promise<string> {
    const out: string[] = [];
    for (const n of [x, y]) {
      const d = await bed.agent(n).status().catch(() => null);
      const other = d?.peers.find((p) => p.name === (n === x ? y : x));
      out.push(`${n}: reflexive ${d?.self.reflexive} nat ${d?.self.nat}; peer ${other?.state}/${other?.path} at ${other?.endpoint}`);
      const site = bed.topo.plan.hosts.find((h) => h.name === n)?.site;
      if (site) out.push(...(await listConntrack(bed.topo, site)).filter((l) => l.includes('51820')).map((l) => `  ${site}: ${l}`));
      out.push(bed.agent(n).logTail(15));
    }
    return out.join('\n');
  }

  const show = (label: string, rs: readonly PairResult[]) =>
    console.log(`${label}:\n` + rs.map((r) => `  ${r.pair} (${r.kind}) ${r.path} after ${r.ms === null ? '-' : `${r.ms} ms`}  [${r.trace}]`).join('\n'));

  const ALL = ['pub', 'a', 'b', 'c', 'd', 'e', 'f'];
  const pairOf = (rs: readonly PairResult[], pair: string) => rs.find((r) => r.pair === pair)!;

  it('the matrix: EIM pairs go direct within 5 s (with or without a firewall), EIM/random and random/random need the relay', async () => {
    const table: { label: string; rs: PairResult[] }[] = [];
    for (const relay of [true, false])
      for (const gapMs of [0, 1_000]) {
        const label = `${relay ? 'relay' : 'no relay'}, ${gapMs === 0 ? 'started together' : `one after the other (${gapMs} ms apart)`}`;
        const rs = await round({ names: ALL, relay, gapMs, pairs: PAIRS });
        show(label, rs);
        for (const pair of ['a-b', 'e-f'])
          if (pairOf(rs, pair).path !== 'direct') console.log(await diagnose(pair[0]!, pair[2]!));
        table.push({ label, rs });
      }
    for (const { label, rs } of table) {
      const relay = label.startsWith('relay');
      for (const pair of ['a-b', 'e-f']) {
        expect(pairOf(rs, pair).path, `${label}: ${pair}`).toBe('direct');
        expect(pairOf(rs, pair).ms, `${label}: ${pair}`).toBeLessThan(5_000);
      }
      // No mapping to aim at: a port-randomizing NAT's port toward us is seen only by our NAT,
      // which drops it (Linux conntrack filters by remote address and port).
      for (const pair of ['a-c', 'c-d']) expect(pairOf(rs, pair).path, `${label}: ${pair}`).toBe(relay ? 'relayed' : 'none');
    }
  }, 240_000);

  it(`the five-host topology: the two MASQUERADE hosts direct within 5 s, ${FIVE_RUNS} runs out of ${FIVE_RUNS}`, async () => {
    const five = ['pub', 'e', 'f', 'c', 'd']; // e, f: MASQUERADE with no firewall, as in the issue
    const times: (number | null)[] = [];
    for (let run = 0; run < FIVE_RUNS; run++) {
      const rs = await round({ names: five, relay: true, gapMs: 0, pairs: [['e', 'f', 'EIM/EIM, no firewall']], watchMs: 6_000 });
      const r = rs[0]!;
      console.log(`run ${run + 1}: e-f ${r.path} after ${r.ms === null ? '-' : `${r.ms} ms`}  [${r.trace}]`);
      times.push(r.path === 'direct' ? r.ms : null);
      if (r.path !== 'direct') console.log(await diagnose('e', 'f'));
    }
    expect(times.filter((t) => t === null || t >= 5_000)).toEqual([]);
  }, 180_000);
});

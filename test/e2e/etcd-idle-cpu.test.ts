import * as fs from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backWithEtcd } from '../helpers/bed-etcd';
import { cpuSeconds, cpuSeries } from '../helpers/proc';
import { sleep, waitUntil, type Agent } from '../../src/testbed/agents';
import { startMeshBed, type MeshBed } from '../../src/testbed/mesh';
import { recoveryMs, startPings } from '../../src/testbed/traffic';

/**
 * Issue 11, "no busy retry": an idle agent costs about the same CPU whatever etcd does. Before,
 * with etcd stopped an agent burned 35-40 % of a core (about 200 connect() calls and 300 file opens
 * a second: a fresh gRPC channel per retry). In each state below the agent's own CPU time (utime +
 * stime of all its threads, /proc/<pid>/stat) is read over WINDOW_MS; then etcd is given back and
 * the agent must reconnect and hold its liveness key again within the bound.
 *
 *   up          etcd answers
 *   no route    `ip route add unreachable <etcd>/32` in the agent's namespace (EHOSTUNREACH at once)
 *   dropped     nft drops the agent's packets to etcd's port (connects hang)
 *   hung        etcd SIGSTOPped (connects succeed, nothing answers)
 *   refused     etcd stopped (ECONNREFUSED)
 *
 * What is measured is the state, not the way into it: the window opens SETTLE_MS after the agent's
 * status says etcd is down (which must happen within WINDOW_MS of the change). The way in (one
 * failed call, one log line, the streams torn down) is a one-off, reported beside the result with
 * the busiest second of the window.
 *
 * Two full-suite runs failed here (1.13 % with no route, 2.10 % refused) where the same states
 * read 0.2-0.6 % alone. The per-second series found it: 15 s of 30-90 ms a second, whatever etcd
 * did, when a peer's session passed its send deadline (1/12 of its life before it expires): the
 * handshake timer counted that passed deadline as still due and ran every millisecond until the
 * expiry (handshakes.ts; unit test "never asks for a tick that is already due"). It only showed
 * when the session's age put those 15 s inside a window.
 *
 * Bound (issue 11): under MAX_PCT, 1 % of a core, in every state, over WINDOW_MS. Before the retry
 * fix: 35-42 % with etcd stopped; before the timers woke by deadline (handshakes every 100 ms,
 * netlink polled every 100 ms, paths every 250 ms, the data-plane worker every 100 ms): 1.2-2 %
 * in every state. A failure prints the CPU milliseconds of each second of the window. Reconnecting:
 * at most 30 s (the longest backoff round) + 5 s (one call deadline) after etcd is back, and within
 * ROUTE_FAST_MS when it came back through a change of the agent's own network (a route: the
 * agent retries at once).
 */
const isRoot = process.getuid?.() === 0;
const WINDOW_MS = 30_000;
const MAX_PCT = 1;
const RECONNECT_MAX_MS = 35_000;
const ROUTE_FAST_MS = 5_000;
const SETTLE_MS = 2_000;

function logMessages(a: Agent): { level: number; msg: string }[] {
  return fs
    .readFileSync(a.logFile, 'utf8')
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as { level: number; msg: string });
}

describe.skipIf(!isRoot)('idle agent CPU in every etcd state', () => {
  let bed: MeshBed;
  let h1: Agent;
  let up = NaN;
  const results: string[] = [];

  beforeAll(async () => {
    bed = await startMeshBed({ topology: { hosts: 2 } });
    h1 = bed.agent('h1');
  }, 60_000);
  afterAll(async () => {
    if (results.length > 0) console.log(`idle CPU of h1 (${WINDOW_MS / 1000} s each):\n  ${results.join('\n  ')}`);
    await bed?.destroy();
  });

  /** h1 reads etcd again and its liveness key is there, on a lease. */
  const reconnected = () => backWithEtcd(bed, h1);

  it('up: an idle agent with etcd answering', async () => {
    await sleep(8_000); // past the start-up work (handshakes, discovery, compilation)
    const m = await cpuSeries(h1.proc.pid!, WINDOW_MS);
    up = m.pct;
    results.push(`up: ${up.toFixed(2)} %`);
    expect((await h1.status()).etcd.connected).toBe(true);
    expect(up, `CPU ms per second: ${m.perSecondMs.join(' ')}`).toBeLessThan(MAX_PCT);
  }, 60_000);

  const cases: { name: string; enter: () => Promise<void>; leave: () => Promise<void>; boundMs: number }[] = [
    {
      name: 'no route to etcd',
      enter: async () => void (await bed.topo.exec(h1.host.ns, ['ip', 'route', 'add', 'unreachable', `${bed.topo.routerIp}/32`])),
      leave: async () => void (await bed.topo.exec(h1.host.ns, ['ip', 'route', 'del', 'unreachable', `${bed.topo.routerIp}/32`])),
      boundMs: ROUTE_FAST_MS,
    },
    {
      name: 'packets to etcd dropped',
      enter: async () => {
        const nft = (...a: string[]) => bed.topo.exec(h1.host.ns, ['nft', ...a]);
        await nft('add', 'table', 'inet', 'cnidle');
        await nft('add', 'chain', 'inet', 'cnidle', 'out', '{ type filter hook output priority 0 ; }');
        await nft('add', 'rule', 'inet', 'cnidle', 'out', 'ip', 'daddr', bed.topo.routerIp, 'tcp', 'dport', new URL(bed.etcd.endpoint).port, 'drop');
      },
      leave: async () => void (await bed.topo.exec(h1.host.ns, ['nft', 'delete', 'table', 'inet', 'cnidle'])),
      boundMs: RECONNECT_MAX_MS,
    },
    {
      name: 'etcd hung (SIGSTOP)',
      enter: async () => void process.kill(bed.etcd.pid()!, 'SIGSTOP'),
      leave: async () => void process.kill(bed.etcd.pid()!, 'SIGCONT'),
      boundMs: RECONNECT_MAX_MS,
    },
    {
      name: 'etcd stopped (connection refused)',
      enter: () => bed.etcd.stop(),
      leave: () => bed.etcd.start(),
      boundMs: RECONNECT_MAX_MS,
    },
  ];

  for (const c of cases) {
    it(`${c.name}: no busy retry, one log line per state change, back within ${c.boundMs / 1000} s`, async () => {
      expect(up, 'the up state is measured first').not.toBeNaN();
      const mark = logMessages(h1).length;
      const pid = h1.proc.pid!;
      await c.enter();
      let m: { pct: number; perSecondMs: number[] };
      let wayIn: string;
      try {
        const entered = performance.now();
        const cpu0 = cpuSeconds(pid);
        await waitUntil(`h1 to notice within ${WINDOW_MS / 1000} s`, async () => !(await h1.status()).etcd.connected, { timeoutMs: WINDOW_MS, intervalMs: 200 });
        const noticedMs = performance.now() - entered;
        await sleep(SETTLE_MS);
        wayIn = `noticed after ${(noticedMs / 1000).toFixed(1)} s, ${Math.round((cpuSeconds(pid) - cpu0) * 1000)} ms of CPU until the window opened`;
        m = await cpuSeries(pid, WINDOW_MS);
        const doc = await h1.status();
        expect(doc.etcd.connected, `h1 stayed down\n${h1.logTail(10)}`).toBe(false);
        expect(doc.etcd.link).toBe('down');
        expect(Date.parse(doc.etcd.downSince ?? '')).toBeGreaterThan(Date.now() - (performance.now() - entered) - 2_000);
      } finally {
        await c.leave();
      }
      const back = performance.now();
      await waitUntil('h1 to read etcd and hold its liveness key again', () => reconnected(), { timeoutMs: c.boundMs + 10_000, intervalMs: 100 });
      const reconnectMs = performance.now() - back;
      results.push(`${c.name}: ${m.pct.toFixed(2)} % (up ${up.toFixed(2)} %; busiest second ${Math.max(...m.perSecondMs)} ms; ${wayIn}), reconnected ${(reconnectMs / 1000).toFixed(1)} s after etcd was back`);
      expect(m.pct, `CPU ms per second: ${m.perSecondMs.join(' ')}`).toBeLessThan(MAX_PCT);
      expect(reconnectMs).toBeLessThan(c.boundMs);
      expect((await h1.status()).etcd).toMatchObject({ connected: true, link: 'up', downSince: null });

      const msgs = logMessages(h1).slice(mark);
      const count = (m: string) => msgs.filter((l) => l.msg === m).length;
      expect(count('etcd unreachable; retrying with backoff'), JSON.stringify(msgs)).toBe(1);
      expect(count('etcd reachable again'), JSON.stringify(msgs)).toBe(1);
      // No line per retry: the outage, at most a lost lease and a re-grant, the way back.
      expect(msgs.filter((l) => l.level >= 40).length, JSON.stringify(msgs)).toBeLessThanOrEqual(3);
    }, 2 * WINDOW_MS + SETTLE_MS + RECONNECT_MAX_MS + 40_000);
  }

  it('an agent restarted while etcd is down is reachable again within 2 s', async () => {
    const h2 = bed.agent('h2');
    const overlay = (await h1.status()).self.overlayIp;
    await bed.etcd.stop();
    const pings = startPings(bed.topo, h2.host.ns, overlay, { intervalMs: 10 });
    try {
      await h1.stop();
      const at = Date.now();
      h1 = await bed.start(h1.host, { issueCert: false });
      const reply = await pings.waitReplyAfter(at, 10_000);
      const series = await pings.stop();
      const rec = recoveryMs(series.replies, at);
      results.push(`restart with etcd down: h2's pings answered ${rec === null ? 'never' : `${rec.toFixed(0)} ms`} after the restart began`);
      expect(reply, h1.logTail(15)).not.toBeNull();
      expect(rec!).toBeLessThan(2_000);
      expect((await h1.status()).etcd.connected).toBe(false);
    } finally {
      await pings.stop();
      await bed.etcd.start();
    }
  }, 60_000);
});

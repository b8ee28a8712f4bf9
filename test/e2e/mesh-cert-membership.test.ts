import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { aliveKey, hostKey } from '../../src/control/keys';
import { parseHostRecord, serializeHostRecord } from '../../src/control/records';
import { sleep, waitUntil, type AgentStatus } from '../../src/testbed/agents';
import { startMeshBed, type MeshBed } from '../../src/testbed/mesh';
import { firstReply, longestGapMs, recoveryMs, startPings, type PingSeries } from '../../src/testbed/traffic';

/**
 * Issue 11, "membership is the certificate": etcd introduces hosts, it never tears down a working
 * tunnel. Three agents pinging each other every 10 ms while:
 *  - one host is cut off from etcd (a firewall rule in its namespace) for 40 s: its liveness key
 *    expires, its peers keep it;
 *  - one host is suspended (SIGSTOP) for 30 s: its peers keep it, and it answers < 2 s after SIGCONT;
 *  - an etcd writer deletes a host's record, then replaces it with one that does not verify;
 *  - a host stops on purpose while cut off from etcd: its bye (over the tunnel) removes it at once,
 *    although its alive key is still in etcd; restarted (etcd still out of reach), it is back at once.
 */
const isRoot = process.getuid?.() === 0;
const NET = 'certmember';

/** Requests that got no reply among those answered before and after them (ping's own sequence numbers). */
function lost(s: PingSeries, from: number, to: number): number {
  const seqs = s.replies.filter((r) => r.at >= from && r.at <= to).map((r) => r.seq);
  if (seqs.length === 0) return Number.POSITIVE_INFINITY;
  const first = Math.min(...seqs);
  const last = Math.max(...seqs);
  return last - first + 1 - new Set(seqs).size;
}

describe.skipIf(!isRoot)('membership is the certificate (etcd records and liveness are hints)', () => {
  let bed: MeshBed;
  const ip = new Map<string, string>();
  let etcdAddr = '';
  let etcdPort = '';
  /** iptables rules added to host namespaces, removed in afterAll even on failure. */
  const rules: { ns: string; args: string[] }[] = [];
  const stopped = new Set<number>();

  beforeAll(async () => {
    bed = await startMeshBed({ topology: { hosts: 3 }, network: NET });
    for (const [name, doc] of await bed.waitUp()) ip.set(name, doc.self.overlayIp);
    const u = new URL(bed.etcd.endpoint);
    etcdAddr = u.hostname;
    etcdPort = u.port;
  }, 60_000);
  afterAll(async () => {
    for (const pid of stopped) {
      try {
        process.kill(pid, 'SIGCONT');
      } catch {
        /* gone */
      }
    }
    for (const r of rules.splice(0)) await bed.topo.tryExec(r.ns, ['iptables', '-D', ...r.args]);
    await bed?.destroy();
  });

  const etcdctl = (args: string[], input?: string) =>
    bed.topo.exec(bed.topo.routerNs, ['etcdctl', `--endpoints=${bed.etcd.endpoint}`, ...args], {
      input,
      env: { ...process.env, ETCDCTL_API: '3' },
      timeoutMs: 10_000,
    });
  const get = async (key: string) => (await etcdctl(['get', key, '--print-value-only'])).stdout.trim();

  /** Cuts `ns` off from etcd (its UDP paths to peers stay): 'DROP' black-holes, 'REJECT' refuses. */
  async function cutFromEtcd(ns: string, how: 'DROP' | 'REJECT'): Promise<() => Promise<void>> {
    const args = ['OUTPUT', '-p', 'tcp', '-d', etcdAddr, '--dport', etcdPort, '-j', how, ...(how === 'REJECT' ? ['--reject-with', 'tcp-reset'] : [])];
    await bed.topo.exec(ns, ['iptables', '-A', ...args]);
    const rule = { ns, args };
    rules.push(rule);
    return async () => {
      const i = rules.indexOf(rule);
      if (i < 0) return;
      rules.splice(i, 1);
      await bed.topo.exec(ns, ['iptables', '-D', ...args]);
    };
  }

  const peerOf = (d: AgentStatus, name: string) => d.peers.find((p) => p.name === name);

  it('etcd stopped for 60 s: no ping lost on any path, and the agents are back in touch with etcd after it restarts', async () => {
    const agents = [bed.agent('h1'), bed.agent('h2'), bed.agent('h3')];
    const pairs: [number, number][] = [
      [0, 1],
      [1, 2],
      [2, 0],
    ];
    const pings = pairs.map(([a, b]) => startPings(bed.topo, agents[a]!.host.ns, ip.get(`h${b + 1}`)!, { intervalMs: 10 }));
    for (const p of pings) expect(await p.waitReplyAfter(Date.now(), 5_000), 'pings before the outage').not.toBeNull();
    const stopAt = Date.now();
    let startedAt = 0;
    let listedAlways = true;
    try {
      await bed.etcd.stop();
      while (Date.now() - stopAt < 60_000) {
        for (const a of agents) {
          const d = await a.status();
          for (const other of agents) if (other !== a && !peerOf(d, other.name)) listedAlways = false;
        }
        await sleep(1_000);
      }
    } finally {
      if (bed.etcd.pid() === null) await bed.etcd.start();
      startedAt = Date.now();
    }
    await sleep(2_000);
    const series = await Promise.all(pings.map((p) => p.stop()));
    for (const [k, s] of series.entries()) {
      const [a, b] = pairs[k]!;
      const missing = lost(s, stopAt - 1_000, startedAt + 1_000);
      const gap = longestGapMs(s.replies, stopAt, startedAt);
      console.log(`etcd stopped 60 s: h${a + 1} -> h${b + 1}: ${missing} pings lost of ${s.sent}, longest gap ${gap} ms`);
      expect(missing, `h${a + 1} -> h${b + 1}`).toBe(0);
      expect(gap).toBeLessThan(1_000);
    }
    expect(listedAlways, 'an agent dropped a peer while etcd was stopped').toBe(true);
    // Back: every agent reconnects (the retry schedule reaches about 30 s between attempts).
    for (const a of agents) {
      await waitUntil(`${a.name} back in touch with etcd`, async () => (await a.status()).etcd.connected === true, { timeoutMs: 45_000, intervalMs: 500 });
    }
  }, 180_000);

  it('a host cut off from etcd for 40 s loses no ping: its liveness key expires, its peers keep it', async () => {
    const [h1, h2] = [bed.agent('h1'), bed.agent('h2')];
    const pings = startPings(bed.topo, h2.host.ns, ip.get('h1')!, { intervalMs: 10 });
    expect(await pings.waitReplyAfter(Date.now(), 5_000), 'pings before the cut').not.toBeNull();
    const heal = await cutFromEtcd(h1.host.ns, 'DROP');
    const cutAt = Date.now();
    let aliveGoneAt: number | null = null;
    let listedAlways = true;
    try {
      while (Date.now() - cutAt < 40_000) {
        const d = await h2.status();
        const p = peerOf(d, 'h1');
        if (!p) listedAlways = false;
        if (p?.etcd?.alive === false && aliveGoneAt === null) aliveGoneAt = Date.now();
        await sleep(500);
      }
    } finally {
      await heal();
    }
    const healedAt = Date.now();
    await sleep(2_000);
    const series = await pings.stop();
    const missing = lost(series, cutAt - 1_000, healedAt + 1_000);
    const gap = longestGapMs(series.replies, cutAt, healedAt);
    console.log(
      `cut from etcd 40 s: ${missing} pings lost h2 -> h1 (of ${series.sent}), longest gap ${gap} ms; ` +
        `h2 saw h1's alive key gone ${aliveGoneAt === null ? 'never' : `${aliveGoneAt - cutAt} ms`} after the cut`,
    );
    // The scenario happened: etcd expired h1's liveness while it was cut off.
    expect(aliveGoneAt, "h2 never saw h1's alive key go").not.toBeNull();
    expect(listedAlways, 'h2 dropped h1 from its peers').toBe(true);
    expect(missing).toBe(0);
    expect(gap).toBeLessThan(1_000);
    // Back in touch, h1 holds liveness again (not a target here: logged).
    const t = Date.now();
    const back = await waitUntil('h2 to see h1 alive again', async () => peerOf(await h2.status(), 'h1')?.etcd?.alive === true, {
      timeoutMs: 60_000,
      intervalMs: 250,
    }).then(
      () => Date.now() - t,
      () => null,
    );
    console.log(`h1 alive again in etcd ${back === null ? 'not within 60 s' : `${back} ms`} after the rule was removed`);
  }, 150_000);

  it('a host suspended for 30 s stays a member, and answers within 2 s of SIGCONT', async () => {
    const [h1, h2, h3] = [bed.agent('h1'), bed.agent('h2'), bed.agent('h3')];
    const pid = h3.proc.pid!;
    const pings = startPings(bed.topo, h1.host.ns, ip.get('h3')!, { intervalMs: 10 });
    expect(await pings.waitReplyAfter(Date.now(), 5_000)).not.toBeNull();
    process.kill(pid, 'SIGSTOP');
    stopped.add(pid);
    const stopAt = Date.now();
    let aliveGone = false;
    let dropped: string[] = [];
    try {
      while (Date.now() - stopAt < 30_000) {
        const docs = await Promise.all([h1.status(), h2.status()]);
        for (const d of docs) {
          const p = peerOf(d, 'h3');
          if (!p) dropped.push(d.self.name);
          else if (p.etcd?.alive === false) aliveGone = true;
        }
        await sleep(1_000);
      }
    } finally {
      process.kill(pid, 'SIGCONT');
      stopped.delete(pid);
    }
    const resumedAt = Date.now();
    const reply = await pings.waitReplyAfter(resumedAt, 10_000);
    const series = await pings.stop();
    const rec = recoveryMs(series.replies, resumedAt);
    dropped = [...new Set(dropped)];
    console.log(
      `SIGSTOP 30 s: h3's alive key ${aliveGone ? 'expired' : 'did not expire'} meanwhile; dropped by ${dropped.join(', ') || 'nobody'}; ` +
        `h1 -> h3 answered ${rec === null ? 'never' : `${rec.toFixed(0)} ms`} after SIGCONT`,
    );
    expect(aliveGone, "h3's alive key never expired: the scenario did not happen").toBe(true);
    expect(dropped).toEqual([]);
    expect(reply, h3.logTail()).not.toBeNull();
    expect(rec!).toBeLessThan(2_000);
  }, 90_000);

  it("an etcd writer deleting h2's record, then forging it, leaves the tunnel working (20 s each); status says so", async () => {
    const h1 = bed.agent('h1');
    const key = hostKey(NET, 'h2');
    const original = await get(key);
    const parsed = parseHostRecord(original, { network: NET, name: 'h2' });
    expect(parsed.ok).toBe(true);
    if (!parsed.ok) return;
    const pings = startPings(bed.topo, h1.host.ns, ip.get('h2')!, { intervalMs: 10 });
    expect(await pings.waitReplyAfter(Date.now(), 5_000)).not.toBeNull();
    const t0 = Date.now();
    const views: string[] = [];
    try {
      await etcdctl(['del', key]);
      await waitUntil("h1 to see h2's record gone", async () => peerOf(await h1.status(), 'h2')?.etcd?.record === 'absent', { timeoutMs: 5_000 });
      const text = await h1.statusText();
      expect(text.split('\n').find((l) => l.startsWith('h2 '))).toMatch(/  NO RECORD, alive$/); // its alive key is still there
      views.push('absent');
      await sleep(20_000 - (Date.now() - t0));
      // Forged: h2's certificate, but another key and endpoint, and a higher epoch.
      const forged = { ...parsed.value, publicKey: randomBytes(32).toString('base64'), endpoints: ['198.18.99.99:51820'], epoch: parsed.value.epoch + 1000 };
      await etcdctl(['put', key], serializeHostRecord(forged));
      await waitUntil("h1 to see h2's record invalid", async () => peerOf(await h1.status(), 'h2')?.etcd?.record === 'invalid', { timeoutMs: 5_000 });
      views.push('invalid');
      await sleep(40_000 - (Date.now() - t0));
      const d = await h1.status();
      expect(peerOf(d, 'h2')).toMatchObject({ state: 'up', publicKey: parsed.value.publicKey });
      expect(d.etcd.untrustedRecords).toBeGreaterThan(0);
    } finally {
      await etcdctl(['put', key], original);
    }
    const end = Date.now();
    const series = await pings.stop();
    const missing = lost(series, t0, end);
    console.log(`h2's record deleted 20 s then forged 20 s: ${missing} pings lost h1 -> h2 (of ${series.sent}); h1 saw ${views.join(', ')}`);
    expect(missing).toBe(0);
    await waitUntil("h1 to see h2's record again", async () => peerOf(await h1.status(), 'h2')?.etcd?.record === 'present', { timeoutMs: 5_000 });
  }, 90_000);

  it('a host that stops on purpose leaves at once by its bye (its alive key still in etcd); restarted while cut off from etcd, it is back at once', async () => {
    const [h1, h2, h3] = [bed.agent('h1'), bed.agent('h2'), bed.agent('h3')];
    await bed.waitUp();
    const heal = await cutFromEtcd(h3.host.ns, 'REJECT');
    try {
      const t0 = Date.now();
      expect(await h3.stop({ signal: 'SIGTERM', timeoutMs: 5_000 })).toEqual({ code: 0, signal: null });
      await waitUntil(
        'h1 and h2 to drop h3',
        async () => (await Promise.all([h1.status(), h2.status()])).every((d) => !peerOf(d, 'h3')),
        { timeoutMs: 3_000, intervalMs: 50 },
      );
      const droppedMs = Date.now() - t0;
      // etcd could not be told (h3 was cut off): its alive key is still there. The bye did it.
      expect(await get(aliveKey(NET, 'h3'))).not.toBe('');
      console.log(`bye: h1 and h2 dropped h3 ${droppedMs} ms after SIGTERM, its alive key still in etcd`);

      const again = await bed.start(h3.host, { issueCert: false, waitReady: false });
      const reply = await firstReply(bed.topo, h1.host.ns, ip.get('h3')!, { intervalS: 0.05, deadlineS: 15 });
      expect(reply, `h1 -> restarted h3\n${again.logTail()}`).not.toBeNull();
      const ms = reply! - again.spawnedAt;
      const d = await h1.status();
      console.log(`restart while cut off from etcd: h1 -> h3 answered ${ms} ms after the respawn; h1's view of h3 in etcd ${JSON.stringify(peerOf(d, 'h3')?.etcd)}`);
      expect(peerOf(d, 'h3')).toBeDefined();
      // (one CI run in many took 3.3 s here: if it comes back, this says which side waited)
      const why = `h1's peer entry for h3: ${JSON.stringify(peerOf(d, 'h3'))}\n--- h3 (restarted) ---\n${again.logTail(40)}\n--- h1 ---\n${h1.logTail(40)}`;
      expect(ms, why).toBeLessThan(2_000);
    } finally {
      await heal();
    }
  }, 60_000);
});

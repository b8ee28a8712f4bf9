import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { waitUntil } from '../../src/testbed/agents';
import { startMeshBed, type MeshBed } from '../../src/testbed/mesh';
import { firstReply, ping } from '../../src/testbed/traffic';

/**
 * Hosts coming and going: a fourth host is reachable from everyone soon after its agent starts,
 * and a host that stops leaves no trace: not in its peers' tables, not in its own namespace.
 */
const isRoot = process.getuid?.() === 0;
const JOIN_BUDGET_MS = 2_000;
const LEAVE_BUDGET_MS = 5_000;

describe.skipIf(!isRoot)('hosts joining and leaving', () => {
  let bed: MeshBed;

  beforeAll(async () => {
    bed = await startMeshBed({ topology: { hosts: 4 }, agents: 3 });
  });
  afterAll(async () => {
    await bed?.destroy();
  });

  it(`reaches a fourth host from every other host within ${JOIN_BUDGET_MS} ms of starting its agent`, async () => {
    const h4 = bed.topo.host('h4');
    const others = [...bed.agents];
    const started = bed.start(h4, { waitReady: false });
    const a4 = await started;
    // Learn h4's overlay IP as soon as its status socket answers (polled every 20 ms)...
    const ip = await waitUntil('h4 to report its overlay IP', async () => (await a4.status()).self.overlayIp || undefined, {
      timeoutMs: 10_000,
      intervalMs: 20,
    });
    const ipKnownMs = Date.now() - a4.spawnedAt;
    // ...then ping it from everyone every 50 ms; each ping's first reply time is from ping's own clock.
    const replies = await Promise.all(others.map((o) => firstReply(bed.topo, o.host.ns, ip, { intervalS: 0.05, deadlineS: 10 })));
    const latencies = others.map((o, i) => [o.name, replies[i] === null ? null : replies[i]! - a4.spawnedAt] as const);
    console.log(
      `join: h4 spawned, overlay IP ${ip} known after ${ipKnownMs} ms; first ping reply: ` +
        latencies.map(([n, ms]) => `${n} ${ms === null ? 'none' : `${ms} ms`}`).join(', '),
    );
    for (const [name, ms] of latencies) {
      expect(ms, `${name} -> h4`).not.toBeNull();
      expect(ms!, `${name} -> h4 first reply after agent spawn (ms)`).toBeLessThanOrEqual(JOIN_BUDGET_MS);
    }
    // And the other direction works too.
    for (const o of others) {
      const oip = (await o.status()).self.overlayIp;
      expect((await ping(bed.topo, h4.ns, oip, { count: 1 })).ok, `h4 -> ${o.name}`).toBe(true);
    }
  });

  it('a restarted host comes back with the same key and overlay IP, and traffic flows both ways again', async () => {
    const h3 = bed.agent('h3');
    const before = (await h3.status()).self;
    const peer = bed.agents.find((a) => a !== h3)!;
    const peerIp = (await peer.status()).self.overlayIp;
    // Traffic first, so both sides hold counters and replay windows from the old run.
    expect((await ping(bed.topo, peer.host.ns, before.overlayIp, { count: 3, intervalS: 0.05 })).ok).toBe(true);
    expect(await h3.stop({ signal: 'SIGTERM', timeoutMs: 5_000 })).toEqual({ code: 0, signal: null });

    const again = await bed.start(h3.host);
    const after = (await again.status()).self;
    expect(after.publicKey).toBe(before.publicKey);
    expect(after.overlayIp).toBe(before.overlayIp);
    const reply = await firstReply(bed.topo, peer.host.ns, after.overlayIp, { intervalS: 0.05, deadlineS: 10 });
    expect(reply, `${peer.name} -> restarted h3\n${again.logTail()}`).not.toBeNull();
    expect((await ping(bed.topo, again.host.ns, peerIp, { count: 2, intervalS: 0.1 })).ok, 'restarted h3 -> peer').toBe(true);
    const drops = (await peer.status()).dataplane.drops;
    console.log(`restart: first reply ${reply! - again.spawnedAt} ms after respawn; peer drops ${JSON.stringify(drops)}`);
  });

  it(`forgets a host stopped with SIGTERM within ${LEAVE_BUDGET_MS} ms and leaves no TUN or route behind`, async () => {
    const gone = bed.agent('h2');
    const goneIp = (await gone.status()).self.overlayIp;
    const stayers = bed.agents.filter((a) => a !== gone);
    const t0 = Date.now();
    const exit = await gone.stop({ signal: 'SIGTERM', timeoutMs: 5_000 });
    const exitMs = Date.now() - t0;
    expect(exit, `agent exit after SIGTERM\n${gone.logTail()}`).toEqual({ code: 0, signal: null });

    await waitUntil(
      'every other agent to drop h2 or mark it down',
      async () => {
        const docs = await Promise.all(stayers.map((a) => a.status()));
        return docs.every((d) => d.peers.every((p) => p.name !== 'h2' || p.state === 'down'));
      },
      { timeoutMs: LEAVE_BUDGET_MS, intervalMs: 100 },
    );
    console.log(`leave: h2 exited ${exitMs} ms after SIGTERM; peers dropped it ${Date.now() - t0} ms after SIGTERM`);

    const ns = gone.host.ns;
    const link = await bed.topo.tryExec(ns, ['ip', 'link', 'show', gone.iface]);
    expect(link.code, `ip link show ${gone.iface} in ${ns}: ${link.stdout}`).not.toBe(0);
    expect((await bed.topo.exec(ns, ['ip', '-o', 'link', 'show', 'type', 'tun'])).stdout.trim()).toBe('');
    const routes = (await bed.topo.exec(ns, ['ip', '-o', 'route', 'show', 'table', 'all'])).stdout;
    expect(routes.split('\n').filter((l) => l.includes('100.64.'))).toEqual([]);
    const addrs = (await bed.topo.exec(ns, ['ip', '-o', 'addr', 'show'])).stdout;
    expect(addrs.includes(goneIp)).toBe(false);

    // The rest of the mesh carries on.
    const [a, b] = stayers;
    const bIp = (await b!.status()).self.overlayIp;
    expect((await ping(bed.topo, a!.host.ns, bIp, { count: 2, intervalS: 0.1 })).ok).toBe(true);
  });
});

import * as fs from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HS_GLOBAL_BURST, HS_GLOBAL_RATE } from '../../src/dataplane/hslimit';
import { sleep, waitUntil, type Agent, type AgentStatus } from '../../src/testbed/agents';
import { spoofedFlood } from '../../src/testbed/flood';
import { startMeshBed, type MeshBed } from '../../src/testbed/mesh';
import { ping } from '../../src/testbed/traffic';

/**
 * A handshake flood against a real agent (h1), from 5,000 spoofed source addresses at 100,000
 * datagrams a second (FLOOD_RATE): a raw socket in the router namespace writes initiation-sized
 * datagrams with a valid mac1 (the attacker read h1's public key), one in five with a wrong one. What h1's data plane lets
 * through to its control thread (status: dataplane.handshakesPassed) stays within the global
 * budget; its real peer h2 keeps completing handshakes (rekeys every 2 s through the test knob
 * CLADNET_REKEY_AFTER_MS) during the flood; h1's memory stays bounded; the mesh works afterwards.
 * Then a new host (h3) joins while h1 is flooded again, and the two complete a handshake and
 * exchange traffic before the flood ends.
 */
const isRoot = process.getuid?.() === 0;
const REKEY_MS = 2_000;
const FLOOD_S = 10;
const SOURCES = 5000;
/**
 * The flood's pace, datagrams a second: 200 times the global budget (HS_GLOBAL_RATE). Unpaced, one
 * Python sender reached 59,000 a second when this test was written and 170,000-190,000 on
 * 2026-12-04, on the same two vCPUs as the agents; h1's socket then overflowed (1.05 million
 * RcvbufErrors against 0.73 million datagrams read in one run) and the kernel dropped the real
 * peer's messages with the flood's, indiscriminately. A rekey under load needs two of them through
 * (the initiation, then its retry with the cookie's mac2), so the count of rekeys measured the
 * VM's split of CPU between sender and agent (2-5 in earlier runs, 0-2 that night, with both AEAD
 * paths), not the agent's limits. Paced, the flood is still far over every budget and the test
 * asserts the same things.
 */
const FLOOD_RATE = 100_000;

/** Resident memory of a process in KiB (VmRSS). */
function rssKiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no VmRSS for ${pid}`);
  return Number(m[1]);
}

/**
 * Once with one data-plane worker and once with two: each worker's limiter takes half of every
 * budget (the host's bound holds whichever worker the kernel steers a message to), and the
 * workers share the cookie secrets (a retried initiation may land on the other worker).
 */
describe.skipIf(!isRoot).each([1, 2])('an agent with %i data-plane worker(s) under a handshake flood from spoofed sources', (workers) => {
  let bed: MeshBed;
  let victim: Agent;
  let peer: Agent;
  const savedEnv = process.env.CLADNET_REKEY_AFTER_MS;

  beforeAll(async () => {
    process.env.CLADNET_REKEY_AFTER_MS = String(REKEY_MS);
    bed = await startMeshBed({ topology: { hosts: 3 }, agents: 2, agentOptions: { extraArgs: ['--workers', String(workers)] } });
    await bed.waitUp();
    victim = bed.agent('h1');
    peer = bed.agent('h2');
  });
  afterAll(async () => {
    if (savedEnv === undefined) delete process.env.CLADNET_REKEY_AFTER_MS;
    else process.env.CLADNET_REKEY_AFTER_MS = savedEnv;
    await bed?.destroy();
  });

  it('lets at most the configured rate through, keeps handshaking with its real peer, and stays bounded in memory', async () => {
    const pid = victim.proc.pid!;
    expect(fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8')).toContain('agent');
    // Every message counted between the two status reads crossed between t0 and the second read.
    const t0 = Date.now();
    const s0 = await victim.status();
    expect(s0.self.workers?.length ?? 1).toBe(workers);
    const peerName = (d: AgentStatus) => d.peers.find((p) => p.name === 'h2')!;
    expect(peerName(s0).state).toBe('up');
    const rss0 = rssKiB(pid);
    // Sample h1's memory while the flood runs.
    let rssMax = rss0;
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        rssMax = Math.max(rssMax, rssKiB(pid));
        await sleep(200);
      }
    })();
    let flood;
    try {
      flood = await spoofedFlood(bed.topo, bed.topo.routerNs, {
        dst: victim.host.underlayIp,
        port: victim.listenPort,
        publicKey: s0.self.publicKey,
        sourceBase: '198.19.0.1',
        sources: SOURCES,
        count: 3_000_000,
        seconds: FLOOD_S,
        badEvery: 5,
        rate: FLOOD_RATE,
      });
    } finally {
      sampling = false;
      await sampler;
    }
    // Let h1's control thread take what crossed (it is queued behind the flood), then read.
    await sleep(500);
    const s1 = await victim.status();
    const elapsedS = (Date.now() - t0) / 1000;
    const d = (k: string) => (s1.dataplane.drops[k] ?? 0) - (s0.dataplane.drops[k] ?? 0);
    const passed = (s1.dataplane.handshakesPassed ?? NaN) - (s0.dataplane.handshakesPassed ?? NaN);
    const received = passed + d('handshakeRateLimited') + d('handshakeOverBudget') + d('handshakeBadMac1');
    const completed = s1.handshake!.completed - s0.handshake!.completed;
    const budget = HS_GLOBAL_RATE * elapsedS + HS_GLOBAL_BURST;
    console.log(
      `${workers} worker(s), flood: ${flood.sent} datagrams (${flood.bad} bad mac1, ${flood.errors} send errors) from ${SOURCES} sources in ` +
        `${flood.seconds.toFixed(1)} s (${Math.round(flood.sent / flood.seconds)}/s); h1's data plane saw ${received}: ` +
        `${passed} passed to the control thread (budget ${Math.round(budget)} for ${elapsedS.toFixed(1)} s), ` +
        `overBudget ${d('handshakeOverBudget')}, rateLimited ${d('handshakeRateLimited')}, badMac1 ${d('handshakeBadMac1')}; ` +
        `control thread: cookies ${s1.handshake!.cookiesSent - s0.handshake!.cookiesSent}, handshakes completed ${completed}; ` +
        `h1 RSS ${(rss0 / 1024).toFixed(1)} MiB before, max ${(rssMax / 1024).toFixed(1)} MiB during`,
    );
    // The flood was real: it reached h1 in numbers far beyond the budget, bad mac1 included.
    expect(flood.sent).toBeGreaterThan(100_000);
    expect(received).toBeGreaterThan(20 * budget);
    expect(d('handshakeBadMac1')).toBeGreaterThan(0);
    expect(d('handshakeBadMac1')).toBeLessThanOrEqual(flood.bad);
    // At most the configured rate crossed to the control thread.
    expect(passed).toBeGreaterThan(0);
    expect(passed).toBeLessThanOrEqual(budget);
    // The real peer kept handshaking through it: a rekey every 2 s over 10 s.
    expect(completed).toBeGreaterThanOrEqual(2);
    expect(peerName(s1).state).toBe('up');
    expect(Date.parse(peerName(s1).lastHandshake!)).toBeGreaterThan(t0);
    // Memory stayed bounded (the limiter's table is fixed; nothing queued without bound).
    expect(rssMax - rss0).toBeLessThan(64 * 1024);
    // And the mesh works afterwards, both ways.
    const r1 = await ping(bed.topo, peer.host.ns, s1.self.overlayIp, { count: 3, intervalS: 0.1 });
    expect(r1.received).toBe(3);
    const r2 = await ping(bed.topo, victim.host.ns, (await peer.status()).self.overlayIp, { count: 3, intervalS: 0.1 });
    expect(r2.received).toBe(3);
  }, 90_000);

  it('a host that joins during the flood completes a handshake with the flooded agent before the flood ends', async () => {
    const s0 = await victim.status();
    const floodS = 20;
    let floodOver = false;
    const floodDone = spoofedFlood(bed.topo, bed.topo.routerNs, {
      dst: victim.host.underlayIp,
      port: victim.listenPort,
      publicKey: s0.self.publicKey,
      sourceBase: '198.19.0.1',
      sources: SOURCES,
      count: 6_000_000,
      seconds: floodS,
      badEvery: 5,
      rate: FLOOD_RATE,
    }).finally(() => (floodOver = true));
    try {
      await sleep(1_000); // the flood is on
      const t0 = Date.now();
      const h3 = await bed.start(bed.topo.host('h3'));
      const h3Ip = (await h3.status()).self.overlayIp;
      // h1 sees h3 up (a completed handshake) and h3 reaches h1 through the tunnel, flood or not.
      const up = await waitUntil(
        'h1 to complete a handshake with h3 during the flood',
        async () => {
          const d = await victim.status();
          const p = d.peers.find((x) => x.name === 'h3');
          return p?.state === 'up' && p.lastHandshake !== null && d;
        },
        { timeoutMs: (floodS - 3) * 1000, intervalMs: 250 },
      );
      // (the flood overflows h1's socket buffer: some pings are lost with it)
      const r = await ping(bed.topo, h3.host.ns, s0.self.overlayIp, { count: 10, intervalS: 0.1 });
      const during = !floodOver;
      const d = (k: string) => (up.dataplane.drops[k] ?? 0) - (s0.dataplane.drops[k] ?? 0);
      console.log(
        `h3 joined ${((Date.now() - t0) / 1000).toFixed(1)} s after its start, flood still on: ${during}; h1 so far: ` +
          `overBudget ${d('handshakeOverBudget')}, badMac1 ${d('handshakeBadMac1')}, worker cookie replies ` +
          `${(up.dataplane.handshakeCookies ?? 0) - (s0.dataplane.handshakeCookies ?? 0)}; ping h3 -> h1 ${r.received}/10 (${h3Ip})`,
      );
      expect(d('handshakeOverBudget')).toBeGreaterThan(10_000); // the flood was on and over budget
      expect(r.received).toBeGreaterThanOrEqual(1);
      expect(during).toBe(true);
    } finally {
      await floodDone;
    }
  }, 90_000);
});

import { randomBytes, randomInt } from 'node:crypto';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { totalDrops, waitUntil, type Agent, type AgentStatus } from '../../src/testbed/agents';
import { startMeshBed, type MeshBed } from '../../src/testbed/mesh';
import { ping, sendUdp, startCapture, udpDatagrams } from '../../src/testbed/traffic';

/**
 * Garbage at an agent's UDP port: random bytes, datagrams shorter than a header, and genuine
 * tunnel datagrams replayed from another host. Each kind must only raise drop counters (as
 * `cladnet status --json` shows them): peers stay up, endpoints do not move, the mesh keeps working.
 */
const isRoot = process.getuid?.() === 0;
const PORT = 51820;
const HEADER_LEN = 16; // type, 3 reserved, receiver index, 64-bit counter (src/dataplane/wire.ts)
const OUTBOUND_REASONS = new Set(['noRoute', 'noSession', 'notIpv4', 'sendFailed', 'sealFailed']);

describe.skipIf(!isRoot)('an agent under hostile datagrams', () => {
  let bed: MeshBed;
  let target: Agent; // h3, the one being attacked
  let attackerNs: string; // h2's namespace: a real member sending from an unexpected port
  let targetIp: string;
  const overlay = new Map<string, string>();

  beforeAll(async () => {
    bed = await startMeshBed({ topology: { hosts: 3 } });
    for (const [name, doc] of await bed.waitUp()) overlay.set(name, doc.self.overlayIp);
    target = bed.agent('h3');
    targetIp = target.host.underlayIp;
    attackerNs = bed.topo.host('h2').ns;
  });
  afterAll(async () => {
    await bed?.destroy();
  });

  /** What must not change: identity and every peer's state and endpoint. */
  const invariant = (d: AgentStatus) => ({
    self: d.self.overlayIp,
    peers: d.peers.map((p) => ({ name: p.name, endpoint: p.endpoint, state: p.state })).sort((a, b) => a.name.localeCompare(b.name)),
  });

  /** Inbound drops only: outbound reasons (e.g. IPv6 the kernel sends into the TUN) may tick on their own. */
  // A datagram whose first byte is 1-3 is a handshake message: the control thread refuses it
  // (mac1, unexpected, ...) and counts it under handshake.drops instead.
  const inboundDrops = (d: AgentStatus) =>
    Object.entries(d.dataplane.drops).reduce((n, [reason, v]) => (OUTBOUND_REASONS.has(reason) ? n : n + v), 0) +
    Object.values(d.handshake?.drops ?? {}).reduce((n, v) => n + v, 0);

  /**
   * Sends `payloads` to the target and waits until its inbound drops (read with the CLI) rose by
   * their number: every one refused and counted, none accepted. `reason`, when given, must be the
   * counter that rose.
   */
  async function expectDropped(kind: string, payloads: Buffer[], reason?: string): Promise<void> {
    const before = await target.statusCli();
    const sent = await sendUdp(bed.topo, attackerNs, targetIp, PORT, payloads);
    expect(sent).toBe(payloads.length);
    let after = before;
    try {
      await waitUntil(
        `${kind}: inbound drops of h3 to rise by ${payloads.length}`,
        async () => {
          after = await target.statusCli();
          return inboundDrops(after) - inboundDrops(before) >= payloads.length;
        },
        { timeoutMs: 5_000, intervalMs: 200 },
      );
    } catch {
      /* reported by the assertions below, with the counters */
    }
    const rise = inboundDrops(after) - inboundDrops(before);
    console.log(`${kind}: sent ${payloads.length}, inbound drops +${rise}, now ${JSON.stringify(after.dataplane.drops)}`);
    expect(rise, `inbound drops rise for ${payloads.length} ${kind} datagrams`).toBe(payloads.length);
    if (reason) expect(after.dataplane.drops[reason]! - (before.dataplane.drops[reason] ?? 0), `drops.${reason}`).toBe(payloads.length);
    expect(totalDrops(after)).toBeGreaterThan(totalDrops(before));
    expect(invariant(after)).toEqual(invariant(before));
    expect(after.peers.every((p) => p.state === 'up')).toBe(true);
  }

  it('drops random bytes', async () => {
    await expectDropped(
      'random',
      Array.from({ length: 50 }, () => randomBytes(randomInt(16, 1400))),
    );
  });

  it('drops datagrams shorter than a header', async () => {
    await expectDropped(
      'truncated',
      // Cut-off data datagrams: type 4 first (types 1-3 would be handshake messages).
      Array.from({ length: 30 }, (_, i) => {
        const d = randomBytes(1 + (i % 16));
        d[0] = 4;
        return d;
      }),
      'short',
    );
  });

  /** Genuine datagrams h1 sends h3, captured on the router while h1 pings h3 over the overlay. */
  async function captureReal(label: string): Promise<Buffer[]> {
    const cap = await startCapture(bed.topo, bed.topo.routerNs, {
      file: path.join(bed.topo.workDir, `${label}.pcap`),
      iface: `${bed.topo.id}-r3`,
      filter: ['udp', 'and', 'dst', 'host', targetIp, 'and', 'dst', 'port', String(PORT), 'and', 'src', 'host', bed.topo.host('h1').underlayIp],
    });
    const p = await ping(bed.topo, bed.topo.host('h1').ns, overlay.get('h3')!, { count: 5, intervalS: 0.1 });
    expect(p.ok).toBe(true);
    const real = udpDatagrams(await cap.stop()).map((d) => d.payload);
    expect(real.length).toBeGreaterThanOrEqual(5);
    return real;
  }

  it('drops replayed tunnel datagrams (captured on the wire, resent from another host)', async () => {
    const real = await captureReal('replay');
    // Everything twice: a replay window must reject the second copy as well as the first.
    await expectDropped('replay', [...real, ...real], 'replay');
  });

  it('drops forged datagrams that carry a real header, and a forged counter far ahead moves nothing', async () => {
    const real = await captureReal('forge');
    const forged = real.map((d, i) => {
      const f = Buffer.concat([d.subarray(0, HEADER_LEN), randomBytes(d.length - HEADER_LEN)]);
      // A counter far beyond anything sent: if the replay window moved before authentication,
      // every genuine packet after this would be refused, and the next test would fail.
      f.writeUInt32LE(i, 8);
      f.writeUInt32LE(0x100, 12);
      return f;
    });
    await expectDropped('forged', forged, 'auth');
  });

  it('keeps the whole mesh working afterwards', async () => {
    for (const from of ['h1', 'h2']) {
      const r = await ping(bed.topo, bed.topo.host(from).ns, overlay.get('h3')!, { count: 3, intervalS: 0.1 });
      expect(r.received, `${from} -> h3`).toBe(3);
    }
    const r = await ping(bed.topo, target.host.ns, overlay.get('h1')!, { count: 3, intervalS: 0.1 });
    expect(r.received, 'h3 -> h1').toBe(3);
  });
});

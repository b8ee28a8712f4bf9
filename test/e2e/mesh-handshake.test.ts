import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startMeshBed, type MeshBed } from '../../src/testbed/mesh';
import { waitUntil, type Agent } from '../../src/testbed/agents';
import { ping, sendUdp, startCapture, streamTransfer, udpDatagrams, type UdpDatagram } from '../../src/testbed/traffic';

/**
 * The forward-secret channel end to end: two hosts handshake, rekey several times during a
 * long transfer without losing a byte (timers shortened by the test knob CLADNET_REKEY_AFTER_MS),
 * and a captured handshake and data packets replayed later are refused and counted. Packets of
 * a session whose keys were erased find no key at all.
 */
const isRoot = process.getuid?.() === 0;
const REKEY_MS = 2_000;
const SECONDS = 10;

describe.skipIf(!isRoot)('handshake, rekey and replays', () => {
  let bed: MeshBed;
  let a: Agent;
  let b: Agent;
  let captured: UdpDatagram[] = [];
  const savedEnv = process.env.CLADNET_REKEY_AFTER_MS;

  beforeAll(async () => {
    process.env.CLADNET_REKEY_AFTER_MS = String(REKEY_MS);
    bed = await startMeshBed({ topology: { hosts: 2 }, agents: 0 });
    // Record the first handshake and some data from the start, at the router.
    const cap = await startCapture(bed.topo, bed.topo.routerNs, {
      file: path.join(bed.topo.workDir, 'start.pcap'),
      filter: ['udp', 'port', '51820'],
    });
    a = await bed.start(bed.topo.host('h1'));
    b = await bed.start(bed.topo.host('h2'));
    await bed.waitUp();
    const bIp = (await b.status()).self.overlayIp;
    expect((await ping(bed.topo, a.host.ns, bIp, { count: 3, intervalS: 0.05 })).ok).toBe(true);
    captured = udpDatagrams(await cap.stop());
  });
  afterAll(async () => {
    if (savedEnv === undefined) delete process.env.CLADNET_REKEY_AFTER_MS;
    else process.env.CLADNET_REKEY_AFTER_MS = savedEnv;
    await bed?.destroy();
  });

  it('handshakes before any data, and the capture holds initiation, response and data', () => {
    const types = new Set(captured.map((d) => d.payload[0]));
    expect(types.has(1), 'an initiation').toBe(true);
    expect(types.has(2), 'a response').toBe(true);
    expect(types.has(4), 'data').toBe(true);
  });

  it(`rekeys at least three times during a ${SECONDS} s transfer each way and loses nothing`, async () => {
    const [sa0, sb0] = [await a.status(), await b.status()];
    // Both directions at once, so each host is bulk sender and receiver, initiator and responder.
    const [ab, ba] = await Promise.all([
      streamTransfer(bed.topo, { fromNs: a.host.ns, toNs: b.host.ns, toIp: sb0.self.overlayIp, port: 7822, streams: 1, seconds: SECONDS }),
      streamTransfer(bed.topo, { fromNs: b.host.ns, toNs: a.host.ns, toIp: sa0.self.overlayIp, port: 7823, streams: 1, seconds: SECONDS }),
    ]);
    const [sa1, sb1] = [await a.status(), await b.status()];
    const rekeys = sa1.handshake!.rekeys + sb1.handshake!.rekeys - sa0.handshake!.rekeys - sb0.handshake!.rekeys;
    const diff = (x: typeof sa0, y: typeof sa0) =>
      Object.fromEntries(Object.entries(y.dataplane.drops).map(([k, v]) => [k, v - x.dataplane.drops[k]!]).filter(([, v]) => v !== 0));
    console.log(
      `rekey: ${rekeys} rekeys in ${ab.secs.toFixed(1)} s, ${(ab.sent[0]!.bytes / 2 ** 20).toFixed(0)} + ` +
        `${(ba.sent[0]!.bytes / 2 ** 20).toFixed(0)} MiB; new drops at a ${JSON.stringify(diff(sa0, sa1))}, at b ${JSON.stringify(diff(sb0, sb1))}`,
    );
    expect(ab.received).toEqual(ab.sent);
    expect(ba.received).toEqual(ba.sent);
    expect(rekeys).toBeGreaterThanOrEqual(3);
    for (const [x, y] of [
      [sa0, sa1],
      [sb0, sb1],
    ] as const) {
      for (const reason of ['auth', 'replay', 'unknownPeer'] as const) {
        expect(y.dataplane.drops[reason] - x.dataplane.drops[reason], `${y.self.name} drops.${reason}`).toBe(0);
      }
    }
  }, (SECONDS + 60) * 1000);

  it('refuses a captured handshake and data replayed later, and counts them', async () => {
    const byIp = new Map([
      [a.host.underlayIp, a],
      [b.host.underlayIp, b],
    ]);
    const before = new Map([...byIp].map(([ip, ag]) => [ip, ag] as const));
    const docs0 = new Map(await Promise.all([...before].map(async ([ip, ag]) => [ip, await ag.status()] as const)));
    const pick = (type: number) => captured.filter((d) => d.payload[0] === type);
    // Initiations the responder answered (a captured response names the initiation's sender
    // index as its receiver). One it never processed (it came before the responder knew the
    // peer, say) carries a timestamp newer than any it saw, and is answered when replayed, as
    // WireGuard does: the new session is never confirmed, so nothing changes for the pair.
    const answered = new Set(pick(2).map((r) => r.payload.readUInt32LE(8)));
    const inits = pick(1).filter((i) => answered.has(i.payload.readUInt32LE(4)));
    expect(inits.length).toBeGreaterThan(0);
    const resps = pick(2);
    const data = pick(4).slice(0, 20);
    // Everything is replayed from the router namespace to its original destination.
    for (const d of [...inits, ...resps, ...data]) {
      await sendUdp(bed.topo, bed.topo.routerNs, d.dst, d.dstPort, [d.payload]);
    }
    await new Promise((r) => setTimeout(r, 300));
    const count = (list: UdpDatagram[], ip: string) => list.filter((d) => d.dst === ip).length;
    for (const [ip, ag] of byIp) {
      const d0 = docs0.get(ip)!;
      // Handshake messages are handled on the control thread, after a hop from the data plane: on
      // a loaded machine that can take longer than the pause above. Wait until every replayed one
      // was counted somewhere (or 5 s), then check the exact counts.
      const expected = count(inits, ip) + count(resps, ip);
      const d1 = await waitUntil(
        `${ag.name} to count ${expected} replayed handshake messages`,
        async () => {
          const d = await ag.status();
          const seen = Object.entries(d.handshake!.drops).reduce((n, [k, v]) => n + v - (d0.handshake!.drops[k] ?? 0), 0);
          return seen >= expected && d;
        },
        { timeoutMs: 5_000, intervalMs: 100 },
      ).catch(() => ag.status());
      const moved = (x: Record<string, number>, y: Record<string, number>) =>
        Object.fromEntries(Object.entries(y).map(([k, v]) => [k, v - (x[k] ?? 0)]).filter(([, v]) => v !== 0));
      console.log(
        `replays at ${ag.name}: ${count(inits, ip)} initiations, ${count(resps, ip)} responses, ${count(data, ip)} data; ` +
          `handshake drops ${JSON.stringify(moved(d0.handshake!.drops, d1.handshake!.drops))}, ` +
          `responses sent +${d1.handshake!.responsesSent - d0.handshake!.responsesSent}, ` +
          `data-plane drops ${JSON.stringify(moved(d0.dataplane.drops, d1.dataplane.drops))}`,
      );
      // The initiation's timestamp is not newer than the last one seen from that peer.
      expect(d1.handshake!.drops.replay - d0.handshake!.drops.replay, `${ag.name} handshake replays`).toBe(count(inits, ip));
      // The response answers no initiation in flight any more.
      expect(d1.handshake!.drops.unexpected - d0.handshake!.drops.unexpected, `${ag.name} stale responses`).toBe(count(resps, ip));
      // The first session's keys were erased long ago: its receiver index is unknown. (At least
      // these: with a rekey every 2 s, a live ping sealed just before its session's end can also
      // arrive after the receiver erased it; the exact count of replays is checked above.)
      const unknown = d1.dataplane.drops.unknownPeer - d0.dataplane.drops.unknownPeer;
      expect(unknown, `${ag.name} old-session data`).toBeGreaterThanOrEqual(count(data, ip));
      expect(unknown, `${ag.name} old-session data`).toBeLessThanOrEqual(count(data, ip) + 2);
    }
    const bIp = (await b.status()).self.overlayIp;
    expect((await ping(bed.topo, a.host.ns, bIp, { count: 2, intervalS: 0.1 })).ok).toBe(true);
  });
});

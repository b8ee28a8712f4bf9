import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startMeshBed, type MeshBed } from '../../src/testbed/mesh';
import { nonceRepeats, rekeyEverySecond } from '../helpers/nonces';
import type { Agent } from '../../src/testbed/agents';
import { startCapture, startPacedStream, udpDatagrams } from '../../src/testbed/traffic';

/**
 * No nonce is ever used twice (issue 10, hole 1), on the wire: two hosts send to each other for
 * 60 s while both rekey every second (test knobs CLADNET_REKEY_AFTER_MS=1000 and
 * CLADNET_REKEY_BOTH=1: each side keeps its own schedule, so every second both initiate and both
 * answer, sometimes while their own initiation is in flight, and each switches to a session it
 * answered as soon as the first packet on it arrives). h1 captures the headers of every
 * datagram; no data datagram may repeat a (receiver, receiver index, counter) triple, and every
 * byte of both streams arrives intact.
 */
const isRoot = process.getuid?.() === 0;
const SECONDS = 60;
const PORT = 51820;

describe.skipIf(!isRoot)('nonces under constant rekeying', () => {
  let bed: MeshBed;
  let a: Agent;
  let b: Agent;
  let restoreEnv = () => {};

  beforeAll(async () => {
    restoreEnv = rekeyEverySecond();
    // UDP GSO off: a GSO run crosses the link (and the capture) as one packet, and only its first
    // datagram's header would be seen
    bed = await startMeshBed({ topology: { hosts: 2 }, agentOptions: { extraArgs: ['--udp-offload', 'false'] } });
    [a, b] = [bed.agent('h1'), bed.agent('h2')];
  }, 60_000);
  afterAll(async () => {
    restoreEnv();
    await bed?.destroy();
  });

  it(`${SECONDS} s of two-way traffic with a rekey every second repeats no (receiver index, counter) pair`, async () => {
    // In h1's namespace: every datagram between the two crosses its one underlay link once (at the
    // router it would be seen twice, arriving and leaving).
    const cap = await startCapture(bed.topo, a.host.ns, {
      file: path.join(bed.topo.workDir, 'nonces.pcap'),
      filter: ['udp', 'port', String(PORT)],
      snapLen: 96, // link, IP and UDP headers and our 16-byte header
    });
    const [sa0, sb0] = [await a.status(), await b.status()];
    const streams = await Promise.all([
      startPacedStream(bed.topo, { fromNs: a.host.ns, toNs: b.host.ns, toIp: sb0.self.overlayIp, port: 7841, bytesPerS: 3_000_000 }),
      startPacedStream(bed.topo, { fromNs: b.host.ns, toNs: a.host.ns, toIp: sa0.self.overlayIp, port: 7842, bytesPerS: 3_000_000 }),
    ]);
    await new Promise((r) => setTimeout(r, SECONDS * 1000));
    const results = await Promise.all(streams.map((s) => s.finish()));
    const [sa1, sb1] = [await a.status(), await b.status()];
    const datagrams = udpDatagrams(await cap.stop());

    const { data, repeats, indices } = nonceRepeats(datagrams);
    const hs = (x: typeof sa0, y: typeof sa0) => ({
      initiations: y.handshake!.initiationsSent - x.handshake!.initiationsSent,
      responses: y.handshake!.responsesSent - x.handshake!.responsesSent,
      rekeys: y.handshake!.rekeys - x.handshake!.rekeys,
    });
    const [ha, hb] = [hs(sa0, sa1), hs(sb0, sb1)];
    console.log(
      `nonces: ${data} data datagrams under ${indices} receiver indices in ${SECONDS} s, ${repeats.length} repeated; ` +
        `h1 ${JSON.stringify(ha)}, h2 ${JSON.stringify(hb)}; capture drops ${cap.kernelDrops}; ` +
        `streams ${results.map((r) => `${((r.sent?.bytes ?? 0) / 2 ** 20).toFixed(0)} MiB ${r.ok ? 'ok' : r.error}`).join(', ')}`,
    );
    expect(repeats.slice(0, 5)).toEqual([]);
    for (const r of results) expect(r.ok, r.error).toBe(true);
    expect(data).toBeGreaterThan(SECONDS * 2_000);
    // Both sides initiated and answered about every second: sessions turned over on both ends.
    for (const h of [ha, hb]) {
      expect(h.initiations).toBeGreaterThan(SECONDS / 2);
      expect(h.responses).toBeGreaterThan(SECONDS / 2);
    }
    expect(indices).toBeGreaterThan(SECONDS);
  }, (SECONDS + 90) * 1000);
});

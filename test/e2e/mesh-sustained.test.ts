import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startMeshBed, type MeshBed } from '../../src/testbed/mesh';
import { streamTransfer } from '../../src/testbed/traffic';

/**
 * Sustained load: four TCP streams through the tunnel at full speed for a minute (shorten with
 * CLADNET_SUSTAIN_S). Each side hashes every byte it sends or receives, independently; the
 * hashes and byte counts must match per stream, and the receiving agent must drop nothing for
 * crypto, replay or parsing reasons while segmentation and coalescing run flat out.
 */
const isRoot = process.getuid?.() === 0;
const SECONDS = Number(process.env.CLADNET_SUSTAIN_S ?? 60);
const STREAMS = 4;
const PORT = 7811;

describe.skipIf(!isRoot)(`sustained ${STREAMS}-stream transfer`, () => {
  let bed: MeshBed;
  beforeAll(async () => {
    bed = await startMeshBed({ topology: { hosts: 2 } });
    await bed.waitUp();
  });
  afterAll(async () => {
    await bed?.destroy();
  });

  it(`moves ${STREAMS} streams for ${SECONDS} s with every byte intact`, async () => {
    const [a, b] = bed.agents;
    const bIp = (await b!.status()).self.overlayIp;
    const before = await b!.status();
    const { sent, received, secs } = await streamTransfer(bed.topo, {
      fromNs: a!.host.ns,
      toNs: b!.host.ns,
      toIp: bIp,
      port: PORT,
      streams: STREAMS,
      seconds: SECONDS,
    });
    const total = sent.reduce((n, s) => n + s.bytes, 0);
    console.log(`sustained: ${STREAMS} streams, ${(total / 2 ** 30).toFixed(2)} GiB in ${secs.toFixed(1)} s = ${((total * 8) / 1e9 / secs).toFixed(2)} Gbit/s`);
    // Streams may finish in any order at the receiver: compare as sets of (bytes, hash).
    const key = (r: { bytes: number; sha256: string }) => `${r.bytes}:${r.sha256}`;
    expect(received.map(key).sort()).toEqual(sent.map(key).sort());
    expect(total).toBeGreaterThan(STREAMS * (1 << 20));
    const after = await b!.status();
    for (const reason of ['auth', 'replay', 'malformed', 'spoofed', 'unknownPeer', 'badType', 'short'] as const) {
      expect(after.dataplane.drops[reason] - before.dataplane.drops[reason], `drops.${reason}`).toBe(0);
    }
  }, (SECONDS + 120) * 1000);
});

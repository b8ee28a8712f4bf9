import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startMeshBed, type MeshBed } from '../../src/testbed/mesh';
import { ping } from '../../src/testbed/traffic';

/** Eight agents started at the same moment race for addresses: each must end up with its own. */
const isRoot = process.getuid?.() === 0;
const N = 8;

describe.skipIf(!isRoot)(`${N} agents started at once`, () => {
  let bed: MeshBed;
  let startMs = 0;

  beforeAll(async () => {
    const t0 = Date.now();
    // startMeshBed starts every agent concurrently and waits until each answers on its socket.
    bed = await startMeshBed({ topology: { hosts: N }, waitUp: false, cidr: '100.64.0.0/24' });
    startMs = Date.now() - t0;
  });
  afterAll(async () => {
    await bed?.destroy();
  });

  it(`gets ${N} distinct overlay IPs, all usable addresses of the network`, async () => {
    const docs = await Promise.all(bed.agents.map((a) => a.status()));
    const ips = docs.map((d) => d.self.overlayIp);
    console.log(`${N} agents ready ${startMs} ms after the bed started building: ${docs.map((d) => `${d.self.name}=${d.self.overlayIp}`).join(' ')}`);
    expect(ips).toHaveLength(N);
    expect(new Set(ips).size).toBe(N);
    for (const ip of ips) {
      expect(ip).toMatch(/^100\.64\.0\.\d+$/);
      const last = Number(ip.split('.')[3]);
      expect(last).toBeGreaterThan(0); // not the network address
      expect(last).toBeLessThan(255); // not the broadcast address
    }
  });

  it('forms a full mesh of all of them', async () => {
    const t0 = Date.now();
    const docs = await bed.waitUp(bed.agents, 40_000);
    console.log(`full mesh of ${N} (${N * (N - 1)} directed peer links up) ${Date.now() - t0} ms after all were ready`);
    // Spot-check the data path between the first and the last host both ways.
    const first = bed.agents[0]!;
    const last = bed.agents[N - 1]!;
    expect((await ping(bed.topo, first.host.ns, docs.get(last.name)!.self.overlayIp, { count: 1 })).ok).toBe(true);
    expect((await ping(bed.topo, last.host.ns, docs.get(first.name)!.self.overlayIp, { count: 1 })).ok).toBe(true);
  });
});

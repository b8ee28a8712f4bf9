import { spawn, type ChildProcess } from 'node:child_process';
import * as path from 'node:path';
import { createInterface } from 'node:readline';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runOk } from '../../src/testbed/run';
import { startMeshBed, type MeshBed } from '../../src/testbed/mesh';
import { ping } from '../../src/testbed/traffic';

/**
 * Another VPN on the same hosts: each host also has a TUN device of someone else's (held open by
 * a process, so it is up and running) with an address in one shared /24, as nebula or WireGuard
 * would have. cladnet must not offer that address as an endpoint nor take the shared /24 for a
 * private path: its own tunnel would then run inside the other one. Found by the bench's
 * interleaved ping step, where cladnet's packets went through nebula's tunnel (p50 1.16 ms
 * against 0.41 alone). Addresses: 198.18.0.0/15 underlay (the bed), 100.64.77.0/24 for the other
 * VPN.
 */
const isRoot = process.getuid?.() === 0;
const DIST = path.resolve(__dirname, '..', '..', 'dist');
const FOREIGN = 'fvpn0';

/** Opens a TUN device named argv[2] and keeps it open until stdin closes; prints "ready". */
const HOLD = `
const [dist, name] = process.argv.slice(1);
const { openTun } = require(dist + '/os/tun/tun.js');
const tun = openTun(name);
console.log('ready');
process.stdin.on('end', () => { tun.close(); process.exit(0); });
process.stdin.resume();
`;

/** systemAddresses inside the namespace, as JSON. */
const LIST = `
const [dist, own] = process.argv.slice(1);
const { systemAddresses } = require(dist + '/os/netmon.js');
console.log(JSON.stringify(systemAddresses([own]).list()));
`;

async function hold(ns: string): Promise<ChildProcess> {
  const child = spawn('ip', ['netns', 'exec', ns, process.execPath, '-e', HOLD, DIST, FOREIGN], { stdio: ['pipe', 'pipe', 'pipe'] });
  let err = '';
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const lines = createInterface({ input: child.stdout! });
  await new Promise<void>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`TUN holder in ${ns} did not start: ${err}`)), 10_000);
    lines.once('line', () => {
      clearTimeout(t);
      resolve();
    });
    child.once('exit', (code) => reject(new Error(`TUN holder in ${ns} exited ${code}: ${err}`)));
  });
  return child;
}

describe.skipIf(!isRoot)('another VPN on the same hosts', () => {
  let bed: MeshBed;
  const holders: ChildProcess[] = [];

  beforeAll(async () => {
    bed = await startMeshBed({ topology: { hosts: 2 }, agents: 0, waitUp: false });
    for (const [i, h] of bed.topo.hosts.entries()) {
      holders.push(await hold(h.ns));
      await runOk(['ip', '-n', h.ns, 'addr', 'add', `100.64.77.${i + 1}/24`, 'dev', FOREIGN]);
      await runOk(['ip', '-n', h.ns, 'link', 'set', FOREIGN, 'up']);
    }
    for (const h of bed.topo.hosts) await bed.start(h);
    await bed.waitUp();
  }, 60_000);
  afterAll(async () => {
    for (const c of holders) c.stdin?.end();
    await bed?.destroy();
    for (const c of holders) if (c.exitCode === null) c.kill('SIGKILL');
  });

  it('marks the TUN device a tunnel link and the veth not (the addresses the agent reads)', async () => {
    const h = bed.topo.hosts[0]!;
    const r = await bed.topo.exec(h.ns, [process.execPath, '-e', LIST, DIST, 'cladnet0']);
    const list = JSON.parse(r.stdout) as { ifname: string; address: string; tunnel?: boolean }[];
    expect(list.find((a) => a.ifname === FOREIGN)).toMatchObject({ address: '100.64.77.1', tunnel: true });
    const underlay = list.filter((a) => a.address.startsWith('198.18.'));
    expect(underlay.length).toBeGreaterThan(0);
    for (const a of underlay) expect(a.tunnel).toBeUndefined();
  });

  it("publishes only underlay endpoints, and reaches the peer over the underlay", async () => {
    for (const a of bed.agents) {
      const doc = await a.status();
      expect(doc.self.endpoints.length).toBeGreaterThan(0);
      expect(doc.self.endpoints.filter((e) => e.startsWith('100.64.77.'))).toEqual([]);
      const peer = doc.peers[0]!;
      expect(peer.path).toBe('direct');
      expect(peer.endpoint).toMatch(/^198\.18\./);
    }
    const ip2 = (await bed.agents[1]!.status()).self.overlayIp;
    const r = await ping(bed.topo, bed.topo.hosts[0]!.ns, ip2, { count: 3, intervalS: 0.1 });
    expect(r.received).toBe(3);
  });
});

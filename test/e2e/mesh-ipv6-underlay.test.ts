import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { waitUntil, type AgentStatus } from '../../src/testbed/agents';
import { ipv6Of } from '../../src/testbed/ipv6';
import { startMeshBed, startNatBed, type MeshBed } from '../../src/testbed/mesh';
import { ping, tcpTransfer, writeRandomFile } from '../../src/testbed/traffic';
import { hostKey } from '../../src/control/keys';

/**
 * Issue 16, the IPv6 underlay (src/testbed/ipv6.ts gives a topology its 2001:db8::/32 twin):
 *   1. v6 has an IPv6-only underlay (no IPv4 address at all, etcd over IPv6), ds is dual-stack:
 *      they mesh over IPv6, and TCP over the overlay carries 20 MB intact; forged IPv6 candidates
 *      an etcd writer adds to v6's record are skipped with a warning; IPv6 inside the tunnel too.
 *   2. a and b are dual-stack, each behind its own port-randomizing IPv4 NAT (no direct IPv4 path;
 *      pub would relay) while IPv6 is routed: the direct IPv6 path is chosen within seconds.
 *   3. an IPv4-only and an IPv6-only host reach each other through a dual-stack relay.
 */
const isRoot = process.getuid?.() === 0;
const MB = 1024 * 1024;

const peer = (doc: AgentStatus, name: string) => doc.peers.find((p) => p.name === name);

/**
 * Sends `bytes` of random data by TCP from `from` to `to` over the overlay address `toIp` and
 * checks both ends saw the same sha256. (Any overlay address: an IPv6 overlay one works the same.)
 */
async function transferChecked(bed: MeshBed, from: string, to: string, toIp: string, bytes: number): Promise<void> {
  const file = path.join(bed.topo.workDir, `tx-${from}-${to}.bin`);
  writeRandomFile(file, bytes);
  const outFile = path.join(bed.topo.workDir, `rx-${from}-${to}.bin`);
  const r = await tcpTransfer(bed.topo, { fromNs: bed.topo.host(from).ns, toNs: bed.topo.host(to).ns, toIp, file, outFile, timeoutMs: 90_000 });
  expect(r.bytes).toBe(bytes);
  expect(r.receivedSha256).toBe(r.sentSha256);
  fs.rmSync(file, { force: true });
  fs.rmSync(outFile, { force: true });
}

/** Starts the agent of an IPv6-only host: it reaches etcd over IPv6. */
async function startV6Only(bed: MeshBed, host: string): Promise<void> {
  await bed.start(bed.topo.host(host), { etcd: bed.etcd.endpoint6! });
}

/** A full mesh of the running agents within 30 s, or an error with their last log lines. */
async function meshUp(bed: MeshBed): Promise<void> {
  try {
    await bed.waitUp(bed.agents, 30_000);
  } catch (e) {
    throw new Error(`${(e as Error).message}\n${bed.agents.map((a) => `--- ${a.name}\n${a.logTail(20)}`).join('\n')}`);
  }
}

describe.skipIf(!isRoot)('IPv6 underlay: an IPv6-only host and a dual-stack host', () => {
  let bed: MeshBed;

  beforeAll(async () => {
    bed = await startMeshBed({ topology: { hosts: [{ name: 'v6' }, { name: 'ds' }] }, agents: 0, waitUp: false, ipv6: { v6Only: ['v6'] } });
    await bed.start(bed.topo.host('ds'));
    await startV6Only(bed, 'v6');
    await meshUp(bed);
  }, 90_000);

  afterAll(async () => {
    await bed?.destroy();
  });

  it('the IPv6-only host publishes only IPv6 candidates, and both use the direct IPv6 path', async () => {
    const v6Addr = ipv6Of(bed.topo.host('v6').underlayIp);
    const dsAddr = ipv6Of(bed.topo.host('ds').underlayIp);
    const [dv6, dds] = await waitUntil('both to show the direct IPv6 path', async () => {
      const both = await Promise.all([bed.agent('v6').statusCli(), bed.agent('ds').statusCli()]);
      const ok = peer(both[0], 'ds')?.endpoint === `[${dsAddr}]:51820` && peer(both[1], 'v6')?.endpoint === `[${v6Addr}]:51820`;
      return ok ? both : undefined;
    }, { timeoutMs: 15_000 });
    expect(dv6.self.endpoints).toEqual([`[${v6Addr}]:51820`]);
    expect(dds.self.endpoints).toEqual([`${bed.topo.host('ds').underlayIp}:51820`, `[${dsAddr}]:51820`]);
    expect(peer(dv6, 'ds')).toMatchObject({ state: 'up', path: 'direct' });
    expect(peer(dds, 'v6')).toMatchObject({ state: 'up', path: 'direct' });
    expect(await bed.agent('ds').statusText()).toContain(`[${v6Addr}]:51820`);
  });

  it('forged and garbled IPv6 candidates an etcd writer adds to a record are skipped with a warning; the path stays', async () => {
    const etcdctl = (args: string[], input?: string) =>
      bed.topo.exec(bed.topo.routerNs, ['etcdctl', `--endpoints=${bed.etcd.endpoint}`, ...args], {
        input,
        env: { ...process.env, ETCDCTL_API: '3' },
        timeoutMs: 10_000,
      });
    const key = hostKey(bed.network, 'v6');
    const rec = JSON.parse((await etcdctl(['get', key, '--print-value-only'])).stdout.trim()) as { endpoints6: string[]; epoch: number };
    const bad = ['[fe80::1]:51820', 'not-an-address', '[::ffff:198.18.2.2]:51820', '[ff02::1]:51820'];
    await etcdctl(['put', key], JSON.stringify({ ...rec, endpoints6: [...rec.endpoints6, ...bad], epoch: rec.epoch + 1 }));
    const warning = await waitUntil('ds to warn about the bad candidates', async () => {
      const line = bed
        .agent('ds')
        .logTail(200)
        .split('\n')
        .find((l) => l.includes('unusable IPv6 candidates'));
      return line ? (JSON.parse(line) as { level: number; peer: string; skipped: string[] }) : undefined;
    }, { timeoutMs: 10_000 });
    expect(warning).toMatchObject({ level: 40, peer: 'v6', skipped: bad });
    const v6Addr = ipv6Of(bed.topo.host('v6').underlayIp);
    expect(peer(await bed.agent('ds').status(), 'v6')).toMatchObject({ state: 'up', path: 'direct', endpoint: `[${v6Addr}]:51820` });
    const r = await ping(bed.topo, bed.topo.host('ds').ns, (await bed.agent('v6').status()).self.overlayIp, { count: 3, intervalS: 0.1, waitS: 1 });
    expect(r.received).toBe(3);
  });

  it('TCP over the overlay carries 20 MB from the IPv6-only host intact', async () => {
    const dsOverlay = (await bed.agent('ds').status()).self.overlayIp;
    await transferChecked(bed, 'v6', 'ds', dsOverlay, 20 * MB);
  }, 120_000);

  it('IPv6 inside the tunnel over the IPv6-only underlay: 20 MB by TCP to the overlay IPv6 address, intact', async () => {
    const dsOverlay6 = (await bed.agent('ds').status()).self.overlayIp6;
    expect(dsOverlay6).toMatch(/^fd/);
    await transferChecked(bed, 'v6', 'ds', dsOverlay6!, 20 * MB);
  }, 120_000);
});

describe.skipIf(!isRoot)('IPv6 underlay: IPv4 behind port-randomizing NATs, IPv6 routed', () => {
  let bed: MeshBed;
  let startedAt = 0;

  beforeAll(async () => {
    startedAt = Date.now();
    ({ bed } = await startNatBed({
      topology: {
        hosts: [{ name: 'pub' }, { name: 'a', site: 's1' }, { name: 'b', site: 's2' }],
        sites: [
          { name: 's1', nat: 'random' },
          { name: 's2', nat: 'random' },
        ],
      },
      relay: 'pub',
      waitUp: false,
      ipv6: {},
    }));
    startedAt = Math.max(...bed.agents.map((a) => a.spawnedAt));
  }, 90_000);

  afterAll(async () => {
    await bed?.destroy();
  });

  it('a and b take the direct IPv6 path within seconds (not the relay)', async () => {
    const aAddr = ipv6Of(bed.topo.host('a').underlayIp);
    const bAddr = ipv6Of(bed.topo.host('b').underlayIp);
    const [da, db] = await waitUntil('a and b to see each other directly over IPv6', async () => {
      const both = await Promise.all([bed.agent('a').statusCli(), bed.agent('b').statusCli()]);
      const ok = peer(both[0], 'b')?.endpoint === `[${bAddr}]:51820` && peer(both[1], 'a')?.endpoint === `[${aAddr}]:51820`;
      return ok ? both : undefined;
    }, { timeoutMs: 20_000 }).catch((e: Error) => {
      throw new Error(`${e.message}\n${bed.agents.map((a) => `--- ${a.name}\n${a.logTail(20)}`).join('\n')}`);
    });
    const tookMs = Date.now() - startedAt;
    console.log(`a-b direct over IPv6 ${tookMs} ms after the later agent was spawned`);
    expect(peer(da, 'b')).toMatchObject({ state: 'up', path: 'direct', via: null });
    expect(peer(db, 'a')).toMatchObject({ state: 'up', path: 'direct', via: null });
    // both agents started to direct IPv6 path on both ends: "within a few seconds"
    expect(tookMs).toBeLessThan(10_000);
    // (IPv4 alone could not have done it: two port-randomizing NATs leave it the relay, mesh-nat.test.ts)
    await transferChecked(bed, 'a', 'b', db.self.overlayIp, 2 * MB);
  }, 60_000);
});

describe.skipIf(!isRoot)('IPv6 underlay: an IPv4-only host and an IPv6-only host, through a dual-stack relay', () => {
  let bed: MeshBed;

  beforeAll(async () => {
    bed = await startMeshBed({
      topology: { hosts: [{ name: 'pub' }, { name: 'v4' }, { name: 'v6' }] },
      agents: 0,
      waitUp: false,
      ipv6: { v6Only: ['v6'], v4Only: ['v4'] },
    });
    await bed.start(bed.topo.host('pub'), { extraArgs: ['--relay'] });
    await bed.start(bed.topo.host('v4'));
    await startV6Only(bed, 'v6');
    await meshUp(bed);
  }, 90_000);

  afterAll(async () => {
    await bed?.destroy();
  });

  it('each reaches the relay directly over its own family, and the other through it', async () => {
    const pub6 = ipv6Of(bed.topo.host('pub').underlayIp);
    const [d4, d6] = await waitUntil('v4 and v6 to go through pub', async () => {
      const both = await Promise.all([bed.agent('v4').statusCli(), bed.agent('v6').statusCli()]);
      const ok = peer(both[0], 'v6')?.path === 'relayed' && peer(both[1], 'v4')?.path === 'relayed';
      return ok ? both : undefined;
    }, { timeoutMs: 20_000 });
    expect(peer(d4, 'v6')).toMatchObject({ state: 'up', via: 'pub' });
    expect(peer(d6, 'v4')).toMatchObject({ state: 'up', via: 'pub' });
    expect(peer(d4, 'pub')).toMatchObject({ path: 'direct', endpoint: `${bed.topo.host('pub').underlayIp}:51820` });
    expect(peer(d6, 'pub')).toMatchObject({ path: 'direct', endpoint: `[${pub6}]:51820` });
    const r = await ping(bed.topo, bed.topo.host('v4').ns, d6.self.overlayIp, { count: 3, intervalS: 0.1, waitS: 1 });
    expect(r.received).toBe(3);
    await transferChecked(bed, 'v6', 'v4', d4.self.overlayIp, 2 * MB);
  }, 60_000);
});

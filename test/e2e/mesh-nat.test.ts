import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { waitUntil, type Agent, type AgentStatus } from '../../src/testbed/agents';
import { startNatBed, type MeshBed } from '../../src/testbed/mesh';
import { ping, repeated, startCapture, tcpTransfer, udpDatagrams, writeRandomFile } from '../../src/testbed/traffic';

/**
 * Hosts behind NATs, none told its public address:
 *   pub  on the internet, relay-capable
 *   a, b each behind its own MASQUERADE site (endpoint-independent mapping, port kept)
 *   e    behind a's site too, on a's LAN
 *   c, d each behind its own port-randomizing site (a new port per destination)
 * a learns its public address from pub's pongs; a and b punch through to each other directly;
 * c and d cannot, and reach each other through pub, which sees only ciphertext. A STUN server on the
 * "internet" (cladnet stun-server) is the second observer that shows c and d their mappings vary.
 */
const isRoot = process.getuid?.() === 0;
const MARKER = 'CLADNET-RELAY-MARKER-4b1d-jumps-over-the-lazy-dog-';

describe.skipIf(!isRoot)('hosts behind NATs', () => {
  let bed: MeshBed;
  const ips = new Map<string, string>();

  const peer = (doc: AgentStatus, name: string) => doc.peers.find((p) => p.name === name);
  const statusOf = (name: string) => bed.agent(name).status();
  const siteWan = (site: string) => bed.topo.plan.sites.find((s) => s.name === site)!.wanIp;

  beforeAll(async () => {
    // e listens on another port than a: two hosts on one port behind one Linux NAT make it map by
    // destination (whoever reaches a destination first keeps the port), no longer endpoint-independent.
    ({ bed } = await startNatBed({
      topology: {
        hosts: [
          { name: 'pub' },
          { name: 'a', site: 's1' },
          { name: 'b', site: 's2' },
          { name: 'c', site: 's3' },
          { name: 'd', site: 's4' },
          { name: 'e', site: 's1' },
        ],
        sites: [
          { name: 's1', nat: 'masquerade' },
          { name: 's2', nat: 'masquerade' },
          { name: 's3', nat: 'random' },
          { name: 's4', nat: 'random' },
        ],
      },
      relay: 'pub',
      listenPort: (n) => (n === 'e' ? 51821 : undefined),
      waitUp: false,
    }));
    for (const a of bed.agents) ips.set(a.name, (await a.status()).self.overlayIp);
    try {
      await bed.waitUp(bed.agents, 30_000);
    } catch (e) {
      const docs = await Promise.all(bed.agents.map((a) => a.status().catch(() => null)));
      const summary = docs.map((d) => d && `${d.self.name} ${d.self.reflexive} ${d.self.nat}: ` + d.peers.map((p) => `${p.name}=${p.state}/${p.path}/${p.endpoint}`).join(' '));
      throw new Error(`${(e as Error).message}\n${summary.join('\n')}\n${bed.agents.map((a) => `--- ${a.name}\n${a.logTail(12)}`).join('\n')}`);
    }
  }, 90_000);

  afterAll(async () => {
    await bed?.destroy();
  });

  const logs = (...names: string[]) => names.map((n) => `--- ${n}\n${bed.agent(n).logTail(15)}`).join('\n');

  it('a host behind MASQUERADE learns its public address from its peers and meshes with the internet host', async () => {
    const doc = await waitUntil('a to learn its reflexive address', async () => {
      const d = await statusOf('a');
      return d.self.reflexive ? d : undefined;
    });
    expect(doc.self.reflexive).toBe(`${siteWan('s1')}:51820`);
    expect(doc.self.nat).toBe('eim');
    expect(doc.self.endpoints).toContain(doc.self.reflexive);
    // ...and it is exactly where pub sees a's packets come from.
    expect(peer(await statusOf('pub'), 'a')?.endpoint).toBe(doc.self.reflexive);
    expect(peer(doc, 'pub')).toMatchObject({ state: 'up', path: 'direct', pathScope: 'public' });
    const r = await ping(bed.topo, bed.topo.host('a').ns, ips.get('pub')!, { count: 3, intervalS: 0.1 });
    expect(r.received).toBe(3);
    const text = await bed.agent('a').statusText();
    expect(text).toContain(`reflexive: ${doc.self.reflexive} (NAT, same mapping for every peer)`);
  });

  it('two hosts behind two different endpoint-independent NATs reach each other directly', async () => {
    const [da, db] = await waitUntil('a and b to see each other directly', async () => {
      const both = await Promise.all([statusOf('a'), statusOf('b')]);
      const ok = peer(both[0], 'b')?.path === 'direct' && peer(both[1], 'a')?.path === 'direct';
      return ok ? both : undefined;
    }, { timeoutMs: 20_000 }).catch((e: Error) => {
      throw new Error(`${e.message}\n${logs('a', 'b')}`);
    });
    expect(peer(da, 'b')).toMatchObject({ path: 'direct', pathScope: 'public', endpoint: db.self.reflexive });
    expect(peer(db, 'a')).toMatchObject({ path: 'direct', pathScope: 'public', endpoint: da.self.reflexive });
    expect(da.self.reflexive?.startsWith(`${siteWan('s1')}:`)).toBe(true);
    expect(db.self.reflexive).toBe(`${siteWan('s2')}:51820`);
    const r = await ping(bed.topo, bed.topo.host('a').ns, ips.get('b')!, { count: 5, intervalS: 0.1 });
    expect(r.received).toBe(5);
    expect(await bed.agent('a').statusText()).toMatch(/\bb\s+\S+\s+\S+\s+\S+\s+direct public/);
  });

  it('two hosts on one LAN behind the same NAT talk over the private path', async () => {
    const [da, de] = await waitUntil('a and e to use the private path', async () => {
      const both = await Promise.all([statusOf('a'), statusOf('e')]);
      const ok = peer(both[0], 'e')?.pathScope === 'private' && peer(both[1], 'a')?.pathScope === 'private';
      return ok ? both : undefined;
    }).catch((e: Error) => {
      throw new Error(`${e.message}\n${logs('a', 'e')}`);
    });
    expect(peer(da, 'e')).toMatchObject({ path: 'direct', pathScope: 'private' });
    expect(peer(de, 'a')).toMatchObject({ path: 'direct', pathScope: 'private', endpoint: `${bed.topo.host('a').underlayIp}:51820` });
    expect(peer(da, 'e')?.endpoint).toBe(`${bed.topo.host('e').underlayIp}:51821`);
    expect(await bed.agent('a').statusText()).toMatch(/\be\s+\S+\s+\S+\s+\S+\s+direct private/);
    const r = await ping(bed.topo, bed.topo.host('e').ns, ips.get('a')!, { count: 3, intervalS: 0.1 });
    expect(r.received).toBe(3);
  });

  it('two hosts behind port-randomizing NATs reach each other through the relay, which sees only ciphertext', async () => {
    const [dc, dd] = await waitUntil('c and d to reach each other through pub', async () => {
      const both = await Promise.all([statusOf('c'), statusOf('d')]);
      const ok = peer(both[0], 'd')?.path === 'relayed' && peer(both[1], 'c')?.path === 'relayed';
      return ok ? both : undefined;
    }, { timeoutMs: 30_000 }).catch((e: Error) => {
      throw new Error(`${e.message}\n${logs('c', 'd', 'pub')}`);
    });
    expect(dc.self.nat).toBe('varies');
    expect(peer(dc, 'd')).toMatchObject({ path: 'relayed', via: 'pub', endpoint: 'via pub', state: 'up' });
    expect(peer(dd, 'c')).toMatchObject({ path: 'relayed', via: 'pub' });
    expect(await bed.agent('c').statusText()).toContain('relayed via pub');

    const file = path.join(bed.topo.workDir, 'relay-marker.bin');
    const received = path.join(bed.topo.workDir, 'relay-marker.received');
    writeRandomFile(file, 512 * 1024, repeated(MARKER, 32 * 1024));
    const pub = bed.topo.host('pub');
    const cap = await startCapture(bed.topo, pub.ns, { file: path.join(bed.topo.workDir, 'relay.pcap'), iface: 'any' });
    const before = (await bed.agent('pub').status()).dataplane.relayedPackets ?? 0;
    const r = await tcpTransfer(bed.topo, {
      fromNs: bed.topo.host('c').ns,
      toNs: bed.topo.host('d').ns,
      toIp: ips.get('d')!,
      port: 7781,
      file,
      outFile: received,
      timeoutMs: 60_000,
    });
    const pcap = await cap.stop();
    expect(r.receivedSha256).toBe(r.sentSha256);
    expect(fs.readFileSync(received).includes(MARKER)).toBe(true);
    // The transfer went through pub: it relayed at least the file's worth of datagrams...
    const relayed = ((await bed.agent('pub').status()).dataplane.relayedBytes ?? 0);
    expect(relayed).toBeGreaterThan(fs.statSync(file).size);
    expect(((await bed.agent('pub').status()).dataplane.relayedPackets ?? 0) - before).toBeGreaterThan(300);
    // ...its capture holds the tunnel traffic as whole datagrams (TCP's MSS was clamped for the
    // relayed path, so nothing needed IP fragmentation), and not one copy of the marker in clear.
    const seen = udpDatagrams(pcap).reduce((n, d) => n + d.payload.length, 0);
    expect(seen).toBeGreaterThan(2 * fs.statSync(file).size);
    expect(pcap.includes(MARKER)).toBe(false);
    expect(pcap.includes('CLADNET-RELAY')).toBe(false);
    // No direct path between c and d ever answered.
    const docs: [Agent, string][] = [
      [bed.agent('c'), 'd'],
      [bed.agent('d'), 'c'],
    ];
    for (const [a, other] of docs) expect(peer(await a.status(), other)?.path).toBe('relayed');
  });
});

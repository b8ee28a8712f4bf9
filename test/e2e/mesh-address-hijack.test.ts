import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { issueCert } from '../../src/control/cert';
import { readCertFile, readNetworkKey, writeCertFile } from '../../src/control/credentials';
import { leaseKey } from '../../src/control/keys';
import { serializeLeaseRecord } from '../../src/control/records';
import { loadEd25519 } from '../../src/crypto/sign';
import { cli, issueHostCert, networkKeyFile, sleep, waitUntil, type AgentStatus } from '../../src/testbed/agents';
import { startMeshBed, type MeshBed } from '../../src/testbed/mesh';
import { ping } from '../../src/testbed/traffic';

/**
 * Issue 10, hole 2, end to end: agents in namespaces, a real etcd in the router namespace, and an
 * etcd writer (etcdctl there, without the network key) who rewrites and deletes leases. The
 * network is a /29 (six addresses) so that filling the range takes two writes.
 *
 * 1. A lease rewritten to name the next host: `host issue` gives that host another address and
 *    the old host keeps its address and its traffic.
 * 2. A lease deleted and the range filled: `host issue` refuses; nobody loses anything.
 * 3. Two valid certificates for one address anyway (the operator signed one by hand) and the lease
 *    pointing at the newcomer: every agent keeps the earlier certificate's host, reports the
 *    conflict in status and logs it once; the newcomer gets no peers.
 */
const isRoot = process.getuid?.() === 0;
const NET = 'hijack';
const CIDR = '100.64.0.0/29';

describe.skipIf(!isRoot)('overlay addresses cannot be taken through etcd', () => {
  let bed: MeshBed;
  const ip = new Map<string, string>();

  beforeAll(async () => {
    bed = await startMeshBed({ topology: { hosts: 4 }, agents: 3, network: NET, cidr: CIDR });
    for (const [name, doc] of await bed.waitUp()) ip.set(name, doc.self.overlayIp);
  });
  afterAll(async () => {
    await bed?.destroy();
  });

  const etcdctl = (args: string[], input?: string) =>
    bed.topo.exec(bed.topo.routerNs, ['etcdctl', `--endpoints=${bed.etcd.endpoint}`, ...args], {
      input,
      env: { ...process.env, ETCDCTL_API: '3' },
      timeoutMs: 10_000,
    });
  const leaseHolder = async (addr: string): Promise<string | null> => {
    const v = (await etcdctl(['get', leaseKey(NET, addr), '--print-value-only'])).stdout.trim();
    return v === '' ? null : (JSON.parse(v) as { host: string }).host;
  };
  const forgeLease = (addr: string, host: string) =>
    etcdctl(['put', leaseKey(NET, addr)], serializeLeaseRecord({ version: 1, host, publicKey: Buffer.alloc(32, 7).toString('base64'), created: new Date().toISOString() }));
  const usable = ['100.64.0.1', '100.64.0.2', '100.64.0.3', '100.64.0.4', '100.64.0.5', '100.64.0.6'];

  /** Pings `to` from each of `from` and expects every reply. */
  async function reachable(from: string[], to: string): Promise<void> {
    for (const f of from) {
      const p = await ping(bed.topo, bed.agent(f).host.ns, to, { count: 3, intervalS: 0.1, waitS: 1 });
      expect(p.received, `${f} -> ${to}`).toBe(3);
    }
  }

  it("a lease rewritten to name a new host: host issue gives it another address; the old host keeps its address and traffic", async () => {
    const h2ip = ip.get('h2')!;
    await forgeLease(h2ip, 'h4');
    expect(await leaseHolder(h2ip)).toBe('h4');

    const h4 = await bed.start(bed.topo.host('h4'), { iface: 'clhij0' });
    const docs = await bed.waitUp();
    const h4ip = docs.get('h4')!.self.overlayIp;
    console.log(`rewritten lease: h2 holds ${h2ip}; host issue gave h4 ${h4ip}; lease ${h2ip} now names ${await leaseHolder(h2ip)}`);
    expect(h4ip).not.toBe(h2ip);
    expect(usable).toContain(h4ip);
    expect(await leaseHolder(h2ip)).toBe('h2');
    for (const d of docs.values()) {
      if (d.self.name === 'h2') expect(d.self.overlayIp).toBe(h2ip);
      else expect(d.peers.find((p) => p.name === 'h2')?.overlayIp, `${d.self.name} sees h2`).toBe(h2ip);
      expect(d.conflicts ?? []).toEqual([]);
    }
    await reachable(['h1', 'h3', 'h4'], h2ip);
    await reachable(['h2'], h4ip);
    await h4.stop();
  });

  it('a lease deleted and the rest of the range filled: host issue refuses, and the holder gets its lease back', async () => {
    const h3ip = ip.get('h3')!;
    await etcdctl(['del', leaseKey(NET, h3ip)]);
    const free: string[] = [];
    for (const addr of usable) if ((await leaseHolder(addr)) === null && addr !== h3ip) free.push(addr);
    for (const [i, addr] of free.entries()) await forgeLease(addr, `junk-${i}`);

    const dir = path.join(bed.topo.workDir, 'late');
    const r = await cli(bed.topo, bed.topo.routerNs, [
      ...['host', 'issue', 'late', '--network', NET, '--network-key', networkKeyFile(bed.topo, NET), '--out', dir, '--etcd', bed.etcd.endpoint],
    ]);
    console.log(`deleted lease + full range (${free.length} junk leases): exit ${r.code}\n${r.stderr.trim()}`);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`cladnet: warning: lease ${h3ip} was missing; restored to h3 (certificate `);
    expect(r.stderr).toContain(`has no free overlay address: 6 of 6 leased [EEXHAUSTED]`);
    expect(fs.existsSync(path.join(dir, 'host.cert'))).toBe(false);
    expect(await leaseHolder(h3ip)).toBe('h3');
    await reachable(['h1', 'h2'], h3ip);
    for (const addr of free) await etcdctl(['del', leaseKey(NET, addr)]);
  });

  it('two valid certificates for one address, the lease on the newcomer: every agent keeps the earlier holder and reports the conflict', async () => {
    const h2ip = ip.get('h2')!;
    // The operator, by hand, signs a second certificate for h2's address ("thief", on host h4).
    const name = 'thief';
    const stateDir = path.join(bed.topo.workDir, 'agents', name);
    fs.mkdirSync(stateDir, { recursive: true, mode: 0o700 });
    await issueHostCert(bed.topo, { name, network: NET, etcd: bed.etcd.endpoint, out: stateDir });
    const own = readCertFile(path.join(stateDir, 'host.cert'));
    const ed = await loadEd25519();
    const key = readNetworkKey(networkKeyFile(bed.topo, NET), ed);
    const second = issueCert(ed, key.secretKey, { network: NET, name, publicKey: own.cert.publicKey, overlayIp: h2ip });
    key.secretKey.fill(0);
    writeCertFile(path.join(stateDir, 'host.cert'), { trustAnchor: own.trustAnchor, cert: second });
    // And the etcd writer hands h2's lease to the newcomer, as the old rule would have obeyed.
    await forgeLease(h2ip, name);

    const before = await bed.agent('h1').status();
    const thief = await bed.start(bed.topo.host('h4'), { name, issueCert: false, iface: 'clthief0' });
    const stayers = ['h1', 'h3'].map((n) => bed.agent(n));
    const h2cert = readCertFile(path.join(bed.agent('h2').stateDir, 'host.cert')).cert;
    const want = {
      overlayIp: h2ip,
      winner: { name: 'h2', serial: h2cert.serial, issued: h2cert.issued },
      loser: { name, serial: second.serial, issued: second.issued },
    };
    const t0 = Date.now();
    await waitUntil(
      'h1, h2 and h3 to report the conflict',
      async () => {
        const docs = await Promise.all([...stayers, bed.agent('h2')].map((a) => a.status()));
        return docs.every((d) => JSON.stringify(d.conflicts) === JSON.stringify([want]));
      },
      { timeoutMs: 10_000, intervalMs: 100 },
    );
    console.log(`conflict reported by h1, h2, h3 within ${Date.now() - t0} ms after the newcomer's agent answered its first status`);
    expect(await leaseHolder(h2ip)).toBe(name); // the lease still names the newcomer: it decides nothing

    // Traffic to the address keeps going to h2 for 2 s; the newcomer is nobody's peer.
    const h2rx0 = (await bed.agent('h2').status()).dataplane.rxPackets;
    for (let i = 0; i < 4; i++) {
      await reachable(['h1', 'h3'], h2ip);
      for (const a of stayers) {
        const d: AgentStatus = await a.status();
        expect(d.peers.find((p) => p.name === 'h2')?.overlayIp).toBe(h2ip);
        expect(d.peers.map((p) => p.name)).not.toContain(name);
      }
      await sleep(250);
    }
    const h2rx1 = (await bed.agent('h2').status()).dataplane.rxPackets;
    expect(h2rx1 - h2rx0, 'h2 received the pings').toBeGreaterThanOrEqual(24);
    const t = await thief.status();
    expect(t.peers).toEqual([]);
    expect(t.conflicts).toEqual([want]);
    expect(thief.logTail(200)).toContain('this host is no longer a valid member');
    expect((await ping(bed.topo, thief.host.ns, ip.get('h1')!, { count: 2, intervalS: 0.1, waitS: 1 })).received, 'newcomer -> h1').toBe(0);

    // Logged once per conflict (the watch delivered more changes meanwhile), and shown to a person.
    const h1log = bed.agent('h1').logTail(2000);
    expect(h1log.split('\n').filter((l) => l.includes('two valid certificates claim one overlay address'))).toHaveLength(1);
    const text = await bed.agent('h1').statusText();
    expect(text).toContain(`CONFLICT: ${h2ip} is held by h2 (certificate ${h2cert.serial}, issued ${h2cert.issued}); refused ${name} (certificate ${second.serial}`);
    expect((await bed.agent('h1').statusCli()).conflicts).toEqual([want]);
    expect(before.conflicts).toEqual([]);

    // The newcomer leaves: the conflict is gone from status.
    await thief.stop();
    await etcdctl(['del', `/cladnet/v1/networks/${NET}/hosts/${name}`]);
    await waitUntil('h1 to drop the conflict', async () => ((await bed.agent('h1').status()).conflicts ?? []).length === 0, { timeoutMs: 5_000, intervalMs: 100 });
  });
});

import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { issueCert } from '../../src/control/cert';
import { aliveKey, hostKey } from '../../src/control/keys';
import { HostRecord, serializeHostRecord } from '../../src/control/records';
import { loadEd25519 } from '../../src/crypto/sign';
import { cli, issueHostCert, networkKeyFile, sleep, waitUntil, type Agent, type AgentStatus } from '../../src/testbed/agents';
import { startMeshBed, type MeshBed } from '../../src/testbed/mesh';
import { ping } from '../../src/testbed/traffic';

/**
 * Membership that etcd writers cannot forge, end to end: three agents (h1-h3) in namespaces with a
 * real etcd, h4 as a spare host. Whoever can write to etcd (here: etcdctl in the router namespace)
 * can put records there, but no agent accepts one the network key did not certify, and only the
 * holder of the network key can revoke a host.
 */
const isRoot = process.getuid?.() === 0;
const REVOKE_BUDGET_MS = 5_000;
const NET = 'trust';

describe.skipIf(!isRoot)('membership certified by the network key', () => {
  let bed: MeshBed;
  const ip = new Map<string, string>();

  beforeAll(async () => {
    bed = await startMeshBed({ topology: { hosts: 4 }, agents: 3, network: NET, cidr: '100.64.0.0/24' });
    for (const [name, doc] of await bed.waitUp()) ip.set(name, doc.self.overlayIp);
  });
  afterAll(async () => {
    await bed?.destroy();
  });

  /** etcdctl in the router namespace: an etcd writer with no network key. */
  const etcdctl = (args: string[], input?: string) =>
    bed.topo.exec(bed.topo.routerNs, ['etcdctl', `--endpoints=${bed.etcd.endpoint}`, ...args], {
      input,
      env: { ...process.env, ETCDCTL_API: '3' },
      timeoutMs: 10_000,
    });
  const put = (key: string, value: string) => etcdctl(['put', key], value);
  const get = async (key: string) => (await etcdctl(['get', key, '--print-value-only'])).stdout.trim();

  const statuses = () => Promise.all(bed.agents.map((a) => a.status()));
  const untrusted = (d: AgentStatus) => d.etcd.untrustedRecords ?? 0;

  function forged(name: string, overlayIp: string, extra: Partial<HostRecord> = {}): HostRecord {
    return {
      version: 1,
      name,
      network: NET,
      overlayIp,
      publicKey: randomBytes(32).toString('base64'),
      endpoints: [`${bed.topo.host('h4').underlayIp}:51820`],
      hostCidrs: [],
      listenPort: 51820,
      epoch: Date.now(),
      updated: new Date().toISOString(),
      session: randomBytes(8).toString('hex'),
      ...extra,
    };
  }

  /**
   * Puts a host record and an alive key for `rec.name` straight into etcd, then checks that every
   * agent counts it as untrusted and that no status lists it, polling for a further 2 s.
   */
  async function expectIgnored(what: string, rec: HostRecord): Promise<void> {
    const before = await statuses();
    await put(hostKey(NET, rec.name), serializeHostRecord(rec));
    await put(aliveKey(NET, rec.name), '{}');
    const t0 = Date.now();
    await waitUntil(
      `every agent to count the ${what} record as untrusted`,
      async () => {
        const now = await statuses();
        expect(now.flatMap((d) => d.peers.map((p) => p.name))).not.toContain(rec.name);
        return now.every((d, i) => untrusted(d) > untrusted(before[i]!));
      },
      { timeoutMs: 5_000, intervalMs: 100 },
    );
    const countedMs = Date.now() - t0;
    for (let i = 0; i < 20; i++) {
      const now = await statuses();
      for (const d of now) expect(d.peers.map((p) => p.name), `${d.self.name} lists ${rec.name}`).not.toContain(rec.name);
      await sleep(100);
    }
    const after = await statuses();
    console.log(
      `${what}: counted as untrusted by all agents within ${countedMs} ms, listed by none for 2 s; ` +
        after.map((d) => `${d.self.name} untrusted=${untrusted(d)} invalid=${d.etcd.invalidRecords}`).join(', '),
    );
    for (const d of after) expect(d.peers.map((p) => p.name).sort()).toEqual(['h1', 'h2', 'h3'].filter((n) => n !== d.self.name));
  }

  it('ignores a host record put into etcd without a certificate', async () => {
    await expectIgnored('unsigned', forged('intruder', '100.64.0.200'));
  });

  it("ignores a host record whose certificate is signed by an attacker's key", async () => {
    const ed = await loadEd25519();
    const attacker = ed.generate();
    const rec = forged('mallory', '100.64.0.201');
    const cert = issueCert(ed, attacker.secretKey, { network: NET, name: 'mallory', publicKey: rec.publicKey, overlayIp: rec.overlayIp });
    await expectIgnored('attacker-signed', { ...rec, cert });
  });

  it("refuses h2's record rewritten in etcd to claim h3's overlay IP; h2 keeps its last valid record, h3 stays reachable", async () => {
    const original = await get(hostKey(NET, 'h2'));
    const tampered = { ...(JSON.parse(original) as HostRecord), overlayIp: ip.get('h3')! };
    const before = await bed.agent('h1').status();
    await put(hostKey(NET, 'h2'), JSON.stringify(tampered));
    const others = [bed.agent('h1'), bed.agent('h3')];
    await waitUntil(
      'h1 and h3 to refuse the tampered h2 record',
      async () => {
        const docs = await Promise.all(others.map((a) => a.status()));
        return docs.every((d) => d.peers.find((p) => p.name === 'h2')?.etcd?.record === 'invalid');
      },
      { timeoutMs: 5_000, intervalMs: 100 },
    );
    const h1 = await bed.agent('h1').status();
    expect(untrusted(h1)).toBeGreaterThan(untrusted(before));
    // Membership is the certificate: h2 stays at the address its certificate binds.
    expect(h1.peers.map((p) => [p.name, p.overlayIp])).toEqual([
      ['h2', ip.get('h2')],
      ['h3', ip.get('h3')],
    ]);
    expect((await ping(bed.topo, bed.agent('h1').host.ns, ip.get('h3')!, { count: 2, intervalS: 0.1 })).received, 'h1 -> h3').toBe(2);
    expect((await ping(bed.topo, bed.agent('h1').host.ns, ip.get('h2')!, { count: 2, intervalS: 0.1 })).received, 'h1 -> h2').toBe(2);
    const h1log = bed.agent('h1').logTail(200);
    expect(h1log).toContain(`overlayIp: ${ip.get('h3')} differs from the certificate's ${ip.get('h2')}`);

    // Restored byte for byte, the record is h2's again.
    await put(hostKey(NET, 'h2'), original);
    await bed.waitUp();
  });

  /** Runs `cladnet agent` in h4's namespace with the given state dir and name; it must exit. */
  async function agentMustRefuse(stateDir: string, name: string): Promise<{ code: number; stderr: string; ms: number }> {
    const t0 = Date.now();
    const r = await cli(
      bed.topo,
      bed.topo.host('h4').ns,
      [
        ...['agent', '--etcd', bed.etcd.endpoint, '--network', NET, '--name', name, '--interface', 'cltrust0'],
        ...['--state-dir', stateDir, '--socket', path.join(stateDir, 'cladnet.sock'), '--log-level', 'warn'],
      ],
      15_000,
    );
    const ms = Date.now() - t0;
    const link = await bed.topo.tryExec(bed.topo.host('h4').ns, ['ip', 'link', 'show', 'cltrust0']);
    expect(link.code, 'no TUN device left behind').not.toBe(0);
    return { code: r.code, stderr: r.stderr.trim(), ms };
  }

  it("an agent holding h4's certificate refuses to start as h1; with h1's certificate and its own key, too", async () => {
    const dir = path.join(bed.topo.workDir, 'h4-as-h1');
    fs.mkdirSync(dir, { mode: 0o700 });
    await issueHostCert(bed.topo, { name: 'h4', network: NET, etcd: bed.etcd.endpoint, out: dir });
    const r = await agentMustRefuse(dir, 'h1');
    console.log(`h4's certificate, --name h1: exit ${r.code} after ${r.ms} ms: ${r.stderr}`);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/cert: .*host\.cert is for host "h4", but this agent's name is "h1" \[ECONFIG\]/);

    // A copied certificate is useless without the private key it certifies.
    fs.copyFileSync(path.join(bed.agent('h1').stateDir, 'host.cert'), path.join(dir, 'host.cert'));
    const s = await agentMustRefuse(dir, 'h1');
    console.log(`h1's certificate with h4's key: exit ${s.code}: ${s.stderr.split('\n')[0]}`);
    expect(s.code).toBe(1);
    expect(s.stderr).toMatch(/certifies public key .* but this host's key .* is .*\[EKEY\]/s);
    // Nobody accepted an h1 impostor meanwhile.
    for (const d of await statuses()) expect(d.peers.filter((p) => p.name === 'h1').every((p) => p.overlayIp === ip.get('h1'))).toBe(true);
  });

  it('an agent whose private.key is group-readable refuses to start, naming the file and the fix', async () => {
    const dir = path.join(bed.topo.workDir, 'h4-readable');
    fs.mkdirSync(dir, { mode: 0o700 });
    await issueHostCert(bed.topo, { name: 'h4', network: NET, etcd: bed.etcd.endpoint, out: dir });
    const keyFile = path.join(dir, 'private.key');
    expect(fs.statSync(keyFile).mode & 0o777).toBe(0o600);
    fs.chmodSync(keyFile, 0o640);
    const r = await agentMustRefuse(dir, 'h4');
    console.log(`group-readable private.key: exit ${r.code} after ${r.ms} ms: ${r.stderr}`);
    expect(r.code).toBe(1);
    expect(r.stderr).toBe(`cladnet: ${keyFile} is readable by group or others (mode 640); run: chmod 600 ${keyFile} [EKEY]`);
  });

  it(`cladnet host revoke h3 makes every other agent drop h3 within ${REVOKE_BUDGET_MS} ms, and pings to h3 fail`, async () => {
    const h3ip = ip.get('h3')!;
    const stayers: Agent[] = bed.agents.filter((a) => a.name !== 'h3');
    expect((await ping(bed.topo, stayers[0]!.host.ns, h3ip, { count: 1 })).ok).toBe(true);

    const t0 = Date.now();
    const revoke = cli(bed.topo, bed.topo.routerNs, [
      ...['host', 'revoke', 'h3', '--network', NET, '--network-key', networkKeyFile(bed.topo, NET), '--etcd', bed.etcd.endpoint, '--json'],
    ]);
    let cmdMs = -1;
    void revoke.then(() => (cmdMs = Date.now() - t0));
    await waitUntil(
      'every other agent to drop h3',
      async () => {
        const docs = await Promise.all(stayers.map((a) => a.status()));
        return docs.every((d) => !d.peers.some((p) => p.name === 'h3'));
      },
      { timeoutMs: REVOKE_BUDGET_MS + 5_000, intervalMs: 25 },
    );
    const tDropped = Date.now();
    const droppedMs = tDropped - t0;
    const r = await revoke;
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as { revocation: { revoked: string }; released: string[] };
    // `revoked` is the moment the command signed the revocation, just before writing it to etcd.
    const sinceSigned = tDropped - Date.parse(out.revocation.revoked);
    console.log(
      `revoke: \`cladnet host revoke h3\` ran ${cmdMs} ms (node start-up included; released ${out.released.join(', ')}); ` +
        `h1 and h2 dropped h3 ${droppedMs} ms after the command started, ${sinceSigned} ms after it signed the revocation ` +
        `(status polled every 25 ms)`,
    );
    expect(out.released).toEqual([h3ip]);
    expect(droppedMs).toBeLessThanOrEqual(REVOKE_BUDGET_MS);

    for (const from of stayers) {
      const p = await ping(bed.topo, from.host.ns, h3ip, { count: 3, intervalS: 0.2, waitS: 1 });
      expect(p.received, `${from.name} -> h3 after revocation`).toBe(0);
    }
    const back = await ping(bed.topo, bed.agent('h3').host.ns, ip.get('h1')!, { count: 2, intervalS: 0.2, waitS: 1 });
    expect(back.received, 'h3 -> h1 after revocation').toBe(0);
    // h3 knows: it dropped everyone, and says why.
    expect((await bed.agent('h3').status()).peers).toEqual([]);
    expect(bed.agent('h3').logTail(100)).toContain('this host is no longer a valid member');
    // The rest of the mesh carries on.
    expect((await ping(bed.topo, stayers[0]!.host.ns, ip.get(stayers[1]!.name)!, { count: 2, intervalS: 0.1 })).received).toBe(2);
  });
});

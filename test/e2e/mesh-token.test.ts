import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { issueCert } from '../../src/control/cert';
import { aliveKey, hostKey, networkKey } from '../../src/control/keys';
import { serializeHostRecord } from '../../src/control/records';
import { decodeToken } from '../../src/control/token';
import { loadEd25519 } from '../../src/crypto/sign';
import { cli, networkKeyFile, sleep, waitUntil, type Agent } from '../../src/testbed/agents';
import { startMeshBed, type MeshBed } from '../../src/testbed/mesh';
import { ping, tcpTransfer, writeRandomFile } from '../../src/testbed/traffic';
import { bedEtcdctl } from '../helpers/bed-etcd';

/**
 * Issue 12, join tokens, with real agents, etcd and kernels: two hosts certified by the operator
 * (`host issue`) run a mesh; a third host joins with only a token file (no network key on it),
 * makes its own key, enrols, and exchanges traffic with both. Then a second use beyond --uses, an
 * expired token, a name outside the pattern and a revoked token are each refused with their own
 * code and message. Finally the joined host's private key is searched for everywhere else: the
 * other hosts' state dirs, the operator's files and all of etcd.
 */
const isRoot = process.getuid?.() === 0;
const NET = 'tokjoin';

describe.skipIf(!isRoot)('join tokens: a host joins without the network key; bad tokens are refused, each with its own error', () => {
  let bed: MeshBed;
  let tokenDir = '';
  let joined: Agent | undefined;
  let firstToken = '';

  beforeAll(async () => {
    bed = await startMeshBed({ topology: { hosts: 4 }, network: NET, agents: 2 });
    tokenDir = path.join(bed.topo.workDir, 'tokens');
    fs.mkdirSync(tokenDir, { recursive: true, mode: 0o700 });
  }, 90_000);
  afterAll(async () => {
    await bed?.destroy();
  });

  /** `cladnet token ...` at the operator's seat (the router namespace, where the network key is). */
  async function tokenCli(args: string[]) {
    const r = await cli(bed.topo, bed.topo.routerNs, ['token', ...args, '--network', NET, '--etcd', bed.etcd.endpoint], 20_000);
    if (r.code !== 0) throw new Error(`token ${args.join(' ')} failed (${r.code}): ${r.stderr}`);
    return r;
  }

  /** Makes a token (into a 0600 file, read back) and returns its id and string. */
  async function makeToken(label: string, opts: string[]): Promise<{ id: string; token: string }> {
    const out = path.join(tokenDir, `${label}.made`);
    const r = await tokenCli(['create', '--network-key', networkKeyFile(bed.topo, NET), '--out', out, '--json', ...opts]);
    expect((fs.statSync(out).mode & 0o777).toString(8)).toBe('600');
    const doc = JSON.parse(r.stdout) as { grant: { id: string } };
    return { id: doc.grant.id, token: fs.readFileSync(out, 'utf8').trim() };
  }

  /** The token as cloud-init would drop it: a 0600 file for the agent's --token-file. */
  function tokenFile(name: string, token: string): string {
    const f = path.join(tokenDir, `${name}.token`);
    fs.writeFileSync(f, `${token}\n`, { mode: 0o600 });
    return f;
  }

  /** Starts an agent that must refuse to start; returns its exit code and log. */
  async function refused(hostName: string, name: string, token: string): Promise<{ code: number | null; log: string }> {
    const a = await bed.start(bed.topo.host(hostName), { name, issueCert: false, waitReady: false, extraArgs: ['--token-file', tokenFile(name, token)] });
    const exit = await Promise.race([a.exited, sleep(30_000).then(() => null)]);
    if (exit === null) {
      await a.stop();
      throw new Error(`agent ${name} did not exit:\n${a.logTail()}`);
    }
    expect(fs.existsSync(path.join(a.stateDir, 'host.cert')), `${name} got a certificate`).toBe(false);
    return { code: exit.code, log: fs.readFileSync(a.logFile, 'utf8') };
  }

  it('a host with only a token file joins, makes its own key, and exchanges traffic with the hosts already there', async () => {
    const t = await makeToken('web', ['--name', 'web-*', '--uses', '1', '--ttl', '10m']);
    firstToken = t.token;
    const file = tokenFile('web-1', t.token);
    const start = Date.now();
    joined = await bed.start(bed.topo.host('h3'), { name: 'web-1', issueCert: false, extraArgs: ['--token-file', file], readyTimeoutMs: 30_000 });
    const docs = await bed.waitUp([bed.agent('h1'), bed.agent('h2'), joined], 30_000);
    console.log(`web-1 enrolled with a token and meshed with h1, h2 in ${Date.now() - start} ms`);
    const self = docs.get('web-1')!.self;
    // Its own key and a certificate under the token, use 1; no network key anywhere on it.
    const certFile = JSON.parse(fs.readFileSync(path.join(joined.stateDir, 'host.cert'), 'utf8')) as { cert: Record<string, unknown> };
    expect(certFile.cert).toMatchObject({ name: 'web-1', token: t.id, use: 1, publicKey: self.publicKey, overlayIp: self.overlayIp });
    // and the network spec it enrolled under, the one etcd holds (signed; the agent holds etcd's against it)
    const inEtcd = await bedEtcdctl(bed, ['get', networkKey(NET), '--print-value-only']);
    expect((certFile as { spec?: unknown }).spec).toEqual(JSON.parse(inEtcd.stdout.trim()));
    expect(fs.readdirSync(joined.stateDir).filter((f) => f.endsWith('.netkey'))).toEqual([]);
    // The token file was wiped and removed; the log names the token by id only, never the token.
    expect(fs.existsSync(file)).toBe(false);
    const log = fs.readFileSync(joined.logFile, 'utf8');
    expect(log).toContain('joined the network with a token');
    expect(log).not.toContain(t.token.slice(20, 80));
    // Traffic both ways: pings to each existing host and back, and a TCP transfer.
    const ips = new Map([...docs].map(([n, d]) => [n, d.self.overlayIp]));
    for (const other of ['h1', 'h2']) {
      const there = await ping(bed.topo, joined.host.ns, ips.get(other)!, { count: 3 });
      const back = await ping(bed.topo, bed.agent(other).host.ns, self.overlayIp, { count: 3 });
      expect(there.received, `web-1 -> ${other}`).toBe(3);
      expect(back.received, `${other} -> web-1`).toBe(3);
    }
    const src = path.join(bed.topo.workDir, 'tok-send.bin');
    const sent = writeRandomFile(src, 2 * 1024 * 1024);
    const tr = await tcpTransfer(bed.topo, { fromNs: bed.agent('h1').host.ns, toNs: joined.host.ns, toIp: self.overlayIp, file: src, outFile: path.join(bed.topo.workDir, 'tok-recv.bin') });
    expect(tr.receivedSha256).toBe(sent);
    fs.rmSync(src);
    // The operator sees the use taken.
    const list = await tokenCli(['list', '--json']);
    const entry = (JSON.parse(list.stdout) as { grant: { id: string }; used: { use: number; name: string }[] }[]).find((x) => x.grant.id === t.id);
    expect(entry?.used).toEqual([expect.objectContaining({ use: 1, name: 'web-1' })]);
  }, 120_000);

  it('the token leaked after first boot is worth nothing: a thief who signs its taken use for another key and writes it to etcd is refused by every member', async () => {
    expect(joined).toBeDefined();
    const ed = await loadEd25519();
    const t = decodeToken(firstToken, ed); // the thief has the token (and etcd write access)
    const before = new Map<string, number>();
    for (const n of ['h1', 'h2', 'web-1']) before.set(n, (await bed.agents.find((a) => a.name === n)!.status()).etcd.untrustedRecords ?? 0);
    const pub = randomBytes(32).toString('base64');
    // Use 1 again (the only one), another name in the pattern, back-dated to the token's start.
    const cert = issueCert(ed, t.secret, { network: NET, name: 'web-9', publicKey: pub, overlayIp: '100.64.0.200', now: new Date(Date.parse(t.grant.issued) + 1000), token: { grant: t.grant, use: 1 } });
    t.secret.fill(0);
    const record = {
      version: 1 as const,
      name: 'web-9',
      network: NET,
      overlayIp: cert.overlayIp,
      publicKey: pub,
      endpoints: [`${bed.topo.host('h4').underlayIp}:51820`],
      hostCidrs: [],
      listenPort: 51820,
      epoch: 1,
      updated: new Date().toISOString(),
      session: randomBytes(8).toString('hex'),
      cert,
    };
    const etcdctl = (args: string[], input?: string) =>
      bed.topo.exec(bed.topo.routerNs, ['etcdctl', `--endpoints=${bed.etcd.endpoint}`, ...args], { input, env: { ...process.env, ETCDCTL_API: '3' }, timeoutMs: 10_000 });
    await etcdctl(['put', hostKey(NET, 'web-9')], serializeHostRecord(record));
    await etcdctl(['put', aliveKey(NET, 'web-9')], '{}');
    for (const n of ['h1', 'h2', 'web-1']) {
      const a = bed.agents.find((x) => x.name === n)!;
      await waitUntil(`${n} to count the thief's record as untrusted`, async () => ((await a.status()).etcd.untrustedRecords ?? 0) > before.get(n)!, { timeoutMs: 10_000 });
      expect((await a.status()).peers.some((p) => p.name === 'web-9'), `${n} lists web-9`).toBe(false);
      expect(fs.readFileSync(a.logFile, 'utf8')).toMatch(/use 1 of token [0-9a-f]{32} was first taken by certificate/);
    }
    await etcdctl(['del', hostKey(NET, 'web-9')]);
    await etcdctl(['del', aliveKey(NET, 'web-9')]);
  }, 60_000);

  it('a second use beyond --uses is refused (ETOKENUSEDUP)', async () => {
    expect(firstToken).not.toBe('');
    const r = await refused('h4', 'web-2', firstToken);
    expect(r.code).toBe(1);
    expect(r.log).toMatch(/cladnet: token: all 1 use\(s\) are taken \(1: web-1; token [0-9a-f]{32}\); make a new token for more hosts \[ETOKENUSEDUP\]/);
  }, 60_000);

  it('an expired token is refused (ETOKENEXPIRED)', async () => {
    const t = await makeToken('short', ['--name', 'web-*', '--ttl', '1s']);
    await sleep(1_500);
    const r = await refused('h4', 'web-3', t.token);
    expect(r.code).toBe(1);
    expect(r.log).toMatch(/cladnet: token: expired at \S+ \(token [0-9a-f]{32}, made \S+\); hosts can no longer join with it: make a new one with cladnet token create \[ETOKENEXPIRED\]/);
  }, 60_000);

  it('a name outside the pattern is refused (ETOKENSCOPE)', async () => {
    const t = await makeToken('scoped', ['--name', 'web-*', '--uses', '3']);
    const r = await refused('h4', 'db-1', t.token);
    expect(r.code).toBe(1);
    expect(r.log).toMatch(/cladnet: token: host name "db-1" is outside the token's name pattern "web-\*" \(token [0-9a-f]{32}\).* \[ETOKENSCOPE\]/);
  }, 60_000);

  it('a revoked token is refused (ETOKENREVOKED)', async () => {
    const t = await makeToken('revoked', ['--name', 'web-*', '--uses', '3']);
    const rev = await tokenCli(['revoke', t.id, '--network-key', networkKeyFile(bed.topo, NET)]);
    expect(rev.stdout).toContain(`revoked token ${t.id}`);
    const r = await refused('h4', 'web-4', t.token);
    expect(r.code).toBe(1);
    expect(r.log).toMatch(/cladnet: token: revoked by the operator at \S+ \(token [0-9a-f]{32}\); hosts can no longer join with it \[ETOKENREVOKED\]/);
  }, 60_000);

  it("the joined host's private key exists only in its own state dir: not in other hosts' dirs, the operator's files or etcd", async () => {
    expect(joined).toBeDefined();
    const own = path.join(joined!.stateDir, 'private.key');
    const b64 = fs.readFileSync(own, 'utf8').trim();
    const raw = Buffer.from(b64, 'base64');
    expect(raw.length).toBe(32);
    const needles = [Buffer.from(b64), raw, Buffer.from(raw.toString('hex')), Buffer.from(raw.toString('base64url'))];
    const found: string[] = [];
    let files = 0;
    const walk = (dir: string) => {
      for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
        const p = path.join(dir, e.name);
        if (p === joined!.stateDir) continue;
        if (e.isDirectory()) walk(p);
        else if (e.isFile()) {
          files++;
          const data = fs.readFileSync(p);
          if (needles.some((n) => data.includes(n))) found.push(p);
        }
      }
    };
    walk(bed.topo.workDir); // every other host's state dir, the operator's network key and ledger, etcd's data dir if there
    const dump = await bed.topo.exec(bed.topo.routerNs, ['etcdctl', `--endpoints=${bed.etcd.endpoint}`, 'get', '--prefix', '/'], {
      env: { ...process.env, ETCDCTL_API: '3' },
      timeoutMs: 10_000,
    });
    const etcdBytes = Buffer.from(dump.stdout);
    expect(etcdBytes.includes(Buffer.from('tokjoin'))).toBe(true); // the dump is real
    const inEtcd = needles.some((n) => etcdBytes.includes(n));
    console.log(`searched ${files} files outside web-1's state dir and ${etcdBytes.length} bytes of etcd for web-1's private key: ${found.length + (inEtcd ? 1 : 0)} hits`);
    expect(files).toBeGreaterThan(5);
    expect(found).toEqual([]);
    expect(inEtcd).toBe(false);
    // The agent is still a member (the check above did not run against a stopped host).
    await waitUntil('web-1 to list h1 up', async () => (await joined!.status()).peers.some((p) => p.name === 'h1' && p.state === 'up'), { timeoutMs: 10_000 });
  }, 60_000);

  it('restarted with no token at all, the joined host comes back on its stored certificate, same key and address', async () => {
    const before = await joined!.status();
    await joined!.stop();
    joined = await bed.start(bed.topo.host('h3'), { name: 'web-1', issueCert: false });
    await bed.waitUp([bed.agent('h1'), bed.agent('h2'), joined], 30_000);
    const after = await joined.status();
    expect([after.self.publicKey, after.self.overlayIp]).toEqual([before.self.publicKey, before.self.overlayIp]);
    const there = await ping(bed.topo, bed.agent('h2').host.ns, after.self.overlayIp, { count: 3 });
    expect(there.received).toBe(3);
  }, 60_000);

  it("a token carries the network spec it was made under: an earlier spec an etcd writer puts back does not reach the host that enrols", async () => {
    const got = await bedEtcdctl(bed, ['get', networkKey(NET), '--print-value-only']);
    expect(got.code, got.stderr).toBe(0);
    const earlier = got.stdout.trim();
    const mtu = (JSON.parse(earlier) as { mtu: number }).mtu === 1360 ? 1340 : 1360;
    const signed = await cli(
      bed.topo,
      bed.topo.routerNs,
      ['network', 'sign', NET, '--network-key', networkKeyFile(bed.topo, NET), '--cidr', bed.cidr, '--mtu', String(mtu), '--rewrite', '--etcd', bed.etcd.endpoint],
      20_000,
    );
    expect(signed.code, signed.stderr).toBe(0);
    const t = await makeToken('app', ['--name', 'app-*', '--uses', '1', '--ttl', '10m']);
    const ed = await loadEd25519();
    const decoded = decodeToken(t.token, ed);
    decoded.secret.fill(0);
    expect(decoded.spec?.mtu).toBe(mtu);
    const put = await bedEtcdctl(bed, ['put', networkKey(NET), earlier]);
    expect(put.code, put.stderr).toBe(0);
    const a = await bed.start(bed.topo.host('h4'), { name: 'app-1', issueCert: false, extraArgs: ['--token-file', tokenFile('app-1', t.token)], readyTimeoutMs: 30_000 });
    const link = JSON.parse((await bed.topo.exec(a.host.ns, ['ip', '-j', 'link', 'show', 'dev', a.iface])).stdout) as { mtu: number }[];
    expect(link[0]!.mtu).toBe(mtu);
    const certFile = JSON.parse(fs.readFileSync(path.join(a.stateDir, 'host.cert'), 'utf8')) as { spec?: { mtu: number } };
    expect(certFile.spec?.mtu).toBe(mtu);
    const log = fs.readFileSync(a.logFile, 'utf8');
    expect(log).toContain("the network spec in etcd is older than the token's");
    expect(log).toMatch(/keeping the last good spec from the certificate file/);
    await a.stop();
  }, 90_000);
});

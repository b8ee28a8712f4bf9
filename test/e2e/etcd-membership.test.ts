import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Etcd3 } from 'etcd3';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { issueCert, signRevocation } from '../../src/control/cert';
import { readNetworkKey } from '../../src/control/credentials';
import { createEtcd } from '../../src/control/etcd';
import { aliveKey, hostKey, leaseKey, revokedKey } from '../../src/control/keys';
import { listLeases } from '../../src/control/leases';
import { createNetworkWithKey, issueHost, revokeHost } from '../../src/control/membership';
import { getNetwork } from '../../src/control/networks';
import { HostCert, HostRecord, NetworkSpec, parseRevocationRecord, serializeHostRecord, serializeRevocationRecord } from '../../src/control/records';
import { PeerSnapshot, Registry } from '../../src/control/registry';
import { loadEd25519, type Ed25519 } from '../../src/crypto/sign';
import { CladnetError } from '../../src/errors';
import { createRootLogger, Logger } from '../../src/log';
import { EtcdHandle, startEtcd, waitFor } from '../helpers/etcd';

/**
 * Membership against a real etcd, below the agent: the operator's create/issue/revoke, and a
 * Registry that checks every record against the network's trust anchor.
 */

const X = (n: number) => Buffer.alloc(32, n).toString('base64');
interface LogLine {
  level: number;
  msg: string;
  [k: string]: unknown;
}

let etcd: EtcdHandle;
let client: Etcd3;
let dir: string;
let keyFile: string;
let spec: NetworkSpec;
let ed: Ed25519;
const toClose: { close(): unknown }[] = [];

function memoryLogger(): { log: Logger; lines: LogLine[] } {
  const lines: LogLine[] = [];
  return { log: createRootLogger('debug', { write: (s: string) => void lines.push(JSON.parse(s) as LogLine) }), lines };
}

function newRegistry(self: string, opts: { cacheFile?: string; selfCert?: HostCert; now?: () => number } = {}) {
  const c = createEtcd({ endpoints: [etcd.endpoint] });
  toClose.push(c);
  const { log, lines } = memoryLogger();
  const reg = new Registry({ client: c, network: spec, self, log, ...opts });
  toClose.unshift(reg);
  const snaps: PeerSnapshot[] = [];
  const names = () => [...(snaps.at(-1)?.keys() ?? [])];
  return { reg, lines, snaps, names, watch: () => reg.watch((p) => void snaps.push(p)) };
}

function record(cert: HostCert | undefined, over: Partial<HostRecord> = {}): HostRecord {
  const base = cert ?? { name: 'x', publicKey: X(1), overlayIp: '100.64.0.200' };
  return {
    version: 1,
    name: base.name,
    network: 'demo',
    overlayIp: base.overlayIp,
    publicKey: base.publicKey,
    endpoints: ['198.18.1.2:51820'],
    hostCidrs: [],
    listenPort: 51820,
    epoch: 1,
    updated: new Date().toISOString(),
    session: '0123456789abcdef',
    ...(cert ? { cert } : {}),
    ...over,
  };
}

async function putHost(r: HostRecord): Promise<void> {
  await client.put(hostKey('demo', r.name)).value(serializeHostRecord(r));
  await client.put(aliveKey('demo', r.name)).value('{}');
}

async function rejection(p: Promise<unknown>): Promise<CladnetError> {
  try {
    await p;
  } catch (e) {
    return e as CladnetError;
  }
  return expect.unreachable('expected a rejection');
}

beforeAll(async () => {
  etcd = await startEtcd();
  client = createEtcd({ endpoints: [etcd.endpoint] });
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cladnet-etcd-membership-'));
  keyFile = path.join(dir, 'demo.netkey');
  ed = await loadEd25519();
  spec = await createNetworkWithKey(client, { name: 'demo', cidr: '100.64.0.0/24' }, keyFile);
});

afterEach(async () => {
  for (const c of toClose.splice(0)) await c.close();
  await client.delete().prefix('/cladnet/v1/networks/demo/');
});

afterAll(async () => {
  client?.close();
  await etcd?.stop();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

describe('network create, host issue, host revoke (operator side)', () => {
  it('create: the anchor goes to etcd, the key to a 0600 file only; an existing file or network is refused', async () => {
    expect(fs.statSync(keyFile).mode & 0o777).toBe(0o600);
    const key = readNetworkKey(keyFile, ed);
    expect((await getNetwork(client, 'demo')).trustAnchor).toBe(key.publicKey);
    const everything = await client.getAll().prefix('/cladnet/').strings();
    expect(JSON.stringify(everything)).not.toContain(Buffer.from(key.secretKey).toString('base64'));

    const again = await rejection(createNetworkWithKey(client, { name: 'other', cidr: '10.9.0.0/16' }, keyFile));
    expect(again.code).toBe('EKEY');
    expect(await client.get('/cladnet/v1/networks/other').string()).toBeNull();
    const dupFile = path.join(dir, 'dup.netkey');
    expect((await rejection(createNetworkWithKey(client, { name: 'demo', cidr: '10.9.0.0/16' }, dupFile))).code).toBe('ENETEXISTS');
    expect(fs.existsSync(dupFile)).toBe(false); // no key left for a network that was not made
  });

  it('issue: same name, same address; refuses a readable key, the wrong key, a bad name', async () => {
    const a1 = await issueHost(client, { network: 'demo', name: 'a', networkKeyFile: keyFile, publicKey: X(1) });
    const a2 = await issueHost(client, { network: 'demo', name: 'a', networkKeyFile: keyFile, publicKey: X(1), validDays: 7 });
    expect(a2.cert.overlayIp).toBe(a1.cert.overlayIp);
    expect(a2.cert.serial).not.toBe(a1.cert.serial);
    expect(Date.parse(a2.cert.notAfter) - Date.parse(a2.cert.issued)).toBe(7 * 86_400_000);
    expect(a1.trustAnchor).toBe(spec.trustAnchor);
    const leases = await listLeases(client, 'demo');
    expect(leases.get(a1.cert.overlayIp)?.record).toMatchObject({ host: 'a', publicKey: X(1) });

    const readable = path.join(dir, 'readable.netkey');
    fs.copyFileSync(keyFile, readable);
    fs.chmodSync(readable, 0o644);
    const r = await rejection(issueHost(client, { network: 'demo', name: 'b', networkKeyFile: readable, publicKey: X(2) }));
    expect([r.code, r.field]).toEqual(['EKEY', 'networkKey']);
    expect(r.message).toMatch(/readable by group or others \(mode 644\)/);

    const wrongFile = path.join(dir, 'wrong.netkey');
    await createNetworkWithKey(client, { name: 'wrong', cidr: '10.20.0.0/16' }, wrongFile);
    const w = await rejection(issueHost(client, { network: 'demo', name: 'b', networkKeyFile: wrongFile, publicKey: X(2) }));
    expect([w.code, w.field]).toEqual(['EKEY', 'networkKey']);
    expect(w.message).toMatch(/is not the key of network demo/);
    await client.delete().key('/cladnet/v1/networks/wrong');

    const n = await rejection(issueHost(client, { network: 'demo', name: 'Bad_Name', networkKeyFile: keyFile, publicKey: X(2) }));
    expect([n.code, n.field]).toEqual(['ECONFIG', 'name']);
    const k = await rejection(issueHost(client, { network: 'demo', name: 'b', networkKeyFile: keyFile, publicKey: 'nope' }));
    expect([k.code, k.field]).toEqual(['ECONFIG', 'publicKey']);
    expect((await listLeases(client, 'demo')).size).toBe(1); // nothing leased for the refusals
  });

  it('revoke: writes a signed revocation and releases the lease; a serial revocation does not replace one', async () => {
    const { cert } = await issueHost(client, { network: 'demo', name: 'c', networkKeyFile: keyFile, publicKey: X(3) });
    const { revocation, released } = await revokeHost(client, { network: 'demo', name: 'c', networkKeyFile: keyFile });
    expect(released).toEqual([cert.overlayIp]);
    expect(await client.get(leaseKey('demo', cert.overlayIp)).string()).toBeNull();
    const stored = parseRevocationRecord((await client.get(revokedKey('demo', 'c')).string())!);
    expect(stored).toEqual({ ok: true, value: revocation });
    expect(revocation.serial).toBeNull();
    const s = await rejection(revokeHost(client, { network: 'demo', name: 'c', networkKeyFile: keyFile, serial: cert.serial }));
    expect([s.code, s.field]).toEqual(['ECONFIG', 'serial']);
  });
});

describe('the commands, as an operator types them', () => {
  const CLI = path.resolve(__dirname, '..', '..', 'dist', 'cli.js');
  const cladnet = (...args: string[]) => {
    const r = spawnSync(process.execPath, [CLI, ...args, '--etcd', etcd.endpoint], { cwd: dir, encoding: 'utf8', timeout: 20_000 });
    return { code: r.status, stdout: r.stdout.trim(), stderr: r.stderr.trim() };
  };

  it('network create writes the key and says where; host issue writes a bundle or a certificate; errors name the field', () => {
    const made = cladnet('network', 'create', 'cli', '--cidr', '100.65.0.0/24');
    expect(made.code, made.stderr).toBe(0);
    expect(made.stdout).toContain('network key written to ./cli.netkey (mode 0600). Keep it offline');
    expect(fs.statSync(path.join(dir, 'cli.netkey')).mode & 0o777).toBe(0o600);
    const again = cladnet('network', 'create', 'cli', '--cidr', '100.65.0.0/24');
    expect([again.code, again.stderr]).toEqual([1, expect.stringMatching(/cli\.netkey already exists; refusing to overwrite a key file \[EKEY\]$/)]);

    const bundle = cladnet('host', 'issue', 'web-1', '--network', 'cli', '--network-key', 'cli.netkey');
    expect(bundle.code, bundle.stderr).toBe(0);
    expect(bundle.stdout).toMatch(/^issued a certificate for web-1 in network cli: overlay 100\.65\.0\.\d+, serial [0-9a-f]{32}, valid until /);
    expect(fs.statSync(path.join(dir, 'web-1', 'private.key')).mode & 0o777).toBe(0o600);
    const certFile = JSON.parse(fs.readFileSync(path.join(dir, 'web-1', 'host.cert'), 'utf8')) as { trustAnchor: string; cert: HostCert };
    expect(certFile.cert.name).toBe('web-1');
    // Issued again into the same directory: the key is kept, the certificate renewed, the address the same.
    const renewed = cladnet('host', 'issue', 'web-1', '--network', 'cli', '--network-key', 'cli.netkey', '--valid-days', '30', '--json');
    const r = JSON.parse(renewed.stdout) as { cert: HostCert; keyCreated: boolean };
    expect([r.keyCreated, r.cert.publicKey, r.cert.overlayIp]).toEqual([false, certFile.cert.publicKey, certFile.cert.overlayIp]);

    const own = cladnet('host', 'issue', 'db-1', '--network', 'cli', '--network-key', 'cli.netkey', '--public-key', X(42), '--out', 'db-1.cert');
    expect(own.code, own.stderr).toBe(0);
    expect(JSON.parse(fs.readFileSync(path.join(dir, 'db-1.cert'), 'utf8')).cert.publicKey).toBe(X(42));

    fs.chmodSync(path.join(dir, 'cli.netkey'), 0o640);
    const readable = cladnet('host', 'issue', 'web-2', '--network', 'cli', '--network-key', 'cli.netkey');
    expect(readable.code).toBe(1);
    expect(readable.stderr).toBe('cladnet: networkKey: cli.netkey is readable by group or others (mode 640); run: chmod 600 cli.netkey [EKEY]');
    expect(fs.existsSync(path.join(dir, 'web-2'))).toBe(false);
    fs.chmodSync(path.join(dir, 'cli.netkey'), 0o600);
    const badName = cladnet('host', 'issue', 'Web_2', '--network', 'cli', '--network-key', 'cli.netkey');
    expect(badName.stderr).toMatch(/^cladnet: name: "Web_2" is not a valid name .*\[ECONFIG\]$/);
    const wrongNet = cladnet('host', 'issue', 'web-2', '--network', 'demo', '--network-key', 'cli.netkey');
    expect(wrongNet.stderr).toMatch(/^cladnet: networkKey: cli\.netkey is not the key of network demo .*\[EKEY\]$/);

    const revoked = cladnet('host', 'revoke', 'web-1', '--network', 'cli', '--network-key', 'cli.netkey');
    expect(revoked.code, revoked.stderr).toBe(0);
    expect(revoked.stdout).toMatch(/^revoked web-1 in network cli \(every certificate issued until .*\); released 100\.65\.0\.\d+$/);
    expect(cladnet('network', 'delete', 'cli').code).toBe(0);
  });
});

describe('Registry with a trust anchor', () => {
  async function member(name: string, publicKey: string) {
    return (await issueHost(client, { network: 'demo', name, networkKeyFile: keyFile, publicKey })).cert;
  }

  it('ignores unsigned records and records signed by another key, warns once and counts them', async () => {
    const me = newRegistry('me');
    await me.watch();
    const good = await member('good', X(1));
    await putHost(record(good));
    await putHost(record(undefined, { name: 'forged', overlayIp: '100.64.0.201', publicKey: X(2) }));
    const attacker = ed.generate();
    const fake = issueCert(ed, attacker.secretKey, { network: 'demo', name: 'evil', publicKey: X(3), overlayIp: '100.64.0.202' });
    await putHost(record(fake));
    await waitFor(() => me.names().includes('good'), 2000, 'the valid host');
    await waitFor(() => me.reg.stats().untrustedRecords === 2, 2000, 'two untrusted records counted');
    // More changes must not repeat the warnings for the same (key, revision).
    await client.put(aliveKey('demo', 'forged')).value('{"again":1}');
    await putHost(record(good, { endpoints: ['198.18.1.9:51820'] }));
    await waitFor(() => me.snaps.at(-1)?.get('good')?.endpoints[0] === '198.18.1.9:51820', 2000, 'updated endpoint');
    expect(me.names()).toEqual(['good']);
    expect(me.reg.stats()).toMatchObject({ invalidRecords: 2, untrustedRecords: 2 });
    const warnings = me.lines.filter((l) => l.msg === 'skipping untrusted host record');
    expect(warnings.map((w) => w['etcdKey']).sort()).toEqual([hostKey('demo', 'evil'), hostKey('demo', 'forged')]);
    expect(warnings.find((w) => w['etcdKey'] === hostKey('demo', 'forged'))!['error']).toBe('cert: missing (the record is not signed by the network key)');
  });

  it("a tampered record claiming another host's address is refused and b keeps its last valid record; restored, it is current again", async () => {
    const me = newRegistry('me');
    await me.watch();
    const b = await member('b', X(4));
    const c = await member('c', X(5));
    await putHost(record(b));
    await putHost(record(c));
    await waitFor(() => me.names().join() === 'b,c', 2000, 'b and c');
    expect(me.reg.etcdView('b')).toEqual({ record: 'present', alive: true });
    await client.put(hostKey('demo', 'b')).value(serializeHostRecord(record(b, { overlayIp: c.overlayIp })));
    await waitFor(() => me.reg.etcdView('b')?.record === 'invalid', 2000, 'b marked invalid in etcd');
    // Membership is the certificate: b stays, with the record it had; c keeps its address.
    expect(me.names().join()).toBe('b,c');
    expect(me.snaps.at(-1)!.get('b')!.overlayIp).toBe(b.overlayIp);
    expect(me.snaps.at(-1)!.get('c')!.overlayIp).toBe(c.overlayIp);
    expect(me.lines.find((l) => l.msg === 'skipping untrusted host record')!['error']).toBe(
      `overlayIp: ${c.overlayIp} differs from the certificate's ${b.overlayIp}`,
    );
    await client.put(hostKey('demo', 'b')).value(serializeHostRecord(record(b, { epoch: 2 })));
    await waitFor(() => me.reg.etcdView('b')?.record === 'present', 2000, 'b current again');
    expect(me.names().join()).toBe('b,c');
  });

  it('a revocation removes the host at once; deleting it from etcd does not bring the host back', async () => {
    const me = newRegistry('me');
    await me.watch();
    const r = await member('r', X(6));
    await putHost(record(r));
    await waitFor(() => me.names().includes('r'), 2000, 'r');
    const t0 = Date.now();
    await revokeHost(client, { network: 'demo', name: 'r', networkKeyFile: keyFile });
    await waitFor(() => !me.names().includes('r'), 2000, 'r revoked');
    const ms = Date.now() - t0;
    console.log(`registry dropped a revoked host ${ms} ms after the revocation was written`);
    expect(me.reg.stats()).toMatchObject({ revocations: 1, revokedHosts: 1, invalidRecords: 0 });

    await client.delete().key(revokedKey('demo', 'r')); // an etcd writer "un-revokes"
    await client.put(aliveKey('demo', 'r')).value('{"poke":1}');
    await new Promise((res) => setTimeout(res, 300));
    expect(me.names()).not.toContain('r');
    expect(me.lines.some((l) => l.msg === 'revocation deleted from etcd; still honouring it')).toBe(true);
  });

  it('ignores a forged revocation with a warning, and a host re-issued after a revocation is a member again', async () => {
    const me = newRegistry('me');
    await me.watch();
    const v = await member('v', X(7));
    await putHost(record(v));
    await waitFor(() => me.names().includes('v'), 2000, 'v');
    const forged = signRevocation(ed, ed.generate().secretKey, { network: 'demo', name: 'v' });
    await client.put(revokedKey('demo', 'v')).value(serializeRevocationRecord(forged));
    await client.put(revokedKey('demo', 'junk')).value('{nope');
    await waitFor(() => me.reg.stats().invalidRevocations === 2, 2000, 'two invalid revocations');
    expect(me.names()).toContain('v');
    expect(me.lines.filter((l) => l.msg === 'ignoring invalid revocation')).toHaveLength(2);

    await revokeHost(client, { network: 'demo', name: 'v', networkKeyFile: keyFile });
    await waitFor(() => !me.names().includes('v'), 2000, 'v revoked');
    await new Promise((res) => setTimeout(res, 5)); // a later millisecond than the revocation
    const again = await member('v', X(7));
    await putHost(record(again));
    await waitFor(() => me.names().includes('v'), 2000, 'v re-issued');
  });

  it('drops every peer when our own certificate is revoked', async () => {
    const mine = await member('me', X(8));
    const me = newRegistry('me', { selfCert: mine });
    await me.watch();
    const p = await member('p', X(9));
    await putHost(record(p));
    await waitFor(() => me.names().includes('p'), 2000, 'p');
    await revokeHost(client, { network: 'demo', name: 'me', networkKeyFile: keyFile });
    await waitFor(() => me.names().length === 0, 2000, 'no peers');
    expect(me.lines.some((l) => l.msg === 'this host is no longer a valid member: dropping every peer')).toBe(true);
  });

  it('drops a host when its certificate expires, without any etcd change', async () => {
    let now = Date.now();
    const me = newRegistry('me', { now: () => now });
    await me.watch();
    const e = issueCert(ed, readNetworkKey(keyFile, ed).secretKey, {
      network: 'demo',
      name: 'e',
      publicKey: X(10),
      overlayIp: '100.64.0.210',
      validDays: 0.4 / 86_400, // 400 ms
    });
    await putHost(record(e));
    await waitFor(() => me.names().includes('e'), 2000, 'e');
    now += 1000; // the registry's clock; the timer fires on the real one
    await waitFor(() => !me.names().includes('e'), 2000, 'e expired');
    expect(me.lines.find((l) => l.msg === 'skipping untrusted host record')!['error']).toMatch(/^cert\.notAfter: expired/);
  });

  it('keeps revocations in the cache file and honours them at the next start', async () => {
    const cacheFile = path.join(dir, 'cache', 'peers.json');
    const first = newRegistry('me', { cacheFile });
    await first.watch();
    const z = await member('z', X(11));
    await putHost(record(z));
    await waitFor(() => first.names().includes('z'), 2000, 'z');
    await revokeHost(client, { network: 'demo', name: 'z', networkKeyFile: keyFile });
    await waitFor(() => !first.names().includes('z'), 2000, 'z revoked');
    await first.reg.close();
    const doc = JSON.parse(fs.readFileSync(cacheFile, 'utf8')) as { revocations: unknown[] };
    expect(doc.revocations).toHaveLength(1);

    await client.delete().key(revokedKey('demo', 'z')); // deleted while the agent was down
    const second = newRegistry('me', { cacheFile });
    await second.watch();
    await client.put(aliveKey('demo', 'z')).value('{"poke":1}');
    await new Promise((res) => setTimeout(res, 300));
    expect(second.names()).not.toContain('z');
    expect(second.reg.stats().revocations).toBe(1);
  });
});

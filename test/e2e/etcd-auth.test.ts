import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Etcd3 } from 'etcd3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createEtcd, type EtcdOptions } from '../../src/control/etcd';
import { hostKey, leaseKey, networkKey, revokedKey, viewKey } from '../../src/control/keys';
import { createNetworkWithKey, issueHost } from '../../src/control/membership';
import { getNetwork } from '../../src/control/networks';
import { HostCert, HostRecord, NetworkSpec } from '../../src/control/records';
import { PeerSnapshot, Registry } from '../../src/control/registry';
import { CladnetError } from '../../src/errors';
import { silentLogger } from '../../src/log';
import { EtcdHandle, freePort, startEtcd, waitFor } from '../helpers/etcd';

/**
 * docs/security.md's etcd RBAC recipe, command for command, against a real etcd: an agent's user
 * can publish its own record and liveness and watch its network, and nothing else. Then etcd over
 * TLS with client certificates, through createEtcd's etcdCa/etcdCert/etcdKey.
 */

const X = (n: number) => Buffer.alloc(32, n).toString('base64');
let dir: string;

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cladnet-etcd-auth-'));
});
afterAll(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

function etcdctl(endpoint: string, args: string[]): string {
  // (each call with --user makes etcd check a bcrypt hash: under a loaded CI run one took more
  // than etcdctl's default 5 s; the recipe is what is tested here, not etcd's speed)
  const r = spawnSync('etcdctl', [`--endpoints=${endpoint}`, '--command-timeout=30s', ...args], {
    encoding: 'utf8',
    env: { ...process.env, ETCDCTL_API: '3' },
    timeout: 40_000,
  });
  if (r.status !== 0) throw new Error(`etcdctl ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

async function rejection(p: PromiseLike<unknown>): Promise<Error> {
  try {
    await p;
  } catch (e) {
    return e as Error;
  }
  return expect.unreachable('expected a rejection');
}

function record(cert: HostCert): HostRecord {
  return {
    version: 1,
    name: cert.name,
    network: cert.network,
    overlayIp: cert.overlayIp,
    publicKey: cert.publicKey,
    endpoints: ['198.18.1.2:51820'],
    hostCidrs: [],
    listenPort: 51820,
    epoch: 0,
    updated: new Date().toISOString(),
    session: '0123456789abcdef',
    cert,
  };
}

describe('etcd RBAC: each agent may write its own keys only', () => {
  let etcd: EtcdHandle;
  const clients: Etcd3[] = [];
  const registries: Registry[] = [];
  const client = (o: Omit<EtcdOptions, 'endpoints'>) => {
    const c = createEtcd({ endpoints: [etcd.endpoint], dialTimeoutMs: 3000, ...o });
    clients.push(c);
    return c;
  };

  beforeAll(async () => {
    etcd = await startEtcd();
  });
  afterAll(async () => {
    for (const r of registries) await r.close();
    for (const c of clients) c.close();
    await etcd?.stop();
  });

  it('follows the recipe in docs/security.md', async () => {
    const e = (...args: string[]) => etcdctl(etcd.endpoint, args);
    const root = (...args: string[]) => e('--user=root:rootpw', ...args);
    // Once per cluster: root, the operator, auth on.
    e('user', 'add', 'root', '--new-user-password=rootpw');
    e('user', 'grant-role', 'root', 'root');
    e('role', 'add', 'cladnet-operator');
    e('role', 'grant-permission', 'cladnet-operator', '--prefix=true', 'readwrite', '/cladnet/');
    e('user', 'add', 'operator', '--new-user-password=oppw');
    e('user', 'grant-role', 'operator', 'cladnet-operator');
    e('auth', 'enable');
    // Per host (network prod; hosts web-1 and web-2).
    for (const h of ['web-1', 'web-2']) {
      const role = `cladnet-prod-${h}`;
      root('role', 'add', role);
      root('role', 'grant-permission', role, 'read', '/cladnet/v1/networks/prod');
      root('role', 'grant-permission', role, '--prefix=true', 'read', '/cladnet/v1/networks/prod/');
      root('role', 'grant-permission', role, 'readwrite', `/cladnet/v1/networks/prod/hosts/${h}`);
      root('role', 'grant-permission', role, 'readwrite', `/cladnet/v1/networks/prod/alive/${h}`);
      root('role', 'grant-permission', role, 'readwrite', `/cladnet/v1/views/prod/${h}`);
      root('user', 'add', `host-prod-${h}`, `--new-user-password=${h}-pw`);
      root('user', 'grant-role', `host-prod-${h}`, role);
    }
    // The dashboard (`cladnet dashboard`): read only.
    root('role', 'add', 'cladnet-prod-dashboard');
    root('role', 'grant-permission', 'cladnet-prod-dashboard', 'read', '/cladnet/v1/networks/prod');
    root('role', 'grant-permission', 'cladnet-prod-dashboard', '--prefix=true', 'read', '/cladnet/v1/networks/prod/');
    root('role', 'grant-permission', 'cladnet-prod-dashboard', '--prefix=true', 'read', '/cladnet/v1/views/prod/');
    root('user', 'add', 'dashboard-prod', '--new-user-password=dash-pw');
    root('user', 'grant-role', 'dashboard-prod', 'cladnet-prod-dashboard');

    // The operator creates the network and issues both hosts (password from a file, as documented).
    const pwFile = path.join(dir, 'operator.pw');
    fs.writeFileSync(pwFile, 'oppw\n', { mode: 0o600 });
    const operator = client({ auth: { username: 'operator', passwordFile: pwFile } });
    const keyFile = path.join(dir, 'prod.netkey');
    const spec: NetworkSpec = await createNetworkWithKey(operator, { name: 'prod', cidr: '100.64.0.0/24' }, keyFile);
    const c1 = (await issueHost(operator, { network: 'prod', name: 'web-1', networkKeyFile: keyFile, publicKey: X(1) })).cert;
    const c2 = (await issueHost(operator, { network: 'prod', name: 'web-2', networkKeyFile: keyFile, publicKey: X(2) })).cert;

    // Each agent does everything the agent does with its own user: read the spec, publish, liveness, watch.
    const agent = (name: string, cert: HostCert) => {
      const c = client({ auth: { username: `host-prod-${name}`, password: `${name}-pw` } });
      const reg = new Registry({ client: c, network: spec, self: name, log: silentLogger, selfCert: cert });
      registries.push(reg);
      const snaps: PeerSnapshot[] = [];
      return { c, reg, snaps };
    };
    const w1 = agent('web-1', c1);
    const w2 = agent('web-2', c2);
    expect((await getNetwork(w1.c, 'prod')).trustAnchor).toBe(spec.trustAnchor);
    for (const [w, cert] of [[w1, c1], [w2, c2]] as const) {
      expect(await w.reg.watch((p) => void w.snaps.push(p))).toBe('etcd');
      expect((await w.reg.publish(record(cert))).written).toBe(true);
      await w.reg.startAlive();
    }
    await waitFor(() => w1.snaps.at(-1)?.has('web-2') && w2.snaps.at(-1)?.has('web-1'), 3000, 'web-1 and web-2 see each other');

    // Each host writes its own view on its liveness lease; the dashboard's user reads them all.
    const viewOf = (host: string, peer: string) =>
      JSON.stringify({ version: 1, host, network: 'prod', at: new Date().toISOString(), reflexive: null, nat: 'unknown', peers: { [peer]: { state: 'up', path: 'public', rttMs: 1 } } });
    w1.reg.publishView(viewOf('web-1', 'web-2'));
    w2.reg.publishView(viewOf('web-2', 'web-1'));
    const dash = new Registry({ client: client({ auth: { username: 'dashboard-prod', password: 'dash-pw' } }), network: spec, observer: true, log: silentLogger });
    registries.push(dash);
    expect(await dash.watch(() => undefined)).toBe('etcd');
    await waitFor(() => dash.views().size === 2 && dash.peers().size === 2, 3000, 'the dashboard sees both hosts and their views');
    const dc = client({ auth: { username: 'dashboard-prod', password: 'dash-pw' } });
    const dashDenied = await rejection(dc.put(viewKey('prod', 'web-1')).value('{}').exec());
    expect(dashDenied.message).toMatch(/permission denied/i);

    // ...and nothing else: no other host's record, no revocation, no lease, no network spec.
    const denied = async (what: string, p: PromiseLike<unknown>) => {
      const err = await rejection(p);
      expect(err.message, what).toMatch(/permission denied/i);
    };
    await denied("web-1 writes web-2's record", w1.c.put(hostKey('prod', 'web-2')).value('{}').exec());
    await denied('web-1 writes a revocation', w1.c.put(revokedKey('prod', 'web-2')).value('{}').exec());
    await denied("web-1 writes web-2's view", w1.c.put(viewKey('prod', 'web-2')).value('{}').exec());
    await denied("web-1 reads web-2's view", w1.c.get(viewKey('prod', 'web-2')).exec());
    await denied('web-1 writes a lease', w1.c.put(leaseKey('prod', '100.64.0.9')).value('{}').exec());
    await denied('web-1 rewrites the network spec', w1.c.put(networkKey('prod')).value('{}').exec());
    await denied('web-1 deletes the network', w1.c.delete().prefix('/cladnet/v1/networks/prod').exec());
    await denied('web-1 reads another network', w1.c.get('/cladnet/v1/networks/other').exec());
    // Stopping works: the liveness lease is revoked with the host's own rights.
    await w1.reg.stopAlive();
    await waitFor(() => w2.reg.etcdView('web-1')?.alive === false, 3000, "web-2 sees web-1's alive key go");
    await waitFor(() => !dash.views().has('web-1') && dash.views().has('web-2'), 3000, "web-1's view goes with its lease");

    // No user: no access at all. A wrong password: refused.
    await rejection(client({}).get(networkKey('prod')).exec());
    const wrong = await rejection(client({ auth: { username: 'host-prod-web-1', password: 'nope' } }).get(networkKey('prod')).exec());
    expect(wrong.message).toMatch(/authentication failed|invalid/i);
  });
});

describe('etcd over TLS with client certificates', () => {
  let proc: ChildProcess | undefined;
  let endpoint = '';
  const pki = () => path.join(dir, 'pki');

  function openssl(...args: string[]): void {
    const r = spawnSync('openssl', args, { cwd: pki(), encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`openssl ${args.join(' ')}: ${r.stderr}`);
  }

  function issue(name: string, cn: string, ext: string): void {
    openssl('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${cn}`);
    fs.writeFileSync(path.join(pki(), `${name}.ext`), ext);
    openssl('x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-days', '2', '-out', `${name}.pem`, '-extfile', `${name}.ext`);
  }

  beforeAll(async () => {
    fs.mkdirSync(pki());
    openssl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=cladnet-test-ca');
    issue('server', 'etcd', 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n');
    issue('client', 'host-prod-web-1', 'extendedKeyUsage=clientAuth\n');
    const [port, peer] = [await freePort(), await freePort()];
    endpoint = `https://127.0.0.1:${port}`;
    const p = (f: string) => path.join(pki(), f);
    proc = spawn(
      'etcd',
      [
        `--data-dir=${path.join(dir, 'tls-data')}`,
        `--listen-client-urls=${endpoint}`,
        `--advertise-client-urls=${endpoint}`,
        `--listen-peer-urls=http://127.0.0.1:${peer}`,
        `--initial-advertise-peer-urls=http://127.0.0.1:${peer}`,
        `--initial-cluster=default=http://127.0.0.1:${peer}`,
        `--cert-file=${p('server.pem')}`,
        `--key-file=${p('server.key')}`,
        `--trusted-ca-file=${p('ca.pem')}`,
        '--client-cert-auth',
      ],
      { stdio: 'ignore' },
    );
    await waitFor(
      () => spawnSync('etcdctl', [`--endpoints=${endpoint}`, `--cacert=${p('ca.pem')}`, `--cert=${p('client.pem')}`, `--key=${p('client.key')}`, 'endpoint', 'health'], { timeout: 3000 }).status === 0,
      15_000,
      'etcd with TLS to serve',
    );
  });
  afterAll(async () => {
    if (proc && proc.exitCode === null) {
      const gone = new Promise((r) => proc!.once('exit', r));
      proc.kill('SIGTERM');
      await gone;
    }
  });

  it('connects with etcdCa + etcdCert + etcdKey; without a client certificate or with another CA it cannot', async () => {
    const p = (f: string) => path.join(pki(), f);
    const ok = createEtcd({ endpoints: [endpoint], tls: { ca: p('ca.pem'), cert: p('client.pem'), key: p('client.key') } });
    try {
      const keyFile = path.join(dir, 'tls.netkey');
      const spec = await createNetworkWithKey(ok, { name: 'tls', cidr: '100.64.0.0/24' }, keyFile);
      expect((await getNetwork(ok, 'tls')).trustAnchor).toBe(spec.trustAnchor);
    } finally {
      ok.close();
    }
    const noCert = createEtcd({ endpoints: [endpoint], dialTimeoutMs: 2000, tls: { ca: p('ca.pem') } });
    const e1 = await rejection(noCert.get(networkKey('tls')).exec());
    noCert.close();
    expect(e1).toBeDefined();
    const untrusted = createEtcd({ endpoints: [endpoint], dialTimeoutMs: 2000, tls: { ca: p('client.pem'), cert: p('client.pem'), key: p('client.key') } });
    const e2 = await rejection(untrusted.get(networkKey('tls')).exec());
    untrusted.close();
    expect(e2).toBeDefined();
    // A missing file is named before any connection is tried.
    const missing = (() => {
      try {
        createEtcd({ endpoints: [endpoint], tls: { ca: p('nope.pem') } });
      } catch (e) {
        return e as CladnetError;
      }
      return null;
    })();
    expect([missing?.code, missing?.field]).toEqual(['ECONFIG', 'etcdCa']);
  });
});

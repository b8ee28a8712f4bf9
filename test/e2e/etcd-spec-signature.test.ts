/**
 * The network spec in etcd is signed by the network key: an etcd writer who rewrites cidr, mtu or
 * port gets a refusal from the agent (the real `cladnet agent`, which stops before it touches the
 * host when it has no good spec of its own to run on) and from the operator's `host issue`; an old unsigned spec is refused with the command
 * that signs it, and `cladnet network sign` (the real CLI) signs only values the operator states.
 * Real etcd on loopback; dist/ must be built.
 */
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Etcd3 } from 'etcd3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chooseNetworkSpec, loadMembership } from '../../src/agent/membership';
import { TrustAnchor } from '../../src/control/cert';
import { createEtcd } from '../../src/control/etcd';
import { networkKey } from '../../src/control/keys';
import { createNetworkWithKey, issueHost, signNetwork } from '../../src/control/membership';
import { getNetwork } from '../../src/control/networks';
import { serializeNetworkSpec, type NetworkSpec } from '../../src/control/records';
import { issueHostFiles } from '../../src/cli/host-issue';
import { loadEd25519 } from '../../src/crypto/sign';
import { CladnetError } from '../../src/errors';
import { silentLogger } from '../../src/log';
import { run, runSync } from '../../src/testbed/run';
import { EtcdHandle, freePort, startEtcd } from '../helpers/etcd';

const CLI = path.resolve(__dirname, '..', '..', 'dist', 'cli.js');
const tag = randomBytes(3).toString('hex');
const IFNAME = `csig${tag}`; // only created if a refusal failed to happen; removed in afterAll

let etcd: EtcdHandle;
let client: Etcd3;
let dir: string;

async function rejection(p: Promise<unknown>): Promise<CladnetError> {
  try {
    await p;
  } catch (e) {
    return e as CladnetError;
  }
  return expect.unreachable('expected a rejection');
}

/** A fresh signed network and a host's certificate bundle in it. */
async function network(name: string): Promise<{ spec: NetworkSpec; keyFile: string; stateDir: string }> {
  const keyFile = path.join(dir, `${name}.netkey`);
  const spec = await createNetworkWithKey(client, { name, cidr: '100.64.20.0/24', mtu: 1400, port: 51900 }, keyFile);
  const stateDir = path.join(dir, `${name}-h1`);
  await issueHostFiles(client, { name: 'h1', network: name, networkKeyFile: keyFile, out: stateDir });
  return { spec, keyFile, stateDir };
}

/**
 * The certificate file as `host issue` wrote it before files carried the network spec: a host with
 * such a file and no saved state has nothing to hold etcd's spec against.
 */
function withoutSpec(stateDir: string): void {
  const file = path.join(stateDir, 'host.cert');
  const doc = JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>;
  expect(doc['spec']).toBeDefined();
  delete doc['spec'];
  fs.writeFileSync(file, JSON.stringify(doc));
}

/** The membership the agent loads from h1's state dir (its certificate file). */
async function membershipOf(net: string, stateDir: string) {
  const file = path.join(stateDir, 'host.cert');
  return loadMembership({ cert: file, network: net, name: 'h1' }, JSON.parse(fs.readFileSync(file, 'utf8')).cert.publicKey, silentLogger);
}

/** What an etcd writer without the network key can do: put any JSON at the spec's key. */
async function overwrite(spec: NetworkSpec, change: Record<string, unknown>, drop: string[] = []): Promise<void> {
  const o = { ...(JSON.parse(serializeNetworkSpec(spec)) as Record<string, unknown>), ...change };
  for (const f of drop) delete o[f];
  await client.put(networkKey(spec.name)).value(JSON.stringify(o));
}

/** `cladnet agent` for host h1 of `net`; resolves with its exit code and stderr (killed after 20 s). */
async function agent(net: string, stateDir: string): Promise<{ code: number; stderr: string }> {
  const port = await freePort();
  const r = await run(
    [process.execPath, CLI, 'agent', '--etcd', etcd.endpoint, '--network', net, '--name', 'h1', '--state-dir', stateDir,
      '--interface', IFNAME, '--listen-port', String(port), '--socket', path.join(stateDir, 'cladnet.sock'), '--log-level', 'error'],
    { timeoutMs: 20_000 },
  );
  return { code: r.code, stderr: r.stderr };
}

beforeAll(async () => {
  expect(fs.existsSync(CLI), `${CLI} missing: run npm run build first`).toBe(true);
  etcd = await startEtcd();
  client = createEtcd({ endpoints: [etcd.endpoint] });
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cladnet-spec-sig-'));
});

afterAll(async () => {
  client?.close();
  await etcd?.stop();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
  runSync(['ip', 'link', 'del', IFNAME]); // present only if an agent got past its checks
});

describe('signed network spec against a real etcd', () => {
  it('network create signs the spec: it verifies against the anchor the host certificate pins', async () => {
    const { spec, stateDir } = await network(`sig-ok-${tag}`);
    const stored = await getNetwork(client, spec.name);
    expect(stored.signature).toBe(spec.signature);
    const m = await membershipOf(spec.name, stateDir);
    expect(m.anchor.verifySpec(stored)).toBeNull();
    expect(m.spec).toEqual(stored); // host issue put the spec it verified into the certificate file
    expect(chooseNetworkSpec(stored, null, m, silentLogger)).toBe(stored);
  });

  it.each([
    ['cidr', { cidr: '100.64.21.0/24' }],
    ['mtu', { mtu: 9000 }],
    ['port', { port: 4000 }],
  ] as const)('a rewritten %s is refused by the agent and by host issue; the last good saved spec is kept', async (field, change) => {
    const net = `sig-${field}-${tag}`;
    const { spec, keyFile, stateDir } = await network(net);
    await overwrite(spec, change);
    const tampered = await getNetwork(client, net);
    expect(tampered[field]).toBe(change[field as keyof typeof change]);

    // A new host whose certificate file carries the spec runs on that one, not on etcd's.
    expect(chooseNetworkSpec(tampered, null, await membershipOf(net, stateDir), silentLogger)).toEqual(spec);
    // One whose file does not (issued before files carried it) has nothing to fall back on: it stops.
    withoutSpec(stateDir);
    const a = await agent(net, stateDir);
    expect(a.code).toBe(1);
    expect(a.stderr).toMatch(/the spec does not verify against the trust anchor .* signature: .*\[EKEY\]/s);

    const e = await rejection(issueHost(client, { network: net, name: 'h2', networkKeyFile: keyFile, publicKey: Buffer.alloc(32, 7).toString('base64') }));
    expect([e.code, e.message]).toEqual(['EKEY', expect.stringMatching(/does not verify/)]);

    // An agent that ran before the rewrite has the good spec in its saved state and keeps it.
    const anchor = new TrustAnchor(await loadEd25519(), net, spec.trustAnchor!);
    const cert = JSON.parse(fs.readFileSync(path.join(stateDir, 'host.cert'), 'utf8')).cert;
    expect(chooseNetworkSpec(tampered, spec, { cert, anchor, file: 'host.cert', spec: null }, silentLogger)).toBe(spec);
  });

  it('an unsigned spec is refused with the command to sign it; network sign signs only stated values', async () => {
    const net = `sig-old-${tag}`;
    const { spec, keyFile, stateDir } = await network(net);
    await overwrite(spec, {}, ['signature']); // as `network create` wrote it before specs were signed
    withoutSpec(stateDir); // and host issue wrote certificate files then

    const a = await agent(net, stateDir);
    expect(a.code).toBe(1);
    expect(a.stderr).toContain(`cladnet network sign ${net} --network-key NET.netkey --cidr 100.64.20.0/24 --mtu 1400 --port 51900`);

    // The operator states other values than etcd holds: refused, naming both.
    const wrong = await run([process.execPath, CLI, 'network', 'sign', net, '--network-key', keyFile, '--cidr', '100.64.20.0/24', '--mtu', '1420', '--port', '51900', '--etcd', etcd.endpoint]);
    expect(wrong.code).toBe(1);
    expect(wrong.stderr).toContain('mtu: etcd has 1400, you said 1420');
    expect((await getNetwork(client, net)).signature).toBeUndefined();

    const ok = await run([process.execPath, CLI, 'network', 'sign', net, '--network-key', keyFile, '--cidr', '100.64.20.0/24', '--mtu', '1400', '--port', '51900', '--etcd', etcd.endpoint]);
    expect([ok.code, ok.stderr]).toEqual([0, '']);
    const signed = await getNetwork(client, net);
    expect(new TrustAnchor(await loadEd25519(), net, spec.trustAnchor!).verifySpec(signed)).toBeNull();
    expect(await issueHost(client, { network: net, name: 'h2', networkKeyFile: keyFile, publicKey: Buffer.alloc(32, 8).toString('base64') })).toBeTruthy();
  });

  it('network sign --rewrite restores the operator\'s values over an etcd writer\'s', async () => {
    const net = `sig-rw-${tag}`;
    const { spec, keyFile } = await network(net);
    await overwrite(spec, { port: 4000 });
    const e = await rejection(signNetwork(client, { network: net, networkKeyFile: keyFile, cidr: '100.64.20.0/24', mtu: 1400, port: 51900 }));
    expect([e.code, e.field]).toEqual(['ECONFIG', 'port']);
    const r = await signNetwork(client, { network: net, networkKeyFile: keyFile, cidr: '100.64.20.0/24', mtu: 1400, port: 51900, rewrite: true });
    expect(r.rewritten).toEqual(['port']);
    const back = await getNetwork(client, net);
    expect([back.port, back.created, back.trustAnchor]).toEqual([51900, spec.created, spec.trustAnchor]);
    expect(new TrustAnchor(await loadEd25519(), net, spec.trustAnchor!).verifySpec(back)).toBeNull();
  });
});

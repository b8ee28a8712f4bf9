import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkNetworkMembership, loadMembership } from '../../src/agent/membership';
import { loadOrCreateKeyPair } from '../../src/agent/keystore';
import { AGENT_FIELDS, kebab, loadAgentConfig } from '../../src/config/config';
import { issueCert, signNetworkSpec } from '../../src/control/cert';
import { parseCertFile, readCertFile, readNetworkKey, writeCertFile, writeNetworkKey } from '../../src/control/credentials';
import { etcdOptionsFrom, securityOptions } from '../../src/control/etcd';
import type { HostCert, NetworkSpec } from '../../src/control/records';
import { CladnetError, isCladnetError } from '../../src/errors';
import { silentLogger } from '../../src/log';
import { loadEd25519, type Ed25519, type SigningKeyPair } from '../../src/crypto/sign';

/** Key and certificate files, the agent's start-up checks, and the new config settings. */

let dir: string;
let n = 0;
let ed: Ed25519;
let net: SigningKeyPair;
const b64 = (u: Uint8Array) => Buffer.from(u).toString('base64');
const fresh = () => path.join(dir, `f${n++}`);

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cladnet-membership-'));
  ed = await loadEd25519();
  net = ed.generate();
});
afterAll(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

function thrown(fn: () => unknown): CladnetError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(CladnetError);
    return e as CladnetError;
  }
  return expect.unreachable('expected a CladnetError');
}

async function rejected(p: Promise<unknown>): Promise<CladnetError> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(CladnetError);
    return e as CladnetError;
  }
  return expect.unreachable('expected a CladnetError');
}

describe('network key file', () => {
  it('is written 0600, read back, and never overwritten', () => {
    const f = fresh();
    writeNetworkKey(f, 'demo', net);
    expect(fs.statSync(f).mode & 0o777).toBe(0o600);
    const k = readNetworkKey(f, ed);
    expect(k).toMatchObject({ network: 'demo', publicKey: b64(net.publicKey) });
    expect(b64(k.secretKey)).toBe(b64(net.secretKey));
    const err = thrown(() => writeNetworkKey(f, 'demo', ed.generate()));
    expect(err.code).toBe('EKEY');
    expect(err.message).toMatch(/already exists; refusing to overwrite/);
    expect(b64(readNetworkKey(f, ed).secretKey)).toBe(b64(net.secretKey));
  });

  it('is refused when group or others can read it, or when it is not a key', () => {
    const f = fresh();
    writeNetworkKey(f, 'demo', net);
    fs.chmodSync(f, 0o640);
    const err = thrown(() => readNetworkKey(f, ed));
    expect([err.code, err.field]).toEqual(['EKEY', 'networkKey']);
    expect(err.message).toMatch(/readable by group or others \(mode 640\); run: chmod 600/);

    const g = fresh();
    fs.writeFileSync(g, 'not json', { mode: 0o600 });
    expect(thrown(() => readNetworkKey(g, ed)).message).toMatch(/not a cladnet network key/);
    const other = ed.generate();
    const h = fresh();
    fs.writeFileSync(h, JSON.stringify({ version: 1, network: 'demo', publicKey: b64(other.publicKey), secretKey: b64(net.secretKey) }), { mode: 0o600 });
    expect(thrown(() => readNetworkKey(h, ed)).message).toMatch(/secretKey does not belong to publicKey/);
    expect(thrown(() => readNetworkKey(path.join(dir, 'absent'), ed)).message).toMatch(/cannot read/);
  });
});

describe('certificate file', () => {
  it('round-trips and names the bad field', () => {
    const cert = issueCert(ed, net.secretKey, { network: 'demo', name: 'a', publicKey: b64(new Uint8Array(32).fill(1)), overlayIp: '100.64.0.5' });
    const f = fresh();
    writeCertFile(f, { trustAnchor: b64(net.publicKey), cert });
    expect(readCertFile(f)).toEqual({ trustAnchor: b64(net.publicKey), cert });
    expect(thrown(() => parseCertFile('{"version":1,"trustAnchor":"x"}', 'F')).message).toBe('cert: F: trustAnchor is not base64 of a 32-byte key');
    expect(thrown(() => parseCertFile(JSON.stringify({ version: 1, trustAnchor: b64(net.publicKey), cert: { ...cert, serial: 'x' } }), 'F')).message).toBe(
      'cert: F: cert.serial: "x" is not 32 lowercase hex digits',
    );
    expect(thrown(() => readCertFile(path.join(dir, 'none'))).message).toMatch(/does not exist; issue one with: cladnet host issue/);
  });

  it('carries the network spec the issuer verified; a garbled one is refused naming spec and its field', () => {
    const cert = issueCert(ed, net.secretKey, { network: 'demo', name: 'a', publicKey: b64(new Uint8Array(32).fill(1)), overlayIp: '100.64.0.5' });
    const trustAnchor = b64(net.publicKey);
    const unsigned = { version: 1 as const, name: 'demo', cidr: '100.64.0.0/24', mtu: 1380, port: 51820, created: '2026-12-05T00:00:00.000Z', trustAnchor, serial: 9 };
    const spec = signNetworkSpec(ed, net.secretKey, unsigned);
    const f = fresh();
    writeCertFile(f, { trustAnchor, cert, spec });
    expect(readCertFile(f)).toEqual({ trustAnchor, cert, spec });
    expect(JSON.parse(fs.readFileSync(f, 'utf8')).spec.serial).toBe(9);
    const doc = (s: unknown) => JSON.stringify({ version: 1, trustAnchor, cert, spec: s });
    expect(thrown(() => parseCertFile(doc({ ...spec, mtu: 'big' }), 'F')).message).toMatch(/^cert: F: spec\.mtu: /);
    expect(thrown(() => parseCertFile(doc({ ...spec, name: 'other' }), 'F')).message).toMatch(/^cert: F: spec\.name: /);
    expect(thrown(() => parseCertFile(doc('x'), 'F')).message).toMatch(/^cert: F: spec\./);
  });
});

describe('the agent at start (loadMembership, checkNetworkMembership)', () => {
  let stateDir: string;
  let publicKey: string;
  let spec: NetworkSpec;

  beforeAll(async () => {
    stateDir = fresh();
    const { keys } = await loadOrCreateKeyPair(stateDir);
    publicKey = b64(keys.publicKey);
    const unsigned = { version: 1 as const, name: 'demo', cidr: '100.64.0.0/24', mtu: 1420, port: 51820, created: '2026-11-21T00:00:00Z', trustAnchor: b64(net.publicKey) };
    spec = signNetworkSpec(ed, net.secretKey, unsigned);
  });

  function certFile(over: Partial<Parameters<typeof issueCert>[2]> = {}, key = net.secretKey, anchor = b64(net.publicKey)): string {
    const cert: HostCert = issueCert(ed, key, { network: 'demo', name: 'a', publicKey, overlayIp: '100.64.0.5', ...over });
    const f = fresh();
    writeCertFile(f, { trustAnchor: anchor, cert });
    return f;
  }
  const load = (file: string, name = 'a', network = 'demo') => loadMembership({ cert: file, name, network }, publicKey, silentLogger);

  it('accepts a certificate for this network, name and key, and pins its anchor', async () => {
    const m = await load(certFile());
    expect(m.spec).toBeNull(); // a file without a spec (written before it existed)
    expect(m.cert.overlayIp).toBe('100.64.0.5');
    expect(m.anchor.publicKey).toBe(b64(net.publicKey));
    expect(() => checkNetworkMembership(spec, m)).not.toThrow();
  });

  it('refuses a missing file, telling the operator the command and this host\'s public key', async () => {
    const err = await rejected(load(path.join(stateDir, 'host.cert')));
    expect(err.code).toBe('EKEY');
    expect(err.message).toContain('does not exist');
    expect(err.message).toContain(`--public-key ${publicKey}`);
  });

  it('refuses a certificate for another network, another name, another key; forged, expired', async () => {
    expect((await rejected(load(certFile({ network: 'prod' }), 'a', 'demo'))).message).toMatch(/is for network prod, not demo/);
    const other = await rejected(load(certFile(), 'b'));
    expect([other.code, other.message]).toEqual(['ECONFIG', expect.stringMatching(/is for host "a", but this agent's name is "b"/)]);
    const key = await rejected(load(certFile({ publicKey: b64(new Uint8Array(32).fill(3)) })));
    expect([key.code, key.message]).toEqual(['EKEY', expect.stringMatching(/certifies public key .* but this host's key/)]);
    // Signed by a key other than the anchor in the file (someone edited the file's anchor or certificate).
    const forged = await rejected(load(certFile({}, ed.generate().secretKey)));
    expect([forged.code, forged.message]).toEqual(['EKEY', expect.stringMatching(/cert\.signature: not signed by this network's key/)]);
    const expired = await rejected(load(certFile({ now: new Date(Date.now() - 3 * 86_400_000), validDays: 1 })));
    expect(expired.message).toMatch(/cert\.notAfter: expired/);
  });

  it("refuses a network whose anchor in etcd is not the pinned one, or that has none", async () => {
    const m = await load(certFile());
    const swapped = thrown(() => checkNetworkMembership({ ...spec, trustAnchor: b64(ed.generate().publicKey) }, m));
    expect([swapped.code, swapped.message]).toEqual(['EKEY', expect.stringMatching(/trust anchor in etcd .* is not the one in/)]);
    const { trustAnchor: _, ...bare } = spec;
    expect(thrown(() => checkNetworkMembership(bare, m)).message).toMatch(/has no trust anchor/);
    const outside = await load(certFile({ overlayIp: '100.64.1.5' }));
    expect(thrown(() => checkNetworkMembership(spec, outside)).message).toMatch(/outside the network CIDR/);
  });
});

describe('config: cert and etcd security settings', () => {
  const NET = { network: 'demo', name: 'h' };

  it('cert defaults to <stateDir>/host.cert and follows flag > env > file', () => {
    expect(loadAgentConfig({ flags: { ...NET, stateDir: '/srv/c' } }).cert).toBe('/srv/c/host.cert');
    expect(loadAgentConfig({ flags: NET, env: { CLADNET_CERT: '/e/h.cert' } }).cert).toBe('/e/h.cert');
    expect(loadAgentConfig({ flags: { ...NET, cert: '/f/h.cert' }, env: { CLADNET_CERT: '/e/h.cert' } }).cert).toBe('/f/h.cert');
  });

  it('etcd TLS and auth settings are optional, read from flags and env, and checked together', () => {
    const c = loadAgentConfig({
      flags: { ...NET, etcdCa: '/ca.pem', etcdCert: '/c.pem', etcdKey: '/k.pem' },
      env: { CLADNET_ETCD_USER: 'host-h', CLADNET_ETCD_PASSWORD_FILE: '/pw' },
    });
    expect(c).toMatchObject({ etcdCa: '/ca.pem', etcdCert: '/c.pem', etcdKey: '/k.pem', etcdUser: 'host-h', etcdPasswordFile: '/pw' });
    expect('etcdCa' in loadAgentConfig({ flags: NET })).toBe(false);
    const bad: [Record<string, string>, string][] = [
      [{ etcdCert: '/c.pem' }, 'etcdKey'],
      [{ etcdKey: '/k.pem' }, 'etcdCert'],
      [{ etcdUser: 'u' }, 'etcdPassword'],
      [{ etcdPassword: 'p' }, 'etcdUser'],
      [{ etcdUser: 'u', etcdPassword: 'p', etcdPasswordFile: '/pw' }, 'etcdPassword'],
    ];
    for (const [flags, field] of bad) {
      const err = thrown(() => loadAgentConfig({ flags: { ...NET, ...flags } }));
      expect([err.code, err.field], JSON.stringify(flags)).toEqual(['ECONFIG', field]);
    }
  });

  it('etcd options: files are read into etcd3 credentials, the password file loses its newline', () => {
    const ca = fresh();
    const pw = fresh();
    fs.writeFileSync(ca, 'CA PEM');
    fs.writeFileSync(pw, 's3cret\n');
    const o = securityOptions(etcdOptionsFrom({ etcd: ['https://e:2379'], etcdCa: ca, etcdUser: 'host-h', etcdPasswordFile: pw }));
    expect(o.credentials!.rootCertificate.toString()).toBe('CA PEM');
    expect(o.credentials!.privateKey).toBeUndefined();
    expect(o.auth).toEqual({ username: 'host-h', password: 's3cret' });
    expect(securityOptions(etcdOptionsFrom({ etcd: ['http://e:2379'] }))).toEqual({});
    const missing = thrown(() => securityOptions(etcdOptionsFrom({ etcd: ['https://e'], etcdCa: path.join(dir, 'nope') })));
    expect([missing.code, missing.field]).toEqual(['ECONFIG', 'etcdCa']);
    expect(isCladnetError(thrown(() => securityOptions({ auth: { username: 'u' } })), 'ECONFIG')).toBe(true);
  });
});

describe('every agent setting is documented', () => {
  it('in the README table and in docs/config.example.json', () => {
    const root = path.resolve(__dirname, '..', '..');
    const readme = fs.readFileSync(path.join(root, 'README.md'), 'utf8');
    const example = fs.readFileSync(path.join(root, 'docs', 'config.example.json'), 'utf8');
    for (const f of AGENT_FIELDS) {
      expect(readme, `README row for ${f.flag}`).toMatch(new RegExp(`^\\| [^|]*\\b${f.flag}\\b[^|]*\\| [^|]*\`--${kebab(f.flag)}\``, 'm'));
      expect(readme, `README env for ${f.flag}`).toContain(`\`${f.env}\``);
      expect(example, `config.example.json "${f.flag}"`).toContain(`"${f.flag}":`);
    }
  });
});

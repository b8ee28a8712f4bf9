import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  agentTakesToken,
  buildUserData,
  cloudInitCommand,
  CLOUD_CONFIG_KEYS,
  NODESOURCE_FINGERPRINT,
  planCloudInit,
  unitExec,
  VM_PATHS,
  type CloudInitFlags,
} from '../../src/cli/cloud-init';
import { serializeCertFile } from '../../src/control/credentials';
import { isCladnetError } from '../../src/errors';
import { toYaml } from '../../src/util/yaml';
import { trustFixture } from '../helpers/trust';

/**
 * `cladnet cloud-init`: what the user data holds, that cloud-init's own schema accepts it (Debian's
 * cloud-init package, `cloud-init schema --config-file`), the top-level keys it may use, and bad
 * input named by field. YAML is read back with Debian's python3-yaml (a cloud-init dependency).
 */
let dir: string;
const CA = '-----BEGIN CERTIFICATE-----\nMIIBfake-ca\n-----END CERTIFICATE-----\n';
const CLIENT = '-----BEGIN CERTIFICATE-----\nMIIBfake-client\n-----END CERTIFICATE-----\n';
const CLIENT_KEY = '-----BEGIN PRIVATE KEY-----\nMIIBfake-key\n-----END PRIVATE KEY-----\n';
const keys = new Map<string, string>();

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cladnet-cloud-init-test-'));
  const t = await trustFixture();
  const anchor = Buffer.from(t.net.publicKey).toString('base64');
  // `host issue NAME --out bundles/NAME` for a, b, c (the fixture's names in network 'demo').
  for (const [i, n] of ['a', 'b', 'c'].entries()) {
    const d = path.join(dir, 'bundles', n);
    fs.mkdirSync(d, { recursive: true });
    fs.writeFileSync(path.join(d, 'host.cert'), serializeCertFile({ trustAnchor: anchor, cert: t.certFor(n) }));
    const key = Buffer.alloc(32, i + 1).toString('base64') + '\n';
    keys.set(n, key);
    fs.writeFileSync(path.join(d, 'private.key'), key, { mode: 0o600 });
  }
  for (const i of [1, 2, 3]) {
    const d = path.join(dir, 'webs', `web-${i}`);
    fs.mkdirSync(d, { recursive: true });
    fs.writeFileSync(path.join(d, 'host.cert'), serializeCertFile({ trustAnchor: anchor, cert: t.certFor(`web-${i}`, { overlayIp: `100.64.0.${10 + i}` }) }));
    fs.writeFileSync(path.join(d, 'private.key'), Buffer.alloc(32, 10 + i).toString('base64') + '\n', { mode: 0o600 });
  }
  fs.writeFileSync(path.join(dir, 'ca.pem'), CA);
  fs.writeFileSync(path.join(dir, 'client.pem'), CLIENT);
  fs.writeFileSync(path.join(dir, 'client.key'), CLIENT_KEY, { mode: 0o600 });
  fs.writeFileSync(path.join(dir, 'etcd.pw'), 's3cret\n', { mode: 0o600 });
  // A stand-in for the `npm pack` tarball: any gzip file (the generator only embeds it).
  fs.writeFileSync(path.join(dir, 'cladnet-0.1.0.tgz'), Buffer.from([0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0]));
  fs.writeFileSync(path.join(dir, 'extra.json'), JSON.stringify({ logLevel: 'warn', relay: true }));
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

function flags(over: Partial<CloudInitFlags> = {}): CloudInitFlags {
  return {
    name: 'a',
    network: 'demo',
    etcd: 'https://198.18.0.1:2379,https://198.18.0.2:2379',
    etcdCa: path.join(dir, 'ca.pem'),
    etcdCert: path.join(dir, 'client.pem'),
    etcdKey: path.join(dir, 'client.key'),
    bundle: path.join(dir, 'bundles', 'a'),
    install: 'present',
    ...over,
  };
}

/** Parses YAML with Debian's python3-yaml: the reader cloud-init itself uses. */
function readYaml(text: string): Record<string, unknown> {
  const r = spawnSync('python3', ['-c', 'import sys, json, yaml; print(json.dumps(yaml.safe_load(sys.stdin.read())))'], { input: text, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`python3 yaml: ${r.stderr}`);
  return JSON.parse(r.stdout) as Record<string, unknown>;
}

interface WriteFile {
  path: string;
  owner: string;
  permissions: string;
  encoding?: string;
  content: string;
}
const filesOf = (doc: Record<string, unknown>) => new Map((doc['write_files'] as WriteFile[]).map((f) => [f.path, f]));

function schema(file: string): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync('cloud-init', ['schema', '--config-file', file], { encoding: 'utf8' });
  if (r.error) throw r.error;
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

function errorOf(fn: () => unknown): { field?: string; message: string } {
  try {
    fn();
  } catch (e) {
    expect(isCladnetError(e, 'ECONFIG'), String(e)).toBe(true);
    return e as { field?: string; message: string };
  }
  return expect.unreachable('expected ECONFIG');
}

describe('toYaml', () => {
  it('round-trips strings that look like other YAML types, PEM blocks and nested argv lists', () => {
    const doc = {
      mode: '0600',
      yes: 'yes',
      nul: 'null',
      num: '12',
      colon: 'a: b # c',
      quote: `it's "x"\\`,
      pem: CA,
      twoNl: 'a\n\n',
      noNl: 'a\nb',
      lead: ' indented\nx\n',
      list: ['x', ['node', '-e', 'console.log("a: b")'], { k: 'v', n: 3, t: true }],
      empty: [],
    };
    expect(readYaml(toYaml(doc))).toEqual(doc);
  });
});

describe('cladnet cloud-init', () => {
  it('one VM: the config, etcd files, bundle and unit with their modes, owner root; runcmd enables the unit', () => {
    const plan = planCloudInit(flags({ agentConfig: path.join(dir, 'extra.json'), node: 'present' }));
    const text = buildUserData(plan, 'a');
    expect(text.startsWith('#cloud-config\n')).toBe(true);
    const doc = readYaml(text);
    const files = filesOf(doc);
    const cfg = JSON.parse(files.get(VM_PATHS.config)!.content) as Record<string, unknown>;
    expect(cfg).toEqual({
      logLevel: 'warn',
      relay: true,
      etcd: ['https://198.18.0.1:2379', 'https://198.18.0.2:2379'],
      network: 'demo',
      name: 'a',
      stateDir: '/var/lib/cladnet',
      etcdCa: VM_PATHS.etcdCa,
      etcdCert: VM_PATHS.etcdCert,
      etcdKey: VM_PATHS.etcdKey,
    });
    const want: [string, string, string][] = [
      [VM_PATHS.config, '0644', files.get(VM_PATHS.config)!.content],
      [VM_PATHS.etcdCa, '0644', CA],
      [VM_PATHS.etcdCert, '0644', CLIENT],
      [VM_PATHS.etcdKey, '0600', CLIENT_KEY],
      ['/var/lib/cladnet/private.key', '0600', keys.get('a')!],
      ['/var/lib/cladnet/host.cert', '0644', fs.readFileSync(path.join(dir, 'bundles', 'a', 'host.cert'), 'utf8')],
      [VM_PATHS.unit, '0644', fs.readFileSync(path.join(__dirname, '..', '..', 'systemd', 'cladnet.service'), 'utf8')],
    ];
    expect([...files.keys()]).toEqual(want.map((w) => w[0]));
    for (const [p, mode, content] of want) expect(files.get(p), p).toEqual({ path: p, owner: 'root:root', permissions: mode, content });
    const run = doc['runcmd'] as unknown[];
    expect(run[0]).toBe('set -eu');
    expect(run.slice(-2)).toEqual([
      ['systemctl', 'daemon-reload'],
      ['systemctl', 'enable', '--now', 'cladnet.service'],
    ]);
    // --install present: a check that the unit's dist/cli.js is there, nothing installed.
    const { cli } = unitExec(files.get(VM_PATHS.unit)!.content);
    expect(run.some((c) => typeof c === 'string' && c.startsWith(`test -f ${cli} `))).toBe(true);
    expect(JSON.stringify(run)).not.toMatch(/npm install/);
  });

  it('--node nodesource (the default) adds the NodeSource Node 20 repository with its signing key, and nodejs', () => {
    const doc = readYaml(buildUserData(planCloudInit(flags()), 'a'));
    const apt = doc['apt'] as { sources: Record<string, { source: string; key?: string }> };
    expect(apt).toEqual({ sources: { nodesource: { source: 'deb [signed-by=/etc/apt/keyrings/nodesource.asc] https://deb.nodesource.com/node_20.x nodistro main' } } });
    const key = filesOf(doc).get('/etc/apt/keyrings/nodesource.asc')!;
    expect(key).toMatchObject({ owner: 'root:root', permissions: '0644' });
    expect(key.content).toMatch(/^-----BEGIN PGP PUBLIC KEY BLOCK-----\n/);
    expect(doc['packages']).toEqual(['nodejs', 'libsodium23']);
    expect(doc['package_update']).toBe(true);
    const gpg = spawnSync('gpg', ['--show-keys', '--with-colons'], { input: key.content, encoding: 'utf8' });
    if (gpg.error === undefined) expect(gpg.stdout.split('\n').find((l) => l.startsWith('fpr:'))).toContain(NODESOURCE_FINGERPRINT);
    // --node debian: the distribution's nodejs (Debian 13 has 20), npm too when a tarball is installed.
    const deb = readYaml(buildUserData(planCloudInit(flags({ node: 'debian', install: 'tarball=https://example.com/cladnet-0.1.0.tgz' })), 'a'));
    expect(deb['apt']).toBeUndefined();
    expect(deb['packages']).toEqual(['nodejs', 'npm', 'libsodium23']);
    // --node present: nothing installed; the runcmd's version check still stops on Node < 20.
    const present = readYaml(buildUserData(planCloudInit(flags({ node: 'present' })), 'a'));
    expect(Object.keys(present).sort()).toEqual(['runcmd', 'write_files']);
    const check = (present['runcmd'] as unknown[])[1] as string[];
    expect(check.slice(0, 2)).toEqual(['/usr/bin/node', '-e']);
    const r = spawnSync(process.execPath, ['-e', check[2]!], { encoding: 'utf8' });
    expect(r.status).toBe(0); // this Node is >= 20
  });

  it('--install tarball=FILE embeds the tarball (b64) and unpacks it where the unit runs it; tarball=URL fetches it', () => {
    const tgz = path.join(dir, 'cladnet-0.1.0.tgz');
    const doc = readYaml(buildUserData(planCloudInit(flags({ install: `tarball=${tgz}` })), 'a'));
    const f = filesOf(doc).get(VM_PATHS.tarball)!;
    expect(f).toMatchObject({ permissions: '0600', encoding: 'b64' });
    expect(Buffer.from(f.content, 'base64')).toEqual(fs.readFileSync(tgz));
    const run = JSON.stringify(doc['runcmd']);
    const { root } = unitExec(fs.readFileSync(path.join(__dirname, '..', '..', 'systemd', 'cladnet.service'), 'utf8'));
    expect(run).toContain(JSON.stringify(['tar', '-xzf', VM_PATHS.tarball, '-C', root, '--strip-components=1', '--no-same-owner']));
    expect(run).toContain(`cd ${root} && npm install --omit=dev`);
    const url = readYaml(buildUserData(planCloudInit(flags({ install: 'tarball=https://example.com/r/cladnet-0.1.0.tgz' })), 'a'));
    expect(filesOf(url).has(VM_PATHS.tarball)).toBe(false);
    expect(JSON.stringify(url['runcmd'])).toContain('"https://example.com/r/cladnet-0.1.0.tgz","/var/tmp/cladnet.tgz"');
  });

  it('writes only the pinned top-level keys, in every mode', () => {
    const variants: Partial<CloudInitFlags>[] = [
      {},
      { node: 'debian' },
      { node: 'present', install: `tarball=${path.join(dir, 'cladnet-0.1.0.tgz')}` },
      { install: 'tarball=https://example.com/c.tgz', etcdUser: 'u', etcdPasswordFile: path.join(dir, 'etcd.pw') },
    ];
    const seen = new Set<string>();
    for (const v of variants) {
      const doc = readYaml(buildUserData(planCloudInit(flags(v)), 'a'));
      for (const k of Object.keys(doc)) seen.add(k);
      expect(Object.keys(doc).every((k) => (CLOUD_CONFIG_KEYS as readonly string[]).includes(k)), Object.keys(doc).join(',')).toBe(true);
    }
    expect([...seen].sort()).toEqual(['apt', 'package_update', 'packages', 'runcmd', 'write_files']);
  });

  it("passes `cloud-init schema --config-file` with exit 0 and empty stderr: one VM, and each VM of a fleet", () => {
    const one = path.join(dir, 'one.yaml');
    const r1 = cloudInitCommand(flags({ out: one, etcdUser: 'host-a', etcdPasswordFile: path.join(dir, 'etcd.pw'), install: `tarball=${path.join(dir, 'cladnet-0.1.0.tgz')}` }));
    expect(r1.files).toEqual([one]);
    expect(fs.statSync(one).mode & 0o777).toBe(0o600);
    const s1 = schema(one);
    expect(s1, one).toMatchObject({ status: 0, stderr: '' });
    expect(s1.stdout).toMatch(/Valid cloud-config/);

    const fleetDir = path.join(dir, 'fleet');
    const r = cloudInitCommand(flags({ name: undefined, names: 'a,b,c', bundle: path.join(dir, 'bundles'), node: 'debian', out: fleetDir }));
    expect(r.files).toEqual(['a', 'b', 'c'].map((n) => path.join(fleetDir, `${n}.yaml`)));
    for (const f of r.files) {
      expect(schema(f), f).toMatchObject({ status: 0, stderr: '' });
      const doc = readYaml(fs.readFileSync(f, 'utf8'));
      const n = path.basename(f, '.yaml');
      const files = filesOf(doc);
      expect(JSON.parse(files.get(VM_PATHS.config)!.content).name).toBe(n);
      expect(files.get('/var/lib/cladnet/private.key')!.content).toBe(keys.get(n));
    }
    // The schema check can fail: a wrong type in a known key is an error.
    const broken = path.join(dir, 'broken.yaml');
    fs.writeFileSync(broken, fs.readFileSync(one, 'utf8').replace('package_update: true', 'package_update: "maybe"'));
    expect(schema(broken).status).not.toBe(0);
  });

  it('--count with a pattern names the fleet: web-1..web-3, each with its own bundle', () => {
    const out = path.join(dir, 'webs-out');
    const r = cloudInitCommand(flags({ name: undefined, count: '3', pattern: 'web-{n}', bundle: path.join(dir, 'webs'), out }));
    expect(r.files.map((f) => path.basename(f))).toEqual(['web-1.yaml', 'web-2.yaml', 'web-3.yaml']);
    expect(fs.statSync(out).mode & 0o777).toBe(0o700);
    const doc = readYaml(fs.readFileSync(r.files[1]!, 'utf8'));
    expect(JSON.parse(filesOf(doc).get(VM_PATHS.config)!.content).name).toBe('web-2');
    expect(filesOf(doc).get('/var/lib/cladnet/private.key')!.content).toBe(Buffer.alloc(32, 12).toString('base64') + '\n');
  });

  it('the command (dist/cli.js): one VM to stdout, the secret warning on stderr only', () => {
    const cli = path.join(__dirname, '..', '..', 'dist', 'cli.js');
    const args = ['cloud-init', '--name', 'a', '--network', 'demo', '--etcd', 'https://198.18.0.1:2379', '--etcd-ca', path.join(dir, 'ca.pem')];
    const r = spawnSync(process.execPath, [cli, ...args, '--bundle', path.join(dir, 'bundles', 'a'), '--install', 'present'], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout.startsWith('#cloud-config\n')).toBe(true);
    expect(r.stdout).not.toMatch(/warning/);
    expect(r.stderr).toMatch(/^cladnet: warning: this user data holds secrets \(each VM's private key\)/);
    expect(filesOf(readYaml(r.stdout)).get('/var/lib/cladnet/private.key')!.content).toBe(keys.get('a'));
    const bad = spawnSync(process.execPath, [cli, ...args, '--bundle', path.join(dir, 'bundles', 'a'), '--install', 'rpm'], { encoding: 'utf8' });
    expect(bad.status).toBe(1);
    expect(bad.stdout).toBe('');
    expect(bad.stderr).toBe('cladnet: cloud-init: install: "rpm" is not one of: present, tarball=URL, tarball=FILE [ECONFIG]\n');
  });

  it('--token-file: ships the join token (0600, in the state dir) and no key when the agent takes one (tokenFile); refused, naming the field, when it does not', () => {
    const tokenFile = path.join(dir, 'join.token');
    fs.writeFileSync(tokenFile, 'cladnet-token-example\n', { mode: 0o600 });
    const f = flags({ bundle: undefined, tokenFile, name: undefined, names: 'a,b', out: path.join(dir, 'tok') });
    if (!agentTakesToken()) {
      const e = errorOf(() => cloudInitCommand(f));
      expect(e.field).toBe('tokenFile');
      expect(e.message).toMatch(/no join-token setting/);
      return;
    }
    const r = cloudInitCommand(f);
    for (const file of r.files) {
      expect(schema(file)).toMatchObject({ status: 0, stderr: '' });
      const files = filesOf(readYaml(fs.readFileSync(file, 'utf8')));
      expect(files.get(VM_PATHS.token)).toMatchObject({ permissions: '0600', owner: 'root:root', content: 'cladnet-token-example\n' });
      expect(files.has('/var/lib/cladnet/private.key')).toBe(false);
      expect(JSON.parse(files.get(VM_PATHS.config)!.content).tokenFile).toBe(VM_PATHS.token);
    }
    expect(r.warnings[0]).toMatch(/a join token/);
  });

  it("follows the unit's ExecStart: script and package root, whichever script it names", () => {
    const unit = (exec: string) => `[Service]\nExecStart=${exec}\n`;
    expect(unitExec(unit('/usr/bin/node --optimize-for-size /opt/cladnet/dist/cli.js agent --config /etc/cladnet/config.json'))).toEqual({
      node: '/usr/bin/node',
      cli: '/opt/cladnet/dist/cli.js',
      root: '/opt/cladnet',
    });
    expect(unitExec(unit('/usr/local/bin/node /srv/c/bin/cladnet.js agent')).root).toBe('/srv/c');
    expect(errorOf(() => unitExec(unit('cladnet agent'))).field).toBe('unit');
    expect(errorOf(() => unitExec('[Service]\nType=simple\n')).message).toMatch(/no ExecStart= line/);
  });

  it('names the field of bad input', () => {
    const cases: [Partial<CloudInitFlags>, string, RegExp][] = [
      [{ install: 'rpm' }, 'install', /"rpm" is not one of: present, tarball=URL, tarball=FILE/],
      [{ install: undefined }, 'install', /say how cladnet gets onto the VM/],
      [{ install: 'tarball=ftp://x/y.tgz' }, 'install', /http\(s\) only/],
      [{ install: `tarball=${path.join(dir, 'ca.pem')}` }, 'install', /not a gzip tarball/],
      [{ etcd: undefined }, 'etcd', /is required/],
      [{ etcd: 'etcd-1:2379' }, 'etcd[0]', /must use http or https/],
      [{ network: undefined }, 'network', /is required/],
      [{ network: 'Prod' }, 'network', /not a valid name/],
      [{ node: 'nvm' }, 'node', /"nvm" is not one of: nodesource, debian, present/],
      [{ etcdKey: undefined }, 'etcdKey', /go together/],
      [{ etcdCa: path.join(dir, 'client.key') }, 'etcdCa', /not a PEM file/],
      [{ etcdCa: path.join(dir, 'missing.pem') }, 'etcdCa', /does not exist/],
      [{ etcdUser: 'u' }, 'etcdPasswordFile', /go together/],
      [{ etcd: 'http://198.18.0.1:2379', etcdUser: 'u', etcdPasswordFile: path.join(dir, 'etcd.pw') }, 'etcdPasswordFile', /in the clear/],
      [{ bundle: undefined }, 'bundle', /say how each VM enrolls/],
      [{ bundle: path.join(dir, 'bundles', 'b') }, 'bundle', /is b's certificate, not a's/],
      [{ network: 'other' }, 'bundle', /for network demo, not other/],
      [{ name: undefined }, 'name', /say which VMs/],
      [{ names: 'a,b' }, 'names', /give one of/],
      [{ name: undefined, names: 'a,B' }, 'names[1]', /not a valid name/],
      [{ name: undefined, names: 'a,a' }, 'names', /appears twice/],
      [{ name: undefined, count: '3' }, 'pattern', /--count needs --pattern/],
      [{ name: undefined, count: '3', pattern: 'web' }, 'pattern', /has no \{n\}/],
      [{ name: undefined, count: 'x', pattern: 'w{n}' }, 'count', /not a whole number/],
      [{ name: undefined, names: 'a,b', bundle: path.join(dir, 'bundles') }, 'out', /--out DIR is required/],
      [{ agentConfig: path.join(dir, 'etcd.pw') }, 'config', /not valid JSON/],
    ];
    for (const [over, field, msg] of cases) {
      const e = errorOf(() => cloudInitCommand(flags(over)));
      expect({ over, field: e.field }).toEqual({ over, field });
      expect(e.message).toMatch(msg);
    }
  });

  it('refuses --agent-config with unknown settings, secrets, or settings the flags own; and values the agent would refuse', () => {
    const cases: [object, string, RegExp][] = [
      [{ colour: 'red' }, 'agentConfig.colour', /unknown agent setting/],
      [{ etcdPassword: 'x' }, 'agentConfig.etcdPassword', /a secret in the world-readable config/],
      [{ name: 'z' }, 'agentConfig.name', /set by cloud-init's own flags/],
      [{ batch: 0 }, 'agentConfig', /batch .*not an integer from 1 to 1024/],
    ];
    for (const [cfg, field, msg] of cases) {
      const f = path.join(dir, `cfg-${field}.json`);
      fs.writeFileSync(f, JSON.stringify(cfg));
      const e = errorOf(() => planCloudInit(flags({ agentConfig: f })));
      expect(e.field).toBe(field);
      expect(e.message).toMatch(msg);
    }
  });

  it('refuses a bundle whose private key others can read', () => {
    const d = path.join(dir, 'loose');
    fs.cpSync(path.join(dir, 'bundles', 'a'), d, { recursive: true });
    fs.chmodSync(path.join(d, 'private.key'), 0o644);
    const e = errorOf(() => planCloudInit(flags({ bundle: d })));
    expect(e.field).toBe('bundle');
    expect(e.message).toMatch(/readable by group or others/);
  });
});

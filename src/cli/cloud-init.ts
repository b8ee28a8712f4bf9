/**
 * `cladnet cloud-init`: `#cloud-config` user data that turns a fresh VM into a cladnet host.
 *
 * One document per VM. Each holds, as cloud-init modules:
 *  - apt / package_update / packages   Node 20 (NodeSource's apt repository, Debian's own nodejs
 *                                      on Debian 13+, or nothing when the image has it): --node
 *  - write_files   /etc/cladnet/config.json (the agent's config, validated here like the agent
 *                  does), the etcd CA, client certificate and key, password file, the host's
 *                  enrollment credential, the release tarball (embedded when given as a file), and
 *                  /etc/systemd/system/cladnet.service, the unit of this package read at generation
 *                  time. Secrets 0600, the rest 0644, all root:root.
 *  - runcmd        `set -eu`, a Node >= 20 check, the install (--install), daemon-reload, and
 *                  `systemctl enable --now cladnet.service`.
 * No other top-level key is written (test/unit/cloud-init.test.ts pins the set).
 *
 * The enrollment credential is the per-host bundle of `cladnet host issue --out DIR`
 * (private.key + host.cert into the state dir), or a join token (`cladnet token create`) when this
 * build's agent has the tokenFile setting. A fleet (--names, or --count with a {n} pattern) is one
 * file per VM in the --out directory: DIR/NAME.yaml, mode 0600.
 *
 * Nothing here touches the network or etcd: inputs are files and flags, the output is text.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { AGENT_FIELDS, loadAgentConfig, readConfigFile } from '../config/config';
import { CERT_FILE, cleartextEndpoints, parseCertFile } from '../control/credentials';
import { checkName } from '../control/keys';
import { CladnetError } from '../errors';
import { toYaml, type YamlValue } from '../util/yaml';

/** Top-level cloud-config keys this generator may write; anything else is a bug (pinned by a test). */
/**
 * The library the ffi AEAD needs that cloud images often lack (src/os/ffi/libsodium.ts). OpenSSL's
 * libcrypto (for large packets) is not listed: every Debian and Ubuntu image has it, under a name
 * that differs by release (libssl3, libssl3t64), and a wrong name fails cloud-init's whole list.
 */
export const AEAD_PACKAGES = ['libsodium23'] as const;

export const CLOUD_CONFIG_KEYS = ['apt', 'package_update', 'packages', 'write_files', 'runcmd'] as const;

/** Where things go on the VM. */
export const VM_PATHS = Object.freeze({
  config: '/etc/cladnet/config.json',
  etcdCa: '/etc/cladnet/etcd-ca.pem',
  etcdCert: '/etc/cladnet/etcd-client.pem',
  etcdKey: '/etc/cladnet/etcd-client.key',
  etcdPasswordFile: '/etc/cladnet/etcd.pw',
  stateDir: '/var/lib/cladnet',
  /** In the state dir: the agent removes it once enrolled, and ProtectSystem=strict leaves it writable there. */
  token: '/var/lib/cladnet/join.token',
  unit: '/etc/systemd/system/cladnet.service',
  tarball: '/var/tmp/cladnet.tgz',
  command: '/usr/local/bin/cladnet',
  /** NodeSource's signing key, armored: apt (2.4+) reads .asc keyrings itself, so the VM needs no gpg. */
  nodesourceKey: '/etc/apt/keyrings/nodesource.asc',
});

/**
 * NodeSource's Node 20 apt repository, signed by the key in systemd/nodesource.asc (fingerprint
 * below). The key goes to the VM by write_files (init stage), before cloud-init's apt module
 * (config stage) writes this line: cloud-init's own `key:` would need gpg on the image to dearmor it.
 */
export const NODESOURCE_SOURCE = 'deb [signed-by=/etc/apt/keyrings/nodesource.asc] https://deb.nodesource.com/node_20.x nodistro main';
export const NODESOURCE_FINGERPRINT = '6F71F525282841EEDAF851B42F59B5F99B1BE0B4';
/** User data above this many bytes is refused by EC2 (16 KiB); other clouds allow more. */
export const EC2_USER_DATA_LIMIT = 16_384;

export type NodeMode = 'nodesource' | 'debian' | 'present';
export type InstallMode = { kind: 'present' } | { kind: 'url'; url: string } | { kind: 'file'; file: string };

/** The command's flags, as commander gives them. */
export interface CloudInitFlags {
  name?: string;
  names?: string;
  count?: string;
  pattern?: string;
  network?: string;
  etcd?: string;
  etcdCa?: string;
  etcdCert?: string;
  etcdKey?: string;
  etcdUser?: string;
  etcdPasswordFile?: string;
  bundle?: string;
  tokenFile?: string;
  install?: string;
  node?: string;
  agentConfig?: string;
  out?: string;
}

type Credential = { kind: 'bundle'; privateKey: string; hostCert: string } | { kind: 'token'; token: string };

interface VmFile {
  path: string;
  content: string;
  permissions: '0600' | '0644';
  b64?: boolean;
}

/** Everything one document needs, read and checked. */
export interface CloudInitPlan {
  readonly names: readonly string[];
  readonly network: string;
  readonly etcd: readonly string[];
  readonly node: NodeMode;
  readonly install: InstallMode;
  /** Settings from --agent-config, before the generator's own. */
  readonly baseConfig: Readonly<Record<string, unknown>>;
  readonly etcdFiles: readonly VmFile[];
  readonly etcdConfig: Readonly<Record<string, string>>;
  readonly credential: (name: string) => Credential;
  readonly unitText: string;
  readonly nodesourceKey: string;
  readonly tarball?: Buffer;
}

function bad(field: string, why: string): CladnetError {
  return new CladnetError('ECONFIG', `cloud-init: ${field}: ${why}`, { field });
}

function readText(file: string, field: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch (e) {
    const why = (e as NodeJS.ErrnoException).code === 'ENOENT' ? 'does not exist' : (e as Error).message;
    throw bad(field, `cannot read ${file}: ${why}`);
  }
}

/** The package's own files: <root>/systemd/... (the same from src/cli and dist/cli). */
export function packageRoot(): string {
  return path.resolve(__dirname, '..', '..');
}

/** The VM names: exactly one of --name, --names a,b,c, --count N --pattern 'web-{n}'. */
export function vmNames(f: Pick<CloudInitFlags, 'name' | 'names' | 'count' | 'pattern'>): string[] {
  const given = (['name', 'names', 'count'] as const).filter((k) => f[k] !== undefined);
  if (given.length === 0) throw bad('name', 'say which VMs: --name NAME, --names a,b,c, or --count N --pattern PATTERN');
  if (given.length > 1) throw bad(given[1]!, `give one of --name, --names, --count (got ${given.map((g) => `--${g}`).join(' and ')})`);
  if (f.pattern !== undefined && f.count === undefined) throw bad('pattern', '--pattern goes with --count');
  let names: string[];
  if (f.name !== undefined) {
    names = [checkName(f.name, 'name')];
  } else if (f.names !== undefined) {
    names = f.names.split(',').map((s) => s.trim());
    names.forEach((n, i) => checkName(n, `names[${i}]`));
  } else {
    const c = f.count!;
    if (!/^\d+$/.test(c) || Number(c) < 1 || Number(c) > 10_000) throw bad('count', `"${c}" is not a whole number from 1 to 10000`);
    if (f.pattern === undefined) throw bad('pattern', "--count needs --pattern, e.g. 'web-{n}' ({n} counts from 1)");
    if (!f.pattern.includes('{n}')) throw bad('pattern', `"${f.pattern}" has no {n} to number the VMs`);
    names = Array.from({ length: Number(c) }, (_, i) => f.pattern!.split('{n}').join(String(i + 1)));
    names.forEach((n) => checkName(n, 'pattern'));
  }
  const seen = new Set<string>();
  for (const n of names) {
    if (seen.has(n)) throw bad(f.names !== undefined ? 'names' : 'pattern', `"${n}" appears twice`);
    seen.add(n);
  }
  return names;
}

export function parseInstall(v: string | undefined): InstallMode {
  if (v === undefined) throw bad('install', 'say how cladnet gets onto the VM: --install present, or --install tarball=URL|FILE (from `npm pack`)');
  if (v === 'present') return { kind: 'present' };
  const m = /^tarball=(.+)$/.exec(v);
  if (!m) throw bad('install', `"${v}" is not one of: present, tarball=URL, tarball=FILE`);
  const target = m[1]!;
  if (/^[a-z][a-z0-9+.-]*:/i.test(target)) {
    let u: URL;
    try {
      u = new URL(target);
    } catch {
      throw bad('install', `"${target}" is not a URL`);
    }
    if (u.protocol !== 'https:' && u.protocol !== 'http:') throw bad('install', `"${target}": the VM fetches tarballs over http(s) only`);
    return { kind: 'url', url: target };
  }
  return { kind: 'file', file: target };
}

export function parseNode(v: string | undefined): NodeMode {
  const mode = v ?? 'nodesource';
  if (mode !== 'nodesource' && mode !== 'debian' && mode !== 'present') throw bad('node', `"${mode}" is not one of: nodesource, debian, present`);
  return mode;
}

/**
 * The unit's ExecStart: the Node binary, the package's script it runs (the first absolute `.js`
 * path: dist/cli.js, or bin/cladnet.js), and the package root (the script's directory's parent),
 * where a tarball is unpacked. Read from the unit, so whatever path the unit names is where
 * cladnet goes.
 */
export function unitExec(unitText: string): { node: string; cli: string; root: string } {
  const line = unitText.split('\n').find((l) => /^ExecStart=/.test(l));
  if (!line) throw bad('unit', 'systemd/cladnet.service has no ExecStart= line');
  const argv = line.slice('ExecStart='.length).replace(/^[-@:+!]+/, '').trim().split(/\s+/);
  const cli = argv.slice(1).find((a) => /^\/\S+\/[^/]+\/[^/]+\.js$/.test(a));
  if (!argv[0]?.startsWith('/') || cli === undefined) throw bad('unit', `ExecStart "${line}" does not run an absolute node path with an absolute DIR/SUBDIR/SCRIPT.js`);
  return { node: argv[0], cli, root: path.posix.dirname(path.posix.dirname(cli)) };
}

function readBundle(dir: string, name: string, network: string, field: string): Credential {
  const keyFile = path.join(dir, 'private.key');
  const certFile = path.join(dir, CERT_FILE);
  const privateKey = readText(keyFile, field);
  if ((fs.statSync(keyFile).mode & 0o077) !== 0) throw bad(field, `${keyFile} is readable by group or others; run: chmod 600 ${keyFile}`);
  if (!/^[A-Za-z0-9+/]{43}=\s*$/.test(privateKey)) throw bad(field, `${keyFile} does not hold a base64 X25519 private key`);
  const hostCert = readText(certFile, field);
  let cert;
  try {
    cert = parseCertFile(hostCert, certFile).cert;
  } catch (e) {
    throw bad(field, (e as Error).message);
  }
  if (cert.name !== name) throw bad(field, `${certFile} is ${cert.name}'s certificate, not ${name}'s`);
  if (cert.network !== network) throw bad(field, `${certFile} is for network ${cert.network}, not ${network}`);
  return { kind: 'bundle', privateKey, hostCert };
}

/** Does this build's agent take a join token (the tokenFile setting)? */
export function agentTakesToken(): boolean {
  return AGENT_FIELDS.some((f) => f.flag === 'tokenFile');
}

/** Reads and checks every input; throws ECONFIG naming the field. Touches nothing. */
export function planCloudInit(f: CloudInitFlags): CloudInitPlan {
  const names = vmNames(f);
  if (f.network === undefined) throw bad('network', 'is required (--network NAME)');
  const network = checkName(f.network, 'network');
  if (f.etcd === undefined) throw bad('etcd', 'is required (--etcd https://host:2379,...): the VMs reach etcd there');
  const etcd = f.etcd
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  if (etcd.length === 0) throw bad('etcd', 'needs at least one URL');
  etcd.forEach((u, i) => {
    let url: URL;
    try {
      url = new URL(u);
    } catch {
      throw bad(`etcd[${i}]`, `"${u}" is not a URL (expected https://host:port)`);
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') throw bad(`etcd[${i}]`, `"${u}" must use http or https`);
  });
  const node = parseNode(f.node);
  const install = parseInstall(f.install);

  // etcd credentials: files the VM gets, and the config settings that point at them.
  const etcdFiles: VmFile[] = [];
  const etcdConfig: Record<string, string> = {};
  if ((f.etcdCert === undefined) !== (f.etcdKey === undefined)) throw bad(f.etcdCert === undefined ? 'etcdCert' : 'etcdKey', '--etcd-cert and --etcd-key go together');
  if ((f.etcdUser === undefined) !== (f.etcdPasswordFile === undefined)) {
    throw bad(f.etcdUser === undefined ? 'etcdUser' : 'etcdPasswordFile', '--etcd-user and --etcd-password-file go together');
  }
  const pem = (file: string, field: string, what: RegExp) => {
    const text = readText(file, field);
    if (!what.test(text)) throw bad(field, `${file} is not a PEM file of the expected kind`);
    return text.endsWith('\n') ? text : text + '\n';
  };
  if (f.etcdCa !== undefined) {
    etcdFiles.push({ path: VM_PATHS.etcdCa, content: pem(f.etcdCa, 'etcdCa', /-----BEGIN CERTIFICATE-----/), permissions: '0644' });
    etcdConfig['etcdCa'] = VM_PATHS.etcdCa;
  }
  if (f.etcdCert !== undefined && f.etcdKey !== undefined) {
    etcdFiles.push({ path: VM_PATHS.etcdCert, content: pem(f.etcdCert, 'etcdCert', /-----BEGIN CERTIFICATE-----/), permissions: '0644' });
    etcdFiles.push({ path: VM_PATHS.etcdKey, content: pem(f.etcdKey, 'etcdKey', /-----BEGIN [A-Z ]*PRIVATE KEY-----/), permissions: '0600' });
    etcdConfig['etcdCert'] = VM_PATHS.etcdCert;
    etcdConfig['etcdKey'] = VM_PATHS.etcdKey;
  }
  if (f.etcdUser !== undefined && f.etcdPasswordFile !== undefined) {
    const pw = readText(f.etcdPasswordFile, 'etcdPasswordFile');
    if (pw.trim() === '') throw bad('etcdPasswordFile', `${f.etcdPasswordFile} is empty`);
    const clear = cleartextEndpoints(etcd);
    if (clear.length > 0) throw bad('etcdPasswordFile', `the password would cross the network in the clear to ${clear.join(', ')}: use https:// endpoints`);
    etcdFiles.push({ path: VM_PATHS.etcdPasswordFile, content: pw, permissions: '0600' });
    etcdConfig['etcdUser'] = f.etcdUser;
    etcdConfig['etcdPasswordFile'] = VM_PATHS.etcdPasswordFile;
  }

  // Settings from --agent-config; the generator's own (name, network, etcd, files) win, and
  // secrets must come as files (the config is 0644).
  const baseConfig: Record<string, unknown> = f.agentConfig === undefined ? {} : readConfigFile(f.agentConfig);
  const known = new Set(AGENT_FIELDS.map((x) => x.flag));
  for (const k of Object.keys(baseConfig)) {
    if (!known.has(k)) throw bad(`agentConfig.${k}`, `unknown agent setting in ${f.agentConfig}`);
    if (k === 'etcdPassword' || k === 'token') throw bad(`agentConfig.${k}`, 'a secret in the world-readable config.json: use --etcd-password-file / --token-file');
    if (['name', 'network', 'etcd', 'stateDir', 'cert', 'tokenFile', 'etcdCa', 'etcdCert', 'etcdKey', 'etcdUser', 'etcdPasswordFile'].includes(k)) {
      throw bad(`agentConfig.${k}`, 'is set by cloud-init\'s own flags; leave it out of --agent-config');
    }
  }

  // The enrollment credential.
  let credential: (name: string) => Credential;
  if (f.bundle !== undefined && f.tokenFile !== undefined) throw bad('bundle', 'give --bundle or --token-file, not both');
  if (f.tokenFile !== undefined) {
    if (!agentTakesToken()) throw bad('tokenFile', "this build's agent has no join-token setting (tokenFile) yet; use --bundle from `cladnet host issue`");
    const token = readText(f.tokenFile, 'tokenFile').trim();
    if (token === '' || /\s/.test(token)) throw bad('tokenFile', `${f.tokenFile} must hold one token on one line`);
    credential = () => ({ kind: 'token', token });
  } else if (f.bundle !== undefined) {
    const dir = f.bundle;
    if (!fs.existsSync(dir)) throw bad('bundle', `${dir} does not exist`);
    // One VM: DIR is `host issue --out DIR`. A fleet: DIR/NAME for each.
    const single = names.length === 1 && fs.existsSync(path.join(dir, 'private.key'));
    const creds = new Map(names.map((n) => [n, readBundle(single ? dir : path.join(dir, n), n, network, 'bundle')]));
    credential = (n) => creds.get(n)!;
  } else {
    throw bad('bundle', 'say how each VM enrolls: --bundle DIR (from `cladnet host issue NAME --out DIR`)' + (agentTakesToken() ? ' or --token-file FILE (from `cladnet token create`)' : ''));
  }

  let tarball: Buffer | undefined;
  if (install.kind === 'file') {
    try {
      tarball = fs.readFileSync(install.file);
    } catch (e) {
      throw bad('install', `cannot read ${install.file}: ${(e as Error).message}`);
    }
    if (tarball.length < 2 || tarball[0] !== 0x1f || tarball[1] !== 0x8b) throw bad('install', `${install.file} is not a gzip tarball (from npm pack)`);
  }

  const unitText = readText(path.join(packageRoot(), 'systemd', 'cladnet.service'), 'unit');
  unitExec(unitText); // refuses a unit whose ExecStart we cannot follow
  const nodesourceKey = node === 'nodesource' ? readText(path.join(packageRoot(), 'systemd', 'nodesource.asc'), 'node') : '';
  const plan = { names, network, etcd, node, install, baseConfig, etcdFiles, etcdConfig, credential, unitText, nodesourceKey, ...(tarball ? { tarball } : {}) };
  for (const n of names) agentConfigFor(plan, n); // the agent's own validation, once per VM
  return plan;
}

/** The agent config for VM `name`, validated by the agent's own loader. */
export function agentConfigFor(plan: CloudInitPlan, name: string): Record<string, unknown> {
  const cred = plan.credential(name);
  const cfg: Record<string, unknown> = {
    ...plan.baseConfig,
    etcd: [...plan.etcd],
    network: plan.network,
    name,
    stateDir: VM_PATHS.stateDir,
    ...plan.etcdConfig,
    ...(cred.kind === 'token' ? { tokenFile: VM_PATHS.token } : {}),
  };
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'cladnet-cloud-init-'));
  try {
    const file = path.join(tmp, 'config.json');
    fs.writeFileSync(file, JSON.stringify(cfg), { mode: 0o600 });
    loadAgentConfig({ file, env: {} });
  } catch (e) {
    throw bad('agentConfig', (e as Error).message);
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
  return cfg;
}

function shellQuote(s: string): string {
  return /^[A-Za-z0-9_./:=@%+-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

/** The runcmd lines: checks, install, enable. Strings are shell lines, arrays argv (cloud-init quotes them). */
function runcmd(plan: CloudInitPlan): YamlValue[] {
  const { node, cli, root } = unitExec(plan.unitText);
  const cmds: YamlValue[] = ['set -eu'];
  // Node 20: without it, stop here with a message (cloud-init's log and `cloud-init status --long`).
  const check =
    'const m=Number(process.versions.node.split(".")[0]);' +
    `if(m<20){console.error("cladnet needs Node >= 20 at ${node}; this is "+process.version);process.exit(1)}`;
  cmds.push([node, '-e', check]);
  if (plan.install.kind === 'url') {
    const fetchJs =
      'fetch(process.argv[1]).then(async r=>{if(!r.ok)throw new Error(r.status+" "+r.statusText);' +
      'require("fs").writeFileSync(process.argv[2],Buffer.from(await r.arrayBuffer()),{mode:0o600})})' +
      '.catch(e=>{console.error("cladnet: cannot fetch "+process.argv[1]+": "+e.message);process.exit(1)})';
    cmds.push([node, '-e', fetchJs, plan.install.url, VM_PATHS.tarball]);
  }
  if (plan.install.kind === 'present') {
    cmds.push(`test -f ${shellQuote(cli)} || { echo "cladnet: --install present, but ${cli} (the unit's ExecStart) is missing" >&2; exit 1; }`);
  } else {
    // The unit runs <root>/<dir>/<script>.js: unpack the npm pack tarball (package/...) in <root> and
    // install its dependencies from the registry (Node's npm).
    const r = shellQuote(root);
    cmds.push(`mkdir -p ${r}`);
    cmds.push(['tar', '-xzf', VM_PATHS.tarball, '-C', root, '--strip-components=1', '--no-same-owner']);
    cmds.push(`cd ${r} && npm install --omit=dev --no-audit --no-fund --no-save && cd /`);
    cmds.push(['rm', '-f', VM_PATHS.tarball]);
    cmds.push(['chmod', '0755', cli]);
    cmds.push(['ln', '-sf', cli, VM_PATHS.command]);
  }
  cmds.push(['chmod', '0700', VM_PATHS.stateDir]);
  cmds.push(['systemctl', 'daemon-reload']);
  cmds.push(['systemctl', 'enable', '--now', 'cladnet.service']);
  return cmds;
}

/** The `#cloud-config` document for VM `name`. */
export function buildUserData(plan: CloudInitPlan, name: string): string {
  if (!plan.names.includes(name)) throw bad('name', `"${name}" is not one of this plan's VMs`);
  const cred = plan.credential(name);
  const cfg = agentConfigFor(plan, name);
  const files: VmFile[] = [
    { path: VM_PATHS.config, content: JSON.stringify(cfg, null, 2) + '\n', permissions: '0644' },
    ...plan.etcdFiles,
    ...(cred.kind === 'bundle'
      ? [
          { path: `${VM_PATHS.stateDir}/private.key`, content: cred.privateKey, permissions: '0600' as const },
          { path: `${VM_PATHS.stateDir}/${CERT_FILE}`, content: cred.hostCert, permissions: '0644' as const },
        ]
      : [{ path: VM_PATHS.token, content: cred.token + '\n', permissions: '0600' as const }]),
    { path: VM_PATHS.unit, content: plan.unitText, permissions: '0644' },
    ...(plan.node === 'nodesource' ? [{ path: VM_PATHS.nodesourceKey, content: plan.nodesourceKey, permissions: '0644' as const }] : []),
    ...(plan.tarball ? [{ path: VM_PATHS.tarball, content: plan.tarball.toString('base64'), permissions: '0600' as const, b64: true }] : []),
  ];
  const doc: Record<string, YamlValue> = {};
  if (plan.node === 'nodesource') {
    doc['apt'] = { sources: { nodesource: { source: NODESOURCE_SOURCE } } };
  }
  const node = plan.node === 'nodesource' ? ['nodejs'] : plan.node === 'debian' ? (plan.install.kind === 'present' ? ['nodejs'] : ['nodejs', 'npm']) : [];
  // The data plane's default AEAD loads Debian's libsodium and OpenSSL through koffi; without them
  // it falls back to slower backends. Installed with Node (--node present installs nothing).
  const packages = node.length > 0 ? [...node, ...AEAD_PACKAGES] : [];
  if (packages.length > 0) {
    doc['package_update'] = true;
    doc['packages'] = packages;
  }
  doc['write_files'] = files.map((x) => ({
    path: x.path,
    owner: 'root:root',
    permissions: x.permissions,
    ...(x.b64 ? { encoding: 'b64' } : {}),
    content: x.content,
  }));
  doc['runcmd'] = runcmd(plan);
  const head = [
    '#cloud-config',
    `# cladnet host ${name} in network ${plan.network}: made by \`cladnet cloud-init\`.`,
    `# SECRET: holds ${cred.kind === 'bundle' ? "the host's private key" : 'a join token'}${plan.etcdFiles.some((x) => x.permissions === '0600') ? ' and etcd credentials' : ''}.`,
  ];
  return head.join('\n') + '\n' + toYaml(doc);
}

/** What the command prints on stderr besides errors. */
export function secretWarning(plan: CloudInitPlan, sizes: readonly number[]): string[] {
  const cred = plan.credential(plan.names[0]!);
  const what = [cred.kind === 'bundle' ? "each VM's private key" : 'a join token'];
  if (plan.etcdFiles.some((x) => x.path === VM_PATHS.etcdKey)) what.push('the etcd client key');
  if (plan.etcdFiles.some((x) => x.path === VM_PATHS.etcdPasswordFile)) what.push('the etcd password');
  const lines = [
    `warning: this user data holds secrets (${what.join(', ')}): anyone who can read the instance's user data ` +
      '(the metadata service from inside the VM, the cloud console or API) can read them. Keep the files 0600 ' +
      'and do not commit them.' +
      (cred.kind === 'bundle' ? ' Prefer a join token (--token-file): once used it is worth nothing.' : ' The token is worth nothing once its uses are spent or it expires.'),
  ];
  const big = Math.max(0, ...sizes);
  if (big > EC2_USER_DATA_LIMIT) lines.push(`warning: user data is ${big} bytes, over EC2's ${EC2_USER_DATA_LIMIT}-byte limit (an embedded tarball? use --install tarball=URL there)`);
  return lines;
}

export interface CloudInitOutput {
  /** Text for stdout (one VM without --out), else undefined. */
  stdout?: string;
  /** Files written (--out). */
  files: string[];
  warnings: string[];
}

/** The command: plan, build one document per VM, write them. */
export function cloudInitCommand(f: CloudInitFlags): CloudInitOutput {
  const plan = planCloudInit(f);
  const docs = plan.names.map((n) => [n, buildUserData(plan, n)] as const);
  const warnings = secretWarning(plan, docs.map(([, d]) => Buffer.byteLength(d)));
  if (plan.names.length === 1 && (f.out === undefined || !isDir(f.out))) {
    if (f.out === undefined) return { stdout: docs[0]![1], files: [], warnings };
    writePrivate(f.out, docs[0]![1]);
    return { files: [f.out], warnings };
  }
  if (f.out === undefined) throw bad('out', `${plan.names.length} VMs: --out DIR is required (one DIR/NAME.yaml per VM)`);
  fs.mkdirSync(f.out, { recursive: true, mode: 0o700 });
  const files = docs.map(([n, d]) => {
    const file = path.join(f.out!, `${n}.yaml`);
    writePrivate(file, d);
    return file;
  });
  return { files, warnings };
}

function isDir(p: string): boolean {
  try {
    return fs.statSync(p).isDirectory();
  } catch {
    return false;
  }
}

function writePrivate(file: string, text: string): void {
  fs.writeFileSync(file, text, { mode: 0o600 });
  fs.chmodSync(file, 0o600);
}

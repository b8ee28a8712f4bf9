/**
 * Agent configuration: defaults < config file (JSON, `//` comment lines allowed) < CLADNET_*
 * environment variables < command-line flags. Parsed and validated once, before anything on the
 * host is touched, into a frozen object. A bad value is named by field and by where it came from.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { CladnetError } from '../errors';
import { formatPrefix, parseEndpoint, parsePrefix } from '../util/ipv4';

export interface AgentConfig {
  readonly etcd: readonly string[];
  readonly network: string;
  readonly name: string;
  readonly interface: string;
  /** UDP port; 0 means "the network's default port". */
  readonly listenPort: number;
  readonly stateDir: string;
  readonly socket: string;
  readonly logLevel: string;
  /** Packets per data-plane batch. */
  readonly batch: number;
  /**
   * Data-plane worker threads, each with its own TUN queue and UDP socket (docs/design.md, Many
   * cores). `auto` in the sources resolves here to autoWorkers(), the measured default.
   */
  readonly workers: number;
  /** AEAD implementation: auto (fastest that loads), native (sodium-native), wasm (libsodium-wrappers). */
  readonly crypto: 'auto' | 'ffi' | 'native' | 'wasm';
  /** Use TUN offloads (TSO/checksum) when the kernel offers them. */
  readonly offload: boolean;
  /** UDP GSO on send (runs of datagrams to one peer as one message) and GRO on receive, when the kernel allows. */
  readonly udpOffload: boolean;
  /** Address to publish instead of the interface addresses (e.g. a known public IP), optional. */
  readonly advertise: readonly string[];
  /** This host's certificate file from `cladnet host issue` (default <stateDir>/host.cert). */
  readonly cert: string;
  /**
   * A join token (`cladnet token create`), used only while `cert` does not exist: the agent then
   * enrols itself (src/control/enroll.ts) and writes `cert`. Prefer `tokenFile`.
   */
  readonly token?: string;
  /** A file holding the join token (mode 0600); wiped and removed once the host has enrolled. */
  readonly tokenFile?: string;
  /** etcd TLS: CA bundle to verify the server, client certificate and key (PEM files), optional. */
  readonly etcdCa?: string;
  readonly etcdCert?: string;
  readonly etcdKey?: string;
  /** etcd user name; its password from etcdPassword or (better) etcdPasswordFile. */
  readonly etcdUser?: string;
  readonly etcdPassword?: string;
  readonly etcdPasswordFile?: string;
  /** Send the etcd password over plain http:// to a non-loopback endpoint anyway (else refused: EINSECURE). */
  readonly etcdAllowInsecurePassword: boolean;
  /** STUN servers ("a.b.c.d:port") asked for this host's public endpoint; none by default. */
  readonly stun: readonly string[];
  /** Cloud instance metadata to ask for this host's public IPv4 (src/control/metadata.ts); off by default. */
  readonly metadata: 'off' | 'aws' | 'gcp' | 'azure' | 'auto';
  /** Forward encrypted traffic between peers that cannot reach each other directly. */
  readonly relay: boolean;
  /** TCP address ("a.b.c.d:port" or "[v6]:port") to serve Prometheus metrics on (GET /metrics); off when unset. */
  readonly metricsListen?: string;
  /**
   * Prefixes this host serves as a gateway for the mesh (canonical "a.b.c.d/len"). Each must lie
   * inside the certificate's routes (`host issue --routes`), else the agent refuses to start (EROUTE).
   */
  readonly advertiseRoutes: readonly string[];
  /** Source-NAT traffic from the overlay into the advertised prefixes (for LANs that cannot route the overlay back). */
  readonly snatRoutes: boolean;
}

type Kind = 'string' | 'port' | 'urls' | 'name' | 'level' | 'ifname' | 'int' | 'workers' | 'list' | 'bool' | 'enum' | 'endpoints' | 'listen' | 'prefixes';

interface FieldSpec {
  key: keyof AgentConfig;
  flag: string; // commander's camelCase option name == JSON key
  env: string;
  kind: Kind;
  /** Default; gets the fields before this one. Undefined means required, unless `optional`. */
  def: (before: Readonly<Record<string, unknown>>) => unknown;
  optional?: boolean;
  min?: number;
  max?: number;
  /** The allowed values of an 'enum'. */
  values?: readonly string[];
}

const LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];
const NAME_RE = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

function defaultName(): string {
  const h = os.hostname().toLowerCase().replace(/[^a-z0-9-]/g, '-').replace(/^-+|-+$/g, '');
  return h.slice(0, 63) || 'host';
}

/** The most data-plane workers an agent runs (each is a V8 isolate of about 7 MiB). */
export const MAX_WORKERS = 16;

/**
 * The default worker count (`workers: auto`), by measurement (docs/performance.md, Many cores):
 * on this 2-vCPU machine two workers were no faster than one in the 2-agent bench, so hosts with
 * 2 cores or fewer run one worker; larger hosts run one per core but one (for the control thread
 * and the kernel's share of the packet path), at most 4.
 */
export function autoWorkers(cores: number = os.availableParallelism()): number {
  return cores <= 2 ? 1 : Math.min(cores - 1, 4);
}

export const AGENT_FIELDS: readonly FieldSpec[] = [
  { key: 'etcd', flag: 'etcd', env: 'CLADNET_ETCD', kind: 'urls', def: () => ['http://127.0.0.1:2379'] },
  { key: 'network', flag: 'network', env: 'CLADNET_NETWORK', kind: 'name', def: () => undefined },
  { key: 'name', flag: 'name', env: 'CLADNET_NAME', kind: 'name', def: defaultName },
  { key: 'interface', flag: 'interface', env: 'CLADNET_INTERFACE', kind: 'ifname', def: () => 'cladnet0' },
  { key: 'listenPort', flag: 'listenPort', env: 'CLADNET_LISTEN_PORT', kind: 'port', def: () => 0 },
  { key: 'stateDir', flag: 'stateDir', env: 'CLADNET_STATE_DIR', kind: 'string', def: () => '/var/lib/cladnet' },
  { key: 'socket', flag: 'socket', env: 'CLADNET_SOCKET', kind: 'string', def: () => '/run/cladnet/cladnet.sock' },
  { key: 'logLevel', flag: 'logLevel', env: 'CLADNET_LOG_LEVEL', kind: 'level', def: () => 'info' },
  { key: 'batch', flag: 'batch', env: 'CLADNET_BATCH', kind: 'int', def: () => 64, min: 1, max: 1024 },
  { key: 'workers', flag: 'workers', env: 'CLADNET_WORKERS', kind: 'workers', def: () => autoWorkers(), min: 1, max: MAX_WORKERS },
  { key: 'crypto', flag: 'crypto', env: 'CLADNET_CRYPTO', kind: 'enum', values: ['auto', 'ffi', 'native', 'wasm'], def: () => 'auto' },
  { key: 'offload', flag: 'offload', env: 'CLADNET_OFFLOAD', kind: 'bool', def: () => true },
  { key: 'udpOffload', flag: 'udpOffload', env: 'CLADNET_UDP_OFFLOAD', kind: 'bool', def: () => true },
  { key: 'advertise', flag: 'advertise', env: 'CLADNET_ADVERTISE', kind: 'list', def: () => [] },
  { key: 'cert', flag: 'cert', env: 'CLADNET_CERT', kind: 'string', def: (b) => path.join(String(b['stateDir']), 'host.cert') },
  { key: 'token', flag: 'token', env: 'CLADNET_TOKEN', kind: 'string', def: () => undefined, optional: true },
  { key: 'tokenFile', flag: 'tokenFile', env: 'CLADNET_TOKEN_FILE', kind: 'string', def: () => undefined, optional: true },
  { key: 'etcdCa', flag: 'etcdCa', env: 'CLADNET_ETCD_CA', kind: 'string', def: () => undefined, optional: true },
  { key: 'etcdCert', flag: 'etcdCert', env: 'CLADNET_ETCD_CERT', kind: 'string', def: () => undefined, optional: true },
  { key: 'etcdKey', flag: 'etcdKey', env: 'CLADNET_ETCD_KEY', kind: 'string', def: () => undefined, optional: true },
  { key: 'etcdUser', flag: 'etcdUser', env: 'CLADNET_ETCD_USER', kind: 'string', def: () => undefined, optional: true },
  { key: 'etcdPassword', flag: 'etcdPassword', env: 'CLADNET_ETCD_PASSWORD', kind: 'string', def: () => undefined, optional: true },
  { key: 'etcdPasswordFile', flag: 'etcdPasswordFile', env: 'CLADNET_ETCD_PASSWORD_FILE', kind: 'string', def: () => undefined, optional: true },
  { key: 'etcdAllowInsecurePassword', flag: 'etcdAllowInsecurePassword', env: 'CLADNET_ETCD_ALLOW_INSECURE_PASSWORD', kind: 'bool', def: () => false },
  { key: 'stun', flag: 'stun', env: 'CLADNET_STUN', kind: 'endpoints', def: () => [] },
  { key: 'metadata', flag: 'metadata', env: 'CLADNET_METADATA', kind: 'enum', values: ['off', 'aws', 'gcp', 'azure', 'auto'], def: () => 'off' },
  { key: 'relay', flag: 'relay', env: 'CLADNET_RELAY', kind: 'bool', def: () => false },
  { key: 'metricsListen', flag: 'metricsListen', env: 'CLADNET_METRICS_LISTEN', kind: 'listen', def: () => undefined, optional: true },
  { key: 'advertiseRoutes', flag: 'advertiseRoutes', env: 'CLADNET_ADVERTISE_ROUTES', kind: 'prefixes', def: () => [] },
  { key: 'snatRoutes', flag: 'snatRoutes', env: 'CLADNET_SNAT_ROUTES', kind: 'bool', def: () => false },
];

function fail(field: string, source: string, why: string): never {
  throw new CladnetError('ECONFIG', `config: ${field} (from ${source}): ${why}`, { field });
}

function coerce(spec: FieldSpec, raw: unknown, source: string): unknown {
  const f = spec.key;
  const asString = (): string => {
    if (typeof raw === 'number' && (spec.kind === 'port' || spec.kind === 'int' || spec.kind === 'workers')) return String(raw);
    if (typeof raw !== 'string') fail(f, source, `expected a string, got ${JSON.stringify(raw)}`);
    return raw.trim();
  };
  const asList = (): string[] => {
    if (Array.isArray(raw)) {
      return raw.map((x, i) => {
        if (typeof x !== 'string') fail(`${f}[${i}]`, source, `expected a string, got ${JSON.stringify(x)}`);
        return x.trim();
      });
    }
    return asString()
      .split(',')
      .map((s) => s.trim())
      .filter((s) => s.length > 0);
  };
  switch (spec.kind) {
    case 'string': {
      const s = asString();
      if (!s) fail(f, source, 'must not be empty');
      return s;
    }
    case 'name': {
      const s = asString();
      if (!NAME_RE.test(s)) fail(f, source, `"${s}" must be 1-63 of a-z, 0-9 and inner hyphens`);
      return s;
    }
    case 'ifname': {
      const s = asString();
      if (!/^[a-zA-Z0-9_.-]{1,15}$/.test(s)) fail(f, source, `"${s}" is not a valid interface name (1-15 of A-Z a-z 0-9 _ . -)`);
      return s;
    }
    case 'level': {
      const s = asString();
      if (!LEVELS.includes(s)) fail(f, source, `"${s}" is not one of ${LEVELS.join(', ')}`);
      return s;
    }
    case 'workers': {
      const s = asString();
      if (s === 'auto') return autoWorkers();
      const max = spec.max ?? MAX_WORKERS;
      if (!/^\d+$/.test(s) || Number(s) < 1 || Number(s) > max) fail(f, source, `"${s}" is not auto or an integer from 1 to ${max}`);
      return Number(s);
    }
    case 'port':
    case 'int': {
      const s = asString();
      const min = spec.kind === 'port' ? 0 : (spec.min ?? 0);
      const max = spec.kind === 'port' ? 65535 : (spec.max ?? Number.MAX_SAFE_INTEGER);
      if (!/^\d+$/.test(s) || Number(s) < min || Number(s) > max) fail(f, source, `"${s}" is not an integer from ${min} to ${max}`);
      return Number(s);
    }
    case 'urls': {
      const list = asList();
      if (list.length === 0) fail(f, source, 'needs at least one URL');
      list.forEach((u, i) => {
        let url: URL;
        try {
          url = new URL(u);
        } catch {
          fail(`${f}[${i}]`, source, `"${u}" is not a URL (expected http://host:port)`);
        }
        if (url.protocol !== 'http:' && url.protocol !== 'https:') fail(`${f}[${i}]`, source, `"${u}" must use http or https`);
      });
      return list;
    }
    case 'list':
      return asList();
    case 'bool': {
      if (typeof raw === 'boolean') return raw;
      const s = asString().toLowerCase();
      if (['true', '1', 'yes', 'on'].includes(s)) return true;
      if (['false', '0', 'no', 'off'].includes(s)) return false;
      return fail(f, source, `"${s}" is not a boolean (true/false)`);
    }
    case 'enum': {
      const s = asString();
      const values = spec.values ?? [];
      if (!values.includes(s)) fail(f, source, `"${s}" is not one of ${values.join(', ')}`);
      return s;
    }
    case 'endpoints': {
      const list = asList();
      list.forEach((e, i) => {
        if (!parseEndpoint(e)) fail(`${f}[${i}]`, source, `"${e}" is not an IPv4 address and port (a.b.c.d:port)`);
      });
      return list;
    }
    case 'listen': {
      const s = asString();
      if (!parseListenAddress(s)) fail(f, source, `"${s}" is not an IP address and port (a.b.c.d:port or [v6]:port, port 1-65535)`);
      return s;
    }
    case 'prefixes': {
      const list = asList();
      list.forEach((e, i) => {
        const p = parsePrefix(e, true);
        if (!p || formatPrefix(p) !== e) {
          const loose = parsePrefix(e, false);
          const hint = loose ? ` (did you mean ${formatPrefix(loose)}?)` : '';
          fail(`${f}[${i}]`, source, `"${e}" is not an IPv4 prefix a.b.c.d/len with host bits zero${hint}`);
        }
      });
      return [...new Set(list)];
    }
  }
}

/** "a.b.c.d:port" or "[v6]:port" (port 1-65535) as host and port for net.Server.listen; null when malformed. */
export function parseListenAddress(s: string): { host: string; port: number } | null {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|(\d{1,3}(?:\.\d{1,3}){3})):(\d{1,5})$/.exec(s);
  if (!m) return null;
  const host = m[1] ?? m[2]!;
  const port = Number(m[3]);
  if (port < 1 || port > 65535) return null;
  if (!(m[1] !== undefined ? net.isIPv6(host) : net.isIPv4(host))) return null;
  return { host, port };
}

/** Reads a JSON config file; `//` comment lines are allowed. Unknown keys are an error. */
export function readConfigFile(file: string): Record<string, unknown> {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new CladnetError('ECONFIG', `config: cannot read ${file}: ${(e as Error).message}`, { field: 'config' });
  }
  const stripped = text
    .split('\n')
    .map((l) => (/^\s*\/\//.test(l) ? '' : l))
    .join('\n');
  let obj: unknown;
  try {
    obj = JSON.parse(stripped);
  } catch (e) {
    throw new CladnetError('ECONFIG', `config: ${file} is not valid JSON: ${(e as Error).message}`, { field: 'config' });
  }
  if (typeof obj !== 'object' || obj === null || Array.isArray(obj)) {
    throw new CladnetError('ECONFIG', `config: ${file} must hold a JSON object`, { field: 'config' });
  }
  return obj as Record<string, unknown>;
}

export interface ConfigSources {
  file?: string;
  env?: NodeJS.ProcessEnv;
  flags?: Record<string, unknown>;
}

export function loadAgentConfig(src: ConfigSources): AgentConfig {
  const fileObj = src.file ? readConfigFile(src.file) : {};
  const known = new Set(AGENT_FIELDS.map((f) => f.flag));
  for (const k of Object.keys(fileObj)) {
    if (!known.has(k)) fail(k, src.file!, `unknown setting (known: ${[...known].join(', ')})`);
  }
  const env = src.env ?? {};
  const flags = src.flags ?? {};
  const out: Record<string, unknown> = {};
  for (const spec of AGENT_FIELDS) {
    let value: unknown;
    if (flags[spec.flag] !== undefined) value = coerce(spec, flags[spec.flag], `--${kebab(spec.flag)}`);
    else if (env[spec.env] !== undefined && env[spec.env] !== '') value = coerce(spec, env[spec.env], spec.env);
    else if (fileObj[spec.flag] !== undefined) value = coerce(spec, fileObj[spec.flag], src.file!);
    else value = spec.def(out);
    if (value === undefined) {
      if (spec.optional) continue;
      fail(spec.key, 'nowhere', `is required (--${kebab(spec.flag)}, ${spec.env} or "${spec.flag}" in the config file)`);
    }
    out[spec.key] = Array.isArray(value) ? Object.freeze(value) : value;
  }
  checkEtcdSecurity(out);
  if (out['token'] !== undefined && out['tokenFile'] !== undefined) {
    throw new CladnetError('ECONFIG', 'config: token: give token or tokenFile, not both', { field: 'token' });
  }
  return Object.freeze(out) as unknown as AgentConfig;
}

/** The etcd settings that only make sense together (files are read later, by createEtcd). */
function checkEtcdSecurity(c: Record<string, unknown>): void {
  const has = (k: string) => c[k] !== undefined;
  const need = (k: string, other: string) => {
    if (has(k) && !has(other)) throw new CladnetError('ECONFIG', `config: ${k}: needs ${other} as well`, { field: other });
  };
  need('etcdCert', 'etcdKey');
  need('etcdKey', 'etcdCert');
  if (has('etcdPassword') && has('etcdPasswordFile')) {
    throw new CladnetError('ECONFIG', 'config: etcdPassword: give etcdPassword or etcdPasswordFile, not both', { field: 'etcdPassword' });
  }
  if (has('etcdUser') && !has('etcdPassword') && !has('etcdPasswordFile')) {
    throw new CladnetError('ECONFIG', 'config: etcdUser: needs etcdPassword or etcdPasswordFile as well', { field: 'etcdPassword' });
  }
  if (!has('etcdUser') && (has('etcdPassword') || has('etcdPasswordFile'))) {
    throw new CladnetError('ECONFIG', 'config: etcdUser: a password is set but no etcdUser', { field: 'etcdUser' });
  }
}

export function kebab(s: string): string {
  return s.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
}

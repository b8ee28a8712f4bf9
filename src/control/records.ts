import { CladnetError, isCladnetError } from '../errors';
import { contains, formatPrefix, parseEndpoint, parseIpv4, parseOverlayCidr, parsePrefix, Prefix } from '../util/ipv4';
import { isValidName } from './keys';

/**
 * Versioned JSON records stored in etcd, and their validators.
 *
 * Validators are pure and strict: every known field is type-checked and the first bad field is named
 * in the error (`endpoints[1]: "x" is not ip:port`). Unknown fields are ignored (a newer writer may
 * add fields within version 1) and never copied into the returned value, which is frozen.
 * Checks that need more than the record itself (overlayIp inside the network CIDR, duplicates) are
 * the registry's business.
 */

export const DEFAULT_MTU = 1420;
export const DEFAULT_PORT = 51820;
export const MTU_MIN = 576;
export const MTU_MAX = 9000;
/** A record larger than this is refused before parsing (the default; record types have their own caps below). */
export const MAX_RECORD_BYTES = 64 * 1024;
/**
 * Largest stored value per record type, in bytes: refused on write (`checkRecordSize`, ERECORD
 * with field 'size') and skipped on read (the parsers refuse it before JSON.parse). At least
 * twice the largest valid record (test/unit/control-record-size.test.ts measures them): a host
 * record with a certificate, 32 endpoints, 64 host CIDRs, 16 routes (in the record and in the
 * certificate) and 63-character names is 3,611 bytes
 * (a typical one about 1 KB); a revocation 346 bytes, a lease 182, a network spec 231.
 */
export const RECORD_CAPS = Object.freeze({ network: 4096, host: 8192, lease: 1024, revoked: 1024, alive: 1024, token: 2048, tokenUse: 4096, tokenRevoked: 65536 });
export type RecordKind = keyof typeof RECORD_CAPS;

function byteSize(raw: string | Buffer): number {
  return typeof raw === 'string' ? Buffer.byteLength(raw) : raw.length;
}

/** Null when `value` fits the cap of its record type, else the reason. */
export function recordSizeError(kind: RecordKind, value: string | Buffer): string | null {
  const size = byteSize(value);
  return size > RECORD_CAPS[kind] ? `${kind} record is ${size} bytes, more than ${RECORD_CAPS[kind]}` : null;
}

/** Throws ERECORD (field 'size') when `value` is larger than its record type allows: call before every put. */
export function checkRecordSize(kind: RecordKind, value: string | Buffer): void {
  const why = recordSizeError(kind, value);
  if (why !== null) throw new CladnetError('ERECORD', why, { field: 'size' });
}
export const MAX_ENDPOINTS = 32;
/** "[" + the longest IPv6 text (45) + "]:65535" */
export const MAX_ENDPOINT6_CHARS = 53;
export const MAX_HOST_CIDRS = 64;
/**
 * Most prefixes a certificate may carry, and a record advertise (aggregate beyond that: a VPC's
 * CIDR rather than each subnet). 16 keeps the largest host record within half its cap.
 */
export const MAX_ROUTES = 16;

/** Null when `s` is a canonical IPv4 prefix a host may route ("a.b.c.d/len", host bits zero), else why not. */
export function routePrefixError(s: string): string | null {
  const p = parsePrefix(s, true);
  if (!p) return 'is not a CIDR a.b.c.d/len with host bits zero';
  if (formatPrefix(p) !== s) return `is not written canonically (${formatPrefix(p)})`;
  return null;
}

export interface NetworkSpec {
  version: 1;
  name: string;
  cidr: string;
  mtu: number;
  port: number;
  created: string; // ISO 8601
  /**
   * Base64 Ed25519 public key (32 bytes) of the network key that signs host certificates and
   * revocations. Absent only in networks made before certificates existed: agents refuse those.
   */
  trustAnchor?: string;
  /**
   * Increases with every signing of this network's spec (the signing time in Unix seconds, or one
   * more than the stored serial: `nextSpecSerial` in ./networks.ts), so an agent can tell a newer
   * spec from an earlier one put back (`olderThan` in src/agent/membership.ts). Absent in specs
   * signed before it existed (they count as 0), which keeps their canonical bytes.
   */
  serial?: number;
  /**
   * Base64 Ed25519 signature by the network key over `canonicalNetworkSpec` (src/control/cert.ts):
   * cidr, mtu and port cannot be changed by an etcd writer. Agents refuse a spec without one
   * (made before specs were signed: `cladnet network sign` adds it).
   */
  signature?: string;
}

/**
 * A host certificate: the network key's signature binds a host name to its X25519 public key and
 * overlay address for a period. Signed over `canonicalCert` (src/control/cert.ts); this file only
 * checks the shape.
 */
export interface HostCert {
  version: 1;
  network: string;
  name: string;
  publicKey: string; // base64 X25519, 32 bytes
  overlayIp: string;
  issued: string; // ISO 8601; not valid before
  notAfter: string; // ISO 8601; not valid after
  serial: string; // 32 lowercase hex digits, random
  /**
   * The host may relay for others (`cladnet host issue --relay`). Only `true` or absent, so
   * certificates without it keep their canonical bytes. A record's `relay` flag counts only
   * when its certificate carries this.
   */
  relay?: true;
  /**
   * Prefixes the host may route for the mesh (`cladnet host issue --routes`): canonical
   * "a.b.c.d/len" strings, sorted, no duplicates. Absent (never empty) on a certificate without
   * any, so older certificates keep their canonical bytes. Peers accept a record's advertised
   * `routes` only inside these.
   */
  routes?: string[];
  /**
   * Security groups the host belongs to (`cladnet host issue --groups web,db`): names, sorted,
   * without duplicates, at most MAX_GROUPS; absent rather than empty, so certificates without
   * groups keep their canonical bytes. Network policies (./policy.ts) name them.
   */
  groups?: string[];
  /**
   * Set on a certificate a host made for itself under a join token (src/control/token.ts): the
   * token's id, the use it consumed (1..grant.uses) and the grant itself (signed by the network
   * key). Such a certificate is signed by the grant's delegate key, not the network key. All three
   * or none.
   */
  token?: string;
  use?: number;
  grant?: TokenGrant;
  signature: string; // base64 Ed25519 signature, 64 bytes
}

/**
 * A join token's public half (`cladnet token create`), signed by the network key: it delegates
 * to `delegateKey` the right to certify up to `uses` hosts whose names match `names`, until
 * `notAfter`, each certificate valid at most `certDays` days. Signed over `canonicalGrant`
 * (src/control/cert.ts). Also the value of /tokens/<id>.
 */
export interface TokenGrant {
  version: 1;
  network: string;
  id: string; // 32 lowercase hex digits, random
  names: string; // name pattern: a-z, 0-9, '-' and '*' (any run of name characters)
  uses: number; // 1..MAX_TOKEN_USES
  issued: string; // ISO 8601
  notAfter: string; // ISO 8601: no host enrolls with the token after this
  certDays: number; // lifetime of each certificate made under it
  delegateKey: string; // base64 Ed25519 public key, 32 bytes
  /**
   * Security groups certificates made under the grant may carry (`token create --groups`): a
   * subset of these, by default all. Absent: none (and the grant keeps its canonical bytes).
   */
  groups?: string[];
  signature: string; // base64 Ed25519 signature by the network key, 64 bytes
}

/**
 * Value of /tokens-revoked/<id>, signed by the network key: every certificate made under the token
 * is revoked except those whose serial is in `keep` (the hosts that had enrolled when the
 * operator revoked it), and no host enrolls with it any more.
 */
export interface TokenRevocation {
  version: 1;
  network: string;
  token: string;
  revoked: string; // ISO 8601
  keep: string[]; // serials
  signature: string;
}

export const MAX_TOKEN_USES = 1000;
export const MAX_TOKEN_CERT_DAYS = 3650;
export const TOKEN_ID_RE = /^[0-9a-f]{32}$/;
/** A name pattern: name characters and '*'. */
export const NAME_PATTERN_RE = /^[a-z0-9*-]{1,63}$/;

/**
 * Value of /revoked/<name>, signed by the network key. `serial` null revokes every certificate for
 * `name` issued at or before `revoked`; a serial revokes that certificate only.
 */
export interface RevocationRecord {
  version: 1;
  network: string;
  name: string;
  serial: string | null;
  revoked: string; // ISO 8601
  signature: string; // base64 Ed25519 signature, 64 bytes
}

export interface HostRecord {
  version: 1;
  name: string;
  network: string;
  overlayIp: string;
  publicKey: string; // base64 X25519, 32 bytes
  endpoints: string[]; // "a.b.c.d:port"
  /**
   * IPv6 candidates, "[2001:db8::1]:port" (absent: none; older agents ignore the field, and an
   * older record without it parses as before). Only the shape is checked here; a peer skips an
   * entry that is no usable unicast address with a warning (src/agent/candidates.ts).
   */
  endpoints6?: string[];
  hostCidrs: string[]; // underlay networks the host sits on, "a.b.c.d/len"
  listenPort: number;
  epoch: number; // set by Registry.publish, monotonic per host
  updated: string; // ISO 8601
  /** Random per agent run (16 hex digits): tells a restart from a re-publish. */
  session: string;
  /** The host's certificate; peers accept the record only when it verifies and matches. */
  cert?: HostCert;
  /** The host relays encrypted traffic between peers that cannot reach each other directly. */
  relay?: boolean;
  /**
   * What the host learned about its NAT (src/agent/reflexive.ts): 'eim' means its reflexive
   * address (published among the endpoints) works for every peer, 'varies' that only a relay helps.
   */
  nat?: 'none' | 'eim' | 'varies' | 'unknown';
  /** Its public address as peers or STUN servers see it ("a.b.c.d:port"), when known. */
  reflexive?: string;
  /**
   * Prefixes the host serves as a gateway (`--advertise-routes`). Peers use only those its
   * certificate's `routes` cover (an etcd writer cannot grant more).
   */
  routes?: string[];
}

/** Value of /leases/<ip>. */
export interface LeaseRecord {
  version: 1;
  host: string;
  publicKey: string;
  created: string; // ISO 8601
}

export type Parsed<T> = { ok: true; value: T } | { ok: false; error: string };

/** Thrown inside the validators only; turned into `{ok:false}` at the boundary. */
class FieldError extends Error {}

function fail(field: string, msg: string): never {
  throw new FieldError(`${field}: ${msg}`);
}

function show(v: unknown): string {
  if (typeof v === 'string') return JSON.stringify(v.length > 64 ? `${v.slice(0, 64)}...` : v);
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  return typeof v === 'object' ? 'an object' : String(v);
}

function parseJsonObject(raw: string | Buffer, maxBytes = MAX_RECORD_BYTES): Record<string, unknown> {
  const size = byteSize(raw);
  if (size > maxBytes) throw new FieldError(`record is ${size} bytes, more than ${maxBytes}`);
  let v: unknown;
  try {
    v = JSON.parse(typeof raw === 'string' ? raw : raw.toString('utf8'));
  } catch (e) {
    throw new FieldError(`not JSON: ${(e as Error).message}`);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new FieldError(`expected a JSON object, got ${show(v)}`);
  return v as Record<string, unknown>;
}

function str(o: Record<string, unknown>, field: string): string {
  const v = o[field];
  if (typeof v !== 'string') fail(field, `expected a string, got ${show(v)}`);
  return v;
}

function int(o: Record<string, unknown>, field: string, min: number, max: number): number {
  const v = o[field];
  if (typeof v !== 'number' || !Number.isInteger(v)) fail(field, `expected an integer, got ${show(v)}`);
  if (v < min || v > max) fail(field, `${v} is outside ${min}..${max}`);
  return v;
}

function version1(o: Record<string, unknown>): 1 {
  if (o['version'] !== 1) fail('version', `expected 1, got ${show(o['version'])}`);
  return 1;
}

function name(o: Record<string, unknown>, field: string, expected?: string): string {
  const v = str(o, field);
  if (!isValidName(v)) fail(field, `${show(v)} is not a valid name`);
  if (expected !== undefined && v !== expected) fail(field, `${show(v)} does not match the key (${show(expected)})`);
  return v;
}

function isoTime(o: Record<string, unknown>, field: string): string {
  const v = str(o, field);
  // Date.parse accepts much more than ISO 8601; insist on the shape toISOString() writes (ms optional).
  if (!/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$/.test(v) || Number.isNaN(Date.parse(v))) {
    fail(field, `${show(v)} is not an ISO 8601 time`);
  }
  return v;
}

function ipv4(o: Record<string, unknown>, field: string): string {
  const v = str(o, field);
  if (parseIpv4(v) === null) fail(field, `${show(v)} is not an IPv4 address`);
  return v;
}

/** True when `s` is canonical base64 of exactly 32 bytes (an X25519 public key). */
export function isPublicKey(s: unknown): s is string {
  if (typeof s !== 'string' || s.length !== 44 || !/^[A-Za-z0-9+/]{43}=$/.test(s)) return false;
  const b = Buffer.from(s, 'base64');
  return b.length === 32 && b.toString('base64') === s;
}

function publicKey(o: Record<string, unknown>, field: string): string {
  const v = str(o, field);
  if (!isPublicKey(v)) fail(field, `${show(v)} is not base64 of a 32-byte key`);
  return v;
}

function stringArray(o: Record<string, unknown>, field: string, max: number, check: (s: string) => string | null): string[] {
  const v = o[field];
  if (!Array.isArray(v)) fail(field, `expected an array, got ${show(v)}`);
  if (v.length > max) fail(field, `${v.length} entries, at most ${max} allowed`);
  return v.map((item: unknown, i: number) => {
    if (typeof item !== 'string') fail(`${field}[${i}]`, `expected a string, got ${show(item)}`);
    const why = check(item);
    if (why !== null) fail(`${field}[${i}]`, `${show(item)} ${why}`);
    return item;
  });
}

function session(o: Record<string, unknown>, field: string): string {
  const v = str(o, field);
  if (!/^[0-9a-f]{16}$/.test(v)) fail(field, `${show(v)} is not 16 lowercase hex digits`);
  return v;
}

const SERIAL_RE = /^[0-9a-f]{32}$/;

function serial(o: Record<string, unknown>, field: string): string {
  const v = str(o, field);
  if (!SERIAL_RE.test(v)) fail(field, `${show(v)} is not 32 lowercase hex digits`);
  return v;
}

/** True when `s` is canonical base64 of exactly `bytes` bytes. */
export function isBase64Of(s: unknown, bytes: number): s is string {
  if (typeof s !== 'string' || s.length !== Math.ceil(bytes / 3) * 4) return false;
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(s)) return false;
  const b = Buffer.from(s, 'base64');
  return b.length === bytes && b.toString('base64') === s;
}

function base64Of(o: Record<string, unknown>, field: string, bytes: number): string {
  const v = str(o, field);
  if (!isBase64Of(v, bytes)) fail(field, `${show(v)} is not base64 of ${bytes} bytes`);
  return v;
}

/** A nested object field, its own fields named `field.x` in errors. */
function object(o: Record<string, unknown>, field: string): Record<string, unknown> {
  const v = o[field];
  if (typeof v !== 'object' || v === null || Array.isArray(v)) fail(field, `expected an object, got ${show(v)}`);
  return v as Record<string, unknown>;
}

function prefixed<T>(prefix: string, f: () => T): T {
  if (!prefix) return f();
  try {
    return f();
  } catch (e) {
    if (e instanceof FieldError) throw new FieldError(`${prefix}.${e.message}`);
    throw e;
  }
}

function certFields(o: Record<string, unknown>, expect: { network?: string; name?: string }): HostCert {
  const cert: HostCert = {
    version: version1(o),
    network: name(o, 'network', expect.network),
    name: name(o, 'name', expect.name),
    publicKey: publicKey(o, 'publicKey'),
    overlayIp: ipv4(o, 'overlayIp'),
    issued: isoTime(o, 'issued'),
    notAfter: isoTime(o, 'notAfter'),
    serial: serial(o, 'serial'),
    signature: base64Of(o, 'signature', 64),
  };
  if (o['relay'] !== undefined) {
    if (o['relay'] !== true) fail('relay', `expected true or absent, got ${show(o['relay'])}`);
    cert.relay = true;
  }
  if (o['routes'] !== undefined) {
    const routes = stringArray(o, 'routes', MAX_ROUTES, routePrefixError);
    if (routes.length === 0) fail('routes', 'an empty list (leave the field out instead)');
    const sorted = [...new Set(routes)].sort();
    if (sorted.join(',') !== routes.join(',')) fail('routes', 'not sorted without duplicates');
    cert.routes = Object.freeze(routes) as string[];
  }
  if (o['groups'] !== undefined) cert.groups = groupList(o, 'groups');
  if (o['token'] !== undefined || o['use'] !== undefined || o['grant'] !== undefined) {
    cert.token = tokenId(o, 'token');
    cert.use = int(o, 'use', 1, MAX_TOKEN_USES);
    const g = object(o, 'grant');
    cert.grant = prefixed('grant', () => grantFields(g));
  }
  return Object.freeze(cert);
}

/**
 * Most groups one certificate (or join-token grant) may name, and a group name's shape: like a
 * host name but at most 32 characters. Both keep the largest host record (with routes) under half
 * its cap.
 */
export const MAX_GROUPS = 8;
const GROUP_RE = /^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$/;

export function isValidGroupName(s: unknown): s is string {
  return typeof s === 'string' && GROUP_RE.test(s);
}

/** A certificate's groups: 1..MAX_GROUPS valid names, sorted, no duplicates (the canonical form only). */
function groupList(o: Record<string, unknown>, field: string): string[] {
  const v = o[field];
  if (!Array.isArray(v) || v.length === 0 || v.length > MAX_GROUPS) fail(field, `expected 1 to ${MAX_GROUPS} group names, got ${show(v)}`);
  v.forEach((g, i) => {
    if (!isValidGroupName(g)) fail(`${field}[${i}]`, `${show(g)} is not a valid group name (1-32 of a-z, 0-9, '-', not starting or ending with '-')`);
    if (i > 0 && !((v[i - 1] as string) < (g as string))) fail(field, 'must be sorted without duplicates');
  });
  return Object.freeze([...(v as string[])]) as string[];
}

function tokenId(o: Record<string, unknown>, field: string): string {
  const v = str(o, field);
  if (!TOKEN_ID_RE.test(v)) fail(field, `${show(v)} is not 32 lowercase hex digits`);
  return v;
}

function grantFields(o: Record<string, unknown>, expect: { network?: string; id?: string } = {}): TokenGrant {
  const g: TokenGrant = {
    version: version1(o),
    network: name(o, 'network', expect.network),
    id: tokenId(o, 'id'),
    names: namePattern(o, 'names'),
    uses: int(o, 'uses', 1, MAX_TOKEN_USES),
    issued: isoTime(o, 'issued'),
    notAfter: isoTime(o, 'notAfter'),
    certDays: int(o, 'certDays', 1, MAX_TOKEN_CERT_DAYS),
    delegateKey: base64Of(o, 'delegateKey', 32),
    signature: base64Of(o, 'signature', 64),
  };
  if (o['groups'] !== undefined) g.groups = groupList(o, 'groups');
  if (expect.id !== undefined && g.id !== expect.id) fail('id', `${show(g.id)} does not match the key (${show(expect.id)})`);
  return Object.freeze(g);
}

function namePattern(o: Record<string, unknown>, field: string): string {
  const v = str(o, field);
  if (!NAME_PATTERN_RE.test(v)) fail(field, `${show(v)} is not a name pattern (a-z, 0-9, '-' and '*', 1-63 characters)`);
  return v;
}

/** A grant on its own (a JSON string or an already parsed object): shape only, see TrustAnchor.verifyGrant. */
export function parseTokenGrant(raw: string | Buffer | object, expect: { network?: string; id?: string } = {}): Parsed<TokenGrant> {
  return guard(() => {
    const o = typeof raw === 'string' || Buffer.isBuffer(raw) ? parseJsonObject(raw, RECORD_CAPS.token) : (raw as Record<string, unknown>);
    if (typeof o !== 'object' || o === null || Array.isArray(o)) throw new FieldError(`expected a JSON object, got ${show(o)}`);
    return grantFields(o, expect);
  });
}

export function parseTokenRevocation(raw: string | Buffer, expect: { network?: string; token?: string } = {}): Parsed<TokenRevocation> {
  return guard(() => {
    const o = parseJsonObject(raw, RECORD_CAPS.tokenRevoked);
    const rev: TokenRevocation = {
      version: version1(o),
      network: name(o, 'network', expect.network),
      token: tokenId(o, 'token'),
      revoked: isoTime(o, 'revoked'),
      keep: stringArray(o, 'keep', MAX_TOKEN_USES, (s) => (SERIAL_RE.test(s) ? null : 'is not 32 lowercase hex digits')),
      signature: base64Of(o, 'signature', 64),
    };
    if (expect.token !== undefined && rev.token !== expect.token) fail('token', `${show(rev.token)} does not match the key (${show(expect.token)})`);
    return freezeDeep(rev);
  });
}

export function serializeTokenGrant(g: TokenGrant): string {
  const { version, network, id, names, uses, issued, notAfter, certDays, delegateKey, groups, signature } = g;
  return JSON.stringify({ version, network, id, names, uses, issued, notAfter, certDays, delegateKey, groups, signature });
}

export function serializeTokenRevocation(r: TokenRevocation): string {
  const { version, network, token, revoked, keep, signature } = r;
  return JSON.stringify({ version, network, token, revoked, keep, signature });
}

function guard<T>(f: () => T): Parsed<T> {
  try {
    return { ok: true, value: f() };
  } catch (e) {
    if (e instanceof FieldError) return { ok: false, error: e.message };
    throw e;
  }
}

function freezeDeep<T extends object>(v: T): Readonly<T> {
  for (const x of Object.values(v)) if (Array.isArray(x)) Object.freeze(x);
  return Object.freeze(v);
}

export function parseNetworkSpec(raw: string | Buffer, expect: { name?: string } = {}): Parsed<NetworkSpec> {
  return guard(() => {
    const o = parseJsonObject(raw, RECORD_CAPS.network);
    const spec: NetworkSpec = {
      version: version1(o),
      name: name(o, 'name', expect.name),
      cidr: overlayCidr(o, 'cidr'),
      mtu: int(o, 'mtu', MTU_MIN, MTU_MAX),
      port: int(o, 'port', 1, 65535),
      created: isoTime(o, 'created'),
    };
    if (o['trustAnchor'] !== undefined) spec.trustAnchor = base64Of(o, 'trustAnchor', 32);
    if (o['serial'] !== undefined) spec.serial = int(o, 'serial', 1, Number.MAX_SAFE_INTEGER);
    if (o['signature'] !== undefined) spec.signature = base64Of(o, 'signature', 64);
    return freezeDeep(spec);
  });
}

function overlayCidr(o: Record<string, unknown>, field: string): string {
  const v = str(o, field);
  try {
    parseOverlayCidr(v, field);
  } catch (e) {
    if (isCladnetError(e, 'ECIDR')) throw new FieldError(e.message);
    throw e;
  }
  return v;
}

export function parseHostRecord(raw: string | Buffer, expect: { network?: string; name?: string } = {}): Parsed<HostRecord> {
  return guard(() => {
    const o = parseJsonObject(raw, RECORD_CAPS.host);
    const rec: HostRecord = {
      version: version1(o),
      name: name(o, 'name', expect.name),
      network: name(o, 'network', expect.network),
      overlayIp: ipv4(o, 'overlayIp'),
      publicKey: publicKey(o, 'publicKey'),
      endpoints: stringArray(o, 'endpoints', MAX_ENDPOINTS, (s) => (parseEndpoint(s) ? null : 'is not ip:port')),
      hostCidrs: stringArray(o, 'hostCidrs', MAX_HOST_CIDRS, (s) => (parsePrefix(s, true) ? null : 'is not a CIDR a.b.c.d/len with host bits zero')),
      listenPort: int(o, 'listenPort', 1, 65535),
      epoch: int(o, 'epoch', 0, Number.MAX_SAFE_INTEGER),
      updated: isoTime(o, 'updated'),
      session: session(o, 'session'),
    };
    if (o['endpoints6'] !== undefined) {
      rec.endpoints6 = stringArray(o, 'endpoints6', MAX_ENDPOINTS, (s) => (s.length <= MAX_ENDPOINT6_CHARS ? null : 'is too long'));
    }
    if (o['relay'] !== undefined) {
      if (typeof o['relay'] !== 'boolean') fail('relay', `expected true or false, got ${show(o['relay'])}`);
      rec.relay = o['relay'];
    }
    if (o['nat'] !== undefined) {
      const nat = o['nat'];
      if (nat !== 'none' && nat !== 'eim' && nat !== 'varies' && nat !== 'unknown') fail('nat', `expected none, eim, varies or unknown, got ${show(nat)}`);
      rec.nat = nat;
    }
    if (o['reflexive'] !== undefined) {
      const r = str(o, 'reflexive');
      if (!parseEndpoint(r)) fail('reflexive', `${show(r)} is not ip:port`);
      rec.reflexive = r;
    }
    if (o['routes'] !== undefined) rec.routes = stringArray(o, 'routes', MAX_ROUTES, routePrefixError);
    // Shape only (the field names are those of the certificate); trust is the peer computation's call.
    if (o['cert'] !== undefined) {
      const c = object(o, 'cert');
      rec.cert = prefixed('cert', () => certFields(c, {}));
    }
    return freezeDeep(rec);
  });
}

/** A certificate on its own (a JSON string or an already parsed object). */
export function parseHostCert(raw: string | Buffer | object, expect: { network?: string; name?: string } = {}): Parsed<HostCert> {
  return guard(() => {
    const o = typeof raw === 'string' || Buffer.isBuffer(raw) ? parseJsonObject(raw) : (raw as Record<string, unknown>);
    if (typeof o !== 'object' || o === null || Array.isArray(o)) throw new FieldError(`expected a JSON object, got ${show(o)}`);
    return certFields(o, expect);
  });
}

export function parseRevocationRecord(raw: string | Buffer, expect: { network?: string; name?: string } = {}): Parsed<RevocationRecord> {
  return guard(() => {
    const o = parseJsonObject(raw, RECORD_CAPS.revoked);
    const s = o['serial'];
    const rec: RevocationRecord = {
      version: version1(o),
      network: name(o, 'network', expect.network),
      name: name(o, 'name', expect.name),
      serial: s === null ? null : serial(o, 'serial'),
      revoked: isoTime(o, 'revoked'),
      signature: base64Of(o, 'signature', 64),
    };
    return freezeDeep(rec);
  });
}

export function parseLeaseRecord(raw: string | Buffer, expect: { host?: string } = {}): Parsed<LeaseRecord> {
  return guard(() => {
    const o = parseJsonObject(raw, RECORD_CAPS.lease);
    const rec: LeaseRecord = {
      version: version1(o),
      host: name(o, 'host', expect.host),
      publicKey: publicKey(o, 'publicKey'),
      created: isoTime(o, 'created'),
    };
    return freezeDeep(rec);
  });
}

/** Null when `ip` lies inside the network's CIDR, else the reason (field `overlayIp` named). */
export function checkOverlayIpInNetwork(rec: Pick<HostRecord, 'overlayIp'>, cidr: Prefix, cidrText: string): string | null {
  const ip = parseIpv4(rec.overlayIp);
  if (ip === null) return `overlayIp: ${show(rec.overlayIp)} is not an IPv4 address`;
  if (!contains(cidr, ip)) return `overlayIp: ${rec.overlayIp} is outside the network CIDR ${cidrText}`;
  const size = 2 ** (32 - cidr.len);
  if (ip === cidr.base || ip === cidr.base + size - 1) {
    return `overlayIp: ${rec.overlayIp} is the network or broadcast address of ${cidrText}`;
  }
  return null;
}

/** Canonical JSON of a record: known fields only, in declaration order. */
export function serializeNetworkSpec(s: NetworkSpec): string {
  const { version, name, cidr, mtu, port, created, trustAnchor, serial, signature } = s;
  return JSON.stringify({ version, name, cidr, mtu, port, created, trustAnchor, serial, signature });
}

/** Known fields only, in declaration order (the signature last). */
export function certObject(c: HostCert): HostCert {
  const { version, network, name, publicKey, overlayIp, issued, notAfter, serial, relay, groups, token, use, signature } = c;
  const routes = c.routes === undefined ? undefined : [...c.routes];
  const grant = c.grant === undefined ? undefined : (JSON.parse(serializeTokenGrant(c.grant)) as TokenGrant);
  return { version, network, name, publicKey, overlayIp, issued, notAfter, serial, relay, routes, groups, token, use, grant, signature };
}

export function serializeHostCert(c: HostCert): string {
  return JSON.stringify(certObject(c));
}

export function serializeHostRecord(r: HostRecord): string {
  const { version, name, network, overlayIp, publicKey, endpoints, hostCidrs, listenPort, epoch, updated, session } = r;
  const { endpoints6, relay, nat, reflexive, routes } = r;
  const cert = r.cert === undefined ? undefined : certObject(r.cert);
  return JSON.stringify({
    version,
    name,
    network,
    overlayIp,
    publicKey,
    endpoints,
    endpoints6,
    hostCidrs,
    listenPort,
    epoch,
    updated,
    session,
    relay,
    nat,
    reflexive,
    routes,
    cert,
  });
}

export function serializeRevocationRecord(r: RevocationRecord): string {
  const { version, network, name, serial, revoked, signature } = r;
  return JSON.stringify({ version, network, name, serial, revoked, signature });
}

export function serializeLeaseRecord(r: LeaseRecord): string {
  const { version, host, publicKey, created } = r;
  return JSON.stringify({ version, host, publicKey, created });
}

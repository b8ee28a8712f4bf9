import { isCladnetError } from '../errors';
import { contains, parseEndpoint, parseIpv4, parseOverlayCidr, parsePrefix, Prefix } from '../util/ipv4';
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
/** A record larger than this is refused before parsing. */
export const MAX_RECORD_BYTES = 64 * 1024;
export const MAX_ENDPOINTS = 32;
export const MAX_HOST_CIDRS = 64;

export interface NetworkSpec {
  version: 1;
  name: string;
  cidr: string;
  mtu: number;
  port: number;
  created: string; // ISO 8601
}

export interface HostRecord {
  version: 1;
  name: string;
  network: string;
  overlayIp: string;
  publicKey: string; // base64 X25519, 32 bytes
  endpoints: string[]; // "a.b.c.d:port"
  hostCidrs: string[]; // underlay networks the host sits on, "a.b.c.d/len"
  listenPort: number;
  epoch: number; // set by Registry.publish, monotonic per host
  updated: string; // ISO 8601
  /** Random per agent run (16 hex digits): peers derive fresh keys when it changes. */
  session: string;
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

function parseJsonObject(raw: string | Buffer): Record<string, unknown> {
  const size = typeof raw === 'string' ? Buffer.byteLength(raw) : raw.length;
  if (size > MAX_RECORD_BYTES) throw new FieldError(`record is ${size} bytes, more than ${MAX_RECORD_BYTES}`);
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
    const o = parseJsonObject(raw);
    const spec: NetworkSpec = {
      version: version1(o),
      name: name(o, 'name', expect.name),
      cidr: overlayCidr(o, 'cidr'),
      mtu: int(o, 'mtu', MTU_MIN, MTU_MAX),
      port: int(o, 'port', 1, 65535),
      created: isoTime(o, 'created'),
    };
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
    const o = parseJsonObject(raw);
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
    return freezeDeep(rec);
  });
}

export function parseLeaseRecord(raw: string | Buffer, expect: { host?: string } = {}): Parsed<LeaseRecord> {
  return guard(() => {
    const o = parseJsonObject(raw);
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
  const { version, name, cidr, mtu, port, created } = s;
  return JSON.stringify({ version, name, cidr, mtu, port, created });
}

export function serializeHostRecord(r: HostRecord): string {
  const { version, name, network, overlayIp, publicKey, endpoints, hostCidrs, listenPort, epoch, updated, session } = r;
  return JSON.stringify({ version, name, network, overlayIp, publicKey, endpoints, hostCidrs, listenPort, epoch, updated, session });
}

export function serializeLeaseRecord(r: LeaseRecord): string {
  const { version, host, publicKey, created } = r;
  return JSON.stringify({ version, host, publicKey, created });
}

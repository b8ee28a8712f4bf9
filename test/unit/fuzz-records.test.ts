/**
 * Fuzz: etcd records and keys. Anyone who can write to etcd controls these bytes, so
 * parseHostRecord (with its optional certificate), parseNetworkSpec (optional trust anchor),
 * parseLeaseRecord, parseRevocationRecord, parseHostCert (text or parsed object) in
 * src/control/records.ts and parseKey in src/control/keys.ts get random JSON-ish text and mutated
 * valid records: deleted fields, changed types, near-miss values, huge and unicode strings,
 * nesting, duplicate keys, `__proto__` and `constructor` keys, byte-level damage, invalid UTF-8.
 *
 * For every input: no exception; `{ok:false, error}` with a non-empty error, or `{ok:true}` with a
 * frozen plain object holding exactly the documented fields, each passing a reference validator
 * written independently below from the rules in records.ts's doc comments; the reference and the
 * parser agree on accept/refuse (differential); an accepted record re-serializes and re-parses to
 * the same value. Object.prototype is never touched. parseKey returns null or a key whose builder
 * (hostKey, leaseKey, ...) gives back exactly the input.
 *
 * What passes the parsers then meets the trust anchor (src/control/cert.ts): genuine signed host
 * records and revocations, and copies with record or certificate fields changed, swapped or
 * dropped, at the edges of the validity period. TrustAnchor.checkRecord trusts exactly the
 * unmodified genuine certificates that bind the record and are valid now; verifyRevocation
 * accepts exactly the genuine revocations of this network.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { CLOCK_SKEW_MS, issueCert, signRevocation, TrustAnchor } from '../../src/control/cert';
import { aliveKey, hostKey, issuedKey, leaseKey, networkKey, NETWORKS_ROOT, parseKey, policyKey, revokedKey, tokenKey, tokenRevokedKey, tokenUseKey, type ParsedKey } from '../../src/control/keys';
import {
  MAX_ENDPOINTS,
  MAX_HOST_CIDRS,
  MAX_RECORD_BYTES,
  MTU_MAX,
  MTU_MIN,
  parseHostRecord,
  parseHostCert,
  parseLeaseRecord,
  parseNetworkSpec,
  parseRevocationRecord,
  RECORD_CAPS,
  serializeHostCert,
  serializeHostRecord,
  serializeLeaseRecord,
  serializeNetworkSpec,
  serializeRevocationRecord,
  type HostCert,
  type HostRecord,
  type Parsed,
  type RevocationRecord,
} from '../../src/control/records';
import { loadEd25519 } from '../../src/crypto/sign';
import { viewKey } from '../../src/control/keys';
import { casesFor, check, fuzz, mutate, type Rand } from '../helpers/fuzz';

// ---------------------------------------------------------------------------------------------
// JSON with full control over the text: objects are entry lists, so keys may repeat and may be
// "__proto__" (which an object literal or JSON.stringify cannot express as an own key).

type J = null | boolean | number | string | J[] | { entries: [string, J][] } | { text: string };

function obj(o: Record<string, J>): { entries: [string, J][] } {
  return { entries: Object.entries(o) };
}

function ws(r: Rand): string {
  return r.chance(0.9) ? '' : r.pick([' ', '\n', '\t', '\r\n', '  ']);
}

function toJson(r: Rand, v: J): string {
  if (v === null || typeof v === 'boolean') return String(v);
  if (typeof v === 'number') return Number.isFinite(v) ? (Object.is(v, -0) ? '-0' : String(v)) : 'null';
  if (typeof v === 'string') return JSON.stringify(v);
  if (Array.isArray(v)) return `[${ws(r)}${v.map((x) => toJson(r, x)).join(`,${ws(r)}`)}${ws(r)}]`;
  if ('text' in v) return v.text;
  return `{${ws(r)}${v.entries.map(([k, x]) => `${JSON.stringify(k)}${ws(r)}:${ws(r)}${toJson(r, x)}`).join(`,${ws(r)}`)}${ws(r)}}`;
}

// ---------------------------------------------------------------------------------------------
// Valid values and near misses, per field kind

const HEX = '0123456789abcdef';
const NAME_CHARS = 'abcdefghijklmnopqrstuvwxyz0123456789-';
const PROTO_KEYS = ['__proto__', 'constructor', 'prototype', 'toString', 'hasOwnProperty', 'valueOf', '__defineGetter__'];
const FIELDS = [
  'version', 'name', 'network', 'overlayIp', 'publicKey', 'endpoints', 'hostCidrs', 'listenPort', 'epoch',
  'updated', 'session', 'cidr', 'mtu', 'port', 'created', 'host',
];

function validName(r: Rand): string {
  const n = r.chance(0.1) ? 63 : r.int(1, 12);
  let s = '';
  for (let i = 0; i < n; i++) s += NAME_CHARS[r.int(0, i === 0 || i === n - 1 ? 35 : 36)];
  return s;
}

function nearName(r: Rand): string {
  return r.pick([
    '', 'A', 'Demo', '-a', 'a-', '-', 'a_b', 'a.b', 'a/b', 'a b', ' a', 'a ', 'é', 'a\u0000', 'ａ', 'x'.repeat(64),
    'a\n', 'İ', 'ß', '..', '/', '\ud800', '\u{1f600}', `${validName(r)}/${validName(r)}`, validName(r).toUpperCase(),
  ]);
}

function octet(r: Rand): string {
  return String(r.chance(0.2) ? r.pick([0, 1, 127, 254, 255]) : r.int(0, 255));
}

function validIp(r: Rand): string {
  return `${octet(r)}.${octet(r)}.${octet(r)}.${octet(r)}`;
}

function nearIp(r: Rand): string {
  return r.pick([
    '1.2.3', '1.2.3.4.5', '256.1.1.1', '1.2.3.256', '01.2.3.4', '1.2.3.04', '1.2.3.4 ', ' 1.2.3.4', '1.2.3.4\n',
    '1..3.4', '1.2.3.-4', '1.2.3.4/32', '0x1.2.3.4', '1.2.3.1e1', '١.٢.٣.٤', '1.2.3.4\u0000', '999.999.999.999',
    '1.2.3.4:5', '', '::1', '+1.2.3.4', '1.2.3.4.', '１.2.3.4', '1.2.3.0000',
  ]);
}

function validEndpoint(r: Rand): string {
  return `${validIp(r)}:${r.chance(0.2) ? r.pick([1, 65535, 51820]) : r.int(1, 65535)}`;
}

function nearEndpoint(r: Rand): string {
  return r.pick([
    `${validIp(r)}:0`, `${validIp(r)}:65536`, `${validIp(r)}:`, `:${r.int(1, 9)}`, `${validIp(r)}`, `${validIp(r)}::5`,
    `[::1]:51820`, `${validIp(r)}:051820`, `${validIp(r)}:00001`, `${validIp(r)}:1 `, `${validIp(r)}:+1`, `${nearIp(r)}:1`,
    `${validIp(r)}:1.0`, `${validIp(r)}:1e3`, `${validIp(r)}:٥`,
  ]);
}

function validPrefix(r: Rand): string {
  const len = r.int(0, 32);
  const ip = r.u32();
  const base = (len === 0 ? 0 : (ip & (0xffffffff << (32 - len))) >>> 0) >>> 0;
  return `${base >>> 24}.${(base >>> 16) & 255}.${(base >>> 8) & 255}.${base & 255}/${len}`;
}

function nearPrefix(r: Rand): string {
  return r.pick([
    '198.18.1.1/24', '198.18.1.0/33', '198.18.1.0/', '198.18.1.0', '/24', '198.18.1.0/024', '198.18.1.0/2 4',
    '198.18.1.0/-1', '198.18.1.0/24/24', `${nearIp(r)}/24`, '0.0.0.0/0 ', '10.0.0.0/8\n', '10.0.0.0/٨',
  ]);
}

const OVERLAY_RANGES: [number, number][] = [
  [0x0a000000, 8],
  [0xac100000, 12],
  [0xc0a80000, 16],
  [0x64400000, 10],
];

function fmt(v: number): string {
  return `${v >>> 24}.${(v >>> 16) & 255}.${(v >>> 8) & 255}.${v & 255}`;
}

function validOverlayCidr(r: Rand): string {
  const [base, rlen] = r.pick(OVERLAY_RANGES);
  const len = r.int(Math.max(8, rlen), 30);
  const mask = (0xffffffff << (32 - len)) >>> 0;
  const b = ((base | (r.u32() & ~((0xffffffff << (32 - rlen)) >>> 0))) & mask) >>> 0;
  return `${fmt(b)}/${len}`;
}

function nearOverlayCidr(r: Rand): string {
  return r.pick([
    '100.64.0.1/24', '100.64.0.0/31', '100.64.0.0/7', '10.0.0.0/7', '8.8.0.0/16', '172.32.0.0/16', '192.169.0.0/16',
    '100.128.0.0/16', '100.63.0.0/16', '172.16.0.0/11', nearPrefix(r), validPrefix(r), '10.0.0.0/32',
  ]);
}

function validKey(r: Rand): string {
  return r.bytes(32).toString('base64');
}

function nearKey(r: Rand): string {
  const k = validKey(r);
  return r.pick([
    k.slice(0, 43), `${k}=`, k.replace('=', ''), `${k.slice(0, 42)}B=`, `${k.slice(0, 42)}/=`, k.replace(/\+/g, '-'),
    r.bytes(31).toString('base64'), r.bytes(33).toString('base64'), r.bytes(32).toString('base64url'), ` ${k.slice(1)}`,
    `${k.slice(0, 43)}A`, k.toLowerCase(), `${k.slice(0, 20)}\n${k.slice(21)}`,
  ]);
}

function validTime(r: Rand): string {
  const t = new Date(r.int(0, 4_102_444_800_000)).toISOString();
  return r.pick([t, t.replace(/\.\d{3}/, ''), t.replace('Z', '+02:00'), t.replace(/\.(\d{3})/, '.$1456789')]);
}

function nearTime(r: Rand): string {
  return r.pick([
    'yesterday', '', '2026-13-45T00:00:00Z', '2026-02-30T00:00:00Z', '2026-01-01T24:00:00Z', '2026-01-01T00:00:60Z',
    '2026-01-01 00:00:00Z', '2026-01-01T00:00:00z', '2026-01-01T00:00:00', '2026-01-01T00:00:00.1234567890Z',
    '2026-01-01T00:00:00+2:00', '+002026-01-01T00:00:00Z', '2026-01-01T00:00:00Z\n', '9999-99-99T99:99:99Z',
    '0000-00-00T00:00:00Z', '2026-01-01T00:00:00.Z', '２026-01-01T00:00:00Z', '2026-01-01T00:00:00+99:99',
  ]);
}

function validSession(r: Rand): string {
  let s = '';
  for (let i = 0; i < 16; i++) s += HEX[r.int(0, 15)];
  return s;
}

function nearSession(r: Rand): string {
  const s = validSession(r);
  return r.pick([s.toUpperCase(), s.slice(1), `${s}0`, `${s.slice(0, 15)}g`, `0x${s.slice(2)}`, `${s.slice(0, 15)}\n`, '']);
}

function intNear(r: Rand, min: number, max: number): number {
  return r.pick([
    min, max, min - 1, max + 1, min + 0.5, -0, 0, -1, 2 ** 53, 2 ** 53 + 2, 1e308, -1e308, 5e-324, 1.0000000000000002,
    Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER + 1, r.int(min, max),
  ]);
}

type Kind =
  | 'name' | 'ip' | 'key' | 'time' | 'session' | 'endpoints' | 'cidrs' | 'overlayCidr' | 'version' | 'port' | 'mtu' | 'epoch'
  | 'serial' | 'serialOrNull' | 'sig' | 'anchor' | 'cert' | 'trueFlag';

function validSerial(r: Rand): string {
  let s = '';
  for (let i = 0; i < 32; i++) s += HEX[r.int(0, 15)];
  return s;
}

function nearBase64(r: Rand, bytes: number): string {
  const k = r.bytes(bytes).toString('base64');
  return r.pick([
    k.slice(0, -1), `${k}=`, k.replace(/=+$/, ''), `${k.slice(0, -3)}B==`, r.bytes(bytes - 1).toString('base64'),
    r.bytes(bytes + 1).toString('base64'), r.bytes(bytes).toString('base64url'), ` ${k.slice(1)}`, k.toLowerCase(), `${k}\n`,
  ]);
}

function validOf(r: Rand, k: Kind): J {
  switch (k) {
    case 'name': return validName(r);
    case 'ip': return validIp(r);
    case 'key': return validKey(r);
    case 'time': return validTime(r);
    case 'session': return validSession(r);
    case 'endpoints': return Array.from({ length: r.chance(0.05) ? MAX_ENDPOINTS : r.int(0, 4) }, () => validEndpoint(r));
    case 'cidrs': return Array.from({ length: r.chance(0.05) ? MAX_HOST_CIDRS : r.int(0, 4) }, () => validPrefix(r));
    case 'overlayCidr': return validOverlayCidr(r);
    case 'version': return 1;
    case 'port': return r.int(1, 65535);
    case 'mtu': return r.int(MTU_MIN, MTU_MAX);
    case 'epoch': return r.chance(0.1) ? Number.MAX_SAFE_INTEGER : r.int(0, 1e9);
    case 'serial': return validSerial(r);
    case 'serialOrNull': return r.chance(0.5) ? null : validSerial(r);
    case 'sig': return r.bytes(64).toString('base64');
    case 'anchor': return r.bytes(32).toString('base64');
    case 'cert': return validRecord(r, CERT_FIELDS);
    case 'trueFlag': return true;
  }
}

function nearOf(r: Rand, k: Kind): J {
  switch (k) {
    case 'name': return nearName(r);
    case 'ip': return nearIp(r);
    case 'key': return nearKey(r);
    case 'time': return nearTime(r);
    case 'session': return nearSession(r);
    case 'endpoints': {
      const a = (validOf(r, 'endpoints') as J[]).slice();
      if (r.chance(0.2)) return Array.from({ length: MAX_ENDPOINTS + 1 }, () => validEndpoint(r));
      a.splice(r.int(0, a.length), 0, r.chance(0.7) ? nearEndpoint(r) : randomJson(r, 1));
      return a;
    }
    case 'cidrs': {
      const a = (validOf(r, 'cidrs') as J[]).slice();
      if (r.chance(0.2)) return Array.from({ length: MAX_HOST_CIDRS + 1 }, () => validPrefix(r));
      a.splice(r.int(0, a.length), 0, r.chance(0.7) ? nearPrefix(r) : randomJson(r, 1));
      return a;
    }
    case 'overlayCidr': return nearOverlayCidr(r);
    case 'version': return r.pick<J>([0, 2, '1', 1.5, -1, true, [1], null, 1e0]);
    case 'port': return intNear(r, 1, 65535);
    case 'mtu': return intNear(r, MTU_MIN, MTU_MAX);
    case 'epoch': return intNear(r, 0, Number.MAX_SAFE_INTEGER);
    case 'serial':
    case 'serialOrNull': {
      const v = validSerial(r);
      return r.pick<J>([v.toUpperCase(), v.slice(1), `${v}0`, `${v.slice(0, 31)}g`, validSession(r), '', 0, false]);
    }
    case 'sig': return nearBase64(r, 64);
    case 'anchor': return r.chance(0.2) ? null : nearBase64(r, 32);
    case 'trueFlag': return r.pick<J>([false, 'true', 1, null, [true], 0]);
    case 'cert': {
      if (r.chance(0.2)) return r.pick<J>([null, [], 'cert', 0, obj({})]);
      const c = validRecord(r, CERT_FIELDS);
      mutateRecord(r, c, CERT_FIELDS);
      return c;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Random JSON values and JSON-ish text

function randomString(r: Rand): string {
  switch (r.int(0, 7)) {
    case 0: return '';
    case 1: return validName(r);
    case 2: return r.pick([validIp(r), validEndpoint(r), validPrefix(r), validKey(r), validTime(r), validSession(r)]);
    case 3: { // unicode soup: lone surrogates, NUL, RTL, emoji, combining marks
      let s = '';
      const n = r.len(32);
      for (let i = 0; i < n; i++) s += r.pick(['\u0000', '\ud800', '\udfff', '\u202e', '\u{1f600}', 'é', 'e\u0301', '\uffff', '\ufeff', '"', '\\', '/', 'a']);
      return s;
    }
    case 4: // long: name limits, and (rarely, they are slow) around the record size limit
      return 'x'.repeat(r.chance(0.9) ? r.pick([63, 64, 65, 1000]) : r.pick([40_000, MAX_RECORD_BYTES - 200, MAX_RECORD_BYTES + 1]));
    case 5: return r.pick(FIELDS.concat(PROTO_KEYS));
    default: {
      let s = '';
      const n = r.len(40);
      for (let i = 0; i < n; i++) s += String.fromCharCode(r.int(0, 127));
      return s;
    }
  }
}

function randomKey(r: Rand): string {
  return r.chance(0.5) ? r.pick(FIELDS) : r.chance(0.5) ? r.pick(PROTO_KEYS) : randomString(r).slice(0, 32);
}

function randomJson(r: Rand, depth: number): J {
  const t = r.int(0, depth > 0 ? 7 : 4);
  switch (t) {
    case 0: return null;
    case 1: return r.chance(0.5);
    case 2: return r.chance(0.5) ? r.int(-3, 70_000) : r.pick([0.5, -0, 1e308, -1e-7, 2 ** 53, 1e21, 1.5]);
    case 3:
    case 4: return randomString(r);
    case 5: return Array.from({ length: r.len(5) }, () => randomJson(r, depth - 1));
    case 6: {
      // deep nesting (V8's JSON.parse is iterative; this checks nothing recurses on it)
      const inner = toJson(r, randomJson(r, 0));
      const n = r.pick([10, 100, 5000]);
      return { text: r.chance(0.5) ? `${'['.repeat(n)}${inner}${']'.repeat(n)}` : `${'{"a":'.repeat(n)}${inner}${'}'.repeat(n)}` };
    }
    default: return { entries: Array.from({ length: r.len(6) }, (): [string, J] => [randomKey(r), randomJson(r, depth - 1)]) };
  }
}

const TOKENS = ['{', '}', '[', ']', ':', ',', '"', '"version"', '"name"', '1', '-0', '1e999', 'true', 'null', '"\\u0000"', '"\\ud800"', '\\', ' ', '"__proto__"', '0.', '.5', 'NaN', 'Infinity', '"a"'];

function jsonish(r: Rand): string {
  let s = '';
  const n = r.len(64);
  for (let i = 0; i < n; i++) s += r.pick(TOKENS);
  return s;
}

// ---------------------------------------------------------------------------------------------
// The record schemas and an independent reference validator

/** A record's fields in declaration order: name, kind, and whether it may be absent. */
type Field = [string, Kind, 'optional'?];

const SPEC_FIELDS: Field[] = [
  ['version', 'version'], ['name', 'name'], ['cidr', 'overlayCidr'], ['mtu', 'mtu'], ['port', 'port'], ['created', 'time'],
  ['trustAnchor', 'anchor', 'optional'], ['signature', 'sig', 'optional'],
];
const CERT_FIELDS: Field[] = [
  ['version', 'version'], ['network', 'name'], ['name', 'name'], ['publicKey', 'key'], ['overlayIp', 'ip'], ['issued', 'time'],
  ['notAfter', 'time'], ['serial', 'serial'], ['signature', 'sig'], ['relay', 'trueFlag', 'optional'],
];
const HOST_FIELDS: Field[] = [
  ['version', 'version'], ['name', 'name'], ['network', 'name'], ['overlayIp', 'ip'], ['publicKey', 'key'], ['endpoints', 'endpoints'],
  ['hostCidrs', 'cidrs'], ['listenPort', 'port'], ['epoch', 'epoch'], ['updated', 'time'], ['session', 'session'],
  ['cert', 'cert', 'optional'],
];
const LEASE_FIELDS: Field[] = [['version', 'version'], ['host', 'name'], ['publicKey', 'key'], ['created', 'time']];
const REVOCATION_FIELDS: Field[] = [
  ['version', 'version'], ['network', 'name'], ['name', 'name'], ['serial', 'serialOrNull'], ['revoked', 'time'], ['signature', 'sig'],
];

/** The size cap the parser of a schema applies (a certificate parsed on its own keeps the generic one). */
function capOf(fields: Field[]): number {
  if (fields === HOST_FIELDS) return RECORD_CAPS.host;
  if (fields === SPEC_FIELDS) return RECORD_CAPS.network;
  if (fields === LEASE_FIELDS) return RECORD_CAPS.lease;
  if (fields === REVOCATION_FIELDS) return RECORD_CAPS.revoked;
  return MAX_RECORD_BYTES;
}

function hasOwn(o: object, f: string): boolean {
  return Object.prototype.hasOwnProperty.call(o, f);
}

function refName(v: unknown): boolean {
  if (typeof v !== 'string' || v.length < 1 || v.length > 63) return false;
  for (const c of v) if (!NAME_CHARS.includes(c)) return false;
  return v[0] !== '-' && v[v.length - 1] !== '-';
}

function refIp(s: string): number | null {
  const parts = s.split('.');
  if (parts.length !== 4) return null;
  let v = 0;
  for (const p of parts) {
    if (!/^(0|[1-9][0-9]{0,2})$/.test(p) || Number(p) > 255) return null;
    v = v * 256 + Number(p);
  }
  return v;
}

function refEndpoint(s: string): boolean {
  const i = s.lastIndexOf(':');
  if (i < 0 || refIp(s.slice(0, i)) === null) return false;
  const port = s.slice(i + 1);
  return /^[0-9]{1,5}$/.test(port) && Number(port) >= 1 && Number(port) <= 65535;
}

function refPrefix(s: string): { base: number; len: number } | null {
  const i = s.indexOf('/');
  if (i < 0) return null;
  const ip = refIp(s.slice(0, i));
  const lenText = s.slice(i + 1);
  if (ip === null || !/^[0-9]{1,2}$/.test(lenText) || Number(lenText) > 32) return null;
  const len = Number(lenText);
  const hostBits = 2 ** (32 - len);
  return ip % hostBits === 0 ? { base: ip, len } : null;
}

function refOverlayCidr(s: string): boolean {
  const p = refPrefix(s);
  if (!p || p.len < 8 || p.len > 30) return false;
  return OVERLAY_RANGES.some(([base, len]) => len <= p.len && Math.floor(p.base / 2 ** (32 - len)) === Math.floor(base / 2 ** (32 - len)));
}

/** Canonical standard base64 (padded) of exactly `bytes` bytes. */
function refBase64(s: string, bytes: number): boolean {
  if (s.length !== 4 * Math.ceil(bytes / 3) || !/^[A-Za-z0-9+/]+={0,2}$/.test(s)) return false;
  const b = Buffer.from(s, 'base64');
  return b.length === bytes && b.toString('base64') === s;
}

const ISO = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$/;

function refValue(k: Kind, v: unknown): boolean {
  const isInt = (x: unknown, lo: number, hi: number) => typeof x === 'number' && Number.isInteger(x) && x >= lo && x <= hi;
  const strings = (x: unknown, max: number, ok: (s: string) => boolean) =>
    Array.isArray(x) && x.length <= max && x.every((s) => typeof s === 'string' && ok(s));
  switch (k) {
    case 'version': return v === 1;
    case 'name': return refName(v);
    case 'ip': return typeof v === 'string' && refIp(v) !== null;
    case 'key': return typeof v === 'string' && refBase64(v, 32);
    case 'time': return typeof v === 'string' && ISO.test(v) && !Number.isNaN(Date.parse(v));
    case 'session': return typeof v === 'string' && /^[0-9a-f]{16}$/.test(v);
    case 'endpoints': return strings(v, MAX_ENDPOINTS, refEndpoint);
    case 'cidrs': return strings(v, MAX_HOST_CIDRS, (s) => refPrefix(s) !== null);
    case 'overlayCidr': return typeof v === 'string' && refOverlayCidr(v);
    case 'port': return isInt(v, 1, 65535);
    case 'mtu': return isInt(v, MTU_MIN, MTU_MAX);
    case 'epoch': return isInt(v, 0, Number.MAX_SAFE_INTEGER);
    case 'serial': return typeof v === 'string' && /^[0-9a-f]{32}$/.test(v);
    case 'serialOrNull': return v === null || refValue('serial', v);
    case 'sig': return typeof v === 'string' && refBase64(v, 64);
    case 'anchor': return typeof v === 'string' && refBase64(v, 32);
    case 'trueFlag': return v === true;
    case 'cert': return typeof v === 'object' && v !== null && !Array.isArray(v) && refObject(v as Record<string, unknown>, CERT_FIELDS, {});
  }
}

function refObject(o: Record<string, unknown>, fields: Field[], expect: Record<string, string | undefined>): boolean {
  for (const [f, k, optional] of fields) {
    if (optional && !hasOwn(o, f)) continue;
    const x = hasOwn(o, f) ? o[f] : undefined;
    if (!refValue(k, x)) return false;
    if (expect[f] !== undefined && x !== expect[f]) return false;
  }
  return true;
}

/** The input decoded once per case (the reference, expectFor and the value check share it). */
const decoded = new WeakMap<object, { value: unknown } | null>();
let lastText: { raw: string; v: { value: unknown } | null } | null = null;
function decode(raw: string | Buffer): { value: unknown } | null {
  if (typeof raw === 'string' && lastText?.raw === raw) return lastText.v;
  if (typeof raw !== 'string' && decoded.has(raw)) return decoded.get(raw)!;
  let v: { value: unknown } | null;
  try {
    v = { value: JSON.parse(typeof raw === 'string' ? raw : raw.toString('utf8')) };
  } catch {
    v = null;
  }
  if (typeof raw === 'string') lastText = { raw, v };
  else decoded.set(raw, v);
  return v;
}

/** The reference: would a record with these fields be accepted? (Expected names as the parser gets them.) */
function refAccepts(raw: string | Buffer, fields: Field[], expect: Record<string, string | undefined>): boolean {
  const size = typeof raw === 'string' ? Buffer.byteLength(raw) : raw.length;
  if (size > capOf(fields)) return false;
  const d = decode(raw);
  if (d === null) return false;
  const v = d.value;
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return false;
  return refObject(v as Record<string, unknown>, fields, expect);
}

/** An accepted value: a frozen plain object with exactly the schema's fields (optional ones when given), equal to the input's. */
function checkValue(v: Record<string, unknown>, input: Record<string, unknown>, fields: Field[], where: string): void {
  check(Object.getPrototypeOf(v) === Object.prototype, `${where}: value is not a plain object`);
  check(Object.isFrozen(v), `${where}: value is not frozen`);
  const want = fields.filter(([f, , optional]) => !optional || hasOwn(input, f)).map(([f]) => f);
  const got = Reflect.ownKeys(v);
  check(got.length === want.length && want.every((f, i) => got[i] === f), () => `${where}: fields ${String(got)}, expected ${want}`);
  for (const [f, k] of fields) {
    if (!want.includes(f)) continue;
    const x = v[f];
    check(refValue(k, x), () => `${where}.${f} = ${JSON.stringify(x)} fails the reference rules`);
    if (k === 'cert') {
      checkValue(x as Record<string, unknown>, input[f] as Record<string, unknown>, CERT_FIELDS, `${where}.${f}`);
      continue;
    }
    check(JSON.stringify(x) === JSON.stringify(input[f]), () => `${where}.${f} differs from the input`);
    if (Array.isArray(x)) check(Object.isFrozen(x) && Object.getPrototypeOf(x) === Array.prototype, `${where}.${f} is not a frozen array`);
  }
}

/** What the fuzzer reached, per parser: accepted records and the field each refusal named. */
class Coverage {
  accepted = 0;
  readonly refusedBy = new Map<string, number>();
  add(res: Parsed<unknown>): void {
    if (res.ok) this.accepted++;
    else {
      const field = res.error.split(/[:[ .]/)[0]!;
      this.refusedBy.set(field, (this.refusedBy.get(field) ?? 0) + 1);
    }
  }
  /** Every field was refused at least once, and enough records got through to test the value checks. */
  expectReached(fields: Field[], cases: number): void {
    const missing = fields.map(([f]) => f).filter((f) => !this.refusedBy.has(f));
    expect(missing, `fields never refused: ${missing}`).toEqual([]);
    for (const why of ['not', 'record', 'expected']) expect(this.refusedBy.get(why) ?? 0, `refusal "${why}..."`).toBeGreaterThan(0);
    expect(this.accepted / cases).toBeGreaterThan(0.05);
  }
}

/** Checks one parse result against the reference and the parser's documented guarantees. */
function checkResult<T extends object>(
  res: Parsed<T>,
  raw: string | Buffer,
  fields: Field[],
  expect: Record<string, string | undefined>,
  serialize: (v: T) => string,
  reparse: (s: string) => Parsed<T>,
): void {
  check(typeof res === 'object' && res !== null && typeof res.ok === 'boolean', 'result is not {ok: boolean}');
  const want = refAccepts(raw, fields, expect);
  if (!res.ok) {
    check(typeof res.error === 'string' && res.error.length > 0, 'refusal without an error message');
    check(!want, () => `refused a record the reference accepts: ${res.error}`);
    return;
  }
  check(want, () => `accepted a record the reference refuses: ${JSON.stringify(res.value).slice(0, 300)}`);
  const input = decode(raw)!.value as Record<string, unknown>;
  checkValue(res.value as Record<string, unknown>, input, fields, 'value');
  const text = serialize(res.value);
  const again = reparse(text);
  check(again.ok && serialize(again.value) === text, () => `re-serialized record does not round-trip: ${text.slice(0, 300)}`);
}

// ---------------------------------------------------------------------------------------------
// Input generation

function validRecord(r: Rand, fields: Field[]): { entries: [string, J][] } {
  return { entries: fields.filter(([, , optional]) => !optional || r.chance(0.6)).map(([f, k]): [string, J] => [f, validOf(r, k)]) };
}

/** Applies 1..4 structural mutations to a record's entry list (in place). */
function mutateRecord(r: Rand, rec: { entries: [string, J][] }, fields: Field[]): void {
  const n = r.int(1, 4);
  const e = rec.entries;
  for (let i = 0; i < n; i++) {
    const at = e.length > 0 ? r.int(0, e.length - 1) : 0;
    const kindOf = (key: string) => fields.find(([f]) => f === key)?.[1];
    switch (r.int(0, 10)) {
      case 0: // delete a field
        if (e.length > 0) e.splice(at, 1);
        break;
      case 1: // change its type or value to anything
        if (e.length > 0) e[at]![1] = randomJson(r, 2);
        break;
      case 2:
      case 3: { // near miss for the field's kind
        const k = e.length > 0 ? kindOf(e[at]![0]) : undefined;
        if (k) e[at]![1] = nearOf(r, k);
        break;
      }
      case 4: // unknown field (ignored), sometimes huge
        e.splice(at, 0, [randomKey(r), r.chance(0.1) ? 'x'.repeat(r.pick([1000, 60_000, MAX_RECORD_BYTES])) : randomJson(r, 2)]);
        break;
      case 5: { // prototype-pollution keys, with record-looking values
        const inner = r.chance(0.5) ? validRecord(r, fields) : obj({ polluted: true, version: 1, isAdmin: true });
        e.splice(at, 0, [r.pick(PROTO_KEYS), r.chance(0.7) ? inner : randomJson(r, 1)]);
        break;
      }
      case 6: { // duplicate key: the last one wins in JSON.parse
        if (e.length > 0) {
          const [f] = e[at]!;
          const k = kindOf(f);
          e.push([f, k && r.chance(0.5) ? (r.chance(0.5) ? validOf(r, k) : nearOf(r, k)) : randomJson(r, 1)]);
        }
        break;
      }
      case 7: // wrap a value: ["v"] or {"v": ...}
        if (e.length > 0) e[at]![1] = r.chance(0.5) ? [e[at]![1]] : obj({ value: e[at]![1] });
        break;
      case 8: // string value with unicode around it
        if (e.length > 0 && typeof e[at]![1] === 'string') {
          const s = e[at]![1] as string;
          e[at]![1] = r.pick([`${s}\u0000`, `\ufeff${s}`, `${s}\u200b`, s.normalize('NFD'), `${s}\ud800`, s.toUpperCase()]);
        }
        break;
      case 9: // shuffle
        e.sort(() => r.next() - 0.5);
        break;
      default: // valid again (lets a mutated record become acceptable)
        if (e.length > 0) {
          const k = kindOf(e[at]![0]);
          if (k) e[at]![1] = validOf(r, k);
        }
    }
  }
}

/** One input for a record parser: valid, mutated, random, text-damaged, or bytes. */
function recordInput(r: Rand, fields: Field[]): string | Buffer {
  const mode = r.weighted([1, 6, 1, 1, 2, 1]);
  let text: string;
  switch (mode) {
    case 0:
      text = toJson(r, validRecord(r, fields));
      break;
    case 1: {
      const rec = validRecord(r, fields);
      mutateRecord(r, rec, fields);
      text = toJson(r, rec);
      break;
    }
    case 2:
      text = toJson(r, randomJson(r, 3));
      break;
    case 3:
      text = jsonish(r);
      break;
    case 4: { // byte-level damage to a (mostly) valid record; as a Buffer half the time (invalid UTF-8)
      const rec = validRecord(r, fields);
      if (r.chance(0.3)) mutateRecord(r, rec, fields);
      const bytes = mutate(r, Buffer.from(toJson(r, rec)), 3);
      return r.chance(0.5) ? bytes : bytes.toString('utf8');
    }
    default: { // a valid record behind a BOM, in latin1, UTF-16, or padded to the size limit
      const base = toJson(r, validRecord(r, fields));
      const pad = Math.max(0, capOf(fields) - Buffer.byteLength(base) - 16 + r.int(-8, 40));
      return r.pick([
        Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(base)]),
        Buffer.from(base, 'utf16le'),
        Buffer.from(`${base.slice(0, -1)},"pad":"${'p'.repeat(pad)}"}`),
        `${base.slice(0, -1)},"pad":"${'p'.repeat(pad)}"}`,
        `${base}\u0000`,
        ` ${base} `,
      ]);
    }
  }
  return r.chance(0.15) ? Buffer.from(text) : text;
}

/** The `expect` argument: none, the record's own values (so it passes), or other names. */
function expectFor(r: Rand, raw: string | Buffer, keys: string[]): Record<string, string | undefined> {
  const out: Record<string, string | undefined> = {};
  if (r.chance(0.5)) return out;
  const parsed = decode(raw)?.value ?? null;
  for (const k of keys) {
    const own = parsed && typeof parsed === 'object' ? (parsed as Record<string, unknown>)[k] : undefined;
    const choice = r.int(0, 3);
    if (choice === 0 || choice === 1) out[k] = typeof own === 'string' ? own : validName(r);
    else if (choice === 2) out[k] = validName(r);
  }
  return out;
}

function note(n: { input: Uint8Array | string | null }, raw: string | Buffer): void {
  n.input = raw;
}

// ---------------------------------------------------------------------------------------------

describe('fuzz: etcd records', () => {
  afterAll(() => {
    // Nothing any input did reached Object.prototype.
    expect(Object.getOwnPropertyNames(Object.prototype).sort()).toEqual(PROTO_NAMES);
    expect(({} as Record<string, unknown>)['polluted']).toBeUndefined();
    expect(({} as Record<string, unknown>)['isAdmin']).toBeUndefined();
  });
  const PROTO_NAMES = Object.getOwnPropertyNames(Object.prototype).sort();

  it('parseHostRecord: refuses or returns a valid record, never throws', () => {
    const cov = new Coverage();
    const run = fuzz('hostRecord', casesFor('hostRecord'), (r, _i, n) => {
      const raw = recordInput(r, HOST_FIELDS);
      note(n, raw);
      const exp = expectFor(r, raw, ['network', 'name']);
      n.what = `expect ${JSON.stringify(exp)}`;
      const res = parseHostRecord(raw, { network: exp['network'], name: exp['name'] });
      checkResult(res, raw, HOST_FIELDS, exp, serializeHostRecord, (s) => parseHostRecord(s));
      cov.add(res);
    });
    cov.expectReached(HOST_FIELDS, run.cases);
  });

  it('parseNetworkSpec: refuses or returns a valid spec, never throws', () => {
    const cov = new Coverage();
    const run = fuzz('networkSpec', casesFor('networkSpec'), (r, _i, n) => {
      const raw = recordInput(r, SPEC_FIELDS);
      note(n, raw);
      const exp = expectFor(r, raw, ['name']);
      n.what = `expect ${JSON.stringify(exp)}`;
      const res = parseNetworkSpec(raw, { name: exp['name'] });
      checkResult(res, raw, SPEC_FIELDS, exp, serializeNetworkSpec, (s) => parseNetworkSpec(s));
      cov.add(res);
    });
    cov.expectReached(SPEC_FIELDS, run.cases);
  });

  it('parseLeaseRecord: refuses or returns a valid lease, never throws', () => {
    const cov = new Coverage();
    const run = fuzz('leaseRecord', casesFor('leaseRecord'), (r, _i, n) => {
      const raw = recordInput(r, LEASE_FIELDS);
      note(n, raw);
      const exp = expectFor(r, raw, ['host']);
      n.what = `expect ${JSON.stringify(exp)}`;
      const res = parseLeaseRecord(raw, { host: exp['host'] });
      checkResult(res, raw, LEASE_FIELDS, exp, serializeLeaseRecord, (s) => parseLeaseRecord(s));
      cov.add(res);
    });
    cov.expectReached(LEASE_FIELDS, run.cases);
  });

  it('parseRevocationRecord: refuses or returns a valid revocation, never throws', () => {
    const cov = new Coverage();
    const run = fuzz('revocationRecord', casesFor('revocationRecord'), (r, _i, n) => {
      const raw = recordInput(r, REVOCATION_FIELDS);
      note(n, raw);
      const exp = expectFor(r, raw, ['network', 'name']);
      n.what = `expect ${JSON.stringify(exp)}`;
      const res = parseRevocationRecord(raw, { network: exp['network'], name: exp['name'] });
      checkResult(res, raw, REVOCATION_FIELDS, exp, serializeRevocationRecord, (s) => parseRevocationRecord(s));
      cov.add(res);
    });
    cov.expectReached(REVOCATION_FIELDS, run.cases);
  });

  it('parseHostCert: from text or from an already parsed object, refuses or returns a valid certificate', () => {
    const cov = new Coverage();
    const run = fuzz('hostCert', casesFor('hostCert'), (r, _i, n) => {
      const raw = recordInput(r, CERT_FIELDS);
      note(n, raw);
      const exp = expectFor(r, raw, ['network', 'name']);
      n.what = `expect ${JSON.stringify(exp)}`;
      const reparse = (s: string) => parseHostCert(s);
      const d = decode(raw);
      const parsed = d?.value;
      if (d !== null && r.chance(0.5)) {
        // The object form (what credentials.ts passes): any JSON value, no size limit.
        n.what += ' (as an object)';
        const res = parseHostCert(parsed as object, { network: exp['network'], name: exp['name'] });
        const want = typeof parsed === 'object' && parsed !== null && !Array.isArray(parsed) && refObject(parsed as Record<string, unknown>, CERT_FIELDS, exp);
        check(res.ok === want, () => `object form: ok=${res.ok}, reference says ${want}${res.ok ? '' : `: ${res.error}`}`);
        if (res.ok) checkValue(res.value as unknown as Record<string, unknown>, parsed as Record<string, unknown>, CERT_FIELDS, 'value');
        cov.add(res);
        return;
      }
      const res = parseHostCert(raw, { network: exp['network'], name: exp['name'] });
      checkResult(res, raw, CERT_FIELDS, exp, serializeHostCert, reparse);
      cov.add(res);
    });
    cov.expectReached(CERT_FIELDS, run.cases);
  });
});

// ---------------------------------------------------------------------------------------------
// Keys

const KINDS = ['policy', 'policies', 'hosts', 'alive', 'leases', 'revoked', 'issued', 'tokens', 'token-uses', 'tokens-revoked', 'host', 'lease', 'revoke', 'issue', 'HOSTS', '', '..', 'hosts ', 'networks'];

function keyInput(r: Rand): { raw: string | Buffer; built: ParsedKey | null } {
  const net = r.chance(0.85) ? validName(r) : nearName(r);
  switch (r.weighted([3, 3, 2, 2, 2])) {
    case 0: { // built by the key builders from valid parts: must parse back to them
      const network = validName(r);
      const k = r.int(0, 9);
      if (k === 9) return { raw: policyKey(network), built: { kind: 'policy', network } };
      if (k >= 6) {
        const token = Array.from({ length: 32 }, () => '0123456789abcdef'[r.int(0, 15)]).join('');
        if (k === 6) return { raw: tokenKey(network, token), built: { kind: 'token', network, token } };
        if (k === 7) return { raw: tokenRevokedKey(network, token), built: { kind: 'tokenRevoked', network, token } };
        const use = r.int(1, 9999);
        return { raw: tokenUseKey(network, token, use), built: { kind: 'tokenUse', network, token, use } };
      }
      if (k === 0) return { raw: networkKey(network), built: { kind: 'network', network } };
      if (k === 5) {
        const name = validName(r);
        return { raw: issuedKey(network, name), built: { kind: 'issued', network, name } };
      }
      if (k === 4) {
        const name = validName(r);
        return { raw: revokedKey(network, name), built: { kind: 'revoked', network, name } };
      }
      if (k === 1) {
        const name = validName(r);
        return { raw: hostKey(network, name), built: { kind: 'host', network, name } };
      }
      if (k === 2) {
        const name = validName(r);
        return { raw: aliveKey(network, name), built: { kind: 'alive', network, name } };
      }
      const ip = validIp(r);
      return { raw: leaseKey(network, ip), built: { kind: 'lease', network, ip } };
    }
    case 1: { // the layout with near-miss parts
      const root = r.pick([NETWORKS_ROOT, NETWORKS_ROOT, '/cladnet/v1/networks', '/cladnet/v2/networks/', 'cladnet/v1/networks/', `${NETWORKS_ROOT}/`, '', '/']);
      const parts = [net];
      const extra = r.int(0, 3);
      for (let i = 0; i < extra; i++) {
        const leaf = r.pick([validName(r), nearName(r), validIp(r), nearIp(r), '', validPrefix(r)]);
        parts.push(i === 0 ? r.pick(KINDS) : leaf);
      }
      let s = root + parts.join('/');
      if (r.chance(0.1)) s += '/';
      return { raw: r.chance(0.1) ? Buffer.from(s) : s, built: null };
    }
    case 2: { // byte damage to a real key (as bytes: invalid UTF-8 too)
      const base = Buffer.from(hostKey(validName(r), validName(r)));
      const b = mutate(r, base, 3);
      return { raw: r.chance(0.5) ? b : b.toString('utf8'), built: null };
    }
    case 3: // random text
      return { raw: r.chance(0.5) ? NETWORKS_ROOT + randomString(r) : randomString(r), built: null };
    default: // random bytes after the root
      return { raw: Buffer.concat([Buffer.from(NETWORKS_ROOT), r.bytes(r.len(80))]), built: null };
  }
}

/** What a parsed key must look like: exactly the documented fields, and its builder gives back the key. */
function rebuild(k: ParsedKey): string {
  switch (k.kind) {
    case 'view':
      return viewKey(k.network, k.name);
    case 'network':
      return networkKey(k.network);
    case 'host':
      return hostKey(k.network, k.name);
    case 'alive':
      return aliveKey(k.network, k.name);
    case 'lease':
      return leaseKey(k.network, k.ip);
    case 'revoked':
      return revokedKey(k.network, k.name);
    case 'issued':
      return issuedKey(k.network, k.name);
    case 'token':
      return tokenKey(k.network, k.token);
    case 'tokenUse':
      return tokenUseKey(k.network, k.token, k.use);
    case 'tokenRevoked':
      return tokenRevokedKey(k.network, k.token);
    case 'policy':
      return policyKey(k.network);
  }
}

const KEY_FIELDS: Record<ParsedKey['kind'], string[]> = {
  view: ['kind', 'network', 'name'],
  network: ['kind', 'network'],
  host: ['kind', 'network', 'name'],
  alive: ['kind', 'network', 'name'],
  lease: ['kind', 'network', 'ip'],
  revoked: ['kind', 'network', 'name'],
  issued: ['kind', 'network', 'name'],
  token: ['kind', 'network', 'token'],
  tokenUse: ['kind', 'network', 'token', 'use'],
  tokenRevoked: ['kind', 'network', 'token'],
  policy: ['kind', 'network'],
};

describe('fuzz: etcd keys', () => {
  it('parseKey: null or a key that rebuilds to the input, never throws', () => {
    const kinds = new Map<string, number>();
    const run = fuzz('etcdKey', casesFor('etcdKey'), (r, _i, n) => {
      const { raw, built } = keyInput(r);
      n.input = raw;
      const k = parseKey(raw);
      kinds.set(k?.kind ?? 'null', (kinds.get(k?.kind ?? 'null') ?? 0) + 1);
      if (built !== null) check(JSON.stringify(k) === JSON.stringify(built), () => `builder key parsed as ${JSON.stringify(k)}`);
      if (k === null) return;
      check(typeof k === 'object' && k.kind in KEY_FIELDS, `unknown kind ${JSON.stringify(k)}`);
      const fields = KEY_FIELDS[k.kind];
      check(JSON.stringify(Object.keys(k)) === JSON.stringify(fields), () => `fields ${Object.keys(k)}`);
      const text = typeof raw === 'string' ? raw : raw.toString('utf8');
      // The builders validate their parts (they throw on a bad name or ip): a parsed key rebuilds exactly.
      check(rebuild(k) === text, () => `parsed ${JSON.stringify(k)} rebuilds to ${rebuild(k)}`);
    });
    for (const kind of ['null', 'network', 'host', 'alive', 'lease', 'revoked', 'issued', 'policy']) expect(kinds.get(kind) ?? 0, kind).toBeGreaterThan(run.cases / 50);
  });
});

// ---------------------------------------------------------------------------------------------
// Trust: what gets past the parsers is then checked against the network key (src/control/cert.ts)

describe('fuzz: signed records against the trust anchor', () => {
  it('TrustAnchor.checkRecord / verifyRevocation: only genuine certificates, binding the record, in their validity period', async () => {
    const ed = await loadEd25519();
    const net = ed.generate();
    const attacker = ed.generate();
    const anchor = new TrustAnchor(ed, 'demo', Buffer.from(net.publicKey).toString('base64'));
    const T0 = Date.parse('2026-11-21T00:00:00.000Z');
    const DAY = 86_400_000;
    /** Certificates and revocations the network key really signed, by serial / by signature. */
    const issued = new Map<string, HostCert>();
    const revocations = new Map<string, RevocationRecord>();
    const records: HostRecord[] = [];
    const revs: RevocationRecord[] = [];
    const certKeys = ['version', 'network', 'name', 'publicKey', 'overlayIp', 'issued', 'notAfter', 'serial', 'signature'] as const;
    const seen = { trusted: 0, untrusted: 0, revOk: 0, revBad: 0 };

    const makeRecord = (r: Rand): HostRecord => {
      const name = validName(r);
      const rogue = r.chance(0.1);
      const cert = issueCert(ed, rogue ? attacker.secretKey : net.secretKey, {
        network: r.chance(0.95) ? 'demo' : 'other',
        name,
        publicKey: validKey(r),
        overlayIp: `100.64.${r.int(0, 255)}.${r.int(1, 254)}`,
        validDays: r.pick([1, 30, 365]),
        now: new Date(T0 + r.int(-400, 400) * DAY),
      });
      if (!rogue) issued.set(cert.serial, cert);
      const rec = {
        version: 1 as const, name, network: cert.network, overlayIp: cert.overlayIp, publicKey: cert.publicKey, endpoints: [validEndpoint(r)],
        hostCidrs: [], listenPort: 51820, epoch: r.int(0, 9), updated: validTime(r), session: validSession(r), cert,
      };
      records.push(rec);
      if (records.length > 32) records.splice(r.int(0, records.length - 1), 1);
      return rec;
    };

    fuzz('trust', casesFor('trust'), (r, _i, note) => {
      if (records.length < 8 || r.chance(0.05)) makeRecord(r);
      if (revs.length < 4 || r.chance(0.02)) {
        const rogue = r.chance(0.1);
        const rev = signRevocation(ed, rogue ? attacker.secretKey : net.secretKey, {
          network: r.chance(0.9) ? 'demo' : 'other', name: validName(r), serial: r.chance(0.5) ? validSerial(r) : null, now: new Date(T0 + r.int(-9, 9) * DAY),
        });
        if (!rogue) revocations.set(rev.signature, rev);
        revs.push(rev);
      }
      if (r.chance(0.8)) {
        // A host record: genuine, or with fields of the record or its certificate changed or swapped.
        const base = r.pick(records);
        // Now: anywhere, or at the edges of its certificate's validity (clock skew allowed before).
        const edge = r.chance(0.5) ? Date.parse(base.cert!.notAfter) : Date.parse(base.cert!.issued) - CLOCK_SKEW_MS;
        const now = r.chance(0.3) ? T0 + r.int(-500, 800) * DAY : edge + r.pick([0, 1, -1, 1000, -1000, r.int(-DAY, DAY)]);
        const o = JSON.parse(serializeHostRecord(base)) as Record<string, unknown> & { cert: Record<string, unknown> };
        const n = r.int(0, 3);
        for (let k = 0; k < n; k++) {
          const other = r.pick(records);
          switch (r.int(0, 5)) {
            case 0: { // a record field takes another host's value (claiming its name, key or address)
              const f = r.pick(['name', 'publicKey', 'overlayIp', 'network'] as const);
              o[f] = r.chance(0.5) ? other[f] : validOf(r, f === 'publicKey' ? 'key' : f === 'overlayIp' ? 'ip' : 'name');
              break;
            }
            case 1: { // a certificate field changed (the signature no longer covers it)
              const f = r.pick(certKeys);
              o.cert ??= JSON.parse(JSON.stringify(other.cert));
              const kind = ({ version: 'version', network: 'name', name: 'name', publicKey: 'key', overlayIp: 'ip', issued: 'time', notAfter: 'time', serial: 'serial', signature: 'sig' } as const)[f];
              o.cert[f] = r.chance(0.5) ? (other.cert as unknown as Record<string, unknown>)[f] : validOf(r, kind);
              break;
            }
            case 2: // another host's certificate
              o.cert = JSON.parse(JSON.stringify(other.cert));
              break;
            case 3: // no certificate
              delete (o as Record<string, unknown>)['cert'];
              break;
            case 4: { // a bound field changed in the record and its certificate alike
              const f = r.pick(['name', 'publicKey', 'overlayIp', 'network'] as const);
              const v = r.chance(0.5) ? other[f] : validOf(r, f === 'publicKey' ? 'key' : f === 'overlayIp' ? 'ip' : 'name');
              o[f] = v;
              o.cert ??= JSON.parse(JSON.stringify(other.cert));
              o.cert[f] = v;
              break;
            }
            default: // the record made to match another host's certificate entirely
              for (const f of ['name', 'publicKey', 'overlayIp', 'network'] as const) o[f] = other[f];
              o.cert = JSON.parse(JSON.stringify(other.cert));
          }
        }
        const raw = r.chance(0.1) ? mutate(r, Buffer.from(JSON.stringify(o)), 2).toString('utf8') : JSON.stringify(o);
        note.input = raw;
        const res = parseHostRecord(raw);
        if (!res.ok) return;
        const rec = res.value;
        const why = anchor.checkRecord(rec, now);
        const c = rec.cert;
        const genuine = c !== undefined && issued.has(c.serial) && certKeys.every((f) => issued.get(c.serial)![f] === c[f]);
        const want =
          genuine && c!.network === 'demo' && rec.network === c!.network && rec.name === c!.name && rec.publicKey === c!.publicKey &&
          rec.overlayIp === c!.overlayIp && Date.parse(c!.notAfter) > Date.parse(c!.issued) && now + CLOCK_SKEW_MS >= Date.parse(c!.issued) &&
          now <= Date.parse(c!.notAfter);
        check((why === null) === want, () => `checkRecord: ${why ?? 'trusted'}; the reference says ${want ? 'trusted' : 'untrusted'}`);
        check(why === null || (typeof why === 'string' && why.length > 0), 'empty reason');
        seen[why === null ? 'trusted' : 'untrusted']++;
      } else {
        // A revocation: genuine, or with a field changed.
        const o = JSON.parse(serializeRevocationRecord(r.pick(revs))) as Record<string, unknown>;
        if (r.chance(0.6)) {
          const f = r.pick(['network', 'name', 'serial', 'revoked', 'signature', 'version'] as const);
          o[f] = validOf(r, ({ network: 'name', name: 'name', serial: 'serialOrNull', revoked: 'time', signature: 'sig', version: 'version' } as const)[f]);
        }
        const raw = JSON.stringify(o);
        note.input = raw;
        const res = parseRevocationRecord(raw);
        if (!res.ok) return;
        const why = anchor.verifyRevocation(res.value);
        const g = revocations.get(res.value.signature);
        const want = g !== undefined && g.network === 'demo' && JSON.stringify(g) === JSON.stringify(res.value);
        check((why === null) === want, () => `verifyRevocation: ${why ?? 'valid'}; the reference says ${want ? 'valid' : 'invalid'}`);
        seen[why === null ? 'revOk' : 'revBad']++;
      }
    });
    for (const k of ['trusted', 'untrusted', 'revOk', 'revBad'] as const) expect(seen[k], k).toBeGreaterThan(casesFor('trust') / 100);
  });
});

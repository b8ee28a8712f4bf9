import { CladnetError } from '../errors';
import { formatIpv6Words, handleOf, words6 } from './ipv6';

/** IPv4 addresses as unsigned 32-bit numbers, prefixes as {base, len}. Pure functions only. */
export interface Prefix {
  readonly base: number; // network address, host bits zero
  readonly len: number; // 0..32
}

const DOTTED = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/;

export function parseIpv4(s: string): number | null {
  const m = DOTTED.exec(s);
  if (!m) return null;
  let v = 0;
  for (let i = 1; i <= 4; i++) {
    const part = m[i]!;
    if (part.length > 1 && part[0] === '0') return null; // no octal-looking octets
    const o = Number(part);
    if (o > 255) return null;
    v = v * 256 + o;
  }
  return v;
}

export function formatIpv4(v: number): string {
  return `${(v >>> 24) & 255}.${(v >>> 16) & 255}.${(v >>> 8) & 255}.${v & 255}`;
}

export function maskOf(len: number): number {
  return len === 0 ? 0 : (0xffffffff << (32 - len)) >>> 0;
}

/** Parses "a.b.c.d/len". With `strict`, host bits must be zero. Returns null when malformed. */
export function parsePrefix(s: string, strict = true): Prefix | null {
  const slash = s.indexOf('/');
  if (slash < 0) return null;
  const ip = parseIpv4(s.slice(0, slash));
  const lenStr = s.slice(slash + 1);
  if (ip === null || !/^\d{1,2}$/.test(lenStr)) return null;
  const len = Number(lenStr);
  if (len > 32) return null;
  const base = (ip & maskOf(len)) >>> 0;
  if (strict && base !== ip) return null;
  return { base, len };
}

export function formatPrefix(p: Prefix): string {
  return `${formatIpv4(p.base)}/${p.len}`;
}

export function prefixSize(p: Prefix): number {
  return 2 ** (32 - p.len);
}

export function contains(p: Prefix, ip: number): boolean {
  return ((ip & maskOf(p.len)) >>> 0) === p.base;
}

export function overlaps(a: Prefix, b: Prefix): boolean {
  const len = Math.min(a.len, b.len);
  const m = maskOf(len);
  return ((a.base & m) >>> 0) === ((b.base & m) >>> 0);
}

/** Ranges an overlay may use: RFC 1918 private space and RFC 6598 shared (CGNAT) space. */
export const OVERLAY_ALLOWED: readonly Prefix[] = Object.freeze([
  { base: parseIpv4('10.0.0.0')!, len: 8 },
  { base: parseIpv4('172.16.0.0')!, len: 12 },
  { base: parseIpv4('192.168.0.0')!, len: 16 },
  { base: parseIpv4('100.64.0.0')!, len: 10 },
]);

/** Parses an overlay CIDR, throwing ECIDR with a readable reason. */
export function parseOverlayCidr(s: string, field = 'cidr'): Prefix {
  const p = parsePrefix(s, true);
  if (!p) {
    const loose = parsePrefix(s, false);
    const why = loose ? `host bits are set (did you mean ${formatPrefix(loose)}?)` : 'expected a.b.c.d/len';
    throw new CladnetError('ECIDR', `${field}: "${s}" is not a valid IPv4 CIDR: ${why}`, { field });
  }
  if (p.len < 8 || p.len > 30) {
    throw new CladnetError('ECIDR', `${field}: prefix length /${p.len} must be between /8 and /30`, { field });
  }
  const inside = OVERLAY_ALLOWED.some((a) => a.len <= p.len && contains(a, p.base));
  if (!inside) {
    throw new CladnetError(
      'ECIDR',
      `${field}: ${s} is not inside a private (10/8, 172.16/12, 192.168/16) or CGNAT (100.64/10) range`,
      { field },
    );
  }
  return p;
}

/** "198.18.1.2:51820" -> {ip, port}; null when malformed. */
export function parseEndpoint(s: string): { ip: number; port: number } | null {
  const colon = s.lastIndexOf(':');
  if (colon < 0) return null;
  const ip = parseIpv4(s.slice(0, colon));
  const portStr = s.slice(colon + 1);
  if (ip === null || !/^\d{1,5}$/.test(portStr)) return null;
  const port = Number(portStr);
  if (port < 1 || port > 65535) return null;
  return { ip, port };
}

/**
 * "198.18.1.2:51820", or "[2001:db8::1]:51820" for an IPv6 address handle (./ipv6.ts).
 */
export function formatEndpoint(ip: number, port: number): string {
  const w = words6(ip);
  return w ? `[${formatIpv6Words(w)}]:${port}` : `${formatIpv4(ip)}:${port}`;
}

/** The address part of an endpoint as text: dotted IPv4, or the IPv6 address behind a handle. */
export function formatAddress(ip: number): string {
  const w = words6(ip);
  return w ? formatIpv6Words(w) : formatIpv4(ip);
}

/**
 * "[2001:db8::1]:51820" -> {ip: its handle (./ipv6.ts), port}; null when malformed, when the
 * address is no usable unicast one (link-local, loopback, multicast, v4-mapped), or when the
 * port is out of range.
 */
export function parseEndpoint6(s: string): { ip: number; port: number } | null {
  const m = /^\[([0-9a-fA-F:.]{2,45})\]:(\d{1,5})$/.exec(s);
  if (!m) return null;
  const port = Number(m[2]);
  if (port < 1 || port > 65535) return null;
  const ip = handleOf(m[1]!);
  return ip === null ? null : { ip, port };
}

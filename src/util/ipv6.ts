import { parseIpv4 } from './ipv4';

/** IPv6 addresses as 16-byte Uint8Arrays, and their text. Pure functions only. */

/** RFC 5952 text: lowercase hex, no leading zeros, the longest run (>= 2) of zero groups as "::". */
export function formatIpv6(a: Uint8Array): string {
  const g: number[] = [];
  for (let i = 0; i < 16; i += 2) g.push((a[i]! << 8) | a[i + 1]!);
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (g[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && g[j] === 0) j++;
    if (j - i > bestLen) {
      best = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = (from: number, to: number) => g.slice(from, to).map((x) => x.toString(16)).join(':');
  return best < 0 ? hex(0, 8) : `${hex(0, best)}::${hex(best + bestLen, 8)}`;
}

/** Parses IPv6 text (with "::" and a trailing dotted quad allowed); null when malformed. */
export function parseIpv6(s: string): Uint8Array | null {
  if (s.length > 45 || !/^[0-9a-fA-F:.]+$/.test(s)) return null;
  let text = s;
  const tail: number[] = [];
  const lastColon = text.lastIndexOf(':');
  if (text.includes('.')) {
    const v4 = parseIpv4(text.slice(lastColon + 1));
    if (v4 === null) return null;
    tail.push(v4 >>> 16, v4 & 0xffff);
    text = text.slice(0, lastColon);
    if (text.endsWith(':')) text += ':'; // "x::a.b.c.d": keep the "::"
  }
  const parts = text.split('::');
  if (parts.length > 2) return null;
  const groups = (p: string): number[] | null => {
    if (p === '') return [];
    const out: number[] = [];
    for (const x of p.split(':')) {
      if (!/^[0-9a-fA-F]{1,4}$/.test(x)) return null;
      out.push(parseInt(x, 16));
    }
    return out;
  };
  const head = groups(parts[0]!);
  const rest = parts.length === 2 ? groups(parts[1]!) : [];
  if (head === null || rest === null) return null;
  const have = head.length + rest.length + tail.length;
  if (parts.length === 1 ? have !== 8 : have > 7) return null;
  const all = [...head, ...new Array<number>(8 - have).fill(0), ...rest, ...tail];
  const a = new Uint8Array(16);
  all.forEach((x, i) => {
    a[2 * i] = x >>> 8;
    a[2 * i + 1] = x & 255;
  });
  return a;
}

/**
 * IPv6 underlay addresses (issue 16): the same addresses as four 32-bit words, and the address
 * handles that let the control plane keep every endpoint a pair of numbers.
 *
 * An endpoint is `{ ip, port }` everywhere on the control thread. For an IPv4 address `ip` is the
 * address; for an IPv6 address it is a handle from intern6(), a number in 0.0.0.0/8 (never a
 * unicast IPv4 source or destination, so the two cannot collide): endpoints compare, hash and
 * cross modules as before, and only the edges (the UDP socket, the worker boundary, the record,
 * the text in status and logs) turn a handle into its 16 bytes. The data plane does not use
 * handles: it carries the address's upper 96 bits beside the low 32 (PacketBatch.hi), all zero
 * for IPv4.
 *
 * Handles are never reused while the process lives (an address seen once keeps its handle), and
 * only addresses the control thread is given are interned: published candidates, and the sources
 * of packets that passed the data plane's checks (mac1 or a session). HANDLE_MAX bounds the table;
 * past it, new IPv6 addresses get 0 (unusable; callers skip them).
 */

/** Eight 16-bit groups of an IPv6 address as four big-endian 32-bit words. */
export type Ip6Words = readonly [number, number, number, number];

/** "2001:db8::1" -> four words (parseIpv6 above, as words); null when malformed. */
export function ipv6Words(s: string): Ip6Words | null {
  const b = parseIpv6(s);
  if (b === null) return null;
  const w = (i: number) => ((b[4 * i]! << 24) | (b[4 * i + 1]! << 16) | (b[4 * i + 2]! << 8) | b[4 * i + 3]!) >>> 0;
  return [w(0), w(1), w(2), w(3)];
}

/** Canonical text (RFC 5952, formatIpv6 above) of an address given as four words. */
export function formatIpv6Words(w: Ip6Words): string {
  const b = new Uint8Array(16);
  for (let i = 0; i < 4; i++) {
    b[4 * i] = w[i]! >>> 24;
    b[4 * i + 1] = (w[i]! >>> 16) & 255;
    b[4 * i + 2] = (w[i]! >>> 8) & 255;
    b[4 * i + 3] = w[i]! & 255;
  }
  return formatIpv6(b);
}

/** Link-local (fe80::/10), loopback, unspecified, multicast, v4-mapped: never an underlay candidate. */
export function isUsableIpv6(w: Ip6Words): boolean {
  const top = w[0] >>> 16;
  if ((top & 0xffc0) === 0xfe80) return false;
  if ((top & 0xff00) === 0xff00) return false;
  if (w[0] === 0 && w[1] === 0 && (w[2] === 0 || w[2] === 0xffff)) return false; // ::, ::1, ::a.b.c.d, ::ffff:a.b.c.d
  return true;
}

export function ipv6InPrefix(w: Ip6Words, base: Ip6Words, len: number): boolean {
  for (let i = 0; i < 4; i++) {
    const bits = Math.max(0, Math.min(32, len - 32 * i));
    if (bits === 0) return true;
    const mask = bits === 32 ? 0xffffffff : (0xffffffff << (32 - bits)) >>> 0;
    if (((w[i]! & mask) >>> 0) !== ((base[i]! & mask) >>> 0)) return false;
  }
  return true;
}

/** Handles are 1..HANDLE_MAX (0.0.0.1 - 0.15.255.255). */
export const HANDLE_MAX = 0x000fffff;

const handles = new Map<string, number>();
const byHandle: Ip6Words[] = [];

/** True when `ip` is an IPv6 address handle rather than an IPv4 address. */
export function isHandle(ip: number): boolean {
  return ip > 0 && ip <= HANDLE_MAX;
}

/** The handle of an IPv6 address (the same one every time); 0 when the table is full. */
export function intern6(w: Ip6Words): number {
  const k = formatIpv6Words(w);
  let h = handles.get(k);
  if (h !== undefined) return h;
  if (byHandle.length >= HANDLE_MAX) return 0;
  byHandle.push([w[0] >>> 0, w[1] >>> 0, w[2] >>> 0, w[3] >>> 0]);
  h = byHandle.length;
  handles.set(k, h);
  return h;
}

/** The address behind a handle; null for an IPv4 address (or an unknown handle). */
export function words6(ip: number): Ip6Words | null {
  return isHandle(ip) ? (byHandle[ip - 1] ?? null) : null;
}

/** "2001:db8::1" -> its handle; null when malformed, not a usable unicast address, or the table is full. */
export function handleOf(s: string): number | null {
  const w = ipv6Words(s);
  if (w === null || !isUsableIpv6(w)) return null;
  const h = intern6(w);
  return h === 0 ? null : h;
}

/**
 * The address as the data plane carries it: the low 32 bits, and the upper 96 (zero for IPv4).
 * A number from a handle or an IPv4 address; unknown handles give all zero (0.0.0.0).
 */
export function splitAddress(ip: number): { lo: number; hi: [number, number, number] } {
  if (!isHandle(ip)) return { lo: ip >>> 0, hi: [0, 0, 0] };
  const w = byHandle[ip - 1];
  return w ? { lo: w[3], hi: [w[0], w[1], w[2]] } : { lo: 0, hi: [0, 0, 0] };
}

/** Inverse of splitAddress: a v4 address (hi all zero) or the handle of the v6 one (0 when the table is full). */
export function joinAddress(lo: number, h0: number, h1: number, h2: number): number {
  if (h0 === 0 && h1 === 0 && h2 === 0) return lo >>> 0;
  return intern6([h0, h1, h2, lo]);
}

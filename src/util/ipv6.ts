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

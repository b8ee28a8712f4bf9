/**
 * The IPv6 overlay (issue 16): each network has a ULA /48 (RFC 4193, fd00::/8) derived from its
 * signed spec, and each host's IPv6 overlay address is that prefix with the host's certified IPv4
 * overlay address in its last 32 bits:
 *
 *   prefix   fd | first 40 bits of SHA-256(PREFIX6_LABEL name \n created \n trustAnchor)   (/48)
 *   host     prefix : 0000 : 0000 : 0000 : <IPv4 overlay address>                         (/128)
 *
 * Both come from values the network key signed (the spec, the host's certificate), so no new
 * lease, no new etcd key and no new field an etcd writer could steer: a host that owns an IPv4
 * overlay address owns its IPv6 twin, and the data plane checks and routes an IPv6 packet by the
 * IPv4 address inside it (the same maps as IPv4). The spec's cidr, mtu and port are left out of
 * the hash so that re-signing those never moves the prefix.
 *
 * Pure functions; addresses are 16-byte Uint8Arrays (text: src/util/ipv6.ts).
 */
import { createHash } from 'node:crypto';
import { formatIpv4, parseIpv4 } from '../util/ipv4';
import { formatIpv6, parseIpv6 } from '../util/ipv6';
import type { NetworkSpec } from './records';

export const PREFIX6_LABEL = 'cladnet overlay ipv6 prefix v1\n';
/** The network's prefix length, and the on-link length the TUN address carries. */
export const PREFIX6_LEN = 48;

/**
 * The prefix as the data plane compares it: bytes 0-3 as one unsigned number, bytes 4-5 as
 * another (bytes 6-11 of every overlay address are zero, 12-15 the IPv4 twin).
 */
export interface Overlay6 {
  readonly hi: number;
  readonly mid: number;
}

/** The network's ULA prefix (6 bytes), deterministic from the signed spec's identity. */
export function overlayPrefix6(spec: Pick<NetworkSpec, 'name' | 'created' | 'trustAnchor'>): Uint8Array {
  const h = createHash('sha256')
    .update(`${PREFIX6_LABEL}${spec.name}\n${spec.created}\n${spec.trustAnchor ?? ''}`)
    .digest();
  const p = new Uint8Array(6);
  p[0] = 0xfd;
  p.set(h.subarray(0, 5), 1);
  return p;
}

export function overlay6Of(prefix: Uint8Array): Overlay6 {
  return {
    hi: ((prefix[0]! << 24) | (prefix[1]! << 16) | (prefix[2]! << 8) | prefix[3]!) >>> 0,
    mid: (prefix[4]! << 8) | prefix[5]!,
  };
}

/** The IPv6 overlay address of the host whose IPv4 overlay address is `v4` (a number). */
export function hostIp6(prefix: Uint8Array, v4: number): Uint8Array {
  const a = new Uint8Array(16);
  a.set(prefix.subarray(0, 6), 0);
  a[12] = (v4 >>> 24) & 255;
  a[13] = (v4 >>> 16) & 255;
  a[14] = (v4 >>> 8) & 255;
  a[15] = v4 & 255;
  return a;
}

/** The IPv4 twin inside an overlay IPv6 address of this prefix, or null when it is not one. */
export function ipv4Twin(prefix: Uint8Array, a: Uint8Array): number | null {
  for (let i = 0; i < 6; i++) if (a[i] !== prefix[i]) return null;
  for (let i = 6; i < 12; i++) if (a[i] !== 0) return null;
  return ((a[12]! << 24) | (a[13]! << 16) | (a[14]! << 8) | a[15]!) >>> 0;
}

/** `hostIp6` as text, from the dotted IPv4 overlay address; null when that is not one. */
export function hostIp6Text(prefix: Uint8Array, overlayIp: string): string | null {
  const v4 = parseIpv4(overlayIp);
  return v4 === null ? null : formatIpv6(hostIp6(prefix, v4));
}

/** The prefix as "fdxx:xxxx:xxxx::/48". */
export function formatPrefix6(prefix: Uint8Array): string {
  const a = new Uint8Array(16);
  a.set(prefix.subarray(0, 6), 0);
  return `${formatIpv6(a)}/${PREFIX6_LEN}`;
}

/** The IPv4 twin of an overlay IPv6 address given as text, formatted, or null (tests, status). */
export function twinText(prefix: Uint8Array, ip6: string): string | null {
  const a = parseIpv6(ip6);
  const v4 = a === null ? null : ipv4Twin(prefix, a);
  return v4 === null ? null : formatIpv4(v4);
}

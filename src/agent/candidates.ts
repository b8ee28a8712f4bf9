/**
 * A host record's candidates as endpoints: its IPv4 `endpoints` and its IPv6 `endpoints6`
 * (src/util/ipv6.ts handles). An IPv6 entry that is malformed or no usable unicast address
 * (link-local, loopback, multicast, v4-mapped: a forged record could use one to aim our probes
 * somewhere else) is skipped, and named in `skipped` for the caller's warning.
 */
import type { HostRecord } from '../control/records';
import type { LocalAddress } from '../os/netmon';
import { parseEndpoint, parseEndpoint6 } from '../util/ipv4';
import { ipv6Words, isUsableIpv6, type Ip6Words } from '../util/ipv6';
import type { Endpoint } from './paths';

export interface RecordCandidates {
  /** IPv4 first (in record order), then IPv6. */
  readonly all: Endpoint[];
  /** endpoints6 entries that were skipped. */
  readonly skipped: string[];
}

export function recordCandidates(rec: Pick<HostRecord, 'endpoints' | 'endpoints6'>): RecordCandidates {
  const all: Endpoint[] = [];
  for (const s of rec.endpoints) {
    const e = parseEndpoint(s);
    if (e) all.push(e);
  }
  const skipped: string[] = [];
  for (const s of rec.endpoints6 ?? []) {
    const e = parseEndpoint6(s);
    if (e) all.push(e);
    else skipped.push(s);
  }
  return { all, skipped };
}

/** Our IPv6 addresses worth publishing: global and unique-local ones, never link-local or an excluded one. */
export function ownCandidates6(addrs: readonly LocalAddress[], port: number, exclude: (address: string) => boolean): string[] {
  const out: string[] = [];
  for (const a of addrs) {
    const w = ipv6Words(a.address);
    if (w === null || !isUsableIpv6(w) || exclude(a.address)) continue;
    out.push(`[${a.address}]:${port}`);
  }
  return [...new Set(out)];
}

/** An IPv6 prefix of one of our networks (for the private-path rank). */
export interface Prefix6 {
  readonly base: Ip6Words;
  readonly len: number;
}

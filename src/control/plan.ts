import type { Etcd3 } from 'etcd3';
import { CladnetError } from '../errors';
import { formatPrefix, parseEndpoint, parseIpv4, parsePrefix, Prefix, prefixSize } from '../util/ipv4';
import { etcdPages, readPrefix } from './range';
import { NETWORKS_ROOT, parseKey } from './keys';
import { parseHostRecord, parseNetworkSpec } from './records';

/**
 * Address planning for `cladnet network recommend`: overlay prefixes of a given length that overlap
 * none of the address space already in use (every host's underlay networks and endpoint addresses,
 * every existing network's CIDR).
 *
 * The answer is exact, not a heuristic: blocks are aligned prefixes of the pools below, checked as
 * integer intervals against the merged used intervals. Order of preference:
 *   1. pools in this order: 100.64/10 (shared address space; clouds rarely use it for VPC subnets),
 *      10/8, 172.16/12, 192.168/16; lowest block first within a pool;
 *   2. blocks that also avoid the commonly-used ranges in SOFT_AVOID come before those that do not
 *      (a clash there is likely on machines we cannot see yet).
 */

export const DEFAULT_PLAN_PREFIX_LEN = 16;
export const DEFAULT_PLAN_LIMIT = 5;

function p(s: string): Prefix {
  return parsePrefix(s, true)!;
}

export const PLAN_POOLS: readonly Prefix[] = Object.freeze([p('100.64.0.0/10'), p('10.0.0.0/8'), p('172.16.0.0/12'), p('192.168.0.0/16')]);

/** Ranges other software commonly takes; avoided when possible, never required. */
export const SOFT_AVOID: readonly { prefix: Prefix; why: string }[] = Object.freeze([
  { prefix: p('100.100.0.0/16'), why: 'Alibaba Cloud metadata/DNS (100.100.100.200), Tailscale 100.100.100.100' },
  { prefix: p('10.0.0.0/16'), why: 'default VPC/VNet range in AWS and Azure consoles' },
  { prefix: p('10.96.0.0/12'), why: 'Kubernetes default service CIDR' },
  { prefix: p('10.244.0.0/16'), why: 'kubeadm/flannel default pod CIDR' },
  { prefix: p('10.128.0.0/9'), why: 'GCP auto-mode VPC subnets' },
  { prefix: p('172.17.0.0/16'), why: 'Docker default bridge' },
  { prefix: p('172.18.0.0/15'), why: 'Docker user networks' },
  { prefix: p('172.20.0.0/14'), why: 'Docker user networks' },
  { prefix: p('172.24.0.0/13'), why: 'Docker user networks, AWS default VPC 172.31/16' },
  { prefix: p('192.168.0.0/23'), why: 'home and office routers' },
]);

export interface PlanInput {
  /** Address space in use (host networks, endpoints as /32, existing overlays). */
  used: readonly Prefix[];
  /** Length of the wanted prefix, 8..30 (default 16). */
  prefixLen?: number;
  /** How many candidates at most (default 5). */
  limit?: number;
  /** Overrides SOFT_AVOID (pass [] for none). */
  softAvoid?: readonly Prefix[];
}

interface Interval {
  start: number;
  end: number; // inclusive
}

function toInterval(x: Prefix): Interval {
  return { start: x.base, end: x.base + prefixSize(x) - 1 };
}

function merge(list: readonly Prefix[]): Interval[] {
  const sorted = list.map(toInterval).sort((a, b) => a.start - b.start || a.end - b.end);
  const out: Interval[] = [];
  for (const iv of sorted) {
    const last = out[out.length - 1];
    if (last && iv.start <= last.end + 1) last.end = Math.max(last.end, iv.end);
    else out.push({ ...iv });
  }
  return out;
}

function overlapsAny(start: number, end: number, ivs: readonly Interval[]): boolean {
  // ivs are few (merged); a linear scan is fine.
  return ivs.some((iv) => iv.start <= end && start <= iv.end);
}

/** Aligned `len` blocks of `pool`, ascending, that overlap none of `blocked` (sorted, merged). */
function* freeBlocks(pool: Prefix, len: number, blocked: readonly Interval[]): Generator<Prefix> {
  if (len < pool.len) return;
  const size = 2 ** (32 - len);
  const poolEnd = pool.base + prefixSize(pool) - 1;
  let b = pool.base;
  let i = 0;
  while (b + size - 1 <= poolEnd) {
    while (i < blocked.length && blocked[i]!.end < b) i++;
    const iv = blocked[i];
    if (iv && iv.start <= b + size - 1) {
      b = Math.ceil((iv.end + 1) / size) * size; // first aligned block after the obstacle
      continue;
    }
    yield { base: b, len };
    b += size;
  }
}

export function checkPrefixLen(len: number): number {
  if (!Number.isInteger(len) || len < 8 || len > 30) {
    throw new CladnetError('ECONFIG', `prefixLen: ${String(len)} must be an integer in 8..30`, { field: 'prefixLen' });
  }
  return len;
}

/** Candidate overlay prefixes in order of preference; every one overlaps nothing in `used`. */
export function planOverlayPrefixes(input: PlanInput): Prefix[] {
  const len = checkPrefixLen(input.prefixLen ?? DEFAULT_PLAN_PREFIX_LEN);
  const limit = input.limit ?? DEFAULT_PLAN_LIMIT;
  if (!Number.isInteger(limit) || limit < 1) throw new CladnetError('ECONFIG', `limit: ${String(limit)} must be a positive integer`, { field: 'limit' });
  const hard = merge(input.used);
  const soft = merge(input.softAvoid ?? SOFT_AVOID.map((s) => s.prefix));
  const both = merge([...input.used, ...(input.softAvoid ?? SOFT_AVOID.map((s) => s.prefix))]);
  const out: Prefix[] = [];
  // Tier 1: clear of both; tier 2: clear of what is used, but in a commonly-used range.
  for (const pool of PLAN_POOLS) {
    for (const b of freeBlocks(pool, len, both)) {
      out.push(b);
      if (out.length >= limit) return out;
    }
  }
  for (const pool of PLAN_POOLS) {
    for (const b of freeBlocks(pool, len, hard)) {
      if (!overlapsAny(b.base, b.base + prefixSize(b) - 1, soft)) continue; // already in tier 1
      out.push(b);
      if (out.length >= limit) return out;
    }
  }
  return out;
}

export interface Recommendation {
  prefixLen: number;
  candidates: string[];
  /** What was avoided: distinct used prefixes, sorted. */
  used: string[];
  /** Host records or network specs that could not be read (their addresses are unknown). */
  skippedRecords: number;
}

/** Reads every network and host record under /cladnet/v1/networks/ and plans around them. */
export async function recommend(client: Etcd3, opts: { prefixLen?: number; limit?: number } = {}): Promise<Recommendation> {
  const prefixLen = checkPrefixLen(opts.prefixLen ?? DEFAULT_PLAN_PREFIX_LEN);
  const res = await readPrefix(etcdPages(client), NETWORKS_ROOT);
  const used: Prefix[] = [];
  let skippedRecords = 0;
  for (const kv of res.kvs) {
    const k = parseKey(kv.key);
    if (k?.kind === 'network') {
      const spec = parseNetworkSpec(kv.value, { name: k.network });
      if (spec.ok) used.push(parsePrefix(spec.value.cidr, true)!);
      else skippedRecords++;
    } else if (k?.kind === 'host') {
      const rec = parseHostRecord(kv.value, { network: k.network, name: k.name });
      if (!rec.ok) {
        skippedRecords++;
        continue;
      }
      for (const c of rec.value.hostCidrs) used.push(parsePrefix(c, true)!);
      for (const e of rec.value.endpoints) used.push({ base: parseEndpoint(e)!.ip, len: 32 });
      used.push({ base: parseIpv4(rec.value.overlayIp)!, len: 32 });
    }
  }
  const distinct = new Map<string, Prefix>();
  for (const u of used) distinct.set(formatPrefix(u), u);
  const sortedUsed = [...distinct.values()].sort((a, b) => a.base - b.base || a.len - b.len);
  return {
    prefixLen,
    candidates: planOverlayPrefixes({ used: sortedUsed, prefixLen, limit: opts.limit }).map(formatPrefix),
    used: sortedUsed.map(formatPrefix),
    skippedRecords,
  };
}

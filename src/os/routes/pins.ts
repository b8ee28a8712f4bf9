/**
 * Endpoint pinning: when a subnet route installed into the overlay covers a peer's underlay
 * endpoint (a site that routes part of the underlay, a default route through a gateway), the
 * tunnel's own UDP would be routed into the tunnel. Each such endpoint gets a host route through
 * the underlay route it would take without our routes ("pin"), protocol 77 like our other routes.
 * Declarative like routes.ts: read the main table, compute the pins, add or change before
 * deleting, nothing when nothing changed; called again whenever endpoints, subnet routes or the
 * underlay (an address or route event) change, so pins follow a new underlay gateway.
 */
import { contains, formatIpv4, parseIpv4, parsePrefix, type Prefix } from '../../util/ipv4';
import { runChecked, type CommandRunner } from '../runner';
import { RTPROT_CLADNET } from './routes';

/** One row of `ip -j route show table main`. */
export interface MainRoute {
  readonly dst: string; // "default", "a.b.c.d" or "a.b.c.d/len"
  readonly gateway?: string;
  readonly dev: string;
  readonly protocol?: string | number;
  readonly metric?: number;
}

export interface Pin {
  /** The endpoint, "a.b.c.d" (a /32). */
  readonly dst: string;
  readonly gateway?: string;
  readonly dev: string;
}

function prefixOf(dst: string): Prefix | null {
  if (dst === 'default') return { base: 0, len: 0 };
  return parsePrefix(dst.includes('/') ? dst : `${dst}/32`, false);
}

function ours(r: MainRoute): boolean {
  return String(r.protocol) === String(RTPROT_CLADNET);
}

/**
 * The route `ip` takes in `routes` without any of ours (the overlay's and the pins): longest
 * prefix, then lowest metric. Null when there is none.
 */
export function underlayRoute(ip: number, routes: readonly MainRoute[], overlayIf: string): MainRoute | null {
  let best: { r: MainRoute; len: number; metric: number } | null = null;
  for (const r of routes) {
    if (r.dev === overlayIf || ours(r)) continue;
    const p = prefixOf(r.dst);
    if (!p || !contains(p, ip)) continue;
    const metric = r.metric ?? 0;
    if (!best || p.len > best.len || (p.len === best.len && metric < best.metric)) best = { r, len: p.len, metric };
  }
  return best?.r ?? null;
}

/** Pure: the pins for `endpoints` that one of `covered` (the subnet routes we install) would capture. */
export function planPins(endpoints: readonly number[], covered: readonly Prefix[], routes: readonly MainRoute[], overlayIf: string): Pin[] {
  const pins = new Map<string, Pin>();
  for (const ip of endpoints) {
    if (!covered.some((c) => contains(c, ip))) continue;
    const via = underlayRoute(ip, routes, overlayIf);
    if (!via) continue; // no underlay route at all: nothing to pin to
    const dst = formatIpv4(ip);
    pins.set(dst, { dst, dev: via.dev, ...(via.gateway ? { gateway: via.gateway } : {}) });
  }
  return [...pins.values()].sort((a, b) => parseIpv4(a.dst)! - parseIpv4(b.dst)!);
}

/** Our pins now in `routes` (protocol 77 host routes off the overlay interface). */
export function currentPins(routes: readonly MainRoute[], overlayIf: string): Pin[] {
  return routes
    .filter((r) => ours(r) && r.dev !== overlayIf && prefixOf(r.dst)?.len === 32)
    .map((r) => ({ dst: r.dst.replace(/\/32$/, ''), dev: r.dev, ...(r.gateway ? { gateway: r.gateway } : {}) }));
}

const same = (a: Pin, b: Pin) => a.dev === b.dev && a.gateway === b.gateway;

/** Pure: the `ip` commands from `current` to `desired`: replaces (new or changed) first, then deletes. */
export function planPinCommands(current: readonly Pin[], desired: readonly Pin[]): string[][] {
  const have = new Map(current.map((p) => [p.dst, p]));
  const want = new Map(desired.map((p) => [p.dst, p]));
  const cmds: string[][] = [];
  for (const p of desired) {
    const h = have.get(p.dst);
    if (h && same(h, p)) continue;
    cmds.push(['ip', 'route', 'replace', `${p.dst}/32`, ...(p.gateway ? ['via', p.gateway] : []), 'dev', p.dev, 'proto', String(RTPROT_CLADNET)]);
  }
  for (const p of current) {
    if (!want.has(p.dst)) cmds.push(['ip', 'route', 'del', `${p.dst}/32`, 'dev', p.dev, 'proto', String(RTPROT_CLADNET)]);
  }
  return cmds;
}

export class PinManager {
  constructor(private readonly runner: CommandRunner) {}

  /** Pins the endpoints `covered` would capture and drops stale pins; returns the pins and the commands run. */
  async set(endpoints: readonly number[], covered: readonly Prefix[], overlayIf: string): Promise<{ pins: Pin[]; commands: string[] }> {
    const routes = JSON.parse((await runChecked(this.runner, ['ip', '-j', 'route', 'show', 'table', 'main'])) || '[]') as MainRoute[];
    const pins = planPins(endpoints, covered, routes, overlayIf);
    const cmds = planPinCommands(currentPins(routes, overlayIf), pins);
    for (const c of cmds) await runChecked(this.runner, c);
    return { pins, commands: cmds.map((c) => c.join(' ')) };
  }
}

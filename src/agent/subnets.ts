/**
 * Subnet routes through gateways: which peer serves which advertised prefix. Pure: the agent
 * feeds it its trusted peers (record, certificate, whether the data plane hears them) and applies
 * the result twice, as kernel routes into the overlay interface (src/os/routes/routes.ts) and as
 * each peer's `allowed` prefixes in the data plane (outbound routes by them, inbound drops inner
 * sources outside them as `spoofed`).
 *
 * Rules (docs/design.md, "Subnet routes"):
 *   1. A peer's advertised prefix counts only when its certificate's `routes` (signed by the network
 *      key) cover it, and never when it overlaps the overlay range. Anything else is refused,
 *      reported and counted: an etcd writer grants nothing.
 *   2. One exact prefix advertised by several peers is a failover group: exactly one member is
 *      active, the first by (up, then unknown, then down; then name). The others stand by.
 *   3. A prefix equal to or inside one this host serves itself, or a network it is on (a connected
 *      route), is not installed here: the host reaches it directly (and a route of ours would
 *      replace the kernel's connected one). A wider one is; our own, more specific, still wins.
 *   4. Different prefixes that overlap (10.0.0.0/16 and 10.0.1.0/24) are both installed: the more
 *      specific wins, in the kernel and in the data plane alike (longest-prefix match on both).
 *   So a prefix is installed once, toward one peer, never silently twice.
 */
import { contains, formatPrefix, overlaps, parsePrefix, type Prefix } from '../util/ipv4';

export interface GatewayInput {
  readonly name: string;
  /** What the record advertises (`routes` in the host record). */
  readonly advertised: readonly string[];
  /** What the certificate allows (`cert.routes`). */
  readonly certified: readonly string[];
  /**
   * How the data plane sees it (gatewayHealth in agent.ts): 'up' heard recently, 'down' we kept
   * sending to it past its last packet (it stopped answering), 'unknown' neither (no session yet,
   * or quiet): a quiet standby is still a better choice than one known to be failing.
   */
  readonly health: 'up' | 'unknown' | 'down';
}

export interface SubnetRoute {
  readonly prefix: string;
  /** The peer that serves it now. */
  readonly gateway: string;
  /** The other peers advertising exactly this prefix, in failover order. */
  readonly standby: readonly string[];
}

export interface RefusedRoute {
  readonly gateway: string;
  readonly prefix: string;
  readonly reason: string;
}

export interface SubnetPlan {
  /** Sorted by prefix text. */
  readonly routes: readonly SubnetRoute[];
  readonly refused: readonly RefusedRoute[];
}

/** True when `inner` lies inside `outer`. */
export function covers(outer: Prefix, inner: Prefix): boolean {
  return outer.len <= inner.len && contains(outer, inner.base);
}

/** The first of `wanted` that no prefix of `allowed` covers, or null when all are covered. */
export function uncovered(wanted: readonly string[], allowed: readonly string[]): string | null {
  const cert = allowed.map((s) => parsePrefix(s, true)).filter((p) => p !== null);
  for (const w of wanted) {
    const p = parsePrefix(w, true);
    if (!p || !cert.some((c) => covers(c, p))) return w;
  }
  return null;
}

const RANK = { up: 0, unknown: 1, down: 2 } as const;

export function planSubnets(
  peers: readonly GatewayInput[],
  opts: { overlay: Prefix; own: readonly string[]; local?: readonly Prefix[] },
): SubnetPlan {
  const local = opts.local ?? [];
  const own = opts.own.map((s) => parsePrefix(s, true)).filter((p) => p !== null);
  const refused: RefusedRoute[] = [];
  const groups = new Map<string, GatewayInput[]>();
  for (const peer of peers) {
    const cert = peer.certified.map((s) => parsePrefix(s, true)).filter((p) => p !== null);
    for (const text of new Set(peer.advertised)) {
      const p = parsePrefix(text, true);
      const refuse = (reason: string) => refused.push({ gateway: peer.name, prefix: text, reason });
      if (!p) refuse('not a prefix');
      else if (!cert.some((c) => covers(c, p))) refuse('not covered by its certificate');
      else if (overlaps(p, opts.overlay)) refuse(`overlaps the overlay range ${formatPrefix(opts.overlay)}`);
      else if (own.some((o) => covers(o, p)) || local.some((l) => covers(l, p))) continue; // ours: reached directly (rule 3)
      else {
        const key = formatPrefix(p);
        const g = groups.get(key) ?? [];
        g.push(peer);
        groups.set(key, g);
      }
    }
  }
  const routes: SubnetRoute[] = [...groups.entries()]
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([prefix, g]) => {
      const order = [...g].sort((a, b) => RANK[a.health] - RANK[b.health] || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
      return { prefix, gateway: order[0]!.name, standby: order.slice(1).map((x) => x.name) };
    });
  return { routes, refused };
}

/** Each gateway's active prefixes (the data plane's `allowed` for it). */
export function allowedByGateway(plan: SubnetPlan): Map<string, Prefix[]> {
  const out = new Map<string, Prefix[]>();
  for (const r of plan.routes) {
    const list = out.get(r.gateway) ?? [];
    list.push(parsePrefix(r.prefix, true)!);
    out.set(r.gateway, list);
  }
  return out;
}

import type { TopologyPlan } from './plan';

/**
 * An IPv6 underlay laid over a topology (issue 16): every IPv4 address of the plan gets its twin
 * in 2001:db8::/32, routed the same way, but never translated: the sites' NAT and filter rules are
 * IPv4 tables, so a NATed site routes IPv6 through as a plain router does (the usual cloud shape:
 * IPv4 behind a NAT gateway, IPv6 global).
 *
 *   198.(18+x).a.b   ->  2001:db8:(x+1):a::b     (decimal a, b written as hex groups)
 *   198.18.0.1 (the router's own address, etcd)  ->  2001:db8:1::1
 *   an internet link 198.18.k.0/24  ->  2001:db8:1:k::/64;  a site's LAN 198.19.s.0/24  ->  2001:db8:2:s::/64
 *
 * Addresses go on with `nodad` (usable at once). `v6Only` hosts lose their IPv4 address and
 * routes: an IPv6-only host. Pure: returns the commands; the caller runs them (see mesh.ts).
 */
export interface Ipv6UnderlayOptions {
  /** Hosts left with IPv6 only (their IPv4 address and routes are removed). */
  readonly v6Only?: readonly string[];
  /** Hosts that get no IPv6 address or route at all (IPv4 only, the kernel's IPv6 still on). */
  readonly v4Only?: readonly string[];
}

/** The IPv6 twin of a test-bed IPv4 address (198.18.0.0/15). */
export function ipv6Of(v4: string): string {
  const m = /^198\.(18|19)\.(\d{1,3})\.(\d{1,3})$/.exec(v4);
  if (!m) throw new Error(`${v4} is not a test-bed underlay address (198.18.0.0/15)`);
  const net = Number(m[1]) - 17;
  return m[2] === '0' ? `2001:db8:${net}::${m[3]}` : `2001:db8:${net}:${m[2]}::${m[3]}`;
}

/** The /64 an IPv4 test-bed address's twin sits in, e.g. 2001:db8:2:1::/64. */
export function ipv6PrefixOf(v4: string): string {
  const a = ipv6Of(v4);
  return `${a.slice(0, a.lastIndexOf('::'))}::/64`;
}

export function ipv6UnderlayCommands(plan: TopologyPlan, opts: Ipv6UnderlayOptions = {}): string[][] {
  const cmds: string[][] = [];
  const ip = (ns: string, ...args: string[]) => cmds.push(['ip', '-n', ns, ...args]);
  const sysctl = (ns: string, kv: string) => cmds.push(['ip', 'netns', 'exec', ns, 'sysctl', '-q', '-w', kv]);
  const addr = (ns: string, v4cidr: string, dev: string) => ip(ns, '-6', 'addr', 'add', `${ipv6Of(v4cidr.split('/')[0]!)}/64`, 'dev', dev, 'nodad');
  const namespaces = [plan.routerNs, ...plan.sites.map((s) => s.ns), ...plan.hosts.map((h) => h.ns)];
  for (const ns of namespaces) sysctl(ns, 'net.ipv6.conf.all.disable_ipv6=0');
  sysctl(plan.routerNs, 'net.ipv6.conf.all.forwarding=1');
  ip(plan.routerNs, '-6', 'addr', 'add', `${ipv6Of(plan.routerIp)}/128`, 'dev', 'lo');
  for (const s of plan.sites) {
    sysctl(s.ns, 'net.ipv6.conf.all.forwarding=1');
    ip(s.ns, '-6', 'addr', 'add', `${ipv6Of(s.gateway)}/64`, 'dev', s.lanDev, 'nodad');
  }
  const v4Only = new Set((opts.v4Only ?? []).map((name) => {
    const h = plan.hosts.find((x) => x.name === name);
    if (!h) throw new Error(`ipv6 underlay: no host named "${name}"`);
    return h.ns;
  }));
  for (const l of plan.links) {
    if (l.a.cidr) addr(l.a.ns, l.a.cidr, l.a.dev);
    if (!v4Only.has(l.b.ns)) addr(l.b.ns, l.b.cidr, l.b.dev);
  }
  for (const s of plan.sites) {
    ip(plan.routerNs, '-6', 'route', 'add', ipv6PrefixOf(s.gateway), 'via', ipv6Of(s.wanIp));
    ip(s.ns, '-6', 'route', 'add', 'default', 'via', ipv6Of(s.wanGateway));
  }
  for (const h of plan.hosts) if (!v4Only.has(h.ns)) ip(h.ns, '-6', 'route', 'add', 'default', 'via', ipv6Of(h.gateway));
  for (const name of opts.v6Only ?? []) {
    const h = plan.hosts.find((x) => x.name === name);
    if (!h) throw new Error(`ipv6 underlay: no host named "${name}"`);
    ip(h.ns, '-4', 'addr', 'flush', 'dev', h.dev); // its IPv4 routes go with the address
  }
  return cmds;
}

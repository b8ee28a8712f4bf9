import { randomBytes } from 'node:crypto';

/**
 * The pure half of the test bed: names and the address plan of a topology spec, and the exact
 * commands that build it. Nothing here touches the host, so unit tests compare transcripts.
 *
 * Address plan (everything inside 198.18.0.0/15, RFC 2544 benchmarking space):
 *   198.18.0.1/32           the router's own address (on its lo): etcd and other "internet" services
 *   198.18.k.0/24           internet link k (k = 1..254): router .1, the attached namespace .2
 *                           plain hosts take k = 1..H in order, then sites take the next slots
 *   198.19.s.0/24           LAN of site s (s = 1..254): a bridge in the site namespace with the
 *                           site router's .1, its hosts .2, .3, ...
 *
 * NAT sites behave like the clouds' NAT gateways: 'masquerade' maps a LAN ip:port to the same
 * public port whatever the destination (endpoint-independent mapping, port kept when free), so
 * hole punching works between two of them; 'random' picks a new random port per destination, so
 * it does not. Both drop unsolicited inbound traffic and keep only address-and-port-dependent
 * replies (Linux conntrack), unless the site says `firewall: false` (see SiteSpec).
 */

export type NatKind =
  | 'none' // a routed site: the internet routes to its LAN, nothing is translated
  | 'masquerade' // source NAT to the site's internet address, ports kept where possible
  | 'random'; // source NAT with fully randomized source ports (a "hard", symmetric-like NAT)

export interface SiteSpec {
  readonly name: string;
  readonly nat: NatKind;
  /**
   * Drop unsolicited inbound packets in a filter hook (default true). false: a NAT with no
   * firewall (a plain `MASQUERADE` rule, as many home routers and hand-made ones have): a packet
   * from the internet that answers nothing is left undelivered but its conntrack entry stays for
   * 30 s, and an outbound packet whose reply would match that entry gets another source port.
   */
  readonly firewall?: boolean;
}

export interface HostSpec {
  /** Host name (agent --name); default h<i>, 1-based over all hosts. */
  readonly name?: string;
  /** Name of the site the host sits behind; default: directly on the internet. */
  readonly site?: string;
}

export interface TopologySpec {
  /** A count of plain internet hosts, or one entry per host. */
  readonly hosts: number | readonly HostSpec[];
  readonly sites?: readonly SiteSpec[];
  /** Run id that prefixes every namespace and device; default `newRunId()`. */
  readonly id?: string;
}

export interface LinkPlan {
  /** A veth pair: `a` end and `b` end, each created directly inside its namespace. */
  readonly a: { readonly ns: string; readonly dev: string; readonly cidr?: string }; // no cidr: bridge port
  readonly b: { readonly ns: string; readonly dev: string; readonly cidr: string };
}

export interface HostPlan {
  readonly name: string;
  readonly ns: string;
  readonly dev: string;
  /** The host's own underlay address (behind NAT: its LAN address). */
  readonly underlayIp: string;
  readonly gateway: string;
  readonly site?: string;
}

export interface SitePlan {
  readonly name: string;
  readonly ns: string;
  readonly nat: NatKind;
  readonly firewall: boolean;
  /** The site router's internet address (what NATed hosts appear as). */
  readonly wanIp: string;
  readonly wanDev: string;
  /** The router's end of the site's internet link. */
  readonly wanGateway: string;
  /** The LAN bridge inside the site namespace. */
  readonly lanDev: string;
  readonly lanCidr: string;
  readonly gateway: string;
}

export interface TopologyPlan {
  readonly id: string;
  readonly routerNs: string;
  readonly routerIp: string;
  /** Every namespace, router first; teardown deletes exactly these. */
  readonly namespaces: readonly string[];
  readonly links: readonly LinkPlan[];
  readonly hosts: readonly HostPlan[];
  readonly sites: readonly SitePlan[];
}

export const RUN_ID_PREFIX = 'cn';
export const ROUTER_IP = '198.18.0.1';
/** Linux IFNAMSIZ - 1. */
export const MAX_IFNAME = 15;
const MAX_SLOTS = 254;
const NAME_RE = /^[a-z0-9][a-z0-9-]{0,30}$/;
const ID_RE = /^[a-z][a-z0-9]{1,7}$/;

/** A fresh run id: `cn` + 4 random hex digits, e.g. `cn3fa2`. */
export function newRunId(): string {
  return RUN_ID_PREFIX + randomBytes(2).toString('hex');
}

export class PlanError extends Error {
  readonly code = 'ECONFIG';
  readonly transient = false;
  constructor(message: string) {
    super(message);
    this.name = 'PlanError';
  }
}

function checkIfname(name: string): string {
  if (name.length > MAX_IFNAME) throw new PlanError(`device name "${name}" is longer than ${MAX_IFNAME} characters`);
  return name;
}

/** Computes names and addresses for `spec`. Throws PlanError naming the bad field. */
export function planTopology(spec: TopologySpec): TopologyPlan {
  const id = spec.id ?? newRunId();
  if (!ID_RE.test(id)) throw new PlanError(`id: "${id}" must be 2-8 lowercase letters/digits starting with a letter`);
  const hostSpecs: HostSpec[] =
    typeof spec.hosts === 'number' ? Array.from({ length: spec.hosts }, () => ({})) : [...spec.hosts];
  if (hostSpecs.length < 1) throw new PlanError('hosts: at least one host is needed');
  const siteSpecs = spec.sites ?? [];

  const seen = new Set<string>();
  const unique = (field: string, name: string) => {
    if (!NAME_RE.test(name)) throw new PlanError(`${field}: "${name}" must match ${NAME_RE}`);
    if (seen.has(name) || name === 'router') throw new PlanError(`${field}: name "${name}" is used twice`);
    seen.add(name);
  };

  const routerNs = `${id}-router`;
  const links: LinkPlan[] = [];
  const hosts: HostPlan[] = [];
  const sites: SitePlan[] = [];
  let slot = 0;
  const nextSlot = () => {
    if (++slot > MAX_SLOTS) throw new PlanError(`hosts: more than ${MAX_SLOTS} internet attachments`);
    return slot;
  };
  const internetLink = (ns: string): { dev: string; ip: string; gateway: string } => {
    const k = nextSlot();
    const dev = checkIfname(`${id}-x${k}`);
    links.push({
      a: { ns: routerNs, dev: checkIfname(`${id}-r${k}`), cidr: `198.18.${k}.1/24` },
      b: { ns, dev, cidr: `198.18.${k}.2/24` },
    });
    return { dev, ip: `198.18.${k}.2`, gateway: `198.18.${k}.1` };
  };

  const names = hostSpecs.map((h, i) => h.name ?? `h${i + 1}`);
  names.forEach((n, i) => unique(`hosts[${i}].name`, n));
  siteSpecs.forEach((s, i) => {
    unique(`sites[${i}].name`, s.name);
    if (!['none', 'masquerade', 'random'].includes(s.nat)) throw new PlanError(`sites[${i}].nat: unknown kind "${s.nat}"`);
  });
  if (siteSpecs.length > MAX_SLOTS) throw new PlanError(`sites: more than ${MAX_SLOTS}`);

  // Plain hosts first, so host i of an all-plain spec is 198.18.i.2.
  const hostPlans: (HostPlan | undefined)[] = new Array(hostSpecs.length);
  hostSpecs.forEach((h, i) => {
    if (h.site !== undefined) {
      if (!siteSpecs.some((s) => s.name === h.site)) throw new PlanError(`hosts[${i}].site: no site named "${h.site}"`);
      return;
    }
    const ns = `${id}-${names[i]}`;
    const l = internetLink(ns);
    hostPlans[i] = { name: names[i]!, ns, dev: l.dev, underlayIp: l.ip, gateway: l.gateway };
  });
  siteSpecs.forEach((s, si) => {
    const sIdx = si + 1;
    const ns = `${id}-site-${s.name}`;
    const wan = internetLink(ns);
    const site: SitePlan = {
      name: s.name,
      ns,
      nat: s.nat,
      firewall: s.firewall ?? true,
      wanIp: wan.ip,
      wanDev: wan.dev,
      wanGateway: wan.gateway,
      lanDev: checkIfname(`${id}-s${sIdx}br`),
      lanCidr: `198.19.${sIdx}.0/24`,
      gateway: `198.19.${sIdx}.1`,
    };
    sites.push(site);
    let j = 1;
    hostSpecs.forEach((h, i) => {
      if (h.site !== s.name) return;
      if (++j > MAX_SLOTS) throw new PlanError(`sites[${si}]: more than ${MAX_SLOTS - 1} hosts`);
      const hostNs = `${id}-${names[i]}`;
      const dev = checkIfname(`${id}-s${sIdx}h${j}`);
      links.push({
        a: { ns, dev: checkIfname(`${id}-s${sIdx}l${j}`) },
        b: { ns: hostNs, dev, cidr: `198.19.${sIdx}.${j}/24` },
      });
      hostPlans[i] = { name: names[i]!, ns: hostNs, dev, underlayIp: `198.19.${sIdx}.${j}`, gateway: site.gateway, site: s.name };
    });
  });
  hosts.push(...(hostPlans as HostPlan[]));

  const namespaces = [routerNs, ...sites.map((s) => s.ns), ...hosts.map((h) => h.ns)];
  return { id, routerNs, routerIp: ROUTER_IP, namespaces, links, hosts, sites };
}

/**
 * The commands that build `plan` on a host with no trace of it, in order. Each is argv for the
 * runner. A site's LAN is a bridge in the site namespace holding the gateway address; each host's
 * veth is a port of it.
 */
export function setupCommands(plan: TopologyPlan): string[][] {
  const cmds: string[][] = [];
  const ip = (ns: string, ...args: string[]) => cmds.push(['ip', '-n', ns, ...args]);
  const sysctl = (ns: string, kv: string) => cmds.push(['ip', 'netns', 'exec', ns, 'sysctl', '-q', '-w', kv]);

  for (const ns of plan.namespaces) cmds.push(['ip', 'netns', 'add', ns]);
  for (const ns of plan.namespaces) ip(ns, 'link', 'set', 'lo', 'up');
  ip(plan.routerNs, 'addr', 'add', `${plan.routerIp}/32`, 'dev', 'lo');
  sysctl(plan.routerNs, 'net.ipv4.ip_forward=1');
  for (const s of plan.sites) {
    sysctl(s.ns, 'net.ipv4.ip_forward=1');
    ip(s.ns, 'link', 'add', s.lanDev, 'type', 'bridge');
    ip(s.ns, 'addr', 'add', `${s.gateway}/24`, 'dev', s.lanDev);
    ip(s.ns, 'link', 'set', s.lanDev, 'up');
  }

  const siteByNs = new Map(plan.sites.map((s) => [s.ns, s]));
  for (const l of plan.links) {
    const site = siteByNs.get(l.a.ns);
    ip(l.a.ns, 'link', 'add', l.a.dev, 'type', 'veth', 'peer', 'name', l.b.dev, 'netns', l.b.ns);
    if (site) ip(l.a.ns, 'link', 'set', l.a.dev, 'master', site.lanDev);
    else if (l.a.cidr) ip(l.a.ns, 'addr', 'add', l.a.cidr, 'dev', l.a.dev);
    ip(l.b.ns, 'addr', 'add', l.b.cidr, 'dev', l.b.dev);
    ip(l.a.ns, 'link', 'set', l.a.dev, 'up');
    ip(l.b.ns, 'link', 'set', l.b.dev, 'up');
  }
  for (const s of plan.sites) {
    ip(s.ns, 'route', 'add', 'default', 'via', s.wanGateway);
    if (s.nat === 'none') {
      ip(plan.routerNs, 'route', 'add', s.lanCidr, 'via', s.wanIp);
    } else {
      const nft = (rule: string) => cmds.push(['ip', 'netns', 'exec', s.ns, 'nft', rule]);
      nft('add table ip cladnet_nat');
      nft('add chain ip cladnet_nat postrouting { type nat hook postrouting priority 100 ; }');
      nft(`add rule ip cladnet_nat postrouting oifname "${s.wanDev}" masquerade${s.nat === 'random' ? ' fully-random' : ''}`);
      // Like a real NAT device, let in from the internet only what answers traffic from the LAN.
      // The drop must happen in a filter hook: a packet dropped there never has its conntrack
      // entry confirmed, while one merely left undelivered (no socket on the WAN address) leaves
      // an entry whose tuple makes a later outbound packet of the same 5-tuple get another port.
      for (const hook of s.firewall ? ['input', 'forward'] : []) {
        nft(`add chain ip cladnet_nat ${hook} { type filter hook ${hook} priority 0 ; policy accept ; }`);
        nft(`add rule ip cladnet_nat ${hook} ct state established,related accept`);
        nft(`add rule ip cladnet_nat ${hook} iifname "${s.lanDev}" accept`);
        nft(`add rule ip cladnet_nat ${hook} iifname "${s.wanDev}" drop`);
      }
    }
  }
  for (const h of plan.hosts) ip(h.ns, 'route', 'add', 'default', 'via', h.gateway);
  return cmds;
}

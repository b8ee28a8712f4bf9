/**
 * Declarative link, address and route management for the overlay interface. `set(desired)` reads
 * what the kernel has, computes the smallest change, and applies it: adds before deletes (so a
 * changed route never leaves a gap), and nothing at all when the state already matches, so it is
 * safe to call on every peer-set change. Only routes carrying our protocol number are ours to
 * delete; the kernel's connected route for the address is left to the kernel.
 */
import { formatPrefix, parsePrefix } from '../../util/ipv4';
import { formatIpv6, parseIpv6 } from '../../util/ipv6';
import { runChecked, type CommandRunner } from '../runner';

/** rtnetlink protocol id marking cladnet's routes (unassigned in /etc/iproute2/rt_protos). */
export const RTPROT_CLADNET = 77;

export interface LinkDesired {
  readonly ifname: string;
  readonly mtu: number;
  /** Addresses with prefix length, e.g. "100.64.0.5/24" or "fd12:3456:789a::6440:5/48". */
  readonly addresses: readonly string[];
  /** Extra destination prefixes routed into the interface, e.g. a peer's advertised subnet. */
  readonly routes: readonly string[];
}

export interface LinkState {
  readonly exists: boolean;
  readonly up: boolean;
  readonly mtu: number;
  readonly addresses: readonly string[];
  readonly routes: readonly string[];
}

/** Pure: the `ip` commands that take `current` to `desired`, adds first. */
export function planLink(current: LinkState, desired: LinkDesired): string[][] {
  const dev = desired.ifname;
  const cmds: string[][] = [];
  if (current.mtu !== desired.mtu) cmds.push(['ip', 'link', 'set', 'dev', dev, 'mtu', String(desired.mtu)]);
  const want = new Set(desired.addresses.map(normalize));
  const have = new Set(current.addresses.map(normalize));
  for (const a of want) if (!have.has(a)) cmds.push(['ip', 'address', 'add', a, 'dev', dev]);
  if (!current.up) cmds.push(['ip', 'link', 'set', 'dev', dev, 'up']);
  const wantR = new Set(desired.routes.map(normalizeNet));
  const haveR = new Set(current.routes.map(normalizeNet));
  for (const r of wantR) {
    if (!haveR.has(r)) cmds.push(['ip', 'route', 'replace', r, 'dev', dev, 'proto', String(RTPROT_CLADNET)]);
  }
  for (const r of haveR) {
    if (!wantR.has(r)) cmds.push(['ip', 'route', 'del', r, 'dev', dev, 'proto', String(RTPROT_CLADNET)]);
  }
  for (const a of have) if (!want.has(a)) cmds.push(['ip', 'address', 'del', a, 'dev', dev]);
  return cmds;
}

function normalize(cidr: string): string {
  if (cidr.includes('/')) return cidr.includes(':') ? normalize6(cidr) : cidr;
  return cidr.includes(':') ? normalize6(`${cidr}/128`) : `${cidr}/32`;
}

/** An IPv6 address with its length in RFC 5952 text, as `ip -j` prints it (unchanged when malformed). */
function normalize6(cidr: string): string {
  const [addr, len] = cidr.split('/');
  const a = parseIpv6(addr!);
  return a === null ? cidr : `${formatIpv6(a)}/${len}`;
}

function normalizeNet(cidr: string): string {
  const p = parsePrefix(normalize(cidr), false);
  return p ? formatPrefix(p) : cidr;
}

interface IpAddrJson {
  ifname: string;
  mtu: number;
  flags: string[];
  addr_info?: { family: string; local: string; prefixlen: number; scope?: string }[];
}
interface IpRouteJson {
  dst: string;
  protocol?: string;
}

export class RouteManager {
  constructor(private readonly runner: CommandRunner) {}

  async read(ifname: string): Promise<LinkState> {
    const r = await this.runner.run(['ip', '-j', 'address', 'show', 'dev', ifname]);
    if (r.code !== 0) return { exists: false, up: false, mtu: 0, addresses: [], routes: [] };
    const links = JSON.parse(r.stdout || '[]') as IpAddrJson[];
    const link = links[0];
    if (!link) return { exists: false, up: false, mtu: 0, addresses: [], routes: [] };
    // (IPv6: global addresses only; a link-local one is the kernel's, and ours never has one)
    const addresses = (link.addr_info ?? [])
      .filter((a) => a.family === 'inet' || (a.family === 'inet6' && a.scope === 'global'))
      .map((a) => `${a.local}/${a.prefixlen}`);
    const routesOut = await runChecked(this.runner, ['ip', '-j', 'route', 'show', 'dev', ifname, 'proto', String(RTPROT_CLADNET)]);
    const routes = (JSON.parse(routesOut || '[]') as IpRouteJson[]).map((x) => x.dst);
    return { exists: true, up: link.flags.includes('UP'), mtu: link.mtu, addresses, routes };
  }

  /** Brings the interface to `desired`; returns the commands it ran (empty when nothing changed). */
  async set(desired: LinkDesired): Promise<string[]> {
    const current = await this.read(desired.ifname);
    const cmds = planLink(current, desired);
    for (const c of cmds) await runChecked(this.runner, c);
    return cmds.map((c) => c.join(' '));
  }
}

import * as fs from 'node:fs';
import type { Agent } from './agents';
import type { HostPlan, SitePlan } from './plan';
import type { Topology, TopologyHost } from './topology';
import { contains, parseIpv4, parsePrefix } from '../util/ipv4';

/**
 * What happens to a cloud VM while it runs, played on the test bed: its address is replaced
 * (replaceAddress), its NAT gateway forgets the mappings (flushConntrack), it is suspended and
 * resumed (suspendAgent). Each returns what the caller needs to time the recovery; the measuring
 * side (pings with timestamps, a TCP stream hashed on both ends) is in traffic.ts.
 */

export class RoamError extends Error {
  readonly code = 'ETESTBED';
  readonly transient = false;
  constructor(message: string) {
    super(message);
    this.name = 'RoamError';
  }
}

const UNDERLAY = parsePrefix('198.18.0.0/15')!;

function octets(ip: string): number[] {
  const v = parseIpv4(ip);
  if (v === null) throw new RoamError(`"${ip}" is not an IPv4 address`);
  return [v >>> 24, (v >>> 16) & 255, (v >>> 8) & 255, v & 255];
}

/** True for addresses in 198.18.0.0/15, the only underlay the test bed may use. */
export function isUnderlay(ip: string): boolean {
  const v = parseIpv4(ip);
  if (v === null) throw new RoamError(`"${ip}" is not an IPv4 address`);
  return contains(UNDERLAY, v);
}

/**
 * The first address after `current` in its /24 (wrapping, never .0, .1 or .255) that is not in
 * `used`. Throws when the /24 is full.
 */
export function nextFreeAddress(current: string, used: Iterable<string>): string {
  const o = octets(current);
  const taken = new Set(used);
  taken.add(current);
  for (let step = 1; step < 256; step++) {
    const last = ((o[3]! - 2 + step) % 253) + 2; // 2..254
    const ip = `${o[0]}.${o[1]}.${o[2]}.${last}`;
    if (!taken.has(ip)) return ip;
  }
  throw new RoamError(`no free address left in ${o[0]}.${o[1]}.${o[2]}.0/24`);
}

/** The IPv4 addresses in `ip -o -4 addr show` output. */
export function parseAddresses(out: string): string[] {
  return [...out.matchAll(/\binet (\d+\.\d+\.\d+\.\d+)\//g)].map((m) => m[1]!);
}

function hostPlan(topo: Topology, host: TopologyHost | string): HostPlan {
  const name = typeof host === 'string' ? host : host.name;
  const h = topo.plan.hosts.find((x) => x.name === name);
  if (!h) throw new RoamError(`topology ${topo.id}: no host named "${name}"`);
  return h;
}

/** The host's underlay addresses as they are now (after any replaceAddress). */
export async function currentAddresses(topo: Topology, host: TopologyHost | string): Promise<string[]> {
  const h = hostPlan(topo, host);
  return parseAddresses((await topo.exec(h.ns, ['ip', '-o', '-4', 'addr', 'show', 'dev', h.dev])).stdout);
}

/**
 * Gives `host` a new underlay address on the same link and removes the old one(s), as a cloud
 * does when a VM gets a new private IP: by default the next free address in its /24, else `newIp`
 * (which must be free and in the same /24). Secondaries are promoted instead of flushed with the
 * old primary, and the default route is put back in the same `ip -batch`, so the host is never
 * without one for longer than that call. Returns the new address; the frozen TopologyHost keeps
 * the old one, so callers track it.
 */
export async function replaceAddress(topo: Topology, host: TopologyHost | string, newIp?: string): Promise<string> {
  return (await replaceAddressTimed(topo, host, newIp)).ip;
}

/**
 * replaceAddress, also returning `at`: Date.now() once the address was swapped (before the
 * checks that follow), the moment to time a recovery from. With `stepMs`, the three steps (add
 * the new address, remove the old ones, re-point the default route) are separate commands that
 * far apart, as a DHCP client or an operator makes them, and `at` is when the old address went.
 */
export async function replaceAddressTimed(
  topo: Topology,
  host: TopologyHost | string,
  newIp?: string,
  opts: { stepMs?: number } = {},
): Promise<{ ip: string; at: number }> {
  const h = hostPlan(topo, host);
  const old = await currentAddresses(topo, h.name);
  const net24 = (ip: string) => octets(ip).slice(0, 3).join('.');
  // Everything else on this link: the gateway and the current addresses of hosts behind it.
  const used = new Set([h.gateway]);
  for (const other of topo.plan.hosts) {
    if (other.gateway !== h.gateway || other.name === h.name) continue;
    for (const ip of await currentAddresses(topo, other.name)) used.add(ip);
  }
  const ip = newIp ?? nextFreeAddress(old[0] ?? h.underlayIp, [...used, ...old]);
  if (!isUnderlay(ip)) throw new RoamError(`replaceAddress: ${ip} is outside 198.18.0.0/15`);
  if (net24(ip) !== net24(h.gateway)) throw new RoamError(`replaceAddress: ${ip} is not on ${h.name}'s link ${net24(h.gateway)}.0/24`);
  if (used.has(ip) || old.includes(ip)) throw new RoamError(`replaceAddress: ${ip} is already in use`);

  await topo.exec(h.ns, ['sysctl', '-q', '-w', 'net.ipv4.conf.all.promote_secondaries=1']);
  const batch = [
    `addr add ${ip}/24 dev ${h.dev}`,
    ...old.map((o) => `addr del ${o}/24 dev ${h.dev}`),
    `route replace default via ${h.gateway} dev ${h.dev}`,
  ];
  let at: number;
  if (opts.stepMs === undefined) {
    await topo.exec(h.ns, ['ip', '-batch', '-'], { input: batch.join('\n') + '\n' });
    at = Date.now();
  } else {
    await topo.exec(h.ns, ['ip', ...batch[0]!.split(' ')]);
    await new Promise((r) => setTimeout(r, opts.stepMs));
    await topo.exec(h.ns, ['ip', '-batch', '-'], { input: batch.slice(1, -1).join('\n') + '\n' });
    at = Date.now();
    await new Promise((r) => setTimeout(r, opts.stepMs));
    await topo.exec(h.ns, ['ip', ...batch[batch.length - 1]!.split(' ')]);
  }
  const now = await currentAddresses(topo, h.name);
  const route = (await topo.exec(h.ns, ['ip', '-4', 'route', 'show', 'default'])).stdout;
  if (now.join(',') !== ip || !route.includes(`via ${h.gateway}`)) {
    throw new RoamError(`replaceAddress: ${h.name} has [${now.join(', ')}] and default route "${route.trim()}" after moving to ${ip}`);
  }
  return { ip, at };
}

function sitePlan(topo: Topology, site: string): SitePlan {
  const s = topo.plan.sites.find((x) => x.name === site);
  if (!s) throw new RoamError(`topology ${topo.id}: no site named "${site}"`);
  return s;
}

/**
 * Resets the NAT mappings of `site` (`conntrack -F` in its router), as a NAT gateway does when it
 * reboots or times a mapping out. Until a host behind it sends again, inbound packets for the old
 * mappings are dropped. Returns how many entries there were just before, and `at`: Date.now()
 * when the flush was done.
 */
export async function flushConntrack(topo: Topology, site: string): Promise<{ flushed: number; at: number }> {
  const s = sitePlan(topo, site);
  const flushed = Number((await topo.exec(s.ns, ['conntrack', '-C'])).stdout.trim()) || 0;
  await topo.exec(s.ns, ['conntrack', '-F']);
  return { flushed, at: Date.now() };
}

/** The conntrack table of `site`'s router, one entry a line (`conntrack -L`), for assertions. */
export async function listConntrack(topo: Topology, site: string): Promise<string[]> {
  const r = await topo.exec(sitePlan(topo, site).ns, ['conntrack', '-L']);
  return r.stdout.split('\n').filter((l) => l.trim() !== '');
}

function procState(pid: number): string | null {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
  } catch {
    return null;
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Plays a suspend: SIGSTOPs the agent (all its threads), runs `during` (e.g. replaceAddress),
 * waits until `ms` have passed since the stop, and SIGCONTs it, also when `during` throws.
 * Unlike a real suspend the agent's monotonic clock keeps running. Returns Date.now() at the
 * stop and at the resume.
 */
export async function suspendAgent(
  agent: Pick<Agent, 'name' | 'proc'>,
  ms: number,
  during?: () => Promise<void>,
): Promise<{ stoppedAt: number; resumedAt: number }> {
  const pid = agent.proc.pid;
  if (pid === undefined || agent.proc.exitCode !== null || agent.proc.signalCode !== null) {
    throw new RoamError(`suspendAgent: agent ${agent.name} is not running`);
  }
  process.kill(pid, 'SIGSTOP');
  const stoppedAt = Date.now();
  try {
    for (let i = 0; i < 100 && procState(pid) !== 'T'; i++) await sleep(5);
    if (procState(pid) !== 'T') throw new RoamError(`suspendAgent: agent ${agent.name} (pid ${pid}) did not stop`);
    await during?.();
    const left = stoppedAt + ms - Date.now();
    if (left > 0) await sleep(left);
  } finally {
    try {
      process.kill(pid, 'SIGCONT');
    } catch {
      /* gone meanwhile: the caller sees it exit */
    }
  }
  return { stoppedAt, resumedAt: Date.now() };
}

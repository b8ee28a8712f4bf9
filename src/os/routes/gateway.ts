/**
 * What a subnet gateway needs from its host: IPv4 forwarding between the overlay and its LAN, and
 * optionally source NAT of overlay traffic into the advertised prefixes (for a LAN whose router
 * cannot route the overlay range back). Declarative like routes.ts: `planGateway` is pure, the
 * commands go through the runner (tests compare the transcript), and applying the same desired
 * state twice leaves the same rules (the table is flushed and refilled, never appended to).
 */
import { runChecked, type CommandRunner } from '../runner';

export interface GatewayDesired {
  /** The overlay interface. */
  readonly ifname: string;
  /** Turn IPv4 forwarding on (a host that advertises routes must forward). */
  readonly forward: boolean;
  /** Prefixes into which traffic arriving from the overlay is masqueraded; empty: no NAT table. */
  readonly snat: readonly string[];
}

/** The nftables table holding our NAT rules (one per overlay interface). */
export function snatTable(ifname: string): string {
  return `cladnet_${ifname.replace(/[^A-Za-z0-9_]/g, '_')}`;
}

/** Pure: the commands that bring the host to `d`. */
export function planGateway(d: GatewayDesired): string[][] {
  const cmds: string[][] = [];
  if (d.forward) cmds.push(['sysctl', '-q', '-w', 'net.ipv4.ip_forward=1']);
  const t = snatTable(d.ifname);
  if (d.snat.length === 0) return cmds;
  cmds.push(['nft', 'add', 'table', 'ip', t]);
  cmds.push(['nft', 'flush', 'table', 'ip', t]);
  cmds.push(['nft', 'add', 'chain', 'ip', t, 'postrouting', '{ type nat hook postrouting priority srcnat ; }']);
  for (const p of d.snat) cmds.push(['nft', 'add', 'rule', 'ip', t, 'postrouting', 'iifname', d.ifname, 'ip', 'daddr', p, 'masquerade']);
  return cmds;
}

export class GatewayManager {
  constructor(private readonly runner: CommandRunner) {}

  /** Applies `d`; returns the commands run. Throws EOS (transient) when one fails. */
  async set(d: GatewayDesired): Promise<string[]> {
    const cmds = planGateway(d);
    for (const c of cmds) await runChecked(this.runner, c);
    return cmds.map((c) => c.join(' '));
  }

  /** Removes our NAT table (at stop); a missing table is fine. Forwarding stays as the host has it. */
  async clear(ifname: string): Promise<void> {
    await this.runner.run(['nft', 'delete', 'table', 'ip', snatTable(ifname)]);
  }
}

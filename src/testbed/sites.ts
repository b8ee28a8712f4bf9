import type { Topology } from './topology';

/**
 * Site LANs behind gateway hosts, for subnet-route tests: a LAN namespace holding a plain host (no
 * agent) on a bridge, and a veth from that bridge into each gateway host's namespace. Addresses:
 * LAN s is 198.19.s.0/24 (the test bed's site range, plan.ts), gateway k (0-based) is
 * 198.19.s.(1+k), the plain host 198.19.s.10 with its default route via the first gateway.
 * The namespace belongs to the topology (addNamespace), so its teardown removes it.
 */
export interface SiteLan {
  /** The plain host's namespace. */
  readonly ns: string;
  readonly cidr: string;
  readonly hostIp: string;
  /** Each gateway host's address on the LAN, by host name. */
  readonly gatewayIps: ReadonlyMap<string, string>;
}

/** Pure: the commands that build LAN `index` behind `gateways` ({name, ns}), the LAN's namespace being `lanNs`. */
export function siteLanCommands(lanNs: string, index: number, gateways: readonly { name: string; ns: string }[]): string[][] {
  if (!(Number.isInteger(index) && index >= 1 && index <= 254)) throw new Error(`site LAN index ${index} is outside 1..254`);
  if (gateways.length < 1 || gateways.length > 8) throw new Error('a site LAN needs 1 to 8 gateways');
  const net = `198.19.${index}`;
  const cmds: string[][] = [
    ['ip', '-n', lanNs, 'link', 'add', 'br0', 'type', 'bridge'],
    ['ip', '-n', lanNs, 'link', 'set', 'br0', 'up'],
    ['ip', '-n', lanNs, 'address', 'add', `${net}.10/24`, 'dev', 'br0'],
  ];
  gateways.forEach((g, k) => {
    const dev = `lan${index}`;
    cmds.push(['ip', '-n', lanNs, 'link', 'add', `p${k}`, 'type', 'veth', 'peer', 'name', dev, 'netns', g.ns]);
    cmds.push(['ip', '-n', lanNs, 'link', 'set', `p${k}`, 'master', 'br0', 'up']);
    cmds.push(['ip', '-n', g.ns, 'address', 'add', `${net}.${1 + k}/24`, 'dev', dev]);
    cmds.push(['ip', '-n', g.ns, 'link', 'set', dev, 'up']);
  });
  cmds.push(['ip', '-n', lanNs, 'route', 'add', 'default', 'via', `${net}.1`]);
  return cmds;
}

export async function addSiteLan(topo: Topology, opts: { name: string; index: number; gateways: readonly string[] }): Promise<SiteLan> {
  const gws = opts.gateways.map((g) => topo.host(g));
  const ns = await topo.addNamespace(opts.name);
  for (const cmd of siteLanCommands(ns, opts.index, gws)) await topo.exec(topo.routerNs, cmd);
  const net = `198.19.${opts.index}`;
  return {
    ns,
    cidr: `${net}.0/24`,
    hostIp: `${net}.10`,
    gatewayIps: new Map(gws.map((g, k) => [g.name, `${net}.${1 + k}`])),
  };
}

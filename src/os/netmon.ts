/**
 * The host's own underlay addresses: what the agent publishes as its endpoints and host CIDRs.
 * Behind an interface so tests can hand in a fixed set; the address-change monitor builds on it.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';

export interface LocalAddress {
  readonly ifname: string;
  readonly address: string;
  readonly prefixLen: number;
  /**
   * On a layer-3 tunnel device (a TUN device or a WireGuard link: another VPN's, or another
   * cladnet network's): not a path of its own. The agent never offers it as an endpoint nor counts
   * its network as a private path, or our tunnel would run inside that one; it still counts the
   * network as taken when planning address space.
   */
  readonly tunnel?: boolean;
}

export interface AddressSource {
  /** IPv4 addresses. */
  list(): LocalAddress[];
  /** IPv6 addresses other than link-local ones (absent: none, e.g. a test's fixed set). */
  list6?(): LocalAddress[];
}

/** ARPHRD_NONE: the link type of TUN devices and WireGuard links (no link-layer header). */
export const ARPHRD_NONE = 65534;

/**
 * True when `ifname` is a layer-3 tunnel device: its /sys/class/net/<ifname>/type is ARPHRD_NONE.
 * An unreadable type (the link went away, no sysfs) counts as not a tunnel: the address is kept.
 */
export function isTunnelLink(ifname: string, sysfs = '/sys/class/net'): boolean {
  try {
    return Number(fs.readFileSync(`${sysfs}/${ifname}/type`, 'utf8').trim()) === ARPHRD_NONE;
  } catch {
    return false;
  }
}

export function systemAddresses(exclude: readonly string[], sysfs = '/sys/class/net'): AddressSource {
  const read = (family: 'IPv4' | 'IPv6', keep: (a: os.NetworkInterfaceInfo) => boolean, whole: string): LocalAddress[] => {
    const out: LocalAddress[] = [];
    for (const [ifname, addrs] of Object.entries(os.networkInterfaces())) {
      if (exclude.includes(ifname)) continue;
      let tunnel: boolean | undefined;
      for (const a of addrs ?? []) {
        if (a.family !== family || a.internal || !keep(a)) continue;
        tunnel ??= isTunnelLink(ifname, sysfs);
        const prefixLen = Number((a.cidr ?? whole).split('/')[1]);
        out.push(tunnel ? { ifname, address: a.address, prefixLen, tunnel } : { ifname, address: a.address, prefixLen });
      }
    }
    return out;
  };
  return {
    list: () => read('IPv4', () => true, '/32'),
    // scopeid != 0: link-local, usable only with an interface named
    list6: () => read('IPv6', (a) => (a.scopeid ?? 0) === 0, '/128'),
  };
}

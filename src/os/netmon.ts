/**
 * The host's own underlay addresses: what the agent publishes as its endpoints and host CIDRs.
 * Behind an interface so tests can hand in a fixed set; the address-change monitor builds on it.
 */
import * as os from 'node:os';

export interface LocalAddress {
  readonly ifname: string;
  readonly address: string;
  readonly prefixLen: number;
}

export interface AddressSource {
  /** IPv4 addresses. */
  list(): LocalAddress[];
  /** IPv6 addresses other than link-local ones (absent: none, e.g. a test's fixed set). */
  list6?(): LocalAddress[];
}

export function systemAddresses(exclude: readonly string[]): AddressSource {
  return {
    list() {
      const out: LocalAddress[] = [];
      for (const [ifname, addrs] of Object.entries(os.networkInterfaces())) {
        if (exclude.includes(ifname)) continue;
        for (const a of addrs ?? []) {
          if (a.family !== 'IPv4' || a.internal) continue;
          const prefixLen = Number((a.cidr ?? '/32').split('/')[1]);
          out.push({ ifname, address: a.address, prefixLen });
        }
      }
      return out;
    },
    list6() {
      const out: LocalAddress[] = [];
      for (const [ifname, addrs] of Object.entries(os.networkInterfaces())) {
        if (exclude.includes(ifname)) continue;
        for (const a of addrs ?? []) {
          // scopeid != 0: link-local, usable only with an interface named
          if (a.family !== 'IPv6' || a.internal || (a.scopeid ?? 0) !== 0) continue;
          const prefixLen = Number((a.cidr ?? '/128').split('/')[1]);
          out.push({ ifname, address: a.address, prefixLen });
        }
      }
      return out;
    },
  };
}

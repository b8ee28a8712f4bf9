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
  list(): LocalAddress[];
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
  };
}

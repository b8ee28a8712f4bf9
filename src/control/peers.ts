import { parseIpv4, Prefix } from '../util/ipv4';
import { checkOverlayIpInNetwork, HostRecord, Parsed } from './records';

/**
 * The peer set, as a pure function of what the registry has read from etcd.
 *
 * A host is a peer when it is not `self`, has an alive key, and has a valid record. A record is
 * valid when it parses, its overlayIp is a usable address of the network CIDR, and no other host
 * holds the lease for that overlayIp. Among live hosts (and self) claiming the same overlayIp, the
 * lease holder wins; when no lease decides, every claimant is rejected.
 */
export interface HostEntry {
  readonly modRevision: string;
  readonly parsed: Parsed<HostRecord>;
}

export interface PeerInputs {
  readonly self: string;
  readonly cidr: Prefix;
  readonly cidrText: string;
  readonly hosts: ReadonlyMap<string, HostEntry>; // by host name
  readonly alive: ReadonlySet<string>; // host names with an alive key
  readonly leases: ReadonlyMap<string, string | null>; // overlay ip -> holder (null: unreadable lease)
}

export interface Rejection {
  readonly name: string;
  readonly modRevision: string;
  readonly error: string;
}

export interface PeerSet {
  readonly peers: Map<string, HostRecord>; // sorted by name
  readonly rejected: Rejection[];
}

export function computePeers(inp: PeerInputs): PeerSet {
  const rejected: Rejection[] = [];
  const valid = new Map<string, HostRecord>();
  const names = [...inp.hosts.keys()].sort();

  for (const name of names) {
    const e = inp.hosts.get(name)!;
    if (!e.parsed.ok) {
      rejected.push({ name, modRevision: e.modRevision, error: e.parsed.error });
      continue;
    }
    const rec = e.parsed.value;
    const why = checkOverlayIpInNetwork(rec, inp.cidr, inp.cidrText);
    if (why !== null) {
      rejected.push({ name, modRevision: e.modRevision, error: why });
      continue;
    }
    const holder = inp.leases.get(rec.overlayIp);
    if (typeof holder === 'string' && holder !== name) {
      rejected.push({ name, modRevision: e.modRevision, error: `overlayIp: ${rec.overlayIp} is leased to ${holder}` });
      continue;
    }
    valid.set(name, rec);
  }

  // Duplicates among the hosts that matter now (live ones and self). Lease holders were kept above
  // and every other claimant of a leased IP was rejected, so what is left unresolved has no lease.
  const byIp = new Map<number, string[]>();
  for (const [name, rec] of valid) {
    if (name !== inp.self && !inp.alive.has(name)) continue;
    const ip = parseIpv4(rec.overlayIp)!;
    const list = byIp.get(ip);
    if (list) list.push(name);
    else byIp.set(ip, [name]);
  }
  for (const claimants of byIp.values()) {
    if (claimants.length < 2) continue;
    for (const name of claimants) {
      const rec = valid.get(name)!;
      const others = claimants.filter((n) => n !== name).join(', ');
      rejected.push({
        name,
        modRevision: inp.hosts.get(name)!.modRevision,
        error: `overlayIp: ${rec.overlayIp} is also claimed by ${others} and no lease decides`,
      });
      valid.delete(name);
    }
  }

  const peers = new Map<string, HostRecord>();
  for (const [name, rec] of valid) if (name !== inp.self && inp.alive.has(name)) peers.set(name, rec);
  return { peers, rejected };
}

import { parseIpv4, Prefix } from '../util/ipv4';
import { revokes, type TrustAnchor } from './cert';
import { checkOverlayIpInNetwork, HostCert, HostRecord, Parsed, RevocationRecord } from './records';

/**
 * The peer set, as a pure function of what the registry has read from etcd.
 *
 * A host is a peer when it is not `self`, has an alive key, and has a valid record. A record is
 * valid when it parses, is trusted (below), is not revoked, its overlayIp is a usable address of
 * the network CIDR, and no other host holds the lease for that overlayIp. Among live hosts (and
 * self) claiming the same overlayIp, the lease holder wins; when no lease decides, every claimant
 * is rejected.
 *
 * Trust (when `trust` is given, which the agent always does): the record carries a certificate
 * that verifies against the network's trust anchor, is within its validity period at `trust.now`,
 * and binds the record's network, name, public key and overlayIp. A host with a verified
 * revocation covering its certificate is gone. When our own certificate (`trust.selfCert`) is
 * revoked or no longer valid, we have no peers at all.
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
  readonly trust?: PeerTrust;
}

export interface PeerTrust {
  readonly anchor: TrustAnchor;
  /** Milliseconds since the Unix epoch: certificates are checked against this moment. */
  readonly now: number;
  /** Verified revocations by host name. */
  readonly revocations: ReadonlyMap<string, readonly RevocationRecord[]>;
  /** Our own certificate: when it is revoked or invalid, no peers. */
  readonly selfCert?: HostCert;
}

export interface Rejection {
  readonly name: string;
  readonly modRevision: string;
  readonly error: string;
  /** Set when the record parsed but failed the trust checks ('untrusted') or was revoked. */
  readonly trust?: 'untrusted' | 'revoked';
}

export interface PeerSet {
  readonly peers: Map<string, HostRecord>; // sorted by name
  readonly rejected: Rejection[];
  /** Why we have no peers because of our own certificate (revoked, expired), if so. */
  readonly selfProblem?: string;
}

/** The revocation covering `cert`, if any. */
export function revocationOf(revocations: ReadonlyMap<string, readonly RevocationRecord[]>, cert: HostCert): RevocationRecord | undefined {
  return revocations.get(cert.name)?.find((r) => revokes(r, cert));
}

function describeRevocation(r: RevocationRecord): string {
  return r.serial === null ? `revoked at ${r.revoked} (every certificate issued until then)` : `certificate ${r.serial} revoked at ${r.revoked}`;
}

export function computePeers(inp: PeerInputs): PeerSet {
  const rejected: Rejection[] = [];
  const valid = new Map<string, HostRecord>();
  const names = [...inp.hosts.keys()].sort();
  const trust = inp.trust;

  let selfProblem: string | undefined;
  if (trust?.selfCert) {
    const bad = trust.anchor.verifyCert(trust.selfCert, trust.now);
    const rev = revocationOf(trust.revocations, trust.selfCert);
    if (bad !== null) selfProblem = `our own certificate: ${bad}`;
    else if (rev) selfProblem = `our own certificate was ${describeRevocation(rev)}`;
  }

  for (const name of names) {
    const e = inp.hosts.get(name)!;
    if (!e.parsed.ok) {
      rejected.push({ name, modRevision: e.modRevision, error: e.parsed.error });
      continue;
    }
    const rec = e.parsed.value;
    if (trust) {
      const bad = trust.anchor.checkRecord(rec, trust.now);
      if (bad !== null) {
        rejected.push({ name, modRevision: e.modRevision, error: bad, trust: 'untrusted' });
        continue;
      }
      const rev = revocationOf(trust.revocations, rec.cert!);
      if (rev) {
        rejected.push({ name, modRevision: e.modRevision, error: `cert: ${describeRevocation(rev)}`, trust: 'revoked' });
        continue;
      }
    }
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
  if (selfProblem !== undefined) return { peers, rejected, selfProblem };
  for (const [name, rec] of valid) if (name !== inp.self && inp.alive.has(name)) peers.set(name, rec);
  return { peers, rejected };
}

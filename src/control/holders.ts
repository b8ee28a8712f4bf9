import type { HostCert } from './records';

/**
 * Who holds an overlay address, decided from certificates alone.
 *
 * Leases, etcd revisions, record order and liveness are written by whoever can write to etcd, so
 * none of them may decide who owns an address. Certificates are signed by the network key, so
 * their content can be trusted once verified:
 *
 * 1. The rule (`certPrecedence`): of two valid, unrevoked certificates of different names for one
 *    address, the one issued earlier holds it; equal `issued` times go to the lower serial, equal
 *    serials (never, in practice: they are random) to the lower name. Every agent that sees the
 *    same two certificates picks the same one.
 * 2. `groupByAddress`: the valid certificates of a set, per address, in that order.
 * 3. `otherHolder`: the first certificate for an address that names another host; what the
 *    operator's `host issue` must never sign over.
 *
 * Checking that a certificate is valid (signature, validity period, revocation) is the caller's:
 * the agent and the issuer each have their own sources of revocations.
 */

/** Negative when `a` holds the address against `b`, positive when `b` does, 0 for the same certificate. */
export function certPrecedence(a: HostCert, b: HostCert): number {
  const ia = Date.parse(a.issued);
  const ib = Date.parse(b.issued);
  if (ia !== ib) return ia < ib ? -1 : 1;
  if (a.serial !== b.serial) return a.serial < b.serial ? -1 : 1;
  if (a.name !== b.name) return a.name < b.name ? -1 : 1;
  return 0;
}

/** A certificate as status and logs show it: enough to find it, nothing secret. */
export interface CertRef {
  readonly name: string;
  readonly serial: string;
  readonly issued: string;
}

export function certRef(c: HostCert): CertRef {
  return { name: c.name, serial: c.serial, issued: c.issued };
}

export function describeCert(c: CertRef): string {
  return `${c.name} (certificate ${c.serial}, issued ${c.issued})`;
}

/** Two valid certificates of different names for one address, and which one holds it. */
export interface AddressConflict {
  readonly overlayIp: string;
  readonly winner: CertRef;
  readonly loser: CertRef;
}

/**
 * Certificates per overlay address, each list in precedence order (holder first). Only those
 * `isValid` accepts are kept; the same certificate seen twice (same name and serial, e.g. in the
 * ledger and in etcd) counts once.
 */
export function groupByAddress(certs: Iterable<HostCert>, isValid: (c: HostCert) => boolean): Map<string, HostCert[]> {
  const out = new Map<string, HostCert[]>();
  const seen = new Set<string>();
  for (const c of certs) {
    const id = `${c.name}/${c.serial}`;
    if (seen.has(id) || !isValid(c)) continue;
    seen.add(id);
    const list = out.get(c.overlayIp);
    if (list) list.push(c);
    else out.set(c.overlayIp, [c]);
  }
  for (const list of out.values()) list.sort(certPrecedence);
  return out;
}

/** The first (holding) certificate for `overlayIp` whose name is not `name`, if any. */
export function otherHolder(groups: ReadonlyMap<string, readonly HostCert[]>, overlayIp: string, name: string): HostCert | undefined {
  return groups.get(overlayIp)?.find((c) => c.name !== name);
}

/** Every address held by a certificate of a name other than `name`, with that certificate. */
export function addressesHeldByOthers(groups: ReadonlyMap<string, readonly HostCert[]>, name: string): Map<string, HostCert> {
  const out = new Map<string, HostCert>();
  for (const ip of groups.keys()) {
    const c = otherHolder(groups, ip, name);
    if (c) out.set(ip, c);
  }
  return out;
}

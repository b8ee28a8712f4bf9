import { parseIpv4, Prefix } from '../util/ipv4';
import { revokes, type TrustAnchor } from './cert';
import { AddressConflict, certPrecedence, certRef, describeCert } from './holders';
import { checkOverlayIpInNetwork, HostCert, HostRecord, Parsed, RevocationRecord, TokenRevocation } from './records';
import type { Candidate, RecordView } from './roster';
import { useId } from './token-memory';

/**
 * The peer set, as a pure function of what the registry has read from etcd.
 *
 * `candidates`: every host but `self` with a valid record, alive or not, where a member's last
 * valid record (`kept`) stands in when etcd holds none, an invalid one or an older one; the
 * roster (roster.ts) decides membership from them. `peers` (kept for tools and tests): the
 * candidates with an alive key and a record in etcd, the rule before issue 11. A record is
 * valid when it parses, is trusted (below), is not revoked, its overlayIp is a usable address of
 * the network CIDR, and it holds that address.
 *
 * Trust (when `trust` is given, which the agent always does): the record carries a certificate
 * that verifies against the network's trust anchor, is within its validity period at `trust.now`,
 * and binds the record's network, name, public key and overlayIp. A host with a verified
 * revocation covering its certificate is gone. When our own certificate (`trust.selfCert`) is
 * revoked or no longer valid, we have no peers at all.
 *
 * Who holds an address (with trust): certificates alone decide (holders.ts). When two valid
 * records of different names (self included, with `trust.selfCert`) claim one address, alive or
 * not, the earlier-issued certificate holds it (then the lower serial); the others are rejected
 * and reported in `conflicts`. Leases, etcd revisions and liveness play no part: an etcd writer
 * can neither pick the winner nor make one. When we lose, we have no peers (`selfProblem`).
 *
 * Without trust (a network made before certificates, which the agent refuses; kept for tools and
 * tests) the old rule stands: the lease holder wins, and with no lease deciding every live
 * claimant is rejected.
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
  /**
   * The last valid record of each member (roster.ts). When etcd holds no record for a name, or
   * one that fails the checks, or a valid one with an older epoch, the held record stands in
   * for it while it passes the same checks (certificate valid, unrevoked, holding its address).
   */
  readonly kept?: ReadonlyMap<string, HostRecord>;
}

export interface PeerTrust {
  readonly anchor: TrustAnchor;
  /** Milliseconds since the Unix epoch: certificates are checked against this moment. */
  readonly now: number;
  /** Verified revocations by host name. */
  readonly revocations: ReadonlyMap<string, readonly RevocationRecord[]>;
  /** Our own certificate: when it is revoked or invalid, no peers. */
  readonly selfCert?: HostCert;
  /**
   * Certificates seen earlier (the registry remembers every certified record it accepted). They
   * take part in address decisions while valid and unrevoked, even when their record is gone, so
   * an etcd writer who deletes a holder's record cannot hand its address to a newer certificate.
   */
  readonly knownCerts?: Iterable<HostCert>;
  /**
   * The same certificates for one name, in the same order (an index, so that checking one record
   * does not walk every remembered certificate); `knownCerts` filtered by name when absent.
   */
  readonly knownCertsNamed?: (name: string) => Iterable<HostCert>;
  /** Join tokens (token-memory.ts): the first certificate seen per (token, use), and revocations. */
  readonly tokens?: TokenView;
}

export interface TokenView {
  /** "token/use" -> serial of the first certificate accepted for it. */
  readonly uses: ReadonlyMap<string, string>;
  revocationOf(cert: HostCert): TokenRevocation | undefined;
}

export interface Rejection {
  readonly name: string;
  readonly modRevision: string;
  readonly error: string;
  /**
   * Set when the record parsed but failed the trust checks ('untrusted'), was revoked, or is valid
   * but lost its address to an earlier certificate ('conflict', also listed in `conflicts`).
   */
  readonly trust?: 'untrusted' | 'revoked' | 'conflict' | 'stale';
}

export interface PeerSet {
  readonly peers: Map<string, HostRecord>; // sorted by name
  readonly rejected: Rejection[];
  /** Why we have no peers because of our own certificate (revoked, expired, lost its address), if so. */
  readonly selfProblem?: string;
  /** Addresses claimed by two or more valid certificates: by address, then losers in precedence order. */
  readonly conflicts: AddressConflict[];
  /** Certificates of the records that passed the trust and revocation checks (for `knownCerts`). */
  readonly certified: HostCert[];
  /**
   * Every valid host but self (alive or not; held records included), with what etcd holds for it:
   * the roster (roster.ts) decides membership from these. Empty when `selfProblem`.
   */
  readonly candidates: Map<string, Candidate>;
}

/** The revocation covering `cert`, if any. */
export function revocationOf(revocations: ReadonlyMap<string, readonly RevocationRecord[]>, cert: HostCert): RevocationRecord | undefined {
  return revocations.get(cert.name)?.find((r) => revokes(r, cert));
}

export function describeRevocation(r: RevocationRecord): string {
  return r.serial === null ? `revoked at ${r.revoked} (every certificate issued until then)` : `certificate ${r.serial} revoked at ${r.revoked}`;
}

/** Why `cert` is revoked (as a host or through its join token), or undefined. */
export function revokedWhy(trust: PeerTrust, cert: HostCert): string | undefined {
  const rev = revocationOf(trust.revocations, cert);
  if (rev) return describeRevocation(rev);
  const t = trust.tokens?.revocationOf(cert);
  if (t) return `revoked with its join token ${t.token} at ${t.revoked}`;
  return undefined;
}

/** Why a token certificate may not hold its use: another certificate was seen first for it. */
function useTaken(trust: PeerTrust, cert: HostCert): string | undefined {
  if (cert.token === undefined) return undefined;
  const first = trust.tokens?.uses.get(useId(cert));
  if (first === undefined || first === cert.serial) return undefined;
  return `cert.use: use ${cert.use} of token ${cert.token} was first taken by certificate ${first}; a second certificate for it is refused`;
}

/**
 * A certificate made under a join token never takes a name that another valid, unrevoked
 * certificate of another key holds (remembered in `knownCerts`, in the order first seen): one
 * signed by the network key always keeps the name (the operator's word), one under a token keeps
 * it when it was seen first. (`issued` is no guide: whoever holds a token's secret picks it.)
 */
function nameTaken(trust: PeerTrust, cert: HostCert): string | undefined {
  if (cert.token === undefined) return undefined;
  let seenSelf = false;
  for (const c of trust.knownCertsNamed?.(cert.name) ?? trust.knownCerts ?? []) {
    if (c.serial === cert.serial && c.name === cert.name) {
      seenSelf = true;
      continue;
    }
    if (c.name !== cert.name || c.publicKey === cert.publicKey) continue;
    if (c.token !== undefined && seenSelf) continue;
    if (trust.anchor.verifyCert(c, trust.now) !== null || revokedWhy(trust, c) !== undefined) continue;
    return `cert.name: ${cert.name} is held by certificate ${c.serial} of another key; a join token cannot take over a host`;
  }
  return undefined;
}

/** One record through the checks: parse, trust, revocation, address in the network, lease (without trust). */
export function checkEntry(inp: Pick<PeerInputs, 'cidr' | 'cidrText' | 'leases' | 'trust'>, e: HostEntry): { rec: HostRecord; cert?: HostCert } | { error: string; trust?: Rejection['trust'] } {
  if (!e.parsed.ok) return { error: e.parsed.error };
  const rec = e.parsed.value;
  const trust = inp.trust;
  if (trust) {
    const bad = trust.anchor.checkRecord(rec, trust.now);
    if (bad !== null) return { error: bad, trust: 'untrusted' };
    const rev = revokedWhy(trust, rec.cert!);
    if (rev) return { error: `cert: ${rev}`, trust: 'revoked' };
    const taken = useTaken(trust, rec.cert!) ?? nameTaken(trust, rec.cert!);
    if (taken) return { error: taken, trust: 'untrusted' };
  }
  const why = checkOverlayIpInNetwork(rec, inp.cidr, inp.cidrText);
  if (why !== null) return { error: why };
  if (!trust) {
    const holder = inp.leases.get(rec.overlayIp);
    if (typeof holder === 'string' && holder !== rec.name) return { error: `overlayIp: ${rec.overlayIp} is leased to ${holder}` };
  }
  return { rec, cert: trust ? rec.cert! : undefined };
}

/** The valid hosts other than self, each with what etcd holds for it (see roster.ts). */
/** One name's verdict from etcd's entry and the record held from before (if any). */
export interface NameVerdict {
  /** The record that stands, with its certificate and what etcd holds ('present' when etcd's own). */
  accepted: { rec: HostRecord; cert?: HostCert; view: RecordView } | null;
  /** Why etcd's entry was refused, when it was. */
  rejected: Rejection | null;
  /** Records checked (for the evaluator's work counters). */
  checked: number;
}

/**
 * etcd's record when it passes the checks and is not older than the one held; otherwise the held
 * record while it passes the same checks (a deleted or forged record never drops a member).
 */
export function judgeName(
  inp: Pick<PeerInputs, 'cidr' | 'cidrText' | 'leases' | 'trust'>,
  name: string,
  e: HostEntry | undefined,
  held: HostRecord | undefined,
): NameVerdict {
  let view: RecordView = 'absent';
  let rejected: Rejection | null = null;
  let checked = 0;
  if (e) {
    checked++;
    const r = checkEntry(inp, e);
    if ('error' in r) {
      rejected = { name, modRevision: e.modRevision, error: r.error, trust: r.trust };
      view = 'invalid';
    } else if (held && r.rec.epoch < held.epoch) {
      // A valid record older than the one we hold (replayed by an etcd writer?): keep ours.
      rejected = { name, modRevision: e.modRevision, error: `epoch: ${r.rec.epoch} is older than the record held (${held.epoch})`, trust: 'stale' };
      view = 'invalid';
    } else {
      return { accepted: { rec: r.rec, cert: r.cert, view: 'present' }, rejected: null, checked };
    }
  }
  if (!held) return { accepted: null, rejected, checked };
  checked++;
  const r = checkEntry(inp, { modRevision: '0', parsed: { ok: true, value: held } });
  return { accepted: 'error' in r ? null : { rec: r.rec, cert: r.cert, view }, rejected, checked };
}

function candidatesOf(inp: PeerInputs, valid: Map<string, HostRecord>, views: Map<string, RecordView>, selfProblem: string | undefined): Map<string, Candidate> {
  const out = new Map<string, Candidate>();
  if (selfProblem !== undefined) return out;
  for (const [name, record] of valid) if (name !== inp.self) out.set(name, { record, etcd: views.get(name) ?? 'present' });
  return out;
}

export function computePeers(inp: PeerInputs): PeerSet {
  const rejected: Rejection[] = [];
  const certified: HostCert[] = [];
  const valid = new Map<string, HostRecord>();
  const views = new Map<string, RecordView>();
  const names = [...new Set([...inp.hosts.keys(), ...(inp.kept?.keys() ?? [])])].sort();
  const trust = inp.trust;

  let selfProblem: string | undefined;
  if (trust?.selfCert) {
    const bad = trust.anchor.verifyCert(trust.selfCert, trust.now);
    const rev = revokedWhy(trust, trust.selfCert);
    if (bad !== null) selfProblem = `our own certificate: ${bad}`;
    else if (rev) selfProblem = `our own certificate was ${rev}`;
  }

  for (const name of names) {
    const v = judgeName(inp, name, inp.hosts.get(name), name === inp.self ? undefined : inp.kept?.get(name));
    if (v.rejected) rejected.push(v.rejected);
    if (!v.accepted) continue;
    if (v.accepted.cert) certified.push(v.accepted.cert);
    valid.set(name, v.accepted.rec);
    views.set(name, v.accepted.view);
  }

  const conflicts: AddressConflict[] = [];
  if (trust) {
    firstPerTokenUse(inp, valid, trust, rejected, certified);
    const lost = resolveByCertificate(inp, valid, trust, rejected, conflicts);
    if (lost !== undefined) selfProblem ??= lost;
    const peers = new Map<string, HostRecord>();
    const candidates = candidatesOf(inp, valid, views, selfProblem);
    if (selfProblem !== undefined) return { peers, rejected, selfProblem, conflicts, certified, candidates };
    for (const [name, rec] of valid) if (name !== inp.self && inp.alive.has(name)) peers.set(name, rec);
    return { peers, rejected, conflicts, certified, candidates };
  }

  // Without trust: duplicates among the hosts that matter now (live ones and self). Lease holders
  // were kept above and every other claimant of a leased IP was rejected, so what is left
  // unresolved has no lease.
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
        modRevision: inp.hosts.get(name)?.modRevision ?? '0',
        error: `overlayIp: ${rec.overlayIp} is also claimed by ${others} and no lease decides`,
      });
      valid.delete(name);
    }
  }

  const peers = new Map<string, HostRecord>();
  const candidates = candidatesOf(inp, valid, views, selfProblem);
  if (selfProblem !== undefined) return { peers, rejected, selfProblem, conflicts, certified, candidates };
  for (const [name, rec] of valid) if (name !== inp.self && inp.alive.has(name)) peers.set(name, rec);
  return { peers, rejected, conflicts, certified, candidates };
}

/**
 * Two valid records whose certificates claim one use of one join token, neither seen before
 * (the sticky binding in `trust.tokens` already refused any other): our own certificate wins,
 * else the first by `certPrecedence`; the others leave `valid` and `certified`.
 */
function firstPerTokenUse(inp: PeerInputs, valid: Map<string, HostRecord>, trust: PeerTrust, rejected: Rejection[], certified: HostCert[]): void {
  const certs: HostCert[] = [];
  for (const rec of valid.values()) if (rec.cert) certs.push(rec.cert);
  for (const { loser: c, winner } of tokenUseLosers(certs, trust.selfCert, inp.self)) {
    valid.delete(c.name);
    const i = certified.indexOf(c);
    if (i >= 0) certified.splice(i, 1);
    rejected.push({ name: c.name, modRevision: inp.hosts.get(c.name)?.modRevision ?? '0', error: tokenUseLostWhy(c, winner), trust: 'untrusted' });
  }
}

/**
 * The rule of `firstPerTokenUse` over the certificates of valid records (one per name): per
 * (token, use), with our own certificate added when it is of that use, ours wins, else the
 * first by `certPrecedence`; every other certificate but ours loses. (evaluator.ts applies it to
 * the records it re-checks.)
 */
export function tokenUseLosers(certs: Iterable<HostCert>, self: HostCert | undefined, selfName: string): { loser: HostCert; winner: HostCert }[] {
  const byUse = new Map<string, HostCert[]>();
  for (const c of certs) {
    if (c.token === undefined) continue;
    const list = byUse.get(useId(c));
    if (list) list.push(c);
    else byUse.set(useId(c), [c]);
  }
  const out: { loser: HostCert; winner: HostCert }[] = [];
  for (const [id, list] of byUse) {
    if (self?.token !== undefined && useId(self) === id && !list.some((c) => c.serial === self.serial)) list.push(self);
    if (list.length < 2) continue;
    list.sort((a, b) => (a === self ? -1 : b === self ? 1 : certPrecedence(a, b)));
    const winner = list[0]!;
    for (const c of list.slice(1)) if (c !== self && c.name !== selfName) out.push({ loser: c, winner });
  }
  return out;
}

export function tokenUseLostWhy(c: HostCert, winner: HostCert): string {
  return `cert.use: use ${c.use} of token ${c.token} is also claimed by certificate ${winner.serial} of ${winner.name}, which comes first`;
}

/**
 * With trust: groups the valid records, our own certificate and the still valid known
 * certificates by address; per address each name counts with its earliest certificate there, and
 * the name whose certificate comes first (`certPrecedence`) holds it. Current claimants of other
 * names (records in `valid`, or us) leave `valid` and go to `rejected` and `conflicts`.
 * Returns why we have no address, when our own certificate lost.
 */
function resolveByCertificate(
  inp: PeerInputs,
  valid: Map<string, HostRecord>,
  trust: PeerTrust,
  rejected: Rejection[],
  conflicts: AddressConflict[],
): string | undefined {
  const claims = new Map<string, HostCert[]>();
  const seen = new Set<string>();
  const claim = (c: HostCert) => {
    const id = `${c.name}/${c.serial}`;
    if (seen.has(id)) return;
    seen.add(id);
    const list = claims.get(c.overlayIp);
    if (list) list.push(c);
    else claims.set(c.overlayIp, [c]);
  };
  /** Name -> the certificate it currently claims with (its record's, or ours). */
  const current = new Map<string, HostCert>();
  for (const [name, rec] of valid) {
    if (name === inp.self && trust.selfCert) continue;
    claim(rec.cert!);
    current.set(name, rec.cert!);
  }
  const self = trust.selfCert;
  if (self && trust.anchor.verifyCert(self, trust.now) === null && !revokedWhy(trust, self)) {
    claim(self);
    current.set(inp.self, self);
  }
  for (const c of trust.knownCerts ?? []) {
    if (seen.has(`${c.name}/${c.serial}`) || c.network !== trust.anchor.network) continue;
    if (checkOverlayIpInNetwork(c, inp.cidr, inp.cidrText) !== null) continue;
    if (trust.anchor.verifyCert(c, trust.now) !== null || revokedWhy(trust, c) !== undefined || useTaken(trust, c) !== undefined) continue;
    claim(c);
  }

  let selfLost: string | undefined;
  const ips = [...claims.keys()].sort((a, b) => parseIpv4(a)! - parseIpv4(b)!);
  for (const ip of ips) {
    const list = claims.get(ip)!.sort(certPrecedence);
    const winner = list[0]!;
    const counted = new Set<string>([winner.name]);
    for (const c of list) {
      if (counted.has(c.name)) continue; // a name counts once, with its earliest certificate here
      counted.add(c.name);
      const claimant = current.get(c.name);
      if (claimant?.overlayIp !== ip) continue; // only a remembered certificate: nobody claims with it now
      conflicts.push({ overlayIp: ip, winner: certRef(winner), loser: certRef(claimant) });
      const why = `overlayIp: ${ip} is held by the earlier certificate of ${describeCert(winner)}`;
      if (c.name === inp.self) {
        selfLost = `our own certificate (${claimant.serial}) lost ${ip} to ${describeCert(winner)}`;
        if (!valid.has(inp.self)) continue;
      }
      valid.delete(c.name);
      const e = inp.hosts.get(c.name);
      rejected.push({ name: c.name, modRevision: e?.modRevision ?? '0', error: why, trust: 'conflict' });
    }
  }
  return selfLost;
}

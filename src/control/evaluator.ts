import type { Logger } from '../log';
import { parseIpv4, type Prefix } from '../util/ipv4';
import { nextCertChange, type TrustAnchor } from './cert';
import { certPrecedence, certRef, describeCert, type AddressConflict } from './holders';
import { hostKey } from './keys';
import { KnownCerts } from './known-certs';
import { computePeers, judgeName, revokedWhy, tokenUseLosers, tokenUseLostWhy, type HostEntry, type PeerTrust, type Rejection } from './peers';
import { checkOverlayIpInNetwork, HostCert, HostRecord, serializeHostRecord } from './records';
import type { Revocations } from './revocations';
import { Roster, type Candidate, type MemberView, type RecordView } from './roster';
import { TokenMemory, useId } from './token-memory';

/**
 * Trust and membership (registry job 5): from the etcd mirror (watch.ts), the sticky revocations
 * (revocations.ts) and the remembered certificates (known-certs.ts) to the peer set.
 *
 * Every host record must carry a certificate signed by the network key (the trust anchor) that
 * binds its name, key and overlay address (peers.ts); verified revocations remove hosts at once.
 * Two valid certificates for one address: the earlier holds it (holders.ts); accepted certificates
 * are remembered so a deleted record does not give its address away. Membership (roster.ts): etcd
 * introduces a host (valid record + alive key); it then stays while its certificate is valid, on
 * its last valid record when etcd deletes or spoils it, and leaves on revocation, expiry, a bye
 * (`bye()`) or a long silence. Timers ask for a full evaluation when the next certificate becomes
 * valid or expires and when the next silent member is due to leave (`onTimer`).
 *
 * Work proportional to the change: `evaluate(mirror, now, names)` with the names etcd changed
 * (records, alive keys) re-checks only those records, re-decides only the addresses they claimed
 * before or claim now (every claimant of such an address is re-decided with it: it may win or
 * lose by the change), and steps the roster only for the names so reached. It returns the delta
 * of the peer set. A full evaluation (`names` null) re-checks everything: after a (re)load, on a
 * timer, when a revocation arrives, when our own standing changes, and always for a network
 * without a trust anchor (its lease and liveness rules are not tracked per address). Both give
 * the same peer set as computePeers + Roster.update over everything (the unit tests compare).
 *
 * Join tokens (token-memory.ts) take the same path. Their rules reach other names in two ways
 * only, and both are tracked: (1) the first certificate per (token, use) wins (`firstPerTokenUse`):
 * the certificates of valid records are bound to their use at the end of every evaluation, so
 * only records re-checked together can share a use not bound yet. (2) A remembered
 * certificate whose use is bound to another one holds no address (`resolve`). The other rule, a
 * token certificate never takes a name another key holds, looks only at the remembered
 * certificates of that same name (records are keyed by name), which change only when that name
 * is re-checked. A new token revocation asks for a full evaluation like a host revocation
 * (registry.ts). Not replayed by the partial path: the memories' bounds (KnownCerts and
 * TokenMemory drop their oldest entries beyond 8,192 certificates / 65,536 uses).
 */

export interface Mirror {
  readonly hosts: ReadonlyMap<string, HostEntry>;
  readonly alive: ReadonlySet<string>;
  readonly leases: ReadonlyMap<string, string | null>;
  /** False until etcd has been read once (started from the cache). */
  readonly etcdRead: boolean;
}

/** How the peer set changed: names with their new record (added or changed), and removed names. */
export interface PeerDelta {
  readonly added: Map<string, HostRecord>;
  readonly changed: Map<string, HostRecord>;
  readonly removed: Set<string>;
}

/** Work counters (for tests and benches): what evaluations cost. */
export interface EvaluatorWork {
  fullEvaluations: number;
  partialEvaluations: number;
  /** Records run through the certificate checks. */
  recordsChecked: number;
  /** Addresses whose holder was decided. */
  addressesResolved: number;
  /** Names stepped through the roster. */
  rosterSteps: number;
}

export interface EvaluatorOptions {
  self: string;
  cidr: Prefix;
  cidrText: string;
  network: string;
  log: Logger;
  revocations: Revocations;
  selfCert?: HostCert;
  heardAt?: (name: string) => number | null;
  /** A timer (certificate validity, silence) asks for a new (full) evaluation. */
  onTimer: () => void;
  /**
   * Tests only: every evaluation is a full one through computePeers + Roster.update, the
   * reference the evaluator's own (full and partial) evaluations are compared with.
   */
  viaComputePeers?: boolean;
}

/** Longest setTimeout delay Node accepts; a later certificate change re-arms the timer. */
const MAX_TIMER_MS = 2 ** 31 - 1;

interface Valid {
  readonly rec: HostRecord;
  readonly view: RecordView;
  readonly cert?: HostCert;
}

export class MemberEvaluator {
  /** The anchor records are checked against; null: none (the registry warns). */
  trust: TrustAnchor | null = null;
  /** Certificates accepted so far; they keep holding their address after their record is gone. */
  readonly knownCerts = new KnownCerts();
  /** Join tokens: the first certificate per (token, use), and token revocations (sticky). */
  readonly tokens = new TokenMemory();
  readonly work: EvaluatorWork = { fullEvaluations: 0, partialEvaluations: 0, recordsChecked: 0, addressesResolved: 0, rosterSteps: 0 };
  private readonly roster = new Roster();
  /** The members' records: the peer set. */
  private kept = new Map<string, HostRecord>();
  /** Records of members that said bye, for their return (bounded by the roster: one per name). */
  private readonly departed = new Map<string, HostRecord>();
  private readonly views = new Map<string, MemberView>();
  private readonly warned = new Map<string, string>(); // host name -> mod revision warned about
  /** Per address: the conflicts there ("ip winnerSerial loserSerial" ids warned about, and the list). */
  private readonly conflictsAt = new Map<string, { ids: Set<string>; list: AddressConflict[] }>();
  private selfProblem: string | undefined;
  private certTimer: NodeJS.Timeout | null = null;
  private certTimerAt = 0;
  private silenceTimer: NodeJS.Timeout | null = null;
  private silenceAt = 0;
  /** Names with a bye or return since the last evaluation: stepped through the roster next time. */
  private readonly pending = new Set<string>();
  /**
   * Names whose member record changed in the last evaluation: a record check depends on the held
   * record (stale epochs, a held record standing in), so a full evaluation would see them anew
   * next time; the partial one re-checks them too.
   */
  private readonly recheck = new Set<string>();
  /** Records of departed members back with a fresh handshake: held records until the next evaluation. */
  private readonly returning = new Map<string, HostRecord>();
  private evaluated = false;

  // With trust, per name and per address (kept between evaluations):
  private readonly valid = new Map<string, Valid>(); // names whose record passed the checks (held ones included)
  private readonly claimants = new Map<string, Set<string>>(); // overlay ip -> names in `valid` claiming it
  private readonly lost = new Map<string, string>(); // name -> the address it lost to an earlier certificate
  private readonly lostAt = new Map<string, Set<string>>(); // overlay ip -> names that lost it
  private readonly selfLost = new Map<string, string>(); // overlay ip -> why we lost it
  private readonly revokedNames = new Set<string>();

  /** Hosts skipped now because their certificate is revoked (a copy). */
  revoked(): string[] {
    return [...this.revokedNames].sort();
  }
  private selfBase: string | undefined; // our own certificate's problem (invalid or revoked)

  /** Distinct (name, mod revision) host records skipped as invalid (untrusted ones included). */
  invalidRecords = 0;
  untrustedRecords = 0;
  revokedHosts = 0;

  constructor(private readonly opts: EvaluatorOptions) {
    if (opts.selfCert) this.tokens.bind([opts.selfCert]); // our own use of a join token is ours
  }

  /** The last peer set (the cache file's at start) stays the membership until etcd says otherwise. */
  seed(cached: ReadonlyMap<string, HostRecord>, at: number): void {
    this.kept = new Map(cached);
    this.roster.seed(cached.keys(), at);
  }

  /** The members' records now (live; do not change). */
  members(): ReadonlyMap<string, HostRecord> {
    return this.kept;
  }

  /**
   * The peer set's change. `names`: the hosts whose record or alive key changed since the last
   * evaluation; null for a full evaluation (also forced when nothing was evaluated yet, without
   * trust, and when our own standing changes).
   */
  evaluate(m: Mirror, now: number, names: Iterable<string> | null): PeerDelta {
    if (names === null || !this.evaluated || !this.trust || this.opts.viaComputePeers) return this.full(m, now);
    const base = this.selfBase;
    const touched = new Set<string>(names);
    for (const n of this.pending) touched.add(n);
    for (const n of this.recheck) touched.add(n);
    this.pending.clear();
    this.recheck.clear();
    this.work.partialEvaluations++;
    const ips = new Set<string>();
    for (const name of touched) this.check(m, name, now, ips);
    this.firstPerTokenUse(m, touched, ips);
    const reach = new Set<string>(touched);
    for (const ip of ips) {
      for (const n of this.lostAt.get(ip) ?? []) reach.add(n);
      this.resolve(ip, now);
      for (const n of this.claimants.get(ip) ?? []) reach.add(n);
    }
    const problem = base ?? this.firstSelfLost();
    if (problem !== this.selfProblem) return this.full(m, now);
    this.knownCerts.remember(this.certsOf(touched));
    this.tokens.bind(this.certsOf(touched));
    const candidates = new Map<string, Candidate>();
    for (const n of reach) {
      const c = this.candidateOf(n);
      if (c) candidates.set(n, c);
    }
    this.work.rosterSteps += reach.size;
    const out = this.roster.updateSome(reach, { candidates, alive: m.alive, now, heardAt: this.opts.heardAt, etcdRead: m.etcdRead });
    this.logLeft(out.left);
    this.armSilenceTimer(now, out.nextCheck);
    this.revokedHosts = this.revokedNames.size;
    this.armCertTimerSome(m, touched, now);
    this.returning.clear();
    const delta: PeerDelta = { added: new Map(), changed: new Map(), removed: new Set() };
    for (const [name, view] of out.members) this.apply(name, view, delta);
    return delta;
  }

  /**
   * computePeers' first certificate per token use (peers.ts `tokenUseLosers`) among the valid
   * records of `names`: the losers leave `valid` (their addresses go to `ips`). Enough for a
   * partial evaluation: every other valid record's use is bound to it already (the certificates
   * of valid records are bound at the end of each evaluation), so no name outside `names` can
   * share an unbound use with one inside, and a bound use admits only its own certificate. A
   * loser needs no re-check later: with no valid record it leaves the roster now, so no held
   * record of it is left to stand in when the binding refuses its record from then on.
   */
  private firstPerTokenUse(m: Mirror, names: Iterable<string>, ips: Set<string>): void {
    const rejected: Rejection[] = [];
    for (const { loser, winner } of tokenUseLosers(this.certsOf(names), this.opts.selfCert, this.opts.self)) {
      this.unclaim(loser.name, loser.overlayIp, ips);
      this.valid.delete(loser.name);
      rejected.push({ name: loser.name, modRevision: m.hosts.get(loser.name)?.modRevision ?? '0', error: tokenUseLostWhy(loser, winner), trust: 'untrusted' });
    }
    this.warnRejected(rejected);
  }

  /** Re-checks one name's record (etcd's, or the held one); adds the addresses it claimed before and claims now to `ips`. */
  private check(m: Mirror, name: string, now: number, ips: Set<string>): void {
    const before = this.valid.get(name);
    if (before) this.unclaim(name, before.rec.overlayIp, ips);
    this.valid.delete(name);
    this.revokedNames.delete(name);
    if (!m.hosts.has(name)) this.warned.delete(name);
    const inp = { cidr: this.opts.cidr, cidrText: this.opts.cidrText, leases: m.leases, trust: this.peerTrust(now) };
    const held = name === this.opts.self ? undefined : (this.kept.get(name) ?? this.returning.get(name));
    const v = judgeName(inp, name, m.hosts.get(name), held);
    this.work.recordsChecked += v.checked;
    if (v.accepted) this.claim(name, { rec: v.accepted.rec, view: v.accepted.view, cert: v.accepted.cert }, ips);
    if (v.rejected) this.warnRejected([v.rejected]);
  }

  private claim(name: string, v: Valid, ips: Set<string>): void {
    this.valid.set(name, v);
    const ip = v.rec.overlayIp;
    let set = this.claimants.get(ip);
    if (!set) this.claimants.set(ip, (set = new Set()));
    set.add(name);
    ips.add(ip);
  }

  private unclaim(name: string, ip: string, ips: Set<string>): void {
    const set = this.claimants.get(ip);
    set?.delete(name);
    if (set?.size === 0) this.claimants.delete(ip);
    ips.add(ip);
  }

  private peerTrust(now: number): PeerTrust | undefined {
    return this.trust
      ? {
          anchor: this.trust,
          now,
          revocations: this.opts.revocations.map,
          selfCert: this.opts.selfCert,
          knownCerts: this.knownCerts.values(),
          knownCertsNamed: (name) => this.knownCerts.named(name),
          tokens: this.tokens,
        }
      : undefined;
  }

  private isRevoked(c: HostCert): boolean {
    return this.opts.revocations.of(c) !== undefined || this.tokens.revocationOf(c) !== undefined;
  }

  /** A token certificate whose use is bound to another certificate (peers.ts `useTaken`). */
  private useBoundElsewhere(c: HostCert): boolean {
    if (c.token === undefined) return false;
    const first = this.tokens.uses.get(useId(c));
    return first !== undefined && first !== c.serial;
  }

  /**
   * Decides who holds `ip` (holders.ts): the valid records claiming it, our own certificate and
   * the still valid remembered certificates there; a name counts with its earliest certificate.
   */
  private resolve(ip: string, now: number): void {
    const trust = this.trust!;
    const { self, selfCert, cidr, cidrText } = this.opts;
    this.work.addressesResolved++;
    for (const n of this.lostAt.get(ip) ?? []) if (this.lost.get(n) === ip) this.lost.delete(n);
    this.lostAt.delete(ip);
    this.selfLost.delete(ip);
    const list: HostCert[] = [];
    const seen = new Set<string>();
    const current = new Map<string, HostCert>();
    const claim = (c: HostCert) => {
      const id = `${c.name}/${c.serial}`;
      if (seen.has(id)) return;
      seen.add(id);
      list.push(c);
    };
    for (const name of this.claimants.get(ip) ?? []) {
      if (name === self && selfCert) continue;
      const cert = this.valid.get(name)!.cert!;
      claim(cert);
      current.set(name, cert);
    }
    if (selfCert && selfCert.overlayIp === ip && this.selfBase === undefined) {
      claim(selfCert);
      current.set(self, selfCert);
    }
    for (const c of this.knownCerts.at(ip)) {
      if (seen.has(`${c.name}/${c.serial}`) || c.network !== trust.network) continue;
      if (checkOverlayIpInNetwork(c, cidr, cidrText) !== null) continue;
      if (trust.verifyCert(c, now) !== null || this.isRevoked(c) || this.useBoundElsewhere(c)) continue;
      claim(c);
    }
    const conflicts: AddressConflict[] = [];
    if (list.length > 1) {
      list.sort(certPrecedence);
      const winner = list[0]!;
      const counted = new Set<string>([winner.name]);
      const losers = new Set<string>();
      for (const c of list) {
        if (counted.has(c.name)) continue; // a name counts once, with its earliest certificate here
        counted.add(c.name);
        const claimant = current.get(c.name);
        if (claimant?.overlayIp !== ip) continue; // only a remembered certificate: nobody claims with it now
        conflicts.push({ overlayIp: ip, winner: certRef(winner), loser: certRef(claimant) });
        if (c.name === self) {
          this.selfLost.set(ip, `our own certificate (${claimant.serial}) lost ${ip} to ${describeCert(winner)}`);
          if (!this.valid.has(self)) continue;
        }
        losers.add(c.name);
        this.lost.set(c.name, ip);
      }
      if (losers.size > 0) this.lostAt.set(ip, losers);
    }
    this.noteConflicts(ip, conflicts);
  }

  private firstSelfLost(): string | undefined {
    for (const why of this.selfLost.values()) return why;
    return undefined;
  }

  private candidateOf(name: string): Candidate | undefined {
    if (this.selfProblem !== undefined || name === this.opts.self || this.lost.has(name)) return undefined;
    const v = this.valid.get(name);
    return v ? { record: v.rec, etcd: v.view } : undefined;
  }

  private *certsOf(names: Iterable<string>): Iterable<HostCert> {
    for (const n of names) {
      const c = this.valid.get(n)?.cert;
      if (c) yield c;
    }
  }

  /** Everything again: every record, every address, every member. */
  private full(m: Mirror, now: number): PeerDelta {
    this.work.fullEvaluations++;
    this.evaluated = true;
    this.pending.clear();
    this.recheck.clear();
    if (!this.trust || this.opts.viaComputePeers) return this.fullByComputePeers(m, now);
    const { selfCert } = this.opts;
    const trust = this.peerTrust(now)!;
    this.selfBase = undefined;
    if (selfCert) {
      const bad = this.trust.verifyCert(selfCert, now);
      const rev = revokedWhy(trust, selfCert);
      if (bad !== null) this.selfBase = `our own certificate: ${bad}`;
      else if (rev) this.selfBase = `our own certificate was ${rev}`;
    }
    this.valid.clear();
    this.claimants.clear();
    this.lost.clear();
    this.lostAt.clear();
    this.selfLost.clear();
    this.revokedNames.clear();
    const names = [...new Set([...m.hosts.keys(), ...this.kept.keys(), ...this.returning.keys()])].sort();
    const ips = new Set<string>(this.conflictsAt.keys()); // old conflicts are re-decided (and cleared) too
    for (const name of names) this.check(m, name, now, ips);
    this.firstPerTokenUse(m, [...this.valid.keys()].sort(), ips);
    for (const name of this.warned.keys()) if (!m.hosts.has(name)) this.warned.delete(name);
    if (selfCert) ips.add(selfCert.overlayIp);
    for (const ip of [...ips].sort((a, b) => parseIpv4(a)! - parseIpv4(b)!)) this.resolve(ip, now);
    this.noteSelfProblem(this.selfBase ?? this.firstSelfLost());
    const candidates = new Map<string, Candidate>();
    for (const name of this.valid.keys()) {
      const c = this.candidateOf(name);
      if (c) candidates.set(name, c);
    }
    this.work.rosterSteps += candidates.size;
    const out = this.roster.update({ candidates, alive: m.alive, now, heardAt: this.opts.heardAt, etcdRead: m.etcdRead });
    this.knownCerts.remember(this.certsOf(names));
    this.tokens.bind(this.certsOf(names));
    this.knownCerts.prune(now, (c) => this.isRevoked(c));
    this.revokedHosts = this.revokedNames.size;
    return this.finishFull(out.members, out.left, out.nextCheck, m, now);
  }

  /**
   * Everything through computePeers (peers.ts) and Roster.update: for a network without a trust
   * anchor (tools and tests only: the old lease rules), and with `viaComputePeers` (tests).
   */
  private fullByComputePeers(m: Mirror, now: number): PeerDelta {
    const { rejected, selfProblem, conflicts, candidates, certified } = computePeers({
      self: this.opts.self,
      cidr: this.opts.cidr,
      cidrText: this.opts.cidrText,
      hosts: m.hosts,
      alive: m.alive,
      leases: m.leases,
      trust: this.peerTrust(now),
      kept: this.returning.size > 0 ? new Map([...this.returning, ...this.kept]) : this.kept,
    });
    this.work.recordsChecked += m.hosts.size;
    this.work.rosterSteps += candidates.size;
    const out = this.roster.update({ candidates, alive: m.alive, now, heardAt: this.opts.heardAt, etcdRead: m.etcdRead });
    this.knownCerts.remember(certified);
    this.tokens.bind(certified);
    this.knownCerts.prune(now, (c) => this.isRevoked(c));
    const byIp = new Map<string, AddressConflict[]>();
    for (const c of conflicts) byIp.set(c.overlayIp, [...(byIp.get(c.overlayIp) ?? []), c]);
    for (const ip of [...this.conflictsAt.keys()]) if (!byIp.has(ip)) this.conflictsAt.delete(ip);
    for (const [ip, list] of byIp) this.noteConflicts(ip, list);
    this.revokedNames.clear();
    this.warnRejected(rejected);
    this.revokedHosts = this.revokedNames.size;
    for (const name of this.warned.keys()) if (!m.hosts.has(name)) this.warned.delete(name);
    this.noteSelfProblem(selfProblem);
    return this.finishFull(out.members, out.left, out.nextCheck, m, now);
  }

  private finishFull(members: Map<string, MemberView>, left: { name: string; why: 'silent' | 'bye' | 'certificate' }[], nextCheck: number | null, m: Mirror, now: number): PeerDelta {
    this.returning.clear();
    this.logLeft(left);
    this.armSilenceTimer(now, nextCheck);
    this.armCertTimerAll(m, now);
    const delta: PeerDelta = { added: new Map(), changed: new Map(), removed: new Set() };
    for (const name of [...this.kept.keys()]) if (!members.has(name)) this.apply(name, null, delta);
    for (const [name, view] of members) this.apply(name, view, delta);
    return delta;
  }

  /** Carries one name's roster outcome into the peer set and the delta. */
  private apply(name: string, view: MemberView | null, delta: PeerDelta): void {
    const old = this.kept.get(name);
    if (!view) {
      this.views.delete(name);
      if (old) {
        this.kept.delete(name);
        this.recheck.add(name);
        delta.removed.add(name);
      }
      return;
    }
    this.views.set(name, view);
    this.departed.delete(name);
    this.kept.set(name, view.record);
    // (a record etcd holds now is its own held record: checking it again changes nothing)
    if (old !== view.record && view.etcd.record !== 'present') this.recheck.add(name);
    if (!old) delta.added.set(name, view.record);
    else if (old !== view.record && serializeHostRecord(old) !== serializeHostRecord(view.record)) delta.changed.set(name, view.record);
  }

  private logLeft(left: { name: string; why: 'silent' | 'bye' | 'certificate' }[]): void {
    for (const l of left) {
      const why = l.why === 'bye' ? 'it said bye' : l.why === 'silent' ? 'no record, no alive key and no packet for a long time' : 'no valid certificate for it now (revoked, expired, or its address held by an earlier one)';
      this.opts.log.info({ host: l.name, reason: l.why }, `member left: ${why}`);
    }
  }

  private noteSelfProblem(problem: string | undefined): void {
    if (problem === this.selfProblem) return;
    if (problem !== undefined) this.opts.log.error({ error: problem }, 'this host is no longer a valid member: dropping every peer');
    else this.opts.log.info('this host is a valid member again');
    this.selfProblem = problem;
  }

  /** Warns once per (name, mod revision) about a record that failed the checks; counts them. */
  private warnRejected(rejected: Rejection[]): void {
    const { log, network } = this.opts;
    for (const r of rejected) {
      if (r.trust === 'conflict') continue; // valid records: reported by noteConflicts
      if (r.trust === 'revoked') this.revokedNames.add(r.name);
      if (this.warned.get(r.name) === r.modRevision) continue;
      this.warned.set(r.name, r.modRevision);
      const etcdKey = hostKey(network, r.name);
      if (r.trust === 'revoked') {
        log.warn({ etcdKey, host: r.name, error: r.error }, 'skipping revoked host');
        continue;
      }
      this.invalidRecords++;
      if (r.trust === 'untrusted') {
        this.untrustedRecords++;
        log.warn({ etcdKey, modRevision: r.modRevision, error: r.error }, 'skipping untrusted host record');
      } else if (r.trust === 'stale') {
        log.warn({ etcdKey, modRevision: r.modRevision, error: r.error }, 'skipping host record older than the one held');
      } else {
        log.warn({ etcdKey, modRevision: r.modRevision, error: r.error }, 'skipping invalid host record');
      }
    }
  }

  /** Keeps the conflicts at `ip` and warns once about each new one. */
  private noteConflicts(ip: string, conflicts: AddressConflict[]): void {
    const before = this.conflictsAt.get(ip)?.ids;
    if (conflicts.length === 0) {
      this.conflictsAt.delete(ip);
      return;
    }
    const ids = new Set<string>();
    for (const c of conflicts) {
      const id = `${c.overlayIp} ${c.winner.serial} ${c.loser.serial}`;
      ids.add(id);
      if (before?.has(id)) continue;
      this.opts.log.warn(
        {
          overlayIp: c.overlayIp,
          holder: c.winner.name,
          holderSerial: c.winner.serial,
          holderIssued: c.winner.issued,
          refused: c.loser.name,
          refusedSerial: c.loser.serial,
          refusedIssued: c.loser.issued,
        },
        'two valid certificates claim one overlay address; the earlier one holds it',
      );
    }
    this.conflictsAt.set(ip, { ids, list: conflicts });
  }

  /** Addresses claimed by two valid certificates, as of the last evaluation (copies, by address). */
  addressConflicts(): AddressConflict[] {
    const ips = [...this.conflictsAt.keys()].sort((a, b) => parseIpv4(a)! - parseIpv4(b)!);
    return ips.flatMap((ip) => this.conflictsAt.get(ip)!.list.map((c) => ({ overlayIp: c.overlayIp, winner: { ...c.winner }, loser: { ...c.loser } })));
  }

  get conflictCount(): number {
    let n = 0;
    for (const c of this.conflictsAt.values()) n += c.list.length;
    return n;
  }

  /** Re-evaluates (in full) when the next silent member (no record, no alive key) is due to leave. */
  private armSilenceTimer(now: number, at: number | null): void {
    if (at === null || (this.silenceTimer && this.silenceAt === at)) return;
    if (this.silenceTimer) clearTimeout(this.silenceTimer);
    this.silenceAt = at;
    this.silenceTimer = setTimeout(() => {
      this.silenceTimer = null;
      this.opts.onTimer();
    }, Math.min(Math.max(at - now, 0) + 1, MAX_TIMER_MS));
    this.silenceTimer.unref();
  }

  /** Re-evaluates (in full) when the next certificate becomes valid or expires: every one considered. */
  private armCertTimerAll(m: Mirror, now: number): void {
    if (!this.trust) return;
    const certs: HostCert[] = [];
    for (const e of m.hosts.values()) if (e.parsed.ok && e.parsed.value.cert) certs.push(e.parsed.value.cert);
    if (this.opts.selfCert) certs.push(this.opts.selfCert);
    certs.push(...this.knownCerts.values()); // a remembered holder expiring frees its address
    this.armCertTimer(nextCertChange(certs, now), now, true);
  }

  /**
   * After a partial evaluation: only the certificates of `names` can bring the next change
   * closer. (A timer left earlier than needed just runs a full evaluation that re-arms it.)
   */
  private armCertTimerSome(m: Mirror, names: Iterable<string>, now: number): void {
    if (!this.trust) return;
    const certs: HostCert[] = [];
    for (const n of names) {
      const e = m.hosts.get(n);
      if (e?.parsed.ok && e.parsed.value.cert) certs.push(e.parsed.value.cert);
      const held = this.valid.get(n)?.cert;
      if (held) certs.push(held);
    }
    this.armCertTimer(nextCertChange(certs, now), now, false);
  }

  private armCertTimer(next: number | null, now: number, replace: boolean): void {
    if (next === null || (this.certTimer && this.certTimerAt === next)) return;
    if (!replace && this.certTimer && this.certTimerAt <= next) return;
    if (this.certTimer) clearTimeout(this.certTimer);
    this.certTimerAt = next;
    this.certTimer = setTimeout(() => {
      this.certTimer = null;
      this.opts.onTimer();
    }, Math.min(next - now, MAX_TIMER_MS));
    this.certTimer.unref();
  }

  /**
   * A member said bye over its encrypted tunnel: it leaves at the next evaluation and comes back
   * only with a newer record (roster.ts). False when it is not a member.
   */
  bye(name: string): boolean {
    const rec = this.kept.get(name);
    if (!rec || !this.roster.bye(name, rec.epoch)) return false;
    this.departed.set(name, rec);
    this.pending.add(name);
    return true;
  }

  /** A departed host's fresh handshake: its name when it is a member again (with the record it left with), else null. */
  returned(publicKey: string, now: number): string | null {
    for (const [name, rec] of this.departed) {
      if (rec.publicKey !== publicKey) continue;
      this.departed.delete(name);
      if (!this.roster.returned(name, now)) return null;
      this.returning.set(name, rec);
      this.pending.add(name);
      this.opts.log.info({ host: name }, 'member that said bye is back (fresh handshake)');
      return name;
    }
    return null;
  }

  /** What etcd held for a member at the last evaluation, or undefined when it is no member. */
  view(name: string): MemberView | undefined {
    return this.views.get(name);
  }

  close(): void {
    if (this.certTimer) clearTimeout(this.certTimer);
    this.certTimer = null;
    if (this.silenceTimer) clearTimeout(this.silenceTimer);
    this.silenceTimer = null;
  }
}

import type { Logger } from '../log';
import type { Prefix } from '../util/ipv4';
import { nextCertChange, type TrustAnchor } from './cert';
import type { AddressConflict } from './holders';
import { hostKey } from './keys';
import { KnownCerts } from './known-certs';
import { computePeers, type HostEntry } from './peers';
import type { HostCert, HostRecord } from './records';
import type { Revocations } from './revocations';
import { Roster, type MemberView } from './roster';

/**
 * Trust and membership (registry job 5): from the etcd mirror (watch.ts), the sticky revocations
 * (revocations.ts) and the remembered certificates (known-certs.ts) to the peer set.
 *
 * Every host record must carry a certificate signed by the network key (the trust anchor) that
 * binds its name, key and overlay address (peers.ts); verified revocations remove hosts at once.
 * Two valid certificates for one address: the earlier holds it (peers.ts); accepted certificates
 * are remembered so a deleted record does not give its address away. Membership (roster.ts): etcd
 * introduces a host (valid record + alive key); it then stays while its certificate is valid, on
 * its last valid record when etcd deletes or spoils it, and leaves on revocation, expiry, a bye
 * (`bye()`) or a long silence. Timers re-run the evaluation when the next certificate becomes
 * valid or expires and when the next silent member is due to leave (`onTimer`).
 */

export interface Mirror {
  readonly hosts: ReadonlyMap<string, HostEntry>;
  readonly alive: ReadonlySet<string>;
  readonly leases: ReadonlyMap<string, string | null>;
  /** False until etcd has been read once (started from the cache). */
  readonly etcdRead: boolean;
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
  /** A timer (certificate validity, silence) asks for a new evaluation. */
  onTimer: () => void;
}

/** Longest setTimeout delay Node accepts; a later certificate change re-arms the timer. */
const MAX_TIMER_MS = 2 ** 31 - 1;

export class MemberEvaluator {
  /** The anchor records are checked against; null: none (the registry warns). */
  trust: TrustAnchor | null = null;
  /** Certificates accepted so far; they keep holding their address after their record is gone. */
  readonly knownCerts = new KnownCerts();
  private readonly roster = new Roster();
  private kept = new Map<string, HostRecord>();
  /** Records of members that said bye, for their return (bounded by the roster: one per name). */
  private readonly departed = new Map<string, HostRecord>();
  private views = new Map<string, MemberView>();
  private readonly warned = new Map<string, string>(); // host name -> mod revision warned about
  private readonly warnedConflicts = new Set<string>(); // "ip winnerSerial loserSerial" warned about
  private conflicts: AddressConflict[] = [];
  private selfProblem: string | undefined;
  private certTimer: NodeJS.Timeout | null = null;
  private certTimerAt = 0;
  private silenceTimer: NodeJS.Timeout | null = null;
  private silenceAt = 0;
  /** Distinct (name, mod revision) host records skipped as invalid (untrusted ones included). */
  invalidRecords = 0;
  untrustedRecords = 0;
  revokedHosts = 0;

  constructor(private readonly opts: EvaluatorOptions) {}

  /** The last peer set (the cache file's at start) stays the membership until etcd says otherwise. */
  seed(cached: ReadonlyMap<string, HostRecord>, at: number): void {
    this.kept = new Map(cached);
    this.roster.seed(cached.keys(), at);
  }

  /** The peer set now, sorted by name. */
  evaluate(m: Mirror, now: number): Map<string, HostRecord> {
    const { log, revocations } = this.opts;
    const { rejected, selfProblem, conflicts, certified, candidates } = computePeers({
      self: this.opts.self,
      cidr: this.opts.cidr,
      cidrText: this.opts.cidrText,
      hosts: m.hosts,
      alive: m.alive,
      leases: m.leases,
      trust: this.trust
        ? { anchor: this.trust, now, revocations: revocations.map, selfCert: this.opts.selfCert, knownCerts: this.knownCerts.values() }
        : undefined,
      kept: this.kept,
    });
    const roster = this.roster.update({ candidates, alive: m.alive, now, heardAt: this.opts.heardAt, etcdRead: m.etcdRead });
    for (const l of roster.left) {
      const why = l.why === 'bye' ? 'it said bye' : l.why === 'silent' ? 'no record, no alive key and no packet for a long time' : 'no valid certificate for it now (revoked, expired, or its address held by an earlier one)';
      log.info({ host: l.name, reason: l.why }, `member left: ${why}`);
    }
    const peers = new Map<string, HostRecord>();
    for (const [name, mv] of roster.members) peers.set(name, mv.record);
    this.kept = new Map(peers);
    this.views = roster.members;
    for (const name of this.departed.keys()) if (roster.members.has(name)) this.departed.delete(name);
    this.armSilenceTimer(now, roster.nextCheck);
    this.knownCerts.remember(certified);
    this.knownCerts.prune(now, (c) => revocations.of(c) !== undefined);
    let revoked = 0;
    this.noteConflicts(conflicts);
    for (const r of rejected) {
      if (r.trust === 'conflict') continue; // valid records: reported by noteConflicts
      if (r.trust === 'revoked') revoked++;
      if (this.warned.get(r.name) === r.modRevision) continue;
      this.warned.set(r.name, r.modRevision);
      const etcdKey = hostKey(this.opts.network, r.name);
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
    this.revokedHosts = revoked;
    for (const name of this.warned.keys()) if (!m.hosts.has(name)) this.warned.delete(name);
    if (selfProblem !== this.selfProblem) {
      if (selfProblem !== undefined) log.error({ error: selfProblem }, 'this host is no longer a valid member: dropping every peer');
      else log.info('this host is a valid member again');
      this.selfProblem = selfProblem;
    }
    this.armCertTimer(m, now);
    return peers;
  }

  /** Keeps the current address conflicts and warns once about each new one. */
  private noteConflicts(conflicts: AddressConflict[]): void {
    this.conflicts = conflicts;
    const current = new Set<string>();
    for (const c of conflicts) {
      const id = `${c.overlayIp} ${c.winner.serial} ${c.loser.serial}`;
      current.add(id);
      if (this.warnedConflicts.has(id)) continue;
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
    for (const id of this.warnedConflicts) if (!current.has(id)) this.warnedConflicts.delete(id);
    for (const id of current) this.warnedConflicts.add(id);
  }

  /** Addresses claimed by two valid certificates, as of the last evaluation (copies). */
  addressConflicts(): AddressConflict[] {
    return this.conflicts.map((c) => ({ overlayIp: c.overlayIp, winner: { ...c.winner }, loser: { ...c.loser } }));
  }

  get conflictCount(): number {
    return this.conflicts.length;
  }

  /** Re-evaluates when the next silent member (no record, no alive key) is due to leave. */
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

  /** Re-evaluates when the next certificate becomes valid or expires. */
  private armCertTimer(m: Mirror, now: number): void {
    if (!this.trust) return;
    const certs: HostCert[] = [];
    for (const e of m.hosts.values()) if (e.parsed.ok && e.parsed.value.cert) certs.push(e.parsed.value.cert);
    if (this.opts.selfCert) certs.push(this.opts.selfCert);
    certs.push(...this.knownCerts.values()); // a remembered holder expiring frees its address
    const next = nextCertChange(certs, now);
    if (next === null || (this.certTimer && this.certTimerAt === next)) return;
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
    return true;
  }

  /** A departed host's fresh handshake: its name when it is a member again (with the record it left with), else null. */
  returned(publicKey: string, now: number): string | null {
    for (const [name, rec] of this.departed) {
      if (rec.publicKey !== publicKey) continue;
      this.departed.delete(name);
      if (!this.roster.returned(name, now)) return null;
      this.kept.set(name, rec);
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

import type { HostRecord } from './records';

/**
 * Who is a member now, seen from one host: a pure state machine over what etcd says (verified
 * records and alive keys), what the data plane saw (authenticated packets) and byes. The clock
 * is passed in; nothing here reads time or etcd.
 *
 * Membership is the certificate. Etcd only introduces hosts:
 *
 * 1. join    a host becomes a member when etcd shows a valid record (certificate verified, not
 *            revoked, holding its address: peers.ts) and an alive key for it, or when the last
 *            peer set (the cache file) lists it.
 * 2. stay    a member stays while its certificate is valid and unrevoked, whatever etcd does to
 *            its record or alive key: a deleted record or one replaced by a record that does not
 *            verify leaves the last valid record in place (`etcd: 'absent' | 'invalid'`), and only
 *            a valid record with an epoch at least as new replaces it (peers.ts decides that).
 * 3. leave   a member leaves when its certificate is revoked or expires (it is no longer a
 *            candidate), when it says bye over the encrypted tunnel (an etcd writer holds no
 *            session key, so it cannot fake one), or after SILENCE_MS with no valid record in
 *            etcd, no alive key and no authenticated packet from it. A member we never heard
 *            from (no session came up in this process) leaves with its alive key: only etcd
 *            vouched for it.
 * 4. return  a member that said bye comes back with a record newer than the one it had when it
 *            left (a restarted agent always publishes a higher epoch) and an alive key, or, while
 *            etcd is out of reach, with a fresh handshake from its key (`returned`).
 */

/** Without a valid record, an alive key or a packet for this long, a member leaves. */
export const SILENCE_MS = 10 * 60_000;

/** What etcd holds for a host now: a valid record, none, or one that fails the checks. */
export type RecordView = 'present' | 'absent' | 'invalid';

/** A host whose certificate is valid and unrevoked, with the record it is known by. */
export interface Candidate {
  readonly record: HostRecord;
  /** Whether `record` is what etcd holds now, or the last valid one kept while etcd holds none or an invalid one. */
  readonly etcd: RecordView;
}

export interface RosterInput {
  readonly candidates: ReadonlyMap<string, Candidate>;
  /** Names with an alive key in etcd now. */
  readonly alive: ReadonlySet<string>;
  readonly now: number;
  /** When the newest authenticated packet from a host arrived (ms since the epoch), or 0/null. */
  readonly heardAt?: (name: string) => number | null;
  /**
   * False until etcd has been read once (the agent started from its cache while etcd is out of
   * reach): a missing record then says nothing, and nobody falls silent. Default true.
   */
  readonly etcdRead?: boolean;
}

export interface MemberView {
  readonly record: HostRecord;
  readonly etcd: { readonly record: RecordView; readonly alive: boolean };
}

export interface RosterOutput {
  /** Members by name, sorted. */
  readonly members: Map<string, MemberView>;
  /** Names that left in this update, with why. */
  readonly left: { name: string; why: 'silent' | 'bye' | 'certificate' }[];
  /** When a silent member would leave next (ms since the epoch), or null. */
  readonly nextCheck: number | null;
}

/** What `updateSome` says about the names it was given. */
export interface RosterDelta {
  /** For each name given: its view when it is a member now, else null. */
  readonly members: Map<string, MemberView | null>;
  readonly left: { name: string; why: 'silent' | 'bye' | 'certificate' }[];
  readonly nextCheck: number | null;
}

interface Member {
  /** Last moment etcd showed a valid record or an alive key for it, or it was heard from. */
  lastSign: number;
  /** It came back by a fresh handshake from its key (`returned`): its own proof, not etcd's word. */
  handshook?: true;
}

export class Roster {
  private readonly members = new Map<string, Member>();
  /** Names that said bye, with the epoch of their record then. */
  private readonly byes = new Map<string, number>();
  private readonly pendingLeaves: { name: string; why: 'bye' }[] = [];
  /** Members with no valid record and no alive key, with when they fall silent. */
  private readonly silentAt = new Map<string, number>();

  /** Makes `names` members (from the cache file), last seen at `at`. */
  seed(names: Iterable<string>, at: number): void {
    for (const n of names) if (!this.byes.has(n) && !this.members.has(n)) this.members.set(n, { lastSign: at });
  }

  /** The host said bye over its tunnel: it leaves at the next update. False when it is no member. */
  bye(name: string, epoch: number): boolean {
    if (!this.members.has(name)) return false;
    this.members.delete(name);
    this.silentAt.delete(name);
    this.byes.set(name, epoch);
    this.pendingLeaves.push({ name, why: 'bye' });
    return true;
  }

  /**
   * A host that said bye proved it is back (a fresh handshake from its key): a member again.
   * False when it had not said bye.
   */
  returned(name: string, at: number): boolean {
    if (!this.byes.delete(name)) return false;
    this.members.set(name, { lastSign: at, handshook: true });
    return true;
  }

  /** Every name at once: `inp.candidates` holds every candidate. */
  update(inp: RosterInput): RosterOutput {
    const left: RosterOutput['left'] = this.pendingLeaves.splice(0);
    const members = new Map<string, MemberView>();
    this.silentAt.clear();
    for (const name of this.members.keys()) {
      if (inp.candidates.has(name)) continue;
      this.members.delete(name);
      left.push({ name, why: 'certificate' });
    }
    const names = [...inp.candidates.keys()].sort();
    for (const name of names) {
      const v = this.step(name, inp.candidates.get(name)!, inp, left);
      if (v) members.set(name, v);
    }
    return { members, left, nextCheck: this.nextCheck() };
  }

  /**
   * Only `names` (the hosts whose candidacy, record or alive key may have changed, and the ones
   * that said bye): work proportional to them, not to the membership. `inp.candidates` must hold
   * the current candidacy of each of them (absent: no candidate); other names are not looked at.
   */
  updateSome(names: Iterable<string>, inp: RosterInput): RosterDelta {
    const left: RosterDelta['left'] = this.pendingLeaves.splice(0);
    const members = new Map<string, MemberView | null>();
    for (const l of left) members.set(l.name, null);
    for (const name of names) {
      const c = inp.candidates.get(name);
      if (!c) {
        if (this.members.delete(name)) left.push({ name, why: 'certificate' });
        this.silentAt.delete(name);
        members.set(name, null);
        continue;
      }
      this.silentAt.delete(name);
      members.set(name, this.step(name, c, inp, left));
    }
    return { members, left, nextCheck: this.nextCheck() };
  }

  private nextCheck(): number | null {
    let next: number | null = null;
    for (const at of this.silentAt.values()) if (next === null || at < next) next = at;
    return next;
  }

  /** One candidate: its view when it is (or becomes) a member, else null (left ones pushed to `left`). */
  private step(name: string, c: Candidate, inp: RosterInput, left: RosterOutput['left']): MemberView | null {
    const alive = inp.alive.has(name);
    const byeEpoch = this.byes.get(name);
    if (byeEpoch !== undefined) {
      if (c.etcd !== 'present' || c.record.epoch <= byeEpoch) return null;
      this.byes.delete(name); // it published again after its bye: a restart, not a leave
    }
    let m = this.members.get(name);
    const heard = inp.heardAt?.(name) ?? 0;
    if (!m) {
      if (c.etcd !== 'present' || !alive) return null;
      m = { lastSign: inp.now };
      this.members.set(name, m);
    }
    if (!alive && inp.heardAt !== undefined && !(heard > 0) && !m.handshook && inp.etcdRead !== false) {
      // Never a working tunnel from it in this process: nothing but etcd vouched for it, so
      // its alive key going is news enough (a host that stops before any session came up can
      // say bye to no one). Not so for one that returned by a handshake: its key vouched for it
      // (it said bye, its alive key went, and it is back while etcd cannot say so).
      this.members.delete(name);
      left.push({ name, why: 'silent' });
      return null;
    }
    if (c.etcd === 'present' || alive) m.lastSign = inp.now;
    if (heard > m.lastSign) m.lastSign = heard;
    if (c.etcd !== 'present' && !alive && inp.etcdRead !== false) {
      const at = m.lastSign + SILENCE_MS;
      if (inp.now >= at) {
        this.members.delete(name);
        left.push({ name, why: 'silent' });
        return null;
      }
      this.silentAt.set(name, at);
    }
    return { record: c.record, etcd: { record: c.etcd, alive } };
  }
}

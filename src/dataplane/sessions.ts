/**
 * The data plane's sessions: per peer, the keys of every live session, each with its send counter
 * and its replay window, and which one to send on. The worker is the only owner of the send choice
 * and of the counters; the control thread only says which sessions exist. So no message from the
 * control thread, however late, can rewind a counter under a key already used:
 *
 *   - a session is named by its keyId, unique for the life of the process and increasing with
 *     creation (see WorkerSession); its keys are loaded the first time it is named and erased when
 *     a peer set leaves it out;
 *   - a keyId at or below a peer's high-water mark that is not loaded any more is never loaded
 *     again, on either side: its counter and its replay window died with it;
 *   - the send session is the newest one that is confirmed (we initiated it, or its first packet
 *     arrived, whoever noticed first) and not past its send deadline. A confirmation is sticky: a
 *     peer set built before the control thread heard of it does not undo it.
 */
import type { Aead } from '../crypto/aead';
import { SendCounter } from './counters';
import type { Clock, WorkerPeer, WorkerSession } from './peer';
import { ReplayWindow } from './replay';
import { COUNTER_LIMIT } from './wire';

/** One session as the data plane holds it. */
export class Session {
  /** The counters to seal with (./counters.ts: shared by all workers when there are several); only ever grow. */
  readonly tx: SendCounter;
  readonly replay = new ReplayWindow(COUNTER_LIMIT);
  confirmed: boolean;
  sendUntil: number;
  /** The control thread has been told (or told us) that this session is confirmed. */
  reported: boolean;
  constructor(
    readonly peer: PeerSessions,
    readonly keyId: number,
    readonly txKey: number,
    readonly rxKey: number,
    readonly txIndex: number,
    readonly rxIndex: number,
    w: WorkerSession,
  ) {
    this.confirmed = w.confirmed;
    this.reported = w.confirmed;
    this.sendUntil = w.sendUntil;
    this.tx = new SendCounter(w.counter ?? null);
  }

  /** May still seal packets: confirmed, before its deadline, counter not exhausted. */
  sendable(now: number): boolean {
    return this.confirmed && now < this.sendUntil && !this.tx.exhausted;
  }
}

/** All sessions of one peer (by stats slot) and the one to send on. */
export class PeerSessions {
  readonly byKey = new Map<number, Session>();
  /** The session to seal with, or null (nothing confirmed yet: drop as noSession). */
  send: Session | null = null;
  /** Highest keyId ever loaded for this slot. */
  highWater = 0;
  constructor(readonly slot: number) {}

  /** Picks the newest sendable session; returns true when the choice changed. */
  choose(now: number): boolean {
    let best: Session | null = null;
    for (const s of this.byKey.values()) if (s.sendable(now) && (best === null || s.keyId > best.keyId)) best = s;
    if (best === this.send) return false;
    this.send = best;
    return true;
  }
}

export class Sessions {
  private readonly bySlot = new Map<number, PeerSessions>();
  /** High-water marks of slots whose peer left: a slot that comes back keeps its old mark. */
  private readonly retired = new Map<number, number>();
  /** Sessions a peer set named but that were refused (a keyId below the high-water mark, not loaded). */
  refused = 0;

  constructor(
    private readonly aead: Aead,
    private readonly clock: Clock,
  ) {}

  /**
   * Applies a peer set: loads new sessions, keeps known ones (with their counters, replay windows
   * and confirmations), erases the ones not named, and re-chooses each peer's send session.
   */
  set(peers: readonly WorkerPeer[]): void {
    const now = this.clock.now();
    const next = new Map<number, PeerSessions>();
    for (const cfg of peers) {
      const ps = this.bySlot.get(cfg.slot) ?? new PeerSessions(cfg.slot);
      if (!this.bySlot.has(cfg.slot)) ps.highWater = this.retired.get(cfg.slot) ?? 0;
      const named = new Set<number>();
      // Oldest first, so the high-water mark only moves up within one set.
      const list = [...cfg.sessions].sort((a, b) => a.keyId - b.keyId);
      for (const w of list) {
        named.add(w.keyId);
        const had = ps.byKey.get(w.keyId);
        if (had) {
          if (w.confirmed) had.confirmed = had.reported = true;
          had.sendUntil = Math.min(had.sendUntil, w.sendUntil);
        } else if (w.keyId > ps.highWater) {
          ps.byKey.set(w.keyId, new Session(ps, w.keyId, this.aead.loadKey(w.txKey), this.aead.loadKey(w.rxKey), w.txIndex, w.rxIndex, w));
          ps.highWater = w.keyId;
        } else {
          this.refused++;
        }
      }
      for (const [id, s] of ps.byKey) {
        if (named.has(id)) continue;
        this.erase(s);
        ps.byKey.delete(id);
      }
      ps.choose(now);
      next.set(cfg.slot, ps);
    }
    for (const [slot, ps] of this.bySlot) {
      if (next.has(slot)) continue;
      for (const s of ps.byKey.values()) this.erase(s);
      ps.byKey.clear();
      ps.send = null;
      this.retired.set(slot, ps.highWater);
    }
    this.bySlot.clear();
    for (const [slot, ps] of next) {
      this.bySlot.set(slot, ps);
      this.retired.delete(slot);
    }
  }

  peer(slot: number): PeerSessions | undefined {
    return this.bySlot.get(slot);
  }

  /** Every loaded session (the inbound side indexes them by receiver index). */
  *all(): IterableIterator<Session> {
    for (const ps of this.bySlot.values()) yield* ps.byKey.values();
  }

  /**
   * The first authenticated packet arrived on a session: it is confirmed (sticky) and may become
   * the send session. Returns true when the control thread has not heard of it yet.
   */
  confirm(s: Session): boolean {
    s.confirmed = true;
    s.peer.choose(this.clock.now());
    if (s.reported) return false;
    s.reported = true;
    return true;
  }

  /**
   * Another worker confirmed session `keyId` of the peer in `slot` (and told the control thread):
   * confirmed here too, without a report. Nothing when it is not loaded.
   */
  confirmed(slot: number, keyId: number): void {
    const ps = this.bySlot.get(slot);
    const s = ps?.byKey.get(keyId);
    if (!ps || !s) return;
    s.confirmed = s.reported = true;
    ps.choose(this.clock.now());
  }

  /**
   * Moves sending off sessions past their deadline (run from the timers). Returns the earliest
   * deadline of a send session still ahead (wall ms; Infinity: none).
   */
  expire(): number {
    const now = this.clock.now();
    let next = Infinity;
    for (const ps of this.bySlot.values()) {
      ps.choose(now);
      if (ps.send !== null && ps.send.sendUntil < next) next = ps.send.sendUntil;
    }
    return next;
  }

  close(): void {
    for (const ps of this.bySlot.values()) for (const s of ps.byKey.values()) this.erase(s);
    this.bySlot.clear();
  }

  private erase(s: Session): void {
    this.aead.dropKey(s.txKey);
    this.aead.dropKey(s.rxKey);
  }
}

/**
 * Handshakes and session lifetimes, on the control thread. The data plane only ever sees the
 * result: per peer, one session to send on and a few more to accept on receive.
 *
 *   1. initiate   when a peer has no usable session (the host with the lower public key at once,
 *                 the other after INITIATE_DELAY_MS, so two hosts that meet rarely both start;
 *                 simultaneous initiations are harmless: each side then sends on its own; a peer
 *                 we knew when we started, both at once: it may hold a session with our previous
 *                 run, which it thinks current, and will not start one itself), at
 *                 once when the data plane has a packet for it (demand()), and when our current
 *                 session passes REKEY_AFTER, but only if the peer sent us anything on it since
 *                 it was made (a session nothing came back on is left to expire: no rekeys
 *                 toward a peer that went away; its next packet or our retries start anew)
 *   2. retry      unanswered initiations, with exponential backoff from RETRY_MIN_MS: up to
 *                 RETRY_MAX_MS while the peer was heard from within HEARD_RECENTLY_MS, up to
 *                 QUIET_RETRY_MAX_MS for a peer that never answered or has long been silent
 *                 (a host that comes up initiates itself; a new record or endpoint, a local
 *                 change, or a packet to send starts the fast schedule again)
 *   3. respond    to a valid initiation from a known peer whose timestamp is newer than any before
 *                 (a replayed initiation is refused and counted; the newest timestamps outlive
 *                 a restart in the state dir, see ./hs-timestamps.ts). The session it makes is
 *                 unconfirmed: it replaces only an earlier unconfirmed one, never a confirmed
 *                 session, and moves no endpoint
 *   4. complete   our initiation with the matching response: the new session is used at once
 *   5. confirm    a session we answered is used for sending once the initiator's first packet on
 *                 it arrives (the data plane sees it first, switches, and tells us), so a rekey
 *                 loses nothing; only then does the initiation's source count as path evidence
 *   6. expire     sessions older than REJECT_AFTER are forgotten; the data plane erases their keys
 *   7. cookies    under load (more than UNDER_LOAD_PER_S initiations a second) an initiation
 *                 without a valid mac2 gets a cookie reply instead of a Diffie-Hellman; the
 *                 cookie is bound to the source ip:port, or for a relayed message to the relay
 *                 ("via:<relay name>"), and the reply goes back the way the message came
 *
 * The data-plane worker has already checked mac1 and the flood limits (src/dataplane/hslimit.ts)
 * before a message gets here; mac1 is checked again below (defence in depth, one hash).
 */
import type { Logger } from '../log';
import type { Endpoint } from './paths';
import { MemoryTimestamps, type TimestampStore } from './hs-timestamps';
import { compareTimestamps, MSG_COOKIE, MSG_INITIATION, MSG_RESPONSE, Noise, timestamp, type PendingInitiation, type SessionSecrets } from '../crypto/noise';

export interface HandshakeTimers {
  rekeyAfterMs: number;
  rejectAfterMs: number;
  /**
   * Tests only (CLADNET_REKEY_BOTH=1): each side rekeys on its own schedule, counting only the
   * sessions it initiated, so both initiate and both answer every rekeyAfterMs (and now and then
   * the two initiations cross in flight).
   */
  bothSides?: boolean;
}

/** WireGuard's: rekey after 2 minutes, never use a session after 3. */
export const DEFAULT_TIMERS: HandshakeTimers = { rekeyAfterMs: 120_000, rejectAfterMs: 180_000 };
export const RETRY_MIN_MS = 250;
export const RETRY_MAX_MS = 5_000;
/** Retry backoff cap for a peer not heard from within HEARD_RECENTLY_MS (or never). */
export const QUIET_RETRY_MAX_MS = 120_000;
/** A peer heard from (a packet or a completed handshake) this recently is retried at RETRY_MAX_MS at most. */
export const HEARD_RECENTLY_MS = 60_000;
/** A session due for a rekey with nothing received on it yet is looked at again this often (at most a tenth of rekeyAfter). */
const IDLE_RECHECK_MS = 10_000;
export const INITIATE_DELAY_MS = 250;
export const UNDER_LOAD_PER_S = 50;
const COOKIE_SECRET_MS = 120_000;
/** Confirmed sessions kept per peer (the current one and those still draining). */
const MAX_CONFIRMED = 3;
/**
 * An unconfirmed session this young counts as a rekey in progress (the initiator may be idle and
 * send its first packet only with its next ping): we do not start one of our own meanwhile.
 */
const UNCONFIRMED_GRACE_MS = 10_000;
/** Fraction of a session's life at the end during which it only receives. */
const SEND_MARGIN = 1 / 12;

/**
 * Timers for tests: CLADNET_REKEY_AFTER_MS shortens rekeying (reject-after follows at 1.5x).
 * Not a user setting: the defaults are the protocol's.
 */
export function timersFromEnv(env: NodeJS.ProcessEnv): HandshakeTimers {
  const v = Number(env.CLADNET_REKEY_AFTER_MS);
  if (!Number.isFinite(v) || v < 500) return DEFAULT_TIMERS;
  return { rekeyAfterMs: v, rejectAfterMs: Math.round(v * 1.5), ...(env.CLADNET_REKEY_BOTH === '1' ? { bothSides: true } : {}) };
}

export interface Session {
  /** Unique for the life of the process, increasing with creation (see WorkerSession.keyId). */
  readonly keyId: number;
  readonly localIndex: number;
  readonly remoteIndex: number;
  readonly sendKey: Uint8Array;
  readonly recvKey: Uint8Array;
  readonly created: number;
  readonly initiator: boolean;
  confirmed: boolean;
  /** Where the initiation we answered came from: path evidence once the session is confirmed. */
  readonly from?: Endpoint;
}

interface PeerState {
  name: string;
  publicKey: Uint8Array;
  lowerThanPeer: boolean;
  /** Known when this agent started (see updatePeers): initiate at once, whichever key is lower. */
  known: boolean;
  addedAt: number;
  /** Where the peer's last valid handshake message came from (or its control-plane endpoint). */
  endpoint: Endpoint;
  /** Newest first: at most MAX_CONFIRMED confirmed ones and one unconfirmed one. */
  sessions: Session[];
  pending: (PendingInitiation & { sentAt: number }) | null;
  attempts: number;
  nextAttempt: number;
  cookie: { value: Uint8Array; at: number } | null;
  /** A handshake is due regardless of session age (set by rekeyAll, cleared when one is confirmed). */
  forceAt: number | null;
  /** When tick() must look at this peer next (its timers; earlier is harmless, later is a bug). */
  dueAt: number;
  /** Last time a handshake with it completed (ms; 0: never in this process). */
  heardAt: number;
}

export interface HandshakeStats {
  initiationsSent: number;
  responsesSent: number;
  completed: number;
  cookiesSent: number;
  rekeys: number;
  drops: {
    mac1: number;
    decrypt: number;
    unknownPeer: number;
    replay: number;
    unexpected: number;
    cookieRequired: number;
  };
}

export interface HandshakeDeps {
  noise: Noise;
  /**
   * Sends a datagram on the agent's UDP socket to ip:port, or, with `via`, through the relay peer
   * `via.relay` to the peer `via.peer`.
   */
  send(data: Uint8Array, ip: number, port: number, via?: { relay: string; peer: string }): void;
  /** Where initiations to a peer go (path choice); default: its last known endpoint. */
  targets?(name: string, hasSession: boolean): Endpoint[];
  /** A valid handshake message from a known peer came from `from` (path evidence). */
  onEndpoint?(name: string, from: Endpoint): void;
  /**
   * Called whenever any peer's usable sessions changed. `now` asks for the workers to be told
   * before anything else is sent: a responder's new session must be in its data plane before
   * the response leaves, or the initiator's first packets could arrive at a data plane that does
   * not know their receiver index yet.
   */
  onChange(now?: boolean): void;
  log: Logger;
  now?: () => number;
  timers?: HandshakeTimers;
  /** Data-plane workers (default 1): our receiver indices take their residues mod this in turn (freeIndex). */
  workers?: number;
  /** Retry jitter only (default Math.random); never used for secrets. */
  random?: () => number;
  /**
   * When the data plane last received an authenticated packet from the peer (ms, the `now`
   * clock; 0: never). A session nothing came back on is not rekeyed. Default: always traffic.
   */
  lastRx?(name: string): number;
  /**
   * Something became due earlier than nextDue() said before: tick() should run at `at` (ms,
   * the `now` clock). The owner of the timer re-arms it; tick() itself never schedules.
   */
  wake?(at: number): void;
  /** The newest initiation timestamp seen per peer key; default in memory (lost on restart). */
  timestamps?: TimestampStore;
  /**
   * A valid initiation (its sender proved its static key) with a newer timestamp than any seen
   * from that key came from a key that is not a peer. The caller may make it a peer (a member
   * that said bye and came back), with updatePeers() before it returns: this initiation is then
   * answered.
   */
  onUnknownInitiator?(publicKey: Uint8Array): void;
}

function ipPort(ip: number, port: number): string {
  return `${ip >>> 24}.${(ip >>> 16) & 255}.${(ip >>> 8) & 255}.${ip & 255}:${port}`;
}

export class HandshakeManager {
  private readonly peers = new Map<string, PeerState>();
  /** Our receiver indices: pending initiations and live sessions. */
  private readonly byIndex = new Map<number, { peer: PeerState; pending: boolean }>();
  private readonly now: () => number;
  private readonly timers: HandshakeTimers;
  private readonly random: () => number;
  private readonly timestamps: TimestampStore;
  private lastTimestamp = 0;
  private cookieSecret: Uint8Array;
  private cookieSecretAt: number;
  private window = { start: 0, count: 0 };
  private keySeq = 0;
  readonly stats: HandshakeStats = {
    initiationsSent: 0,
    responsesSent: 0,
    completed: 0,
    cookiesSent: 0,
    rekeys: 0,
    drops: { mac1: 0, decrypt: 0, unknownPeer: 0, replay: 0, unexpected: 0, cookieRequired: 0 },
  };

  constructor(private readonly d: HandshakeDeps) {
    this.now = d.now ?? Date.now;
    this.timers = d.timers ?? DEFAULT_TIMERS;
    this.random = d.random ?? Math.random;
    this.timestamps = d.timestamps ?? new MemoryTimestamps();
    this.cookieSecret = this.freshSecret();
    this.cookieSecretAt = this.now();
  }

  /** The cookie secret comes from the CSPRNG, never from `random` (jitter only). */
  private freshSecret(): Uint8Array {
    return this.d.noise.randomSecret();
  }

  /** Declarative peer set: name -> static public key and endpoint. A changed key starts over. */
  setPeers(list: readonly { name: string; publicKey: Uint8Array; ip: number; port: number }[]): void {
    const seen = new Set<string>();
    const now = this.now();
    for (const p of list) {
      seen.add(p.name);
      this.upsertPeer(p, now);
    }
    for (const [name, st] of this.peers) if (!seen.has(name)) this.forget(st);
    this.tick();
  }

  /**
   * Changes some peers only (work proportional to the change, not to the peer set): adds or
   * updates `upserts` (a changed key starts over) and forgets `removed`; then runs the tick for
   * the peers it touched.
   */
  updatePeers(
    upserts: readonly { name: string; publicKey: Uint8Array; ip: number; port: number }[],
    removed: Iterable<string>,
    opts: { known?: boolean } = {},
  ): void {
    const now = this.now();
    for (const name of removed) {
      const st = this.peers.get(name);
      if (st) this.forget(st);
    }
    const touched: PeerState[] = [];
    for (const p of upserts) touched.push(this.upsertPeer(p, now, opts.known ?? false));
    for (const st of touched) if (st.dueAt <= now) this.tickPeer(st, now);
    let next = Infinity;
    for (const st of touched) next = Math.min(next, st.dueAt);
    if (next < Infinity) this.d.wake?.(next);
  }

  private upsertPeer(p: { name: string; publicKey: Uint8Array; ip: number; port: number }, now: number, known = false): PeerState {
    const old = this.peers.get(p.name);
    if (old && Buffer.from(old.publicKey).equals(Buffer.from(p.publicKey))) {
      if (old.endpoint.ip !== p.ip || old.endpoint.port !== p.port) {
        old.endpoint = { ip: p.ip, port: p.port };
        // Somewhere new to try: a peer we were backing off from gets the fast schedule again.
        this.hurry(old, now);
      }
      return old;
    }
    if (old) this.forget(old);
    const st: PeerState = {
      name: p.name,
      publicKey: p.publicKey,
      lowerThanPeer: Buffer.compare(Buffer.from(this.d.noise.staticPublic), Buffer.from(p.publicKey)) < 0,
      known,
      addedAt: now,
      endpoint: { ip: p.ip, port: p.port },
      sessions: [],
      pending: null,
      attempts: 0,
      nextAttempt: 0,
      cookie: null,
      forceAt: null,
      dueAt: now,
      heardAt: 0,
    };
    this.peers.set(p.name, st);
    return st;
  }

  private forget(st: PeerState): void {
    for (const [idx, e] of this.byIndex) if (e.peer === st) this.byIndex.delete(idx);
    for (const s of st.sessions) this.wipe(s);
    st.sessions = [];
    this.dropPending(st);
    this.peers.delete(st.name);
    this.d.onChange();
  }

  private wipe(s: Session): void {
    s.sendKey.fill(0);
    s.recvKey.fill(0);
  }

  /** Forgets an initiation in flight and erases its ephemeral secret. */
  private dropPending(st: PeerState): void {
    if (!st.pending) return;
    this.byIndex.delete(st.pending.localIndex);
    st.pending.ephemeralPrivate.fill(0);
    st.pending.ck.fill(0);
    st.pending = null;
  }

  /** The data plane moved a peer (roaming) or the path choice did: later handshakes go there. */
  moveEndpoint(name: string, ip: number, port: number, via?: string): void {
    const st = this.peers.get(name);
    if (st) st.endpoint = via === undefined ? { ip, port } : { ip: 0, port: 0, via };
  }

  /** Starts a new handshake with every peer at the next tick (our address changed). */
  rekeyAll(): void {
    const now = this.now();
    for (const st of this.peers.values()) {
      st.forceAt = now;
      st.attempts = 0;
      st.nextAttempt = now;
      st.dueAt = now;
    }
    this.tick();
  }

  /**
   * The data plane has a packet for `name` and no session to send it on: handshake now, and
   * retry on the fast schedule again (the caller limits how often it asks). Nothing happens
   * while a session is usable or in the making (an initiation younger than RETRY_MIN_MS, or an
   * answered one awaiting its first packet).
   */
  demand(name: string): void {
    const st = this.peers.get(name);
    if (!st) return;
    const now = this.now();
    if (this.current(st, now)) return;
    st.attempts = 0;
    if (st.pending && now - st.pending.sentAt < RETRY_MIN_MS) {
      // (one in flight: the next try comes RETRY_MIN_MS after it, not at its old backoff)
      st.nextAttempt = Math.min(st.nextAttempt, st.pending.sentAt + RETRY_MIN_MS);
      this.due(st, st.nextAttempt);
      return;
    }
    this.initiate(st, now);
    this.due(st, st.nextAttempt);
  }

  /**
   * The peer's record changed (it restarted, or moved): whatever it did not answer before, it
   * may answer now. A peer we were backing off from is tried at once and on the fast schedule.
   */
  nudge(name: string): void {
    const st = this.peers.get(name);
    if (st && !this.current(st, this.now())) this.hurry(st, this.now());
  }

  /** A peer that may answer now (new endpoint): retry at once and on the fast schedule. */
  private hurry(st: PeerState, now: number): void {
    st.attempts = 0;
    if (st.pending) st.nextAttempt = now;
    this.due(st, now);
  }

  /** `st` must be looked at by `at`: records it and tells the timer's owner. */
  private due(st: PeerState, at: number): void {
    if (at >= st.dueAt) return;
    st.dueAt = at;
    this.d.wake?.(at);
  }

  /**
   * When tick() must run next (ms, the `now` clock): the earliest of every peer's timers and the
   * cookie secret's rotation. Between events, calling tick() before then does nothing.
   */
  nextDue(): number {
    let at = this.cookieSecretAt + COOKIE_SECRET_MS;
    for (const st of this.peers.values()) if (st.dueAt < at) at = st.dueAt;
    return at;
  }

  private sendTo(st: PeerState, msg: Uint8Array, e: Endpoint): void {
    if (e.via !== undefined) this.d.send(msg, 0, 0, { relay: e.via, peer: st.name });
    else this.d.send(msg, e.ip, e.port);
  }

  /**
   * Sessions the data plane may use for a peer: the send session first, then receive-only ones.
   * A session stops being used for sending a little before it is erased (SEND_MARGIN of its
   * life), so that packets sealed under it still find the key at the other end.
   */
  usable(name: string): { send: Session; others: Session[] } | null {
    const st = this.peers.get(name);
    if (!st || st.sessions.length === 0) return null;
    const stopAt = this.timers.rejectAfterMs * (1 - SEND_MARGIN);
    const now = this.now();
    const fresh = st.sessions.filter((s) => now - s.created < stopAt);
    const send = fresh.find((s) => s.confirmed) ?? fresh[0];
    if (!send) return null;
    return { send, others: st.sessions.filter((s) => s !== send) };
  }

  /** Every live session with a peer, newest first (the data plane chooses which to send on). */
  sessionsOf(name: string): readonly Session[] {
    return this.peers.get(name)?.sessions ?? [];
  }

  /** When a session stops sealing: SEND_MARGIN of its life before it is erased. */
  sendDeadline(s: Session): number {
    return s.created + this.timers.rejectAfterMs * (1 - SEND_MARGIN);
  }

  lastHandshake(name: string): number | null {
    return this.peers.get(name)?.sessions[0]?.created ?? null;
  }

  // ---- 1, 2, 6: timers ------------------------------------------------------------------------

  /**
   * Runs the timers of every peer that is due (see nextDue()). Safe to call at any time: a peer
   * that is not due is skipped, so calling it late or often changes nothing but the cost.
   */
  tick(): void {
    const now = this.now();
    if (now - this.cookieSecretAt >= COOKIE_SECRET_MS) {
      this.cookieSecret.fill(0);
      this.cookieSecret = this.freshSecret();
      this.cookieSecretAt = now;
    }
    for (const st of this.peers.values()) {
      if (st.dueAt > now) continue;
      this.tickPeer(st, now);
    }
    this.d.wake?.(this.nextDue());
  }

  /**
   * The session a handshake is measured on: the newest confirmed one, or an unconfirmed one
   * young enough to be a rekey in progress (a replayed initiation cannot hold one off long).
   */
  private current(st: PeerState, now: number): Session | undefined {
    return st.sessions.find(
      (s) =>
        now < this.sendDeadline(s) &&
        (s.confirmed || now - s.created < UNCONFIRMED_GRACE_MS) &&
        (s.initiator || this.timers.bothSides !== true),
    );
  }

  /** When a rekey of `s` falls due (the responder waits a little longer, so the initiator usually goes first). */
  private rekeyAt(s: Session): number {
    return s.created + this.timers.rekeyAfterMs + (s.initiator ? 0 : this.timers.rekeyAfterMs / 10);
  }

  private tickPeer(st: PeerState, now: number): void {
    // 6. expire
    const before = st.sessions.length;
    st.sessions = st.sessions.filter((s) => {
      const keep = now - s.created < this.timers.rejectAfterMs;
      if (!keep) {
        this.byIndex.delete(s.localIndex);
        this.wipe(s);
      }
      return keep;
    });
    // (the data plane moves sending off a session past its deadline by itself)
    if (st.sessions.length !== before) this.d.onChange();
    // 1, 2. initiate or retry
    const newest = this.current(st, now);
    let due = false;
    // When this peer's state changes by time alone: a session leaves `current` or expires. Only
    // times still ahead count: a session past its send deadline waits for its expiry (a deadline
    // already passed would ask for a tick at once, every millisecond until the expiry).
    let next = Infinity;
    for (const s of st.sessions) {
      next = Math.min(next, s.created + this.timers.rejectAfterMs);
      const stop = this.sendDeadline(s);
      if (stop > now) next = Math.min(next, stop);
      if (!s.confirmed && now - s.created < UNCONFIRMED_GRACE_MS) next = Math.min(next, s.created + UNCONFIRMED_GRACE_MS);
    }
    if (!newest) {
      const startAt = st.lowerThanPeer || st.known ? now : st.addedAt + INITIATE_DELAY_MS;
      due = now >= startAt;
      if (!due) next = Math.min(next, startAt);
    } else if (st.forceAt !== null && newest.created < st.forceAt) due = true;
    else {
      const at = this.rekeyAt(newest);
      if (now < at) next = Math.min(next, at);
      else if ((this.d.lastRx?.(st.name) ?? Infinity) > newest.created) due = true;
      // Nothing came back on it: no rekey (it expires unless the peer speaks up; then we rekey).
      else next = Math.min(next, now + Math.min(IDLE_RECHECK_MS, this.timers.rekeyAfterMs / 10));
    }
    if (!due) {
      st.attempts = 0;
      st.dueAt = next;
      return;
    }
    if (now >= st.nextAttempt) this.initiate(st, now);
    st.dueAt = Math.min(next, st.nextAttempt);
  }

  /** Backoff before the next try: doubling from RETRY_MIN_MS, capped by how recently the peer spoke. */
  private backoff(st: PeerState, now: number): number {
    const heard = Math.max(st.heardAt, this.d.lastRx?.(st.name) ?? 0);
    const cap = heard > 0 && now - heard < HEARD_RECENTLY_MS ? RETRY_MAX_MS : QUIET_RETRY_MAX_MS;
    return Math.min(cap, RETRY_MIN_MS * 2 ** Math.min(st.attempts, 30));
  }

  private initiate(st: PeerState, now: number): void {
    this.dropPending(st);
    const localIndex = this.freeIndex();
    const cookie = st.cookie && now - st.cookie.at < COOKIE_SECRET_MS ? st.cookie.value : null;
    const ts = Math.max(now, this.lastTimestamp + 1);
    this.lastTimestamp = ts;
    // (the next try is scheduled even when this one fails: a key that cannot be used, a
    // low-order point, must not be retried at every timer turn)
    const backoff = this.backoff(st, now);
    st.attempts++;
    st.nextAttempt = now + backoff * (1 + this.random() * 0.2);
    const r = this.d.noise.initiate(st.publicKey, localIndex, timestamp(ts), cookie);
    if (!r) {
      st.pending = null;
      return;
    }
    st.pending = { ...r.pending, sentAt: now };
    this.byIndex.set(localIndex, { peer: st, pending: true });
    this.stats.initiationsSent++;
    // (none from the path choice: nowhere to send yet, e.g. only hole punches go to the peer)
    const targets = this.d.targets?.(st.name, st.sessions.some((s) => s.confirmed)) ?? [st.endpoint];
    for (const e of targets) this.sendTo(st, r.msg, e);
  }

  /**
   * A receiver index no session of ours uses. With several data-plane workers, index mod workers
   * names the worker that receives the session's packets (src/os/udp/reuseport.ts): new sessions
   * take the workers in turn, the rest of the index stays random.
   */
  private freeIndex(): number {
    const n = this.d.workers ?? 1;
    for (;;) {
      let i = this.d.noise.randomIndex();
      if (n > 1) {
        i = i - (i % n) + (this.nextWorker % n);
        if (i > 0xffff_ffff) continue;
      }
      if (i !== 0 && !this.byIndex.has(i)) {
        this.nextWorker++;
        return i;
      }
    }
  }
  /** The worker the next new session's receiver index names (freeIndex). */
  private nextWorker = 0;

  /**
   * Keeps a peer's sessions within bounds: at most one unconfirmed session (the newest initiation
   * we answered; an earlier unconfirmed one is dropped) and MAX_CONFIRMED confirmed ones (the
   * oldest go). An unconfirmed session never pushes out a confirmed one.
   */
  private prune(st: PeerState): void {
    let unconfirmed = 0;
    let confirmed = 0;
    st.sessions = st.sessions.filter((s) => {
      const keep = s.confirmed ? ++confirmed <= MAX_CONFIRMED : ++unconfirmed <= 1;
      if (!keep) {
        this.byIndex.delete(s.localIndex);
        this.wipe(s);
      }
      return keep;
    });
  }

  private addSession(st: PeerState, secrets: SessionSecrets, initiator: boolean, from?: Endpoint): void {
    // (see HandshakeDeps.onChange: a responder's session goes to the workers before its response)
    const s: Session = {
      keyId: ++this.keySeq,
      localIndex: secrets.localIndex,
      remoteIndex: secrets.remoteIndex,
      sendKey: secrets.sendKey,
      recvKey: secrets.recvKey,
      created: this.now(),
      initiator,
      confirmed: initiator,
      ...(from ? { from } : {}),
    };
    if (st.sessions.length > 0) this.stats.rekeys++;
    st.heardAt = s.created;
    st.known = false; // (it has met this run now: the usual order applies from here)
    st.sessions.unshift(s);
    this.byIndex.set(s.localIndex, { peer: st, pending: false });
    if (initiator) this.onConfirmed(st, s);
    this.prune(st);
    this.stats.completed++;
    this.due(st, s.created); // its timers start now
    this.d.onChange(!initiator);
  }

  /** A session is confirmed: a pending rekeyAll is satisfied, and an answered one's source is path evidence. */
  private onConfirmed(st: PeerState, s: Session): void {
    if (st.forceAt !== null && s.created >= st.forceAt) st.forceAt = null;
    if (s.from) {
      st.endpoint = s.from;
      this.d.onEndpoint?.(st.name, s.from);
    }
  }

  /** 5. The data plane saw the first packet on a session we answered (and already sends on it). */
  confirmed(name: string, keyId: number): void {
    const st = this.peers.get(name);
    const s = st?.sessions.find((x) => x.keyId === keyId);
    if (!st || !s || s.confirmed) return;
    s.confirmed = true;
    this.onConfirmed(st, s);
    this.prune(st);
    this.due(st, this.now());
    this.d.onChange();
  }

  // ---- 3, 4, 7: messages ----------------------------------------------------------------------

  /**
   * A handshake message from ip:port, or passed on by the relay peer `via` from the peer it names
   * as `origin` (where a cookie reply goes; without it none can be sent). `proven`: the data
   * plane found our worker cookie for ip:port in its mac2, so no cookie round is needed here.
   */
  receive(msg: Uint8Array, ip: number, port: number, via?: string, opts: { origin?: string; proven?: boolean } = {}): void {
    const { origin, proven = false } = opts;
    const noise = this.d.noise;
    const type = msg[0];
    const from: Endpoint = via === undefined ? { ip, port } : { ip: 0, port: 0, via };
    if (type === MSG_COOKIE) return this.receiveCookie(msg);
    if (type !== MSG_INITIATION && type !== MSG_RESPONSE) {
      this.stats.drops.unexpected++;
      return;
    }
    if (!noise.checkMac1(msg)) {
      this.stats.drops.mac1++;
      return;
    }
    // Under load an initiation needs mac2. A relayed one is bound to its relay (an authenticated
    // peer of ours; the source address inside the network is the relay's word), so one member
    // cannot make us do unlimited Diffie-Hellman work through a relay either. A response needs
    // none: it costs a Diffie-Hellman only when it names an initiation of ours in flight (a
    // random 32-bit index), and its sender could not use a cookie (it does not resend it).
    if (type === MSG_INITIATION && this.underLoad() && !(proven && via === undefined)) {
      const cookie = noise.cookieFor(this.cookieSecret, via === undefined ? ipPort(ip, port) : `via:${via}`);
      if (!noise.checkMac2(msg, cookie)) {
        this.stats.drops.cookieRequired++;
        // (a relayed message whose sender the relay did not name gets no reply: nowhere to send it)
        const to = via === undefined ? undefined : origin === undefined ? null : { relay: via, peer: origin };
        if (to !== null) {
          this.stats.cookiesSent++;
          this.d.send(noise.cookieReply(msg, cookie), ip, port, to);
        }
        return;
      }
    }
    if (type === MSG_INITIATION) this.receiveInitiation(msg, from);
    else this.receiveResponse(msg, from);
  }

  private underLoad(): boolean {
    const now = this.now();
    if (now - this.window.start >= 1000) this.window = { start: now, count: 0 };
    return ++this.window.count > UNDER_LOAD_PER_S;
  }

  private receiveInitiation(msg: Uint8Array, from: Endpoint): void {
    const init = this.d.noise.consumeInitiation(msg);
    if (!init) {
      this.stats.drops.decrypt++;
      return;
    }
    const key = Buffer.from(init.peerStatic);
    const byKey = () => [...this.peers.values()].find((p) => key.equals(Buffer.from(p.publicKey)));
    let st = byKey();
    if (!st) {
      const seen = this.timestamps.get(init.peerStatic);
      if (!seen || compareTimestamps(init.timestamp, seen) > 0) {
        // A member that said bye and came back is a peer again once the caller says so: this
        // initiation is answered then, not its retry RETRY_MIN_MS later.
        this.d.onUnknownInitiator?.(init.peerStatic);
        st = byKey();
      }
      if (!st) {
        this.stats.drops.unknownPeer++;
        return;
      }
    }
    const last = this.timestamps.get(st.publicKey);
    if (last && compareTimestamps(init.timestamp, last) <= 0) {
      this.stats.drops.replay++;
      return;
    }
    const r = this.d.noise.respond(init, this.freeIndex(), null);
    if (!r) {
      this.stats.drops.decrypt++;
      return;
    }
    this.timestamps.set(st.publicKey, init.timestamp);
    // The endpoint moves, and a pending rekeyAll counts as done, only when the initiator uses
    // the session (confirmed): a replayed initiation never gets that far.
    this.addSession(st, r.session, false, from);
    this.stats.responsesSent++;
    this.sendTo(st, r.msg, from);
  }

  private receiveResponse(msg: Uint8Array, from: Endpoint): void {
    const idx = Noise.receiverOf(msg);
    const e = idx === null ? undefined : this.byIndex.get(idx);
    const st = e?.pending ? e.peer : undefined;
    if (!st || !st.pending || st.pending.localIndex !== idx) {
      this.stats.drops.unexpected++; // not ours, already answered, or a replay
      return;
    }
    const secrets = this.d.noise.consumeResponse(msg, st.pending);
    if (!secrets) {
      this.stats.drops.decrypt++;
      return;
    }
    this.dropPending(st);
    st.attempts = 0;
    st.endpoint = from;
    this.d.onEndpoint?.(st.name, from);
    this.addSession(st, secrets, true);
  }

  private receiveCookie(msg: Uint8Array): void {
    const idx = Noise.receiverOf(msg);
    const e = idx === null ? undefined : this.byIndex.get(idx);
    const st = e?.pending ? e.peer : undefined;
    if (!st || !st.pending) {
      this.stats.drops.unexpected++;
      return;
    }
    const cookie = this.d.noise.openCookie(msg, st.publicKey, st.pending.mac1);
    if (!cookie) {
      this.stats.drops.decrypt++;
      return;
    }
    st.cookie = { value: cookie, at: this.now() };
    st.nextAttempt = this.now(); // retry with mac2 at the next tick
    this.due(st, st.nextAttempt);
  }

  close(): void {
    for (const st of [...this.peers.values()]) this.forget(st);
  }
}

/**
 * Path choice per peer, on the control thread. The data plane sends wherever it is told and
 * follows roaming; this decides what to tell it, from evidence only:
 *
 *   1. candidates  the peer's published endpoints (interface addresses, reflexive, STUN, metadata)
 *                  plus any address its authenticated packets came from
 *   2. probe       every candidate gets a probe (an encrypted ping that never moves an endpoint):
 *                  every PROBE_FAST_MS while discovering (a new peer, new candidates, a local
 *                  change, or no direct path), every PROBE_SLOW_MS once settled; probes are also
 *                  what punches holes when both hosts sit behind endpoint-independent NATs.
 *                  Punch first: a peer behind a NAT gets, at a public candidate, only hole punches
 *                  (datagrams with a TTL too small to reach its NAT) until PUNCH_LEAD_MS after both
 *                  our first punch there and our last publish of new endpoints (by then the peer
 *                  has punched toward us too), or until that candidate answered (the only way for
 *                  a host with no NAT: the NATed peer reaches it first). A full packet
 *                  that reaches a NAT before its host sent anything to us leaves a conntrack entry
 *                  there, and a Linux NAT then gives the host's own packets to us another source
 *                  port than the one it published: the pair would stay relayed for good
 *   3. evidence    a pong, a handshake message or a roam from an address marks it alive
 *   4. choose      among live direct candidates, a private one (on a network we share) beats a
 *                  public one, then the lower round trip; we move off a working path only for a
 *                  private one, for an address the peer publishes when it no longer publishes
 *                  ours (it moved), or when it has gone quiet (no flapping on jitter)
 *   5. relay       no live direct path RELAY_AFTER_MS after the peer appeared (or after the direct
 *                  path died): go through a relay-capable peer we reach directly, and keep probing
 *                  the direct candidates so the first pong moves us back
 *
 * Pure logic: time is injected, actions come back from tick() for the agent to carry out. tick()
 * looks only at peers that are due (each peer keeps the time its next probe, death or fallback
 * falls due; evidence makes it due at once) and at peers that had no session when last looked at
 * (a session makes probing start): nextDue() says when to call it, so an idle host with many
 * quiet peers wakes rarely and cheaply.
 */
import { formatEndpoint } from '../util/ipv4';

/**
 * An underlay endpoint: `ip` is an IPv4 address or an IPv6 address's handle (src/util/ipv6.ts),
 * so both families compare, key and print (formatEndpoint: "[2001:db8::1]:51820") alike.
 */
export interface Endpoint {
  readonly ip: number;
  readonly port: number;
  /** Reached through this relay peer (ip/port unused). */
  readonly via?: string;
}

export type PathKind = 'direct' | 'relayed' | 'none';
export type PathScope = 'private' | 'public';

export interface PathState {
  endpoint: Endpoint | null;
  kind: PathKind;
  scope: PathScope | null;
  /** ms of the last change of endpoint or kind; null before the first. */
  since: number | null;
}

export interface PathActions {
  probes: { name: string; ip: number; port: number }[];
  /** TTL-limited hole punches (see "punch first" above). */
  punches: { name: string; ip: number; port: number }[];
  /** Peers whose endpoint the data plane must be told. */
  moves: { name: string; endpoint: Endpoint }[];
}

export const PROBE_FAST_MS = 1_000;
export const PROBE_SLOW_MS = 10_000;
/** How long a fresh peer, a changed candidate set or a local change keeps probing fast. */
export const DISCOVER_MS = 10_000;
/** A candidate is alive this long after its last evidence (more than two slow probe rounds). */
export const ALIVE_MS = 25_000;
/** The current path is dead after this long without evidence (pings every 5 s refresh it). */
export const PATH_DEAD_MS = 11_000;
/** Fall back to a relay when no direct path has answered for this long. */
export const RELAY_AFTER_MS = 2_500;
export const MAX_CANDIDATES = 8;
/** Only punches to a NATed peer's public candidate for this long (more than a watch's latency). */
export const PUNCH_LEAD_MS = 1_000;
/**
 * A hole punch's IP TTL: past our own NAT (one hop), dead at the next router, short of the
 * peer's NAT. (A NAT further away, a carrier-grade one, would need more: not covered.)
 */
export const PUNCH_TTL = 2;
/** A punch's payload: one byte, which a peer that gets it anyway drops as too short. */
export const PUNCH_PAYLOAD = new Uint8Array(1);

interface Candidate {
  ip: number;
  port: number;
  /** The peer publishes it now; `wasPublished`: it did at some point (else we only saw packets from it). */
  published: boolean;
  wasPublished: boolean;
  lastSeen: number;
  rtt: number;
  /** Our first hole punch to it (null: none yet). */
  punchedAt: number | null;
  /** Full packets may go there (see "punch first"). */
  open: boolean;
}

interface PeerPaths {
  candidates: Map<string, Candidate>;
  relayCapable: boolean;
  /** Its candidates that get punches first (its NAT's public mapping: key()). */
  punchFirst: Set<string>;
  current: Endpoint | null;
  kind: PathKind;
  since: number | null;
  /** Last evidence on the current path. */
  currentSeen: number;
  addedAt: number;
  discoverUntil: number;
  lastProbe: number;
  /** Since when no direct path has been alive (for the relay fallback). */
  directLostAt: number;
  /** When tick() must look at it next. */
  dueAt: number;
  /** It had a session when tick() last looked at it. */
  hadSession: boolean;
  /** It could relay for others when tick() last looked at it (see relays()). */
  relaying: boolean;
}

export interface PathDeps {
  now(): number;
  /** True when ip is on one of our own networks (a private path). */
  isLocal(ip: number): boolean;
  /**
   * We sit behind a NAT: we punch, and punch-first candidates open by time. A host with no NAT of
   * its own, or one that does not know yet (false), sends no punch (its TTL could reach the
   * peer's NAT) and opens them only when they answer (a NATed peer reaches such a host first).
   * Default true.
   */
  behindNat?(): boolean;
  /** Something fell due earlier than nextDue() said: call tick() at `at` (ms, the `now` clock). */
  wake?(at: number): void;
}

const key = (ip: number, port: number) => `${ip >>> 0}:${port}`;
/** 1 for an address the peer published once and no longer does. */
const gone = (c: { published: boolean; wasPublished: boolean }): number => (c.wasPublished && !c.published ? 1 : 0);

export function sameEndpoint(a: Endpoint | null, b: Endpoint | null): boolean {
  if (a === null || b === null) return a === b;
  if (a.via !== undefined || b.via !== undefined) return a.via === b.via;
  return a.ip === b.ip && a.port === b.port;
}

export function describeEndpoint(e: Endpoint | null): string {
  if (e === null) return '';
  return e.via !== undefined ? `via ${e.via}` : formatEndpoint(e.ip, e.port);
}

export class PathManager {
  private readonly peers = new Map<string, PeerPaths>();
  /** Relay-capable peers with a live direct path, best first; built once per tick when needed. */
  private relayList: { name: string; rtt: number }[] | null = null;
  /** When we last published new endpoints of our own (peers punch toward them from then on). */
  private publishedAt: number;
  /** behindNat() as of the last tick: when we learn we sit behind a NAT, every peer gets its punches at once. */
  private natted: boolean | null = null;

  constructor(private readonly d: PathDeps) {
    this.publishedAt = d.now();
  }

  /** Our record with new endpoints was published: full packets to NATed peers wait PUNCH_LEAD_MS again. */
  published(): void {
    this.publishedAt = this.d.now();
  }

  /** Our record is not out yet: no punch-first candidate opens by time before published(). */
  unpublished(): void {
    this.publishedAt = Infinity;
  }

  /** `p` must be looked at by `at`. */
  private due(p: PeerPaths, at: number): void {
    if (at >= p.dueAt) return;
    p.dueAt = at;
    this.d.wake?.(at);
  }

  /** When tick() must run next (ms, the `now` clock; Infinity: only after an event). */
  nextDue(): number {
    let at = Infinity;
    for (const p of this.peers.values()) if (p.dueAt < at) at = p.dueAt;
    return at;
  }

  /**
   * Declares a peer's published candidates (and whether it relays). Evidence for known ones stays.
   * `punchFirst`: those that are its NAT's mapping (they get punches first, see the header).
   */
  setPeer(
    name: string,
    candidates: readonly { ip: number; port: number }[],
    relayCapable: boolean,
    opts: { punchFirst?: readonly { ip: number; port: number }[] } = {},
  ): void {
    const now = this.d.now();
    let p = this.peers.get(name);
    if (!p) {
      p = {
        candidates: new Map(),
        relayCapable,
        punchFirst: new Set(),
        current: null,
        kind: 'none',
        since: null,
        currentSeen: -Infinity,
        addedAt: now,
        discoverUntil: now + DISCOVER_MS,
        lastProbe: -Infinity,
        directLostAt: now,
        dueAt: Infinity, // (due at once, below)
        hadSession: false,
        relaying: false,
      };
      this.peers.set(name, p);
    }
    this.due(p, now);
    p.relayCapable = relayCapable;
    p.punchFirst = new Set((opts.punchFirst ?? []).map((c) => key(c.ip, c.port)));
    const want = new Set<string>();
    let added = false;
    for (const c of candidates.slice(0, MAX_CANDIDATES)) {
      const k = key(c.ip, c.port);
      want.add(k);
      const had = p.candidates.get(k);
      if (had) {
        had.published = true;
        had.wasPublished = true;
      } else {
        const open = !p.punchFirst.has(k) || this.d.isLocal(c.ip);
        p.candidates.set(k, { ip: c.ip, port: c.port, published: true, wasPublished: true, lastSeen: -Infinity, rtt: NaN, punchedAt: null, open });
        added = true;
      }
    }
    let dropped = false;
    for (const [k, c] of p.candidates) {
      if (want.has(k)) continue;
      if (c.published) dropped = true;
      // An address the peer no longer publishes stays only while it still answers (roamed to).
      if (now - c.lastSeen < ALIVE_MS) c.published = false;
      else p.candidates.delete(k);
    }
    // The peer moved (an address it published is gone): probe at once, also when the address it
    // publishes now was a candidate already (its packets came from there first).
    if (added || dropped) this.discover(p, now);
    if (p.current === null) {
      // Until something answers, aim at the most likely address: one on our own network first.
      const first = [...p.candidates.values()].sort((a, b) => Number(this.d.isLocal(b.ip)) - Number(this.d.isLocal(a.ip)))[0];
      if (first) p.current = { ip: first.ip, port: first.port };
    }
  }

  removePeer(name: string): void {
    this.peers.delete(name);
  }

  /** Our own addresses changed (or we woke up): probe everything fast again. */
  localChanged(): void {
    const now = this.d.now();
    for (const p of this.peers.values()) this.discover(p, now);
  }

  private discover(p: PeerPaths, now: number): void {
    p.discoverUntil = now + DISCOVER_MS;
    p.lastProbe = -Infinity; // probe the new state of things at once
    this.due(p, now);
  }

  /** A pong came back from `from` (a probe's answer or a ping's) after rttMs. */
  onPong(name: string, from: Endpoint, rttMs: number): void {
    const p = this.peers.get(name);
    if (!p) return;
    const now = this.d.now();
    this.due(p, now);
    if (sameEndpoint(from, p.current)) p.currentSeen = now;
    if (from.via !== undefined) return;
    const c = this.evidence(p, from, now);
    c.rtt = Number.isNaN(c.rtt) ? rttMs : c.rtt * 0.7 + rttMs * 0.3;
  }

  /** A valid handshake message from the peer came from `from`. */
  onHandshake(name: string, from: Endpoint): void {
    const p = this.peers.get(name);
    if (!p) return;
    const now = this.d.now();
    this.due(p, now);
    if (from.via === undefined) this.evidence(p, from, now);
    if (p.kind === 'none' || now - p.currentSeen > PATH_DEAD_MS) this.setCurrent(p, from, now);
    if (sameEndpoint(from, p.current)) p.currentSeen = now;
  }

  /** The data plane moved the peer to `to` (its newest authenticated packet came from there). */
  onRoam(name: string, to: Endpoint): void {
    const p = this.peers.get(name);
    if (!p) return;
    const now = this.d.now();
    this.due(p, now);
    if (to.via === undefined) this.evidence(p, to, now);
    this.setCurrent(p, to, now);
    p.currentSeen = now;
  }

  private evidence(p: PeerPaths, from: Endpoint, now: number): Candidate {
    const k = key(from.ip, from.port);
    let c = p.candidates.get(k);
    if (!c) {
      c = { ip: from.ip, port: from.port, published: false, wasPublished: false, lastSeen: now, rtt: NaN, punchedAt: null, open: true };
      p.candidates.set(k, c);
    }
    c.lastSeen = now;
    c.open = true; // its packets reach us: our NAT has its mapping, its NAT ours
    return c;
  }

  private setCurrent(p: PeerPaths, to: Endpoint, now: number): boolean {
    const kind: PathKind = to.via !== undefined ? 'relayed' : 'direct';
    if (sameEndpoint(p.current, to) && p.kind === kind) return false;
    p.current = to;
    p.kind = kind;
    p.since = now;
    if (p.relayCapable) this.relayList = null;
    return true;
  }

  /**
   * Probes due now and endpoint moves to carry out. `reachable(name)`: we have a session with it.
   * `only`: peers the control plane just added or changed, due now whatever their timers say
   * (the others are looked at only when their own due time has come).
   */
  tick(hasSession: (name: string) => boolean, only?: Iterable<string>): PathActions {
    const now = this.d.now();
    const out: PathActions = { probes: [], punches: [], moves: [] };
    if (only) {
      for (const n of only) {
        const p = this.peers.get(n);
        if (p) p.dueAt = now;
      }
    }
    this.relayList = null;
    const natted = this.d.behindNat?.() ?? true;
    if (natted !== this.natted) {
      this.natted = natted;
      for (const p of this.peers.values()) p.dueAt = now;
    }
    // A relay came or went: every peer looks again (one waiting for a relay has no timer of its
    // own), in this same tick. Relays do not chain, so a second pass settles it.
    for (let pass = 0; pass < 2; pass++) {
      let relaysChanged = false;
      for (const [name, p] of this.peers) {
        if (p.dueAt > now && (p.hadSession || !hasSession(name))) continue;
        p.dueAt = Infinity;
        this.tickPeer(name, p, now, hasSession(name), out);
        const relaying = this.canRelay(p, now);
        if (relaying !== p.relaying) {
          p.relaying = relaying;
          relaysChanged = true;
        }
      }
      if (!relaysChanged) break;
      for (const p of this.peers.values()) p.dueAt = now;
    }
    return out;
  }

  /** Time points at which `p`'s state changes by time alone (after `now`), as its next due time. */
  private schedule(p: PeerPaths, now: number, probeEvery: number | null, ...more: number[]): void {
    let at = Infinity;
    const later = (t: number) => {
      if (t > now && t < at) at = t;
    };
    if (probeEvery !== null) later(Math.max(p.lastProbe + probeEvery, now + 1));
    later(p.currentSeen + PATH_DEAD_MS + 1);
    later(p.discoverUntil);
    for (const c of p.candidates.values()) later(c.lastSeen + ALIVE_MS);
    for (const t of more) later(t);
    p.dueAt = Math.min(p.dueAt, at);
  }

  private canRelay(p: PeerPaths, now: number): boolean {
    return p.relayCapable && p.kind === 'direct' && now - p.currentSeen <= PATH_DEAD_MS;
  }

  private tickPeer(name: string, p: PeerPaths, now: number, session: boolean, out: PathActions): void {
    p.hadSession = session;
    {
      const currentDead = now - p.currentSeen > PATH_DEAD_MS;
      const cur = p.current;
      const curDirect = cur !== null && cur.via === undefined ? p.candidates.get(key(cur.ip, cur.port)) : undefined;
      // A current path that has gone quiet is dead: forget its evidence (only a new answer revives
      // it), so it can neither win the choice now nor pull us back later, however well it ranks.
      if (currentDead && curDirect) curDirect.lastSeen = -Infinity;
      const alive = [...p.candidates.values()].filter((c) => now - c.lastSeen < ALIVE_MS);
      if (alive.length > 0) p.directLostAt = now;
      // 2. probe
      const settled = p.kind === 'direct' && !currentDead && now >= p.discoverUntil;
      const interval = settled ? PROBE_SLOW_MS : PROBE_FAST_MS;
      // Punch-first candidates open after their lead (see the header), probed on the next line.
      let opensAt = Infinity;
      const byTime = this.d.behindNat?.() ?? true;
      for (const c of p.candidates.values()) {
        if (c.open || c.punchedAt === null || !byTime) continue;
        const at = Math.max(c.punchedAt, this.publishedAt) + PUNCH_LEAD_MS;
        if (now >= at) {
          c.open = true;
          p.lastProbe = -Infinity;
        } else opensAt = Math.min(opensAt, at);
      }
      if (now - p.lastProbe >= interval) {
        // Punches need no session (they are not read), probes do.
        let sent = false;
        for (const c of p.candidates.values()) {
          if (!c.open) {
            if (!byTime) continue;
            c.punchedAt ??= now;
            opensAt = Math.min(opensAt, Math.max(c.punchedAt, this.publishedAt) + PUNCH_LEAD_MS);
            out.punches.push({ name, ip: c.ip, port: c.port });
            sent = true;
          } else if (session) {
            out.probes.push({ name, ip: c.ip, port: c.port });
            sent = true;
          }
        }
        if (sent) p.lastProbe = now;
      }
      this.schedule(p, now, session ? interval : null, opensAt);
      // 4. choose among live direct candidates
      // An address the peer published and no longer does (it moved away) comes last, whatever its
      // round trip: else the old path, alive for a while on its last evidence, would stay "best"
      // and keep us there until it died (11 s) although the new address answers.
      const best = alive.sort((a, b) => gone(a) - gone(b) || this.rank(a) - this.rank(b) || (a.rtt || 0) - (b.rtt || 0))[0];
      if (best) {
        const curAlive = curDirect !== undefined && now - curDirect.lastSeen < ALIVE_MS && !currentDead;
        // A live candidate beats the current one when it is private and the current public, or
        // when the peer has stopped publishing the current address (it moved) and publishes this
        // one. An address the peer never published (a NAT mapping it roamed to) is not "stopped".
        const better =
          curAlive &&
          best !== curDirect &&
          (this.rank(best) < this.rank(curDirect) || (curDirect.wasPublished && !curDirect.published && best.published));
        const target = !curAlive || better ? best : curDirect;
        // Also when the current endpoint itself answered first: its path is now known direct.
        if (target === best && this.setCurrent(p, { ip: best.ip, port: best.port }, now)) {
          p.currentSeen = Math.max(p.currentSeen, best.lastSeen);
          out.moves.push({ name, endpoint: p.current! });
        }
        return;
      }
      // 5. relay (when none is up yet, a relay that comes up makes every peer due: see tick())
      this.schedule(p, now, null, p.directLostAt + RELAY_AFTER_MS, p.addedAt + RELAY_AFTER_MS);
      if (p.kind === 'relayed' && !currentDead) return;
      if (now - p.directLostAt < RELAY_AFTER_MS && now - p.addedAt < RELAY_AFTER_MS) return;
      if (p.kind === 'direct' && !currentDead) return;
      const relay = this.pickRelay(name, now);
      if (relay && this.setCurrent(p, { ip: 0, port: 0, via: relay }, now)) {
        p.currentSeen = now; // give the relayed path its own PATH_DEAD_MS to prove itself
        out.moves.push({ name, endpoint: p.current! });
        this.schedule(p, now, session ? PROBE_FAST_MS : null);
      }
    }
  }

  private rank(c: Candidate): number {
    return this.d.isLocal(c.ip) ? 0 : 1;
  }

  /** A relay-capable peer with a live direct path, the fastest first (ties by name). */
  private pickRelay(exclude: string, now: number): string | undefined {
    if (this.relayList === null) {
      const list: { name: string; rtt: number }[] = [];
      for (const [name, p] of this.peers) {
        if (!this.canRelay(p, now)) continue;
        const cur = p.current!;
        const rtt = p.candidates.get(key(cur.ip, cur.port))?.rtt ?? Infinity;
        list.push({ name, rtt: Number.isNaN(rtt) ? Infinity : rtt });
      }
      this.relayList = list.sort((a, b) => a.rtt - b.rtt || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    }
    return this.relayList.find((r) => r.name !== exclude)?.name;
  }

  /**
   * Where handshake initiations for the peer go: the current path, plus every candidate while it
   * has no session; never a candidate that gets punches only (none at all: wait for it to open).
   */
  handshakeTargets(name: string, hasSession: boolean): Endpoint[] {
    const p = this.peers.get(name);
    if (!p) return [];
    const out: Endpoint[] = [];
    const closed = (e: Endpoint) => e.via === undefined && p.candidates.get(key(e.ip, e.port))?.open === false;
    if (p.current && !closed(p.current)) out.push(p.current);
    if (!hasSession || p.kind !== 'direct') {
      for (const c of p.candidates.values()) {
        if (!c.open) continue;
        const e = { ip: c.ip, port: c.port };
        if (!out.some((o) => sameEndpoint(o, e))) out.push(e);
      }
    }
    return out;
  }

  state(name: string): PathState {
    const p = this.peers.get(name);
    if (!p) return { endpoint: null, kind: 'none', scope: null, since: null };
    const now = this.d.now();
    const live = now - p.currentSeen <= PATH_DEAD_MS;
    const kind: PathKind = live ? p.kind : 'none';
    const scope: PathScope | null =
      kind === 'direct' && p.current && p.current.via === undefined ? (this.d.isLocal(p.current.ip) ? 'private' : 'public') : null;
    return { endpoint: p.current, kind, scope, since: p.since };
  }

  current(name: string): Endpoint | null {
    return this.peers.get(name)?.current ?? null;
  }
}

/**
 * `cladnet ping` and `cladnet netcheck`, the agent's side (routes on the local API). Read-only:
 * nothing here moves an endpoint, feeds the path choice or changes what we publish.
 *
 *   ping       a probe (CTRL_PROBE, stamped with our mono clock) on the peer's current path,
 *              direct or through its relay (the data plane's Outbound.diag); the peer answers the
 *              way it came, and the pong carrying our stamp is claimed here before the path
 *              choice sees it. With no session yet, a handshake is asked for and the probe is
 *              sent (again every RESEND_MS) once one is up, all within the caller's timeout.
 *   netcheck   at once and bounded by one timeout: a binding request to every configured STUN
 *              server (our mapping and its round trip) and a ping to every peer with a session
 *              (its round trip and, on a direct path, where it saw us). The observers off our own
 *              networks give the reflexive address and the NAT kind through a fresh
 *              ReflexiveTracker: one mapping for all = endpoint-independent, several = varies.
 *
 * Time and timers are injected (tests drive them); the agent supplies its parts through
 * agentDiagnosticsDeps().
 */
import { mayRelay } from '../control/cert';
import type { StunMapped, StunQueryOptions, StunServerAddress } from '../control/stun-client';
import { DIRECT } from '../dataplane/peer';
import { CladnetError } from '../errors';
import type { DiagPath, NetcheckObservation, NetcheckPeer, NetcheckReport, NetcheckStun, PingAnswer } from '../status/diag-types';
import type { StatusDocument } from '../status/types';
import { formatEndpoint, formatIpv4, parseEndpoint, parseIpv4 } from '../util/ipv4';
import type { PeerTable } from './peer-table';
import { ReflexiveTracker } from './reflexive';

/** While waiting for a session: how often to look, and how often to send the probe again once there is one. */
export const SESSION_POLL_MS = 20;
export const RESEND_MS = 250;
/** Bounds of a caller's timeout. */
export const MIN_TIMEOUT_MS = 10;
export const MAX_TIMEOUT_MS = 30_000;
export const DEFAULT_PING_TIMEOUT_MS = 1_000;
export const DEFAULT_NETCHECK_TIMEOUT_MS = 3_000;

/** A pong as the data plane reports it (engine.ts onPong). */
export interface DiagPong {
  slot: number;
  rttMs: number;
  ip: number;
  port: number;
  via: number;
  seenIp: number;
  seenPort: number;
  t0: number;
}

export interface DiagPeer {
  name: string;
  slot: number;
  overlayIp: string;
  /** Its record and certificate say it relays for others. */
  relay: boolean;
}

export interface DiagnosticsDeps {
  /** Monotonic ms on the data plane's scale (systemClock.mono): probes are stamped with it. */
  mono(): number;
  setTimer(fn: () => void, ms: number): { cancel(): void };
  /** A peer by name or overlay address. */
  peer(query: string): DiagPeer | undefined;
  peers(): DiagPeer[];
  nameOfSlot(slot: number): string | undefined;
  hasSession(name: string): boolean;
  /** Start a handshake with the peer now (no-op while one is usable or under way). */
  handshake(name: string): void;
  /** Send a probe stamped t0 on the peer's current path. */
  send(slot: number, t0: number): void;
  /** ip is on one of our own networks (a private path; its observer tells nothing of our NAT). */
  isLocal(ip: number): boolean;
  ownAddresses(): readonly string[];
  /** Configured STUN servers ("ip:port"). */
  stunServers(): readonly string[];
  stunQuery(server: StunServerAddress, opts: StunQueryOptions): Promise<StunMapped | null>;
  /** The status document (peer states, our endpoints). */
  status(): StatusDocument;
}

interface Probed {
  reply: (DiagPath & { rttMs: number }) | null;
  error: 'timeout' | 'no-session' | null;
  handshake: boolean;
  /** The pong's path, raw (for the observer rule). */
  fromIp: number;
  seen: string | null;
}

function badRequest(field: string, msg: string): CladnetError {
  return new CladnetError('ECONFIG', `${field}: ${msg}`, { field });
}

/** A timeout from the query string (ms), within MIN..MAX_TIMEOUT_MS; `dflt` when absent. */
export function timeoutParam(raw: string | null, dflt: number): number {
  if (raw === null || raw === '') return dflt;
  const n = Number(raw);
  if (!Number.isFinite(n) || n < MIN_TIMEOUT_MS || n > MAX_TIMEOUT_MS) {
    throw badRequest('timeoutMs', `${JSON.stringify(raw)} is not a number of milliseconds from ${MIN_TIMEOUT_MS} to ${MAX_TIMEOUT_MS}`);
  }
  return n;
}

export class Diagnostics {
  /** Probes in flight by "slot:t0": who waits for the pong. */
  private readonly pending = new Map<string, (p: DiagPong) => void>();
  private lastT0 = 0;

  constructor(private readonly d: DiagnosticsDeps) {}

  /** Offers a pong from the data plane: true when it answers one of our probes (then it is ours alone). */
  onPong(p: DiagPong): boolean {
    const k = `${p.slot}:${p.t0}`;
    const cb = this.pending.get(k);
    if (!cb) return false;
    this.pending.delete(k);
    cb(p);
    return true;
  }

  /** Probes in flight (tests: nothing is left behind). */
  get inFlight(): number {
    return this.pending.size;
  }

  /** `POST /v1/ping`: one probe to `query` (a name or overlay IP). Throws ENOPEER for an unknown peer. */
  async ping(query: string | null, timeoutMs = DEFAULT_PING_TIMEOUT_MS): Promise<PingAnswer> {
    if (query === null || query === '') throw badRequest('peer', 'missing (a host name or overlay address)');
    const p = this.d.peer(query);
    if (!p) throw new CladnetError('ENOPEER', `no peer named or addressed ${JSON.stringify(query)} in this network (see cladnet status)`, { field: 'peer' });
    const r = await this.probe(p, timeoutMs, true);
    return { version: 1, peer: { name: p.name, overlayIp: p.overlayIp }, reply: r.reply, error: r.error, handshake: r.handshake };
  }

  /** `POST /v1/netcheck`: fresh STUN answers and peer pings, at once, within timeoutMs. */
  async netcheck(timeoutMs = DEFAULT_NETCHECK_TIMEOUT_MS): Promise<NetcheckReport> {
    const started = this.d.mono();
    const doc = this.d.status();
    // STUN: three transmissions whose waits (rto, 2 rto, 4 rto) fit the timeout.
    const rtoMs = Math.max(5, Math.floor(timeoutMs / 7));
    const stunJobs = this.d.stunServers().map(async (server): Promise<{ s: NetcheckStun; ip: number }> => {
      const ep = parseEndpoint(server);
      if (!ep) return { s: { server, rttMs: null, mapped: null }, ip: 0 };
      const m = await this.d.stunQuery(ep, { tries: 3, rtoMs }).catch(() => null);
      return { s: { server, rttMs: m ? m.rttMs : null, mapped: m ? formatEndpoint(m.ip, m.port) : null }, ip: ep.ip };
    });
    const peers = this.d.peers().sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    const peerJobs = peers.map((p) => this.probe(p, timeoutMs, false));
    const [stun, probed] = await Promise.all([Promise.all(stunJobs), Promise.all(peerJobs)]);

    const observations: NetcheckObservation[] = [];
    const tracker = new ReflexiveTracker(() => 0, () => this.d.ownAddresses());
    for (const { s, ip } of stun) {
      if (s.mapped === null) continue;
      const m = parseEndpoint(s.mapped)!;
      observations.push({ observer: `stun ${s.server}`, kind: 'stun', observerIp: formatIpv4(ip), seen: s.mapped });
      tracker.observe(`stun:${s.server}`, ip, m.ip, m.port, Infinity);
    }
    const state = new Map(doc.peers.map((x) => [x.name, x.state]));
    const out: NetcheckPeer[] = peers.map((p, i) => {
      const r = probed[i]!;
      // (as the agent's own rule: only an observer off our networks, on a direct path, sees our public face)
      if (r.seen !== null && r.reply?.path === 'direct' && !this.d.isLocal(r.fromIp)) {
        const m = parseEndpoint(r.seen)!;
        observations.push({ observer: p.name, kind: 'peer', observerIp: formatIpv4(r.fromIp), seen: r.seen });
        tracker.observe(p.name, r.fromIp, m.ip, m.port, Infinity);
      }
      return { name: p.name, overlayIp: p.overlayIp, state: state.get(p.name) ?? 'down', relay: p.relay, reply: r.reply, error: r.error, seen: r.seen };
    });
    const view = tracker.view();
    return {
      version: 1,
      self: { name: doc.self.name, overlayIp: doc.self.overlayIp, listenPort: doc.self.listenPort, endpoints: [...doc.self.endpoints] },
      reflexive: view.reflexive,
      nat: view.nat,
      observations,
      stun: stun.map((x) => x.s),
      peers: out,
      tookMs: Math.round((this.d.mono() - started) * 10) / 10,
    };
  }

  /**
   * One probe on the peer's current path, answered or not within timeoutMs. Without a session:
   * with `handshake`, ask for one and send once it is up (again every RESEND_MS, since the data
   * plane learns of the session a moment after us); without, report 'no-session' at once.
   */
  private probe(p: DiagPeer, timeoutMs: number, handshake: boolean): Promise<Probed> {
    const d = this.d;
    const deadline = d.mono() + timeoutMs;
    const hadSession = d.hasSession(p.name);
    if (!hadSession && !handshake) return Promise.resolve({ reply: null, error: 'no-session', handshake: false, fromIp: 0, seen: null });
    return new Promise((resolve) => {
      const mine: string[] = [];
      let timer: { cancel(): void } | null = null;
      let sent = false;
      let done = false;
      const finish = (r: Probed) => {
        if (done) return;
        done = true;
        timer?.cancel();
        for (const k of mine) this.pending.delete(k);
        resolve(r);
      };
      const answered = (pong: DiagPong) => {
        const direct = pong.via === DIRECT;
        const path: DiagPath = direct
          ? { path: 'direct', endpoint: formatEndpoint(pong.ip, pong.port), scope: d.isLocal(pong.ip) ? 'private' : 'public', via: null }
          : { path: 'relayed', endpoint: null, scope: null, via: d.nameOfSlot(pong.via) ?? null };
        const seen = direct && pong.seenIp !== 0 ? formatEndpoint(pong.seenIp, pong.seenPort) : null;
        finish({ reply: { ...path, rttMs: Math.round(pong.rttMs * 1000) / 1000 }, error: null, handshake: !hadSession, fromIp: direct ? pong.ip : 0, seen });
      };
      const step = () => {
        timer = null;
        const now = d.mono();
        if (now >= deadline) {
          finish({ reply: null, error: sent ? 'timeout' : 'no-session', handshake: !hadSession, fromIp: 0, seen: null });
          return;
        }
        if (!d.hasSession(p.name)) {
          timer = d.setTimer(step, Math.min(SESSION_POLL_MS, deadline - now));
          return;
        }
        const t0 = Math.max(now, this.lastT0 + 0.001);
        this.lastT0 = t0;
        const k = `${p.slot}:${t0}`;
        mine.push(k);
        this.pending.set(k, answered);
        d.send(p.slot, t0);
        sent = true;
        timer = d.setTimer(step, hadSession ? deadline - now : Math.min(RESEND_MS, deadline - now));
      };
      if (!hadSession) d.handshake(p.name);
      step();
    });
  }
}

/** The agent's parts a Diagnostics needs (the agent passes them once it has them all). */
export interface AgentParts {
  peers: PeerTable;
  mono(): number;
  hasSession(name: string): boolean;
  handshake(name: string): void;
  send(slot: number, t0: number): void;
  isLocal(ip: number): boolean;
  ownAddresses(): readonly string[];
  stunServers: readonly string[];
  stunQuery(server: StunServerAddress, opts: StunQueryOptions): Promise<StunMapped | null>;
  status(): StatusDocument;
}

export function agentDiagnosticsDeps(a: AgentParts): DiagnosticsDeps {
  const ref = (name: string): DiagPeer | undefined => {
    const e = a.peers.get(name);
    return e && { name, slot: e.slot, overlayIp: formatIpv4(e.overlayIp), relay: mayRelay(e.record) };
  };
  return {
    mono: a.mono,
    setTimer: (fn, ms) => {
      const t = setTimeout(fn, ms);
      t.unref();
      return { cancel: () => clearTimeout(t) };
    },
    peer: (q) => {
      const ip = parseIpv4(q);
      const name = ip === null ? q : a.peers.nameOfOverlay(ip);
      return name === undefined ? undefined : ref(name);
    },
    peers: () => [...a.peers.names()].map((n) => ref(n)!),
    nameOfSlot: (slot) => a.peers.nameOfSlot(slot),
    hasSession: a.hasSession,
    handshake: a.handshake,
    send: a.send,
    isLocal: a.isLocal,
    ownAddresses: a.ownAddresses,
    stunServers: () => a.stunServers,
    stunQuery: a.stunQuery,
    status: a.status,
  };
}

/** The diagnostic routes for the status server's handler table. */
export function diagnosticsRoutes(diag: () => Diagnostics | undefined): Record<string, (q: URLSearchParams) => Promise<unknown>> {
  const need = (): Diagnostics => {
    const d = diag();
    if (!d) throw new CladnetError('ESTATUS', 'the agent is still starting', { transient: true });
    return d;
  };
  return {
    'POST /v1/ping': (q) => need().ping(q.get('peer'), timeoutParam(q.get('timeoutMs'), DEFAULT_PING_TIMEOUT_MS)),
    'POST /v1/netcheck': (q) => need().netcheck(timeoutParam(q.get('timeoutMs'), DEFAULT_NETCHECK_TIMEOUT_MS)),
  };
}

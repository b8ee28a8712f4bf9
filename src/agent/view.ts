import type { NatKind, ViewPath, ViewPeer, ViewRecord } from '../control/views';
import type { StatusDocument } from '../status/types';
import type { PathState } from './paths';
import { peerState } from './status';

/**
 * What this agent tells `cladnet dashboard` about its peers (control/views.ts), and when.
 *
 * The view is taken from the status document (state, path, RTT per peer; our reflexive address
 * and NAT kind). It is written only when it changed materially and at most once every
 * `minIntervalMs` (3 s): a peer's state or path (kind, scope, relay) changed, its RTT moved to
 * another bucket (RTT_BUCKETS_MS) by more than a little (hysteresis: RTT_MIN_MOVE_*), a peer came
 * or went, or our reflexive address or NAT kind changed. A change held back by the interval goes out at the first offer after it. The gate
 * only decides; the write is the registry's fire-and-forget put on the liveness lease.
 */

/** Upper edges of the RTT buckets, in ms: a move across one is a material change. */
export const RTT_BUCKETS_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000] as const;
export const VIEW_MIN_INTERVAL_MS = 3_000;
/** How often the agent offers its view to the gate. */
export const VIEW_OFFER_EVERY_MS = 1_000;

export function rttBucket(ms: number | null): number {
  if (ms === null) return -1;
  let i = 0;
  while (i < RTT_BUCKETS_MS.length && ms >= RTT_BUCKETS_MS[i]!) i++;
  return i;
}

/**
 * The agent's parts a view is made of: what buildStatus reads for the same fields, without the
 * rest of the status document (a view is offered every second; at 1,000 peers the whole document
 * costs a few ms, this a fraction of one).
 */
export interface ViewSources {
  now: number;
  self: string;
  network: string;
  reflexive: string | null;
  nat: NatKind;
  peers: Iterable<[string, { readonly slot: number; readonly addedAt: number; readonly endpoint: { readonly via?: string } }]>;
  /** When the last authenticated packet from the peer in `slot` came (ms; 0: never), and its RTT in seconds (NaN: none). */
  lastRx(slot: number): number;
  rttSec(slot: number): number;
  path(name: string): Pick<PathState, 'kind' | 'scope'>;
}

/** The agent's view now (the same values `cladnet status` shows; viewFromStatus gives an equal one). */
export function viewFromAgent(src: ViewSources): ViewRecord {
  const peers: Record<string, ViewPeer> = {};
  for (const [name, p] of src.peers) {
    const path = src.path(name);
    const rtt = src.rttSec(p.slot);
    peers[name] = viewPeer(
      peerState(src.lastRx(p.slot), p.addedAt, src.now),
      path.kind,
      path.scope,
      p.endpoint.via ?? null,
      Number.isNaN(rtt) ? null : rtt * 1000,
    );
  }
  return { version: 1, host: src.self, network: src.network, at: new Date(src.now).toISOString(), reflexive: src.reflexive, nat: src.nat, peers };
}

function viewPeer(state: ViewPeer['state'], kind: 'direct' | 'relayed' | 'none', scope: 'private' | 'public' | null | undefined, via: string | null, rttMs: number | null): ViewPeer {
  const path: ViewPath = kind === 'relayed' ? 'relayed' : kind === 'direct' ? (scope === 'private' ? 'private' : 'public') : 'none';
  return { state, path, ...(path === 'relayed' && via ? { via } : {}), rttMs: rttMs === null ? null : Math.round(rttMs * 100) / 100 };
}

/** The view of the status document `doc`, stamped `now` (ms since the epoch). */
export function viewFromStatus(doc: StatusDocument, now: number): ViewRecord {
  const peers: Record<string, ViewPeer> = {};
  for (const p of doc.peers) peers[p.name] = viewPeer(p.state, p.path, p.pathScope, p.via ?? null, p.rttMs);
  return {
    version: 1,
    host: doc.self.name,
    network: doc.self.network,
    at: new Date(now).toISOString(),
    reflexive: doc.self.reflexive ?? null,
    nat: doc.self.nat ?? 'unknown',
    peers,
  };
}

/** An RTT change must also be at least this large (ms, and RTT_MIN_MOVE_RATIO of the old value) to count. */
export const RTT_MIN_MOVE_MS = 0.25;
export const RTT_MIN_MOVE_RATIO = 0.25;

function rttMoved(was: number | null, now: number | null): boolean {
  if (was === null || now === null) return was !== now;
  if (rttBucket(was) === rttBucket(now)) return false;
  // Hysteresis: an RTT jittering around a bucket edge (0.95, 1.05, 0.98 ms) is no change.
  return Math.abs(now - was) >= Math.max(RTT_MIN_MOVE_MS, RTT_MIN_MOVE_RATIO * was);
}

/**
 * Whether `next` differs materially from `prev` (the last view written): everything but the time
 * and RTT moves within a bucket or smaller than the hysteresis.
 */
export function materialChange(prev: ViewRecord | null, next: ViewRecord): boolean {
  if (prev === null || prev.reflexive !== next.reflexive || prev.nat !== next.nat) return true;
  const names = Object.keys(next.peers);
  if (names.length !== Object.keys(prev.peers).length) return true;
  for (const name of names) {
    const a = prev.peers[name];
    const b = next.peers[name]!;
    if (!a || a.state !== b.state || a.path !== b.path || a.via !== b.via || rttMoved(a.rttMs, b.rttMs)) return true;
  }
  return false;
}

export interface ViewGateOptions {
  /** Milliseconds (monotonic enough for intervals). */
  now: () => number;
  /** Hands a view to be written; must not throw or wait. */
  write: (view: ViewRecord) => void;
  minIntervalMs?: number;
}

export class ViewGate {
  private last: ViewRecord | null = null;
  private lastWrite = -Infinity;
  private readonly minInterval: number;
  /** Views written, and offers held back by the interval. */
  readonly counters = { writes: 0, deferred: 0 };

  constructor(private readonly opts: ViewGateOptions) {
    this.minInterval = opts.minIntervalMs ?? VIEW_MIN_INTERVAL_MS;
  }

  /** Offers the current view; writes it when it changed materially and the interval allows. True when written. */
  offer(view: ViewRecord): boolean {
    if (!materialChange(this.last, view)) return false;
    const t = this.opts.now();
    if (t - this.lastWrite < this.minInterval) {
      this.counters.deferred++;
      return false;
    }
    this.last = view;
    this.lastWrite = t;
    this.counters.writes++;
    this.opts.write(view);
    return true;
  }
}

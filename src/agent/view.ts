import type { ViewPath, ViewPeer, ViewRecord } from '../control/views';
import type { StatusDocument } from '../status/types';

/**
 * What this agent tells `cladnet dashboard` about its peers (control/views.ts), and when.
 *
 * The view is taken from the status document (state, path, RTT per peer; our reflexive address
 * and NAT kind). It is written only when it changed materially and at most once every
 * `minIntervalMs` (3 s): a peer's state or path (kind, scope, relay) changed, its RTT moved to
 * another bucket (RTT_BUCKETS_MS), a peer came or went, or our reflexive address or NAT kind
 * changed. A change held back by the interval goes out at the first offer after it. The gate
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

function pathOf(p: StatusDocument['peers'][number]): ViewPath {
  if (p.path === 'relayed') return 'relayed';
  if (p.path === 'direct') return p.pathScope === 'private' ? 'private' : 'public';
  return 'none';
}

/** The view of the status document `doc`, stamped `now` (ms since the epoch). */
export function viewFromStatus(doc: StatusDocument, now: number): ViewRecord {
  const peers: Record<string, ViewPeer> = {};
  for (const p of doc.peers) {
    const path = pathOf(p);
    peers[p.name] = {
      state: p.state,
      path,
      ...(path === 'relayed' && p.via ? { via: p.via } : {}),
      rttMs: p.rttMs === null ? null : Math.round(p.rttMs * 100) / 100,
    };
  }
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

/** What makes two views materially different: everything but the time and the exact RTTs. */
export function viewFingerprint(v: ViewRecord): string {
  const parts = [v.reflexive ?? '-', v.nat];
  for (const name of Object.keys(v.peers).sort()) {
    const p = v.peers[name]!;
    parts.push(`${name}:${p.state}:${p.path}:${p.via ?? ''}:${rttBucket(p.rttMs)}`);
  }
  return parts.join('|');
}

export interface ViewGateOptions {
  /** Milliseconds (monotonic enough for intervals). */
  now: () => number;
  /** Hands a view to be written; must not throw or wait. */
  write: (view: ViewRecord) => void;
  minIntervalMs?: number;
}

export class ViewGate {
  private lastPrint: string | null = null;
  private lastWrite = -Infinity;
  private readonly minInterval: number;
  /** Views written, and offers held back by the interval. */
  readonly counters = { writes: 0, deferred: 0 };

  constructor(private readonly opts: ViewGateOptions) {
    this.minInterval = opts.minIntervalMs ?? VIEW_MIN_INTERVAL_MS;
  }

  /** Offers the current view; writes it when it changed materially and the interval allows. True when written. */
  offer(view: ViewRecord): boolean {
    const print = viewFingerprint(view);
    if (print === this.lastPrint) return false;
    const t = this.opts.now();
    if (t - this.lastWrite < this.minInterval) {
      this.counters.deferred++;
      return false;
    }
    this.lastPrint = print;
    this.lastWrite = t;
    this.counters.writes++;
    this.opts.write(view);
    return true;
  }
}

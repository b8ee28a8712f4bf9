/**
 * What the outside world sees of us. Every pong reports the address our ping came from as the
 * peer saw it (as STUN does), and STUN servers report the same; this keeps the fresh reports from
 * observers that are not on our own networks and derives:
 *
 *   - `reflexive`  our public address and port, when all observers agree
 *   - `nat`        'none' (observers see one of our own addresses), 'eim' (one mapping for every
 *                  destination: a hole can be punched, so the address is worth publishing), or
 *                  'varies' (a different port per destination: only a relay helps; the address
 *                  is shown but not published)
 *
 * Pure logic with an injected clock.
 */
import { formatEndpoint } from '../util/ipv4';

export type NatKind = 'none' | 'eim' | 'varies' | 'unknown';

export interface ReflexiveView {
  reflexive: string | null;
  nat: NatKind;
  /** Distinct addresses observers reported (fresh ones). */
  seen: string[];
}

/** Reports older than this are forgotten (a NAT mapping may have changed; peers re-report every 5 s). */
export const OBSERVATION_TTL_MS = 15_000;

interface Observation {
  endpoint: string;
  observerIp: number;
  at: number;
  ttl: number;
}

export class ReflexiveTracker {
  private readonly byObserver = new Map<string, Observation>();

  constructor(
    private readonly now: () => number,
    /** Our own underlay addresses ("a.b.c.d"), to tell "no NAT" from a mapping. */
    private readonly ownAddresses: () => readonly string[],
  ) {}

  /**
   * `observer` (a peer name or "stun:ip:port") at observerIp says it saw us at ip:port; the report
   * holds for ttlMs (peers re-report with every pong, every 5 s; STUN servers less often).
   * When an observer reports a new mapping, ours changed (a NAT forgot it, say): what the others
   * said before is stale, so it is dropped. Returns true when the derived view changed.
   */
  observe(observer: string, observerIp: number, ip: number, port: number, ttlMs = OBSERVATION_TTL_MS): boolean {
    if (ip === 0 || port === 0) return false;
    const before = this.key();
    const endpoint = formatEndpoint(ip, port);
    const prev = this.byObserver.get(observer);
    if (prev && prev.endpoint !== endpoint) this.byObserver.clear();
    this.byObserver.set(observer, { endpoint, observerIp, at: this.now(), ttl: ttlMs });
    return this.key() !== before;
  }

  /** Our addresses changed or we woke up: what observers told us before may be stale. */
  reset(): void {
    this.byObserver.clear();
  }

  forget(observer: string): void {
    this.byObserver.delete(observer);
  }

  view(): ReflexiveView {
    const now = this.now();
    for (const [k, o] of this.byObserver) if (now - o.at > o.ttl) this.byObserver.delete(k);
    const fresh = [...this.byObserver.values()].sort((a, b) => b.at - a.at);
    const seen = [...new Set(fresh.map((o) => o.endpoint))];
    if (seen.length === 0) return { reflexive: null, nat: 'unknown', seen };
    const own = new Set(this.ownAddresses());
    const newest = seen[0]!;
    if (seen.length === 1) {
      const ip = newest.slice(0, newest.lastIndexOf(':'));
      return { reflexive: newest, nat: own.has(ip) ? 'none' : 'eim', seen };
    }
    // Several answers: a mapping that varies by destination, unless they come from one observer
    // address (then it is the same path seen at different times: trust the newest).
    const observers = new Set(fresh.map((o) => o.observerIp));
    if (observers.size === 1) {
      const ip = newest.slice(0, newest.lastIndexOf(':'));
      return { reflexive: newest, nat: own.has(ip) ? 'none' : 'eim', seen: [newest] };
    }
    return { reflexive: newest, nat: 'varies', seen };
  }

  private key(): string {
    const v = this.view();
    return `${v.reflexive}|${v.nat}`;
  }
}

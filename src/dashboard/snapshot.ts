import type { Logger } from '../log';
import { viewKey } from '../control/keys';
import type { HostRecord } from '../control/records';
import { parseViewRecord, type NatKind, type ViewPath, type ViewRecord } from '../control/views';
import type { RawView } from '../control/watch';

/**
 * The dashboard's picture of one network, built from what etcd holds (pure: no I/O, no clock).
 *
 * Hosts are the valid members (certificate checks, registry evaluator) and the revoked ones. A
 * host is
 *   - 'revoked'     when its certificate is revoked;
 *   - 'silent'      when it has no alive key or has published no view (stopped, cut off from
 *                   etcd, or an agent that predates views);
 *   - 'unreachable' when it is alive but every peer that reports on it says it is down (a killed
 *                   or wedged agent whose alive key has not expired yet: its peers say so once
 *                   their data plane's up timeout has passed, PEER_UP_MS = 16 s);
 *   - 'up'          otherwise.
 * The link from A to B is A's view of B, but 'down' whenever A or B is not 'up' (a stopped host's
 * last view is no news). A view missing B, or saying B is connecting, gives 'connecting'.
 *
 * Views are checked (control/views.ts): one that does not parse, or is written under another
 * host's key (forged), is skipped, warned about and counted once per (key, mod revision); a view
 * of a host that is no member is ignored (counted as stray).
 */
export type HostStatus = 'up' | 'unreachable' | 'silent' | 'revoked';
export type LinkState = 'up' | 'connecting' | 'down';

export interface SnapshotHost {
  name: string;
  overlayIp: string | null;
  status: HostStatus;
  alive: boolean;
  relay: boolean;
  reflexive: string | null;
  nat: NatKind | null;
  /** When its view was written (null: none). */
  viewAt: string | null;
}

export interface SnapshotLink {
  from: string;
  to: string;
  state: LinkState;
  /** How `from` reaches `to` ('none' unless up). */
  path: ViewPath;
  via: string | null;
  rttMs: number | null;
}

export interface Snapshot {
  version: 1;
  network: string;
  /** When it was built (ISO). */
  at: string;
  etcd: { connected: boolean };
  hosts: SnapshotHost[];
  /** Every ordered pair of `hosts`, in host order (from, then to). */
  links: SnapshotLink[];
  counters: { invalidViews: number; strayViews: number };
}

export interface SnapshotInput {
  network: string;
  now: number;
  connected: boolean;
  members: ReadonlyMap<string, HostRecord>;
  alive: ReadonlySet<string>;
  revoked: readonly string[];
  views: ReadonlyMap<string, RawView>;
}

/** Parses views once per (host, mod revision); warns about and counts the bad ones once. */
export class ViewReader {
  private readonly cache = new Map<string, { modRevision: string; view: ViewRecord | null }>();
  readonly counters = { invalidViews: 0 };

  constructor(
    private readonly network: string,
    private readonly log: Logger,
  ) {}

  read(host: string, raw: RawView): ViewRecord | null {
    const hit = this.cache.get(host);
    if (hit && hit.modRevision === raw.modRevision) return hit.view;
    const parsed = parseViewRecord(raw.value, { network: this.network, host });
    if (!parsed.ok) {
      this.counters.invalidViews++;
      this.log.warn({ etcdKey: viewKey(this.network, host), modRevision: raw.modRevision, error: parsed.error }, 'skipping invalid view');
    }
    const view = parsed.ok ? parsed.value : null;
    this.cache.set(host, { modRevision: raw.modRevision, view });
    return view;
  }

  /** Forgets hosts whose view is gone. */
  prune(present: ReadonlyMap<string, unknown>): void {
    for (const name of this.cache.keys()) if (!present.has(name)) this.cache.delete(name);
  }
}

export function buildSnapshot(inp: SnapshotInput, reader: ViewReader): Snapshot {
  reader.prune(inp.views);
  const revoked = new Set(inp.revoked);
  const names = [...new Set([...inp.members.keys(), ...revoked])].sort();
  const views = new Map<string, ViewRecord>();
  let strayViews = 0;
  for (const [name, raw] of inp.views) {
    const v = reader.read(name, raw);
    if (!v) continue;
    if (!inp.members.has(name) || revoked.has(name)) {
      strayViews++;
      continue;
    }
    views.set(name, v);
  }

  // Status before peer reports: who is alive, with a view, and not revoked.
  const status = new Map<string, HostStatus>();
  for (const n of names) status.set(n, revoked.has(n) ? 'revoked' : !inp.alive.has(n) || !views.has(n) ? 'silent' : 'up');
  // Peer reports: an up host that every reporting up peer sees down is unreachable.
  for (const n of names) {
    if (status.get(n) !== 'up') continue;
    let reports = 0;
    let down = 0;
    for (const [reporter, v] of views) {
      if (reporter === n || status.get(reporter) !== 'up') continue;
      const p = v.peers[n];
      if (!p) continue;
      reports++;
      if (p.state === 'down') down++;
    }
    if (reports > 0 && down === reports) status.set(n, 'unreachable');
  }

  const hosts: SnapshotHost[] = names.map((n) => {
    const rec = inp.members.get(n);
    const v = views.get(n);
    return {
      name: n,
      overlayIp: rec?.overlayIp ?? null,
      status: status.get(n)!,
      alive: inp.alive.has(n),
      relay: rec?.relay === true,
      reflexive: v ? v.reflexive : (rec?.reflexive ?? null),
      nat: v ? v.nat : (rec?.nat ?? null),
      viewAt: v?.at ?? null,
    };
  });

  const links: SnapshotLink[] = [];
  for (const from of names) {
    for (const to of names) {
      if (from === to) continue;
      const down: SnapshotLink = { from, to, state: 'down', path: 'none', via: null, rttMs: null };
      if (status.get(from) !== 'up' || status.get(to) !== 'up') {
        links.push(down);
        continue;
      }
      const p = views.get(from)!.peers[to];
      if (!p || p.state === 'connecting') links.push({ ...down, state: 'connecting' });
      else if (p.state === 'down') links.push(down);
      else links.push({ from, to, state: 'up', path: p.path, via: p.via ?? null, rttMs: p.rttMs });
    }
  }

  return {
    version: 1,
    network: inp.network,
    at: new Date(inp.now).toISOString(),
    etcd: { connected: inp.connected },
    hosts,
    links,
    counters: { invalidViews: reader.counters.invalidViews, strayViews },
  };
}

/**
 * What each virtual agent of the swarm does with the registry's output: the agent's peer-table
 * work, without the data plane. The harness only sees `PeerConsumer`, so a newer peer pipeline
 * (a peer-table module of its own, a delta callback instead of whole snapshots) plugs in as one
 * more kind here without touching the harness.
 *
 * 'peer-table' (the default) is the agent's pipeline since issue 11: `Registry.watchChanges` hands
 * over only what changed, and each changed peer goes through the agent's own `PeerTable`
 * (src/agent/peer-table.ts) and a real PathManager, as Agent.onPeerChange does, minus the data
 * plane and the handshakes (a list of the changed peers is still built, as the agent hands it to
 * HandshakeManager.updatePeers).
 *
 * 'agent-table' (the pipeline before issue 11, kept for A/B runs) is Agent.onPeers of src/agent/agent.ts as of 2026-12-02,
 * minus what needs a data plane: for every record of every snapshot it parses the endpoints and
 * the overlay address, skips records without a usable endpoint or with our own key, declares the
 * candidates to a real PathManager (src/agent/paths.ts), updates or adds the table entry (a slot
 * from the free list), removes the peers that are gone, and builds the list the agent hands to
 * HandshakeManager.setPeers (keys decoded from base64). It does not run a HandshakeManager: that
 * would start handshakes toward 999 unreachable peers, which is data-plane work.
 *
 * Every change to the table is reported to `onEvent`; the harness timestamps them.
 */
import { mayRelay } from '../../src/control/cert';
import type { HostRecord } from '../../src/control/records';
import type { PeerChange, PeerSnapshot, Registry, WatchSource } from '../../src/control/registry';
import { PeerTable } from '../../src/agent/peer-table';
import { PathManager, type Endpoint } from '../../src/agent/paths';
import { parseEndpoint, parseIpv4 } from '../../src/util/ipv4';

export const CONSUMER_KINDS = ['peer-table', 'agent-table'] as const;
export type ConsumerKind = (typeof CONSUMER_KINDS)[number];

export type PeerEventKind = 'added' | 'updated' | 'removed';

export interface PeerConsumer {
  /** Starts the registry's watch with this consumer behind it; resolves as Registry.watch does. */
  attach(registry: Registry): Promise<WatchSource>;
  /** The peer table now: host name -> the record it holds. */
  table(): ReadonlyMap<string, HostRecord>;
}

export interface ConsumerOptions {
  /** Our own public key (base64): a peer claiming it is skipped, as the agent does. */
  readonly publicKey: string;
  /** Called for every change of the table (record is null for 'removed'). */
  readonly onEvent: (kind: PeerEventKind, name: string, record: HostRecord | null) => void;
  readonly now?: () => number;
}

export function createConsumer(kind: ConsumerKind, opts: ConsumerOptions): PeerConsumer {
  switch (kind) {
    case 'peer-table':
      return new PeerTableConsumer(opts);
    case 'agent-table':
      return new AgentTableConsumer(opts);
  }
}

interface Entry {
  slot: number;
  record: HostRecord;
  overlayIp: number;
  endpoint: Endpoint;
}

/** Handed to HandshakeManager.setPeers by the agent; kept so the work is not optimised away. */
export interface HandshakePeer {
  readonly name: string;
  readonly publicKey: Uint8Array;
  readonly ip: number;
  readonly port: number;
}

class AgentTableConsumer implements PeerConsumer {
  private readonly peers = new Map<string, Entry>();
  private readonly paths: PathManager;
  private readonly freeSlots: number[] = [];
  private nextSlot = 0;
  private readonly view = new Map<string, HostRecord>();
  /** The last list the agent would have handed to its handshake manager. */
  handshakeList: readonly HandshakePeer[] = [];

  constructor(private readonly o: ConsumerOptions) {
    this.paths = new PathManager({ now: o.now ?? Date.now, isLocal: () => false });
  }

  attach(registry: Registry): Promise<WatchSource> {
    return registry.watch((snap) => this.onPeers(snap));
  }

  table(): ReadonlyMap<string, HostRecord> {
    return this.view;
  }

  private onPeers(snap: PeerSnapshot): void {
    const seen = new Set<string>();
    for (const [name, rec] of snap) {
      const cands = rec.endpoints.map(parseEndpoint).filter((e) => e !== null);
      const ep = cands[0];
      const overlay = parseIpv4(rec.overlayIp);
      if (!ep || overlay === null) continue;
      if (rec.publicKey === this.o.publicKey) continue;
      seen.add(name);
      this.paths.setPeer(name, cands, mayRelay(rec));
      const endpoint = this.paths.current(name) ?? { ip: ep.ip, port: ep.port };
      const old = this.peers.get(name);
      if (old) {
        const changed = old.record !== rec && (old.record.epoch !== rec.epoch || old.record.session !== rec.session);
        old.record = rec;
        old.overlayIp = overlay;
        if (changed) {
          this.view.set(name, rec);
          this.o.onEvent('updated', name, rec);
        }
        continue;
      }
      const slot = this.freeSlots.pop() ?? this.nextSlot++;
      this.peers.set(name, { slot, record: rec, overlayIp: overlay, endpoint });
      this.view.set(name, rec);
      this.o.onEvent('added', name, rec);
    }
    for (const [name, p] of this.peers) {
      if (seen.has(name)) continue;
      this.peers.delete(name);
      this.paths.removePeer(name);
      this.freeSlots.push(p.slot);
      this.view.delete(name);
      this.o.onEvent('removed', name, null);
    }
    this.handshakeList = [...this.peers.entries()].map(([name, p]) => ({
      name,
      publicKey: new Uint8Array(Buffer.from(p.record.publicKey, 'base64')),
      ip: p.endpoint.ip,
      port: p.endpoint.port,
    }));
  }
}

class PeerTableConsumer implements PeerConsumer {
  private readonly peers: PeerTable;
  private readonly paths: PathManager;
  private readonly view = new Map<string, HostRecord>();
  /** The last list the agent would have handed to HandshakeManager.updatePeers. */
  handshakeList: readonly HandshakePeer[] = [];

  constructor(private readonly o: ConsumerOptions) {
    this.peers = new PeerTable({ maxPeers: 1 << 16, resetSlot: () => undefined, ownKey: o.publicKey, now: o.now });
    this.paths = new PathManager({ now: o.now ?? Date.now, isLocal: () => false });
  }

  attach(registry: Registry): Promise<WatchSource> {
    return registry.watchChanges((c) => this.onChange(c));
  }

  table(): ReadonlyMap<string, HostRecord> {
    return this.view;
  }

  private onChange(c: PeerChange): void {
    const upserted: HandshakePeer[] = [];
    for (const m of [c.added, c.changed]) {
      for (const [name, rec] of m) {
        if (this.peers.usable(rec) !== null) {
          this.remove(name);
          continue;
        }
        const cands = rec.endpoints.map(parseEndpoint).filter((e) => e !== null);
        this.paths.setPeer(name, cands, mayRelay(rec));
        const endpoint = this.paths.current(name) ?? { ip: cands[0]!.ip, port: cands[0]!.port };
        const { added } = this.peers.upsert(name, rec, endpoint);
        this.view.set(name, rec);
        this.o.onEvent(added ? 'added' : 'updated', name, rec);
        upserted.push({ name, publicKey: new Uint8Array(Buffer.from(rec.publicKey, 'base64')), ip: endpoint.ip, port: endpoint.port });
      }
    }
    for (const name of c.removed) this.remove(name);
    this.handshakeList = upserted;
  }

  private remove(name: string): void {
    if (!this.peers.remove(name)) return;
    this.paths.removePeer(name);
    this.view.delete(name);
    this.o.onEvent('removed', name, null);
  }
}

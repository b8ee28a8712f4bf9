import { hostIp6Text } from '../control/overlay6';
import type { Registry } from '../control/registry';
import { PEER_UP_MS } from '../dataplane/peer';
import {
  P_LAST_ROAM,
  P_LAST_RX,
  P_RTT,
  P_RX_BYTES,
  P_RX_PKTS,
  P_TX_BYTES,
  P_TX_PKTS,
  T_HS_COOKIES,
  T_HS_PASSED,
  T_RELAY_BYTES,
  T_RELAY_PKTS,
  T_RX_BYTES,
  T_RX_PKTS,
  T_TX_BYTES,
  T_TX_PKTS,
  type DataplaneStats,
} from '../dataplane/stats';
import type { StatusDocument, StatusPeer, StatusPolicy } from '../status/types';
import type { HandshakeManager } from './handshakes';
import { describeEndpoint, type PathManager } from './paths';
import type { PeerTable } from './peer-table';

/**
 * The status document (DESIGN.md section 3, src/status/types.ts) built from copies of the agent's
 * parts: the peer table, the data plane's counters, handshakes, paths and the registry. Nothing
 * here keeps state or changes anything.
 */

/** A peer without any packet for this long after it was added counts as 'down', not 'connecting'. */
const CONNECTING_MS = 30_000;

export interface StatusSources {
  now: number;
  self: StatusDocument['self'];
  stats: DataplaneStats;
  peers: PeerTable;
  hs?: HandshakeManager;
  paths: PathManager;
  registry?: Registry;
  /** The etcd link's state (EtcdLink.stats), when there is one. */
  link?: { link: 'unknown' | 'up' | 'down'; downSince: string | null; outages: number };
  /** Subnet routes: which peer serves which prefix, and advertised routes refused (./subnets.ts). */
  subnets?: StatusDocument['subnets'];
  /** The network policy's state and counters (src/agent/policy.ts). */
  policy?: StatusPolicy;
  /** The network's IPv6 overlay prefix (src/control/overlay6.ts): peers' IPv6 addresses are shown. */
  prefix6?: Uint8Array;
}

/** A peer's state from when its last authenticated packet came (0: never) and when it was added. */
/** This process's resident memory and CPU time (user + system, every thread), for status and metrics. */
export function processUsage(): { residentBytes: number; cpuSeconds: number } {
  const cpu = process.cpuUsage();
  return { residentBytes: process.memoryUsage.rss(), cpuSeconds: (cpu.user + cpu.system) / 1e6 };
}

export function peerState(lastRx: number, addedAt: number, now: number): StatusPeer['state'] {
  return lastRx > 0 && now - lastRx < PEER_UP_MS ? 'up' : lastRx === 0 && now - addedAt < CONNECTING_MS ? 'connecting' : 'down';
}

export function buildStatus(src: StatusSources): StatusDocument {
  const { stats, now, hs, paths, registry } = src;
  const peers: StatusPeer[] = [...src.peers.entries()]
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([name, p]) => {
      const lastRx = stats.peer(p.slot, P_LAST_RX);
      const rtt = stats.peer(p.slot, P_RTT);
      const lastRoam = stats.peer(p.slot, P_LAST_ROAM);
      const hsAt = hs?.lastHandshake(name) ?? null;
      const path = paths.state(name);
      const state = peerState(lastRx, p.addedAt, now);
      return {
        name,
        overlayIp: p.record.overlayIp,
        ...(src.prefix6 ? { overlayIp6: hostIp6Text(src.prefix6, p.record.overlayIp) ?? undefined } : {}),
        publicKey: p.record.publicKey,
        endpoint: describeEndpoint(p.endpoint),
        path: path.kind,
        pathScope: path.scope,
        via: p.endpoint.via ?? null,
        lastPathChange: path.since === null ? null : new Date(path.since).toISOString(),
        state,
        lastHandshake: hsAt === null ? null : new Date(hsAt).toISOString(),
        lastRx: lastRx > 0 ? new Date(lastRx).toISOString() : null,
        rxBytes: stats.peer(p.slot, P_RX_BYTES),
        txBytes: stats.peer(p.slot, P_TX_BYTES),
        rxPackets: stats.peer(p.slot, P_RX_PKTS),
        txPackets: stats.peer(p.slot, P_TX_PKTS),
        rttMs: Number.isNaN(rtt) ? null : Math.round(rtt * 1000) / 1000,
        lastEndpointChange: lastRoam > 0 ? new Date(lastRoam).toISOString() : null,
        etcd: registry?.etcdView(name) ?? undefined,
      };
    });
  const reg = registry?.stats();
  return {
    version: 1,
    self: src.self,
    etcd: {
      connected: registry?.connected() ?? false,
      invalidRecords: reg?.invalidRecords ?? 0,
      untrustedRecords: reg?.untrustedRecords ?? 0,
      revokedHosts: reg?.revokedHosts ?? 0,
      ...(src.link ?? {}),
      ...(reg ? { peersFrom: reg.source } : {}),
    },
    handshake: hs ? structuredClone(hs.stats) : undefined,
    peers,
    conflicts: registry?.addressConflicts() ?? [],
    ...(src.subnets ? { subnets: src.subnets } : {}),
    dataplane: {
      rxPackets: stats.totals[T_RX_PKTS]!,
      rxBytes: stats.totals[T_RX_BYTES]!,
      txPackets: stats.totals[T_TX_PKTS]!,
      txBytes: stats.totals[T_TX_BYTES]!,
      relayedPackets: stats.totals[T_RELAY_PKTS]!,
      relayedBytes: stats.totals[T_RELAY_BYTES]!,
      handshakesPassed: stats.totals[T_HS_PASSED]!,
      handshakeCookies: stats.totals[T_HS_COOKIES]!,
      offloads: stats.offloadCounts(),
      drops: stats.dropCounts(),
    },
    policy: src.policy,
  };
}

/**
 * The status document as Prometheus metrics: the text exposition format, version 0.0.4
 * (https://prometheus.io/docs/instrumenting/exposition_formats/), written by hand. prom-client
 * would cost about 12 MB of RSS for what is one pass over a document the agent builds anyway.
 *
 * Naming follows Prometheus' conventions: every name starts with `cladnet_`, counters end in
 * `_total`, units are base units named in the suffix (`_seconds`, `_bytes`), every family has a
 * HELP and a TYPE line, and the families appear in a fixed order. A value the status does not
 * have (the RTT of a peer that never answered a ping, a handshake that never happened) is left out
 * rather than written as 0 or NaN. Counters restart from 0 when the agent restarts;
 * `cladnet_start_time_seconds` says when that was.
 *
 * Size: peer-labelled series are bounded by the peer count: at most 10 lines a peer (info, up,
 * path, RTT, four traffic counters, last handshake, last receive), plus about 160 lines that do
 * not grow. Measured on this machine (2 cores, Node 20; test/unit/metrics.test.ts prints it): at
 * 1,000 peers the output is 584 kB in 9,657 lines (56 kB gzipped, as --metrics-listen sends it to
 * Prometheus), one render takes 3 to 8 ms from dist/ depending on the machine's load, and
 * promtool passes it. That is about 9,700 series for each host scraped. A live agent with 999
 * peers answers GET /v1/metrics in about 20 ms, building the status included
 * (test/e2e/metrics-many-peers.test.ts).
 *
 * Pure: imports only the status types, keeps no state, reads no clock.
 */
import type { StatusDocument, StatusPeer } from './types';

/** The content type of the text format this module writes. */
export const METRICS_CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8';

type Labels = Readonly<Record<string, string>>;
type Sample = readonly [Labels, number];

/** A label value with backslash, double quote and line feed escaped, as the format requires. */
export function escapeLabelValue(v: string): string {
  if (!/[\\"\n]/.test(v)) return v; // the common case
  return v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
}

function escapeHelp(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n');
}

/** A sample value: integers as they are, others in JavaScript's shortest round-trip form (Go's ParseFloat reads both). */
function formatValue(n: number): string {
  if (Number.isNaN(n)) return 'NaN';
  if (n === Infinity) return '+Inf';
  if (n === -Infinity) return '-Inf';
  return String(n);
}

function formatLabels(labels: Labels): string {
  const keys = Object.keys(labels);
  if (keys.length === 0) return '';
  return `{${keys.map((k) => `${k}="${escapeLabelValue(labels[k]!)}"`).join(',')}}`;
}

/**
 * Writes families in order, each as HELP, TYPE and its samples, straight into one string (no
 * array of lines, no sample objects for the per-peer families: at 1,000 peers a render is
 * garbage the agent's heap must make room for).
 */
class Exposition {
  private out = '';

  constructor(
    private readonly peers: readonly StatusPeer[],
    /** Each peer's labels written out once (`{peer="h2"}`), for every per-peer family. */
    private readonly peerKeys: readonly string[],
  ) {}

  private head(name: string, type: 'gauge' | 'counter', help: string): void {
    this.out += `# HELP ${name} ${escapeHelp(help)}\n# TYPE ${name} ${type}\n`;
  }

  family(name: string, type: 'gauge' | 'counter', help: string, samples: Iterable<Sample>): void {
    this.head(name, type, help);
    for (const [labels, value] of samples) this.out += `${name}${formatLabels(labels)} ${formatValue(value)}\n`;
  }

  /** A family with one unlabelled sample. */
  one(name: string, type: 'gauge' | 'counter', help: string, value: number): void {
    this.head(name, type, help);
    this.out += `${name} ${formatValue(value)}\n`;
  }

  /** A family with one sample per peer, leaving out the peers where `value` is null; `more` adds labels after `peer`. */
  perPeer(
    name: string,
    type: 'gauge' | 'counter',
    help: string,
    value: (p: StatusPeer) => number | null,
    more?: (p: StatusPeer) => Labels,
  ): void {
    this.head(name, type, help);
    for (let i = 0; i < this.peers.length; i++) {
      const p = this.peers[i]!;
      const v = value(p);
      if (v === null) continue;
      const key = more ? `${this.peerKeys[i]!.slice(0, -1)},${formatLabels(more(p)).slice(1)}` : this.peerKeys[i]!;
      this.out += `${name}${key} ${formatValue(v)}\n`;
    }
  }

  text(): string {
    return this.out;
  }
}

/** An ISO time as Unix seconds (millisecond precision); null stays null. */
function seconds(iso: string | null | undefined): number | null {
  if (!iso) return null;
  const ms = Date.parse(iso);
  return Number.isNaN(ms) ? null : ms / 1000;
}

/** Milliseconds (to the microsecond, as the status rounds them) as seconds without float noise: 0.346 -> 0.000346. */
export function msToSeconds(ms: number): number {
  return Math.round(ms * 1000) / 1e6;
}

/** How packets reach a peer, as one label value: direct_private, direct_public, direct (scope unknown), relayed or none. */
export function pathLabel(p: Pick<StatusPeer, 'path' | 'pathScope'>): string {
  if (p.path === 'direct') return p.pathScope ? `direct_${p.pathScope}` : 'direct';
  return p.path;
}

/** Every value `pathLabel` can give, so `cladnet_peers_by_path` always has the same series. */
const PATHS = ['direct_private', 'direct_public', 'direct', 'relayed', 'none'] as const;
const STATES: readonly StatusPeer['state'][] = ['up', 'connecting', 'down'];

/** camelCase reason or event names from the status document as snake_case label values. */
export function snakeCase(s: string): string {
  return s.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
}

export function renderMetrics(doc: StatusDocument): string {
  const s = doc.self;
  const peers = doc.peers;
  const m = new Exposition(
    peers,
    peers.map((p) => formatLabels({ peer: p.name })),
  );

  // --- this host ---
  const info: Record<string, string> = {
    version: s.version ?? '',
    network: s.network,
    host: s.name,
    overlay_ip: s.overlayIp,
    interface: s.interface,
    crypto: s.crypto,
    node_version: s.nodeVersion ?? '',
  };
  m.family('cladnet_info', 'gauge', 'Always 1; the labels describe this agent (package version, network, host name, AEAD backend).', [[info, 1]]);
  const started = seconds(s.startedAt);
  if (started !== null) m.one('cladnet_start_time_seconds', 'gauge', 'When the agent started, in Unix seconds (counters restart from 0 then).', started);
  m.one('cladnet_interface_mtu_bytes', 'gauge', 'MTU of the overlay interface.', s.mtu);
  m.one('cladnet_listen_port', 'gauge', 'UDP port the agent listens on.', s.listenPort);
  m.one('cladnet_endpoints', 'gauge', 'Endpoints this host publishes to its peers.', s.endpoints.length);
  m.one('cladnet_tun_offload_enabled', 'gauge', '1 when TUN segmentation and checksum offloads are on.', s.offload ? 1 : 0);
  m.one('cladnet_relay_enabled', 'gauge', '1 when this host relays traffic for its peers.', s.relay ? 1 : 0);
  if (s.process) {
    // The names every Prometheus client library uses for its process, so stock dashboards and alerts apply.
    m.one('process_resident_memory_bytes', 'gauge', 'Resident memory of the agent process, in bytes.', s.process.residentBytes);
    m.one('process_cpu_seconds_total', 'counter', 'User and system CPU time of the agent process (all threads), in seconds.', s.process.cpuSeconds);
  }
  m.one('cladnet_dataplane_workers', 'gauge', 'Data-plane worker threads (--workers), each with a TUN queue and a UDP socket.', s.workers?.length ?? 1);
  if (s.workers) {
    const w = s.workers;
    m.family(
      'cladnet_worker_packets_total',
      'counter',
      'Packets each data-plane worker received from peers (direction rx) and sent to them (tx); their sums are the totals.',
      w.flatMap((x, k): Sample[] => [
        [{ worker: String(k), direction: 'rx' }, x.rxPackets],
        [{ worker: String(k), direction: 'tx' }, x.txPackets],
      ]),
    );
  }
  const nat: Record<string, string> = { kind: s.nat ?? 'unknown' };
  if (s.reflexive) nat['reflexive'] = s.reflexive;
  m.family(
    'cladnet_nat_info',
    'gauge',
    'Always 1; kind is what peers and STUN servers see of our NAT: none, eim (the same mapping for every peer), varies, unknown.',
    [[nat, 1]],
  );
  const localChange = seconds(s.lastLocalChange?.at);
  if (localChange !== null) {
    m.one(
      'cladnet_last_local_change_timestamp_seconds',
      'gauge',
      'When our own addresses last changed or the host woke from a suspend, in Unix seconds.',
      localChange,
    );
  }

  // --- etcd ---
  const e = doc.etcd;
  m.one('cladnet_etcd_connected', 'gauge', '1 while the registry is connected to etcd (the data plane runs either way).', e.connected ? 1 : 0);
  if (e.link !== undefined) {
    const link = e.link;
    m.family(
      'cladnet_etcd_link',
      'gauge',
      'State of the link to etcd: 1 for the current state, 0 for the others.',
      (['unknown', 'up', 'down'] as const).map((st): Sample => [{ state: st }, link === st ? 1 : 0]),
    );
  }
  if (e.outages !== undefined) m.one('cladnet_etcd_outages_total', 'counter', 'Outages of the etcd link since the agent started.', e.outages);
  const downSince = seconds(e.downSince);
  if (downSince !== null) m.one('cladnet_etcd_down_since_timestamp_seconds', 'gauge', 'While etcd is unreachable: since when, in Unix seconds.', downSince);
  m.one('cladnet_etcd_invalid_records_total', 'counter', 'Host records skipped as invalid (untrusted ones included).', e.invalidRecords);
  if (e.untrustedRecords !== undefined) {
    m.one('cladnet_etcd_untrusted_records_total', 'counter', 'Host records skipped because their certificate did not verify.', e.untrustedRecords);
  }
  if (e.revokedHosts !== undefined) m.one('cladnet_revoked_hosts', 'gauge', 'Hosts skipped now because their certificate is revoked.', e.revokedHosts);
  m.one('cladnet_address_conflicts', 'gauge', 'Overlay addresses claimed by two valid certificates (normally 0).', doc.conflicts?.length ?? 0);

  // --- peers, summed ---
  const byState = new Map<string, number>(STATES.map((st) => [st, 0]));
  const byPath = new Map<string, number>(PATHS.map((p) => [p, 0]));
  for (const p of peers) {
    byState.set(p.state, (byState.get(p.state) ?? 0) + 1);
    const path = pathLabel(p);
    byPath.set(path, (byPath.get(path) ?? 0) + 1);
  }
  m.family('cladnet_peers', 'gauge', 'Peers by state (up, connecting, down).', [...byState].map(([st, n]): Sample => [{ state: st }, n]));
  m.family(
    'cladnet_peers_by_path',
    'gauge',
    'Peers by how packets reach them now: direct_private, direct_public, direct, relayed, none.',
    [...byPath].map(([path, n]): Sample => [{ path }, n]),
  );

  // --- peers, one series each ---
  m.perPeer(
    'cladnet_peer_info',
    'gauge',
    'Always 1 for each peer; the labels give its overlay address.',
    () => 1,
    (p) => ({ overlay_ip: p.overlayIp }),
  );
  m.perPeer('cladnet_peer_up', 'gauge', '1 when the peer answered lately (state up), else 0.', (p) => (p.state === 'up' ? 1 : 0));
  m.perPeer(
    'cladnet_peer_path',
    'gauge',
    'Always 1 for each peer; path is how packets reach it now, via the relay for a relayed path.',
    () => 1,
    (p): Labels => (p.path === 'relayed' ? { path: 'relayed', via: p.via ?? '' } : { path: pathLabel(p) }),
  );
  m.perPeer(
    'cladnet_peer_rtt_seconds',
    'gauge',
    'Round-trip time to the peer from the last ping and pong (absent before the first).',
    (p) => (p.rttMs === null ? null : msToSeconds(p.rttMs)),
  );
  m.perPeer('cladnet_peer_receive_bytes_total', 'counter', 'Bytes received from the peer (decrypted).', (p) => p.rxBytes);
  m.perPeer('cladnet_peer_transmit_bytes_total', 'counter', 'Bytes sent to the peer (before encryption).', (p) => p.txBytes);
  m.perPeer('cladnet_peer_receive_packets_total', 'counter', 'Packets received from the peer.', (p) => p.rxPackets);
  m.perPeer('cladnet_peer_transmit_packets_total', 'counter', 'Packets sent to the peer.', (p) => p.txPackets);
  m.perPeer(
    'cladnet_peer_last_handshake_timestamp_seconds',
    'gauge',
    'When the newest session with the peer was made, in Unix seconds (absent before the first).',
    (p) => seconds(p.lastHandshake),
  );
  m.perPeer(
    'cladnet_peer_last_receive_timestamp_seconds',
    'gauge',
    'When the last authenticated packet from the peer arrived, in Unix seconds (absent before the first).',
    (p) => seconds(p.lastRx),
  );

  // --- data plane ---
  const d = doc.dataplane;
  m.one('cladnet_receive_bytes_total', 'counter', 'Bytes received from all peers.', d.rxBytes);
  m.one('cladnet_transmit_bytes_total', 'counter', 'Bytes sent to all peers.', d.txBytes);
  m.one('cladnet_receive_packets_total', 'counter', 'Packets received from all peers.', d.rxPackets);
  m.one('cladnet_transmit_packets_total', 'counter', 'Packets sent to all peers.', d.txPackets);
  m.one('cladnet_relayed_packets_total', 'counter', 'Datagrams this host passed on between two other peers, as a relay.', d.relayedPackets ?? 0);
  m.one('cladnet_relayed_bytes_total', 'counter', 'Bytes of the datagrams this host passed on as a relay.', d.relayedBytes ?? 0);
  m.family(
    'cladnet_packet_drops_total',
    'counter',
    'Packets the data plane dropped, by reason (src/dataplane/stats.ts lists them).',
    Object.entries(d.drops).map(([reason, n]): Sample => [{ reason: snakeCase(reason) }, n]),
  );
  m.one(
    'cladnet_dataplane_handshakes_passed_total',
    'counter',
    'Handshake messages and STUN answers the data plane passed to the control thread (within the flood limits).',
    d.handshakesPassed ?? 0,
  );
  m.one('cladnet_dataplane_cookie_replies_total', 'counter', 'Cookie replies the data plane sent to initiations over its budget.', d.handshakeCookies ?? 0);
  const o = d.offloads;
  if (o) {
    m.one('cladnet_udp_gso_enabled', 'gauge', '1 while UDP GSO is on (it turns itself off when the kernel keeps refusing it).', o.udpGso ? 1 : 0);
    m.one('cladnet_udp_gso_messages_total', 'counter', 'UDP GSO messages sent.', o.gsoMessages);
    m.one('cladnet_udp_gso_datagrams_total', 'counter', 'Datagrams carried by UDP GSO messages.', o.gsoDatagrams);
    m.one('cladnet_udp_gso_refused_total', 'counter', 'UDP GSO runs the kernel refused.', o.gsoRefused);
    m.one('cladnet_udp_gro_messages_total', 'counter', 'UDP GRO buffers received that held more than one datagram.', o.groMessages);
    m.one('cladnet_udp_gro_datagrams_total', 'counter', 'Datagrams in those UDP GRO buffers.', o.groDatagrams);
    m.one('cladnet_tun_super_packets_total', 'counter', 'Coalesced super-packets written to the TUN.', o.tunSuperPackets);
    m.one('cladnet_tun_coalesced_segments_total', 'counter', 'Segments held by those super-packets.', o.tunCoalesced);
  }

  // --- handshakes ---
  const h = doc.handshake;
  if (h) {
    const events: [string, number][] = [
      ['initiation_sent', h.initiationsSent],
      ['response_sent', h.responsesSent],
      ['completed', h.completed],
      ['cookie_sent', h.cookiesSent],
      ['rekey', h.rekeys],
    ];
    m.family('cladnet_handshakes_total', 'counter', 'Handshake events on the control thread, by event.', events.map(([event, n]): Sample => [{ event }, n]));
    m.family(
      'cladnet_handshake_refusals_total',
      'counter',
      'Handshake messages the control thread refused, by reason.',
      Object.entries(h.drops).map(([reason, n]): Sample => [{ reason: snakeCase(reason) }, n]),
    );
  }
  return m.text();
}

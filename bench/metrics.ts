/**
 * The metrics of a round, how they read, and which way is better. `ratio`: a cladnet / anchor
 * ratio is computed for it (counts such as drops are shown side by side instead: zero divides badly).
 *
 * Socket drops are the kernel's UDP counters of both hosts' namespaces (/proc/net/snmp, read just
 * before and just after the test): InErrors (which includes RcvbufErrors, a full receive buffer)
 * plus SndbufErrors (a full send buffer). In the TCP tests the tunnel's sockets are the only UDP
 * sockets there, so these are datagrams the tunnel lost in the kernel; in the UDP test iperf3's own
 * receiving socket counts too.
 */
export const METRICS = [
  { key: 'tcp1Mbps', label: 'TCP, 1 stream', unit: 'Mbit/s', better: 'higher', ratio: true },
  { key: 'tcp1Retrans', label: '  retransmits (iperf3)', unit: 'segments', better: 'lower', ratio: false },
  { key: 'tcp1Drops', label: '  UDP socket drops, both hosts', unit: 'datagrams', better: 'lower', ratio: false },
  { key: 'tcp4Mbps', label: 'TCP, 4 streams', unit: 'Mbit/s', better: 'higher', ratio: true },
  { key: 'tcp4Retrans', label: '  retransmits (iperf3)', unit: 'segments', better: 'lower', ratio: false },
  { key: 'tcp4Drops', label: '  UDP socket drops, both hosts', unit: 'datagrams', better: 'lower', ratio: false },
  { key: 'udpKpps', label: 'UDP 1400 B packets received', unit: 'kpps', better: 'higher', ratio: true },
  { key: 'udpLossPct', label: '  loss (sender unlimited)', unit: '%', better: 'lower', ratio: false },
  { key: 'udpDrops', label: '  UDP socket drops (iperf3 too)', unit: 'datagrams', better: 'lower', ratio: false },
  { key: 'rttP50Ms', label: 'ping RTT p50', unit: 'ms', better: 'lower', ratio: true },
  { key: 'rttP99Ms', label: 'ping RTT p99', unit: 'ms', better: 'lower', ratio: true },
  { key: 'cpuSPerGb', label: 'tunnel CPU per GB (TCP 1 stream)', unit: 's/GB', better: 'lower', ratio: true },
  { key: 'rssMiB', label: 'tunnel RSS idle, one peer, per process', unit: 'MiB', better: 'lower', ratio: true },
] as const;

/** Units of metrics that count things: medians kept whole (never rounded to 4 digits), printed whole. */
export const COUNT_UNITS: readonly string[] = ['segments', 'datagrams'];

export type MetricKey = (typeof METRICS)[number]['key'];
export type Metrics = Record<MetricKey, number | null>;

export function emptyMetrics(): Metrics {
  return Object.fromEntries(METRICS.map((m) => [m.key, null])) as Metrics;
}

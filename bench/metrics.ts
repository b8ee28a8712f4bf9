/** The metrics of a round, how they read, and which way is better. */
export const METRICS = [
  { key: 'tcp1Gbps', label: 'TCP, 1 stream', unit: 'Gbit/s', better: 'higher', ratio: true },
  { key: 'tcp4Gbps', label: 'TCP, 4 streams', unit: 'Gbit/s', better: 'higher', ratio: true },
  { key: 'udpKpps', label: 'UDP 1400 B packets received', unit: 'kpps', better: 'higher', ratio: true },
  { key: 'udpLossPct', label: 'UDP loss (sender unlimited)', unit: '%', better: 'lower', ratio: false },
  { key: 'rttP50Ms', label: 'ping RTT p50', unit: 'ms', better: 'lower', ratio: true },
  { key: 'rttP99Ms', label: 'ping RTT p99', unit: 'ms', better: 'lower', ratio: true },
  { key: 'cpuSPerGb', label: 'tunnel CPU per GB (TCP 1 stream)', unit: 's/GB', better: 'lower', ratio: true },
  { key: 'rssMiB', label: 'tunnel RSS idle, per process', unit: 'MiB', better: 'lower', ratio: true },
] as const;

export type MetricKey = (typeof METRICS)[number]['key'];
export type Metrics = Record<MetricKey, number | null>;

export function emptyMetrics(): Metrics {
  return Object.fromEntries(METRICS.map((m) => [m.key, null])) as Metrics;
}

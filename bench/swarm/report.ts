/**
 * The swarm bench's table, its targets (issue 11, for N = 1000) and the growth of CPU per change.
 */
import type { RunResult } from './run';

export interface Target {
  readonly key: string;
  readonly label: string;
  readonly limit: number;
  readonly unit: string;
  /** The value a run measured, or null when it did not measure it. */
  readonly value: (r: RunResult) => number | null;
}

/** The issue's targets at N = 1000 (lower is better for all of them). */
export const TARGETS: readonly Target[] = [
  { key: 'coldStartMs', label: 'cold start, every agent has N-1 peers', limit: 30_000, unit: 'ms', value: (r) => r.coldStart?.ms ?? null },
  { key: 'oneChangeP50Ms', label: 'one change p50', limit: 50, unit: 'ms', value: (r) => r.oneChange?.p50Ms ?? null },
  { key: 'oneChangeP99Ms', label: 'one change p99', limit: 250, unit: 'ms', value: (r) => r.oneChange?.p99Ms ?? null },
  { key: 'oneChangeMaxMs', label: 'one change max', limit: 1000, unit: 'ms', value: (r) => r.oneChange?.maxMs ?? null },
  { key: 'sustainedP99Ms', label: '10 changes/s p99', limit: 500, unit: 'ms', value: (r) => r.sustained?.p99Ms ?? null },
  { key: 'sustainedBacklog', label: '10 changes/s backlog at end', limit: 0, unit: 'deliveries', value: (r) => r.sustained?.backlogAtEnd ?? null },
];

/** The issue's bound on CPU per change from N = 250 to 1000: no faster than N^1.2. */
export const GROWTH_LIMIT = 1.2;

export interface GrowthPoint {
  readonly from: number;
  readonly to: number;
  /** log(cpu(to) / cpu(from)) / log(to / from), agents' CPU per change (one-change phase). */
  readonly exponent: number | null;
}

/** CPU all N agents of the network spend on one change (measured, or per agent x N with a sample). */
export function cpuPerChange(r: RunResult): number | null {
  const v = r.oneChange?.networkCpuSPerChange;
  return v === undefined || !(v > 0) ? null : v;
}

export function growthExponent(a: RunResult, b: RunResult): number | null {
  const ca = cpuPerChange(a);
  const cb = cpuPerChange(b);
  if (ca === null || cb === null || a.n === b.n) return null;
  return Math.log(cb / ca) / Math.log(b.n / a.n);
}

/** Exponents between consecutive N, and from 250 to 1000 when both ran. */
export function growthCurve(results: readonly RunResult[]): { steps: GrowthPoint[]; target: GrowthPoint | null } {
  const sorted = [...results].sort((x, y) => x.n - y.n);
  const steps: GrowthPoint[] = [];
  for (let i = 1; i < sorted.length; i++) steps.push({ from: sorted[i - 1]!.n, to: sorted[i]!.n, exponent: growthExponent(sorted[i - 1]!, sorted[i]!) });
  const a = sorted.find((r) => r.n === 250);
  const b = sorted.find((r) => r.n === 1000);
  return { steps, target: a && b ? { from: 250, to: 1000, exponent: growthExponent(a, b) } : null };
}

const f = (v: number | null | undefined, d = 0): string => (v === null || v === undefined || !Number.isFinite(v) ? '-' : v.toFixed(d));
const kb = (v: number | null | undefined): string => (v === null || v === undefined ? '-' : (v / 1024).toFixed(1));

/** One row per measure, one column per N. */
export function table(results: readonly RunResult[]): string {
  const rows: [string, (r: RunResult) => string][] = [
    ['cold start, all agents N-1 peers (ms)', (r) => (r.coldStart?.ms === null && r.coldStart ? `${r.coldStart.incomplete} incomplete` : f(r.coldStart?.ms))],
    ['cold start, median agent (ms)', (r) => f(r.coldStart?.p50AgentMs)],
    ['cold start CPU, agents / etcd (s)', (r) => `${f(r.coldStart?.cpu.agentsS, 1)} / ${f(r.coldStart?.cpu.etcdS, 1)}`],
    ['one change p50 / p99 / max (ms)', (r) => `${f(r.oneChange?.p50Ms, 1)} / ${f(r.oneChange?.p99Ms, 1)} / ${f(r.oneChange?.maxMs, 1)}`],
    ['  changes x deliveries', (r) => (r.oneChange ? `${r.oneChange.changes} x ${r.n - 1}` : '-')],
    ['10/s: achieved rate (changes/s)', (r) => f(r.sustained?.achievedRate, 1)],
    ['10/s: p50 / p99 / max (ms)', (r) => `${f(r.sustained?.p50Ms, 0)} / ${f(r.sustained?.p99Ms, 0)} / ${f(r.sustained?.maxMs, 0)}`],
    ['10/s: backlog at end, changes > 1 s old (deliveries)', (r) => f(r.sustained?.backlogAtEnd)],
    ['10/s: outstanding at end, all (deliveries)', (r) => f(r.sustained?.outstandingAtEnd)],
    ['10/s: drained after (ms)', (r) => (r.sustained && r.sustained.drainMs === null ? `not in time (${r.sustained.undelivered} left)` : f(r.sustained?.drainMs))],
    ['10/s: lag growth (ms per s)', (r) => f(r.sustained?.lagGrowthMsPerS, 1)],
    ['etcd revisions per change', (r) => f(r.oneChange?.revisionsPerChange, 2)],
    ['etcd sent per change, KiB (less idle)', (r) => `${kb(r.oneChange?.etcdSentBytesPerChange)} (${kb(r.oneChange?.etcdSentBytesPerChangeNet)})`],
    ['agents CPU per change (ms)', (r) => f(r.oneChange ? r.oneChange.agentsCpuSPerChange * 1000 : null, 1)],
    ['  per agent (ms) / x N (ms)', (r) => `${f(r.oneChange ? r.oneChange.perAgentCpuSPerChange * 1000 : null, 2)} / ${f(r.oneChange ? r.oneChange.networkCpuSPerChange * 1000 : null, 0)}`],
    ['etcd CPU per change (ms)', (r) => f(r.oneChange?.etcdCpuSPerChange === null || !r.oneChange ? null : r.oneChange.etcdCpuSPerChange * 1000, 2)],
    ['agents CPU per change at 10/s (ms)', (r) => f(r.sustained ? r.sustained.agentsCpuSPerChange * 1000 : null, 1)],
    ['idle CPU: all agents / per agent / etcd (% core)', (r) => `${f(r.idle?.agentsPct, 1)} / ${f(r.idle?.perAgentPct, 3)} / ${f(r.idle?.etcdPct, 2)}`],
    ['worker RSS total (MiB)', (r) => f(r.agentStats?.rssMiB)],
    ['registry warnings / registrations retried', (r) => `${f(r.agentStats?.warnings)} / ${f(r.agentStats?.registerRetries)}`],
    ['final peer sets = etcd', (r) => (r.verify ? (r.verify.ok ? 'yes' : `NO (${r.verify.mismatched} agents)`) : '-')],
  ];
  const head = ['N', ...results.map((r) => (r.agents < r.n ? `${r.n} (${r.agents} agents)` : String(r.n)))];
  const body = rows.map(([label, fn]) => [label, ...results.map(fn)]);
  const width = head.map((_, i) => Math.max(head[i]!.length, ...body.map((b) => b[i]!.length)));
  const line = (cells: readonly string[]) => '| ' + cells.map((c, i) => c.padEnd(width[i]!)).join(' | ') + ' |';
  return [line(head), '|' + width.map((w) => '-'.repeat(w + 2)).join('|') + '|', ...body.map(line)].join('\n');
}

/** Ratios measured / target at each N that ran (targets are for N = 1000). */
export function targetLines(results: readonly RunResult[]): string[] {
  const out: string[] = [];
  for (const t of TARGETS) {
    const cells = results.map((r) => {
      const v = t.value(r);
      if (v === null) return `N=${r.n}: -`;
      const ratio = t.limit === 0 ? (v === 0 ? 'met' : 'MISSED') : `${(v / t.limit).toFixed(2)}x`;
      return `N=${r.n}: ${f(v, t.unit === 'ms' ? 1 : 0)} (${ratio})`;
    });
    out.push(`${t.label}, target ${t.limit === 0 ? `0 ${t.unit}` : `< ${t.limit} ${t.unit}`}: ${cells.join(', ')}`);
  }
  return out;
}

export function growthLines(results: readonly RunResult[]): string[] {
  const { steps, target } = growthCurve(results);
  const lines = results
    .slice()
    .sort((a, b) => a.n - b.n)
    .map((r) => `  N=${r.n}: ${f(cpuPerChange(r) === null ? null : cpuPerChange(r)! * 1000, 1)} ms of CPU per change over all N agents (${f(cpuPerChange(r) === null ? null : (cpuPerChange(r)! * 1e3) / r.n, 2)} ms per agent${r.agents < r.n ? `, measured on ${r.agents} agents` : ''})`);
  for (const s of steps) lines.push(`  exponent ${s.from} -> ${s.to}: ${f(s.exponent, 2)}`);
  if (target) lines.push(`CPU per change grows as N^${f(target.exponent, 2)} from 250 to 1000; target N^${GROWTH_LIMIT}: ${target.exponent === null ? '-' : target.exponent <= GROWTH_LIMIT ? 'met' : 'MISSED'}`);
  return ['CPU per change against N (one-change phase, less idle, all N agents):', ...lines];
}

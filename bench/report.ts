/** The results document, the table printed from it, and where it is written. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { METRICS, type MetricKey, type Metrics } from './metrics';
import type { MicroResult } from './micro';
import { MICRO_SIZES } from './micro';
import type { RoundResult } from './suite';
import { ratio, sig } from './stats';
import { IMPLEMENTATIONS, type ImplName } from './tunnels/types';

export interface ImplResult {
  /** ok: every round measured everything; partial: some rounds or steps failed; missing: no round ran. */
  status: 'ok' | 'partial' | 'missing';
  /** Why it is missing or partial (first error). */
  reason?: string;
  version: string | null;
  notes: Record<string, string | number>;
  /** Median over the rounds that produced the metric. */
  median: Metrics;
  rounds: (RoundResult | { error: string })[];
}

export interface BenchResults {
  version: 1;
  kind: 'full' | 'micro';
  startedAt: string;
  finishedAt: string;
  durationS: number;
  options: { rounds: number; seconds: number; pings: number; pingIntervalMs: number; only: string[]; nebulaCipher: string };
  machine: { kernel: string; cpus: number; cpuModel: string; node: string; iperf3: string | null };
  metrics: typeof METRICS;
  implementations: Partial<Record<ImplName, ImplResult>>;
  /** cladnet / anchor for each metric (see `metrics[].better` for which way is good). */
  ratios: Record<string, Partial<Record<MetricKey, number | null>>>;
  micro: MicroResult | null;
}

export const ANCHORS = ['wireguard-go', 'nebula'] as const;

export function computeRatios(impls: BenchResults['implementations']): BenchResults['ratios'] {
  const out: BenchResults['ratios'] = {};
  const c = impls.cladnet;
  if (!c || c.status === 'missing') return out;
  for (const a of ANCHORS) {
    const r = impls[a];
    if (!r || r.status === 'missing') continue;
    const row: Partial<Record<MetricKey, number | null>> = {};
    for (const m of METRICS) {
      if (!m.ratio) continue;
      const v = ratio(c.median[m.key], r.median[m.key]);
      row[m.key] = v === null ? null : sig(v, 3);
    }
    out[`cladnet/${a}`] = row;
  }
  return out;
}

function num(x: number | null | undefined): string {
  if (x === null || x === undefined || !Number.isFinite(x)) return '-';
  const a = Math.abs(x);
  if (a >= 100) return x.toFixed(0);
  if (a >= 10) return x.toFixed(1);
  if (a >= 1) return x.toFixed(2);
  return x.toFixed(3);
}

function table(rows: string[][], rightFrom: number): string {
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => (r[c] ?? '').length)));
  return rows
    .map((r) => r.map((cell, c) => (c >= rightFrom ? cell.padStart(widths[c]!) : cell.padEnd(widths[c]!))).join('  ').trimEnd())
    .join('\n');
}

/** The readable report: a header, the metrics table, notes on missing anchors, the micro table. */
export function formatReport(res: BenchResults): string {
  const lines: string[] = [];
  const m = res.machine;
  lines.push(`cladnet bench  ${res.startedAt}  (${res.durationS.toFixed(0)} s)`);
  lines.push(`machine: ${m.cpus} x ${m.cpuModel}, kernel ${m.kernel}, node ${m.node}, iperf3 ${m.iperf3 ?? '?'}`);
  const impls = IMPLEMENTATIONS.filter((n) => res.implementations[n] !== undefined);
  if (impls.length > 0) {
    const vers = impls
      .filter((n) => n !== 'veth')
      .map((n) => `${n} ${res.implementations[n]!.version ?? '?'}`)
      .join(', ');
    lines.push(`versions: ${vers}`);
    lines.push(
      `medians of ${res.options.rounds} round(s), ${res.options.seconds} s per iperf3 test, ${res.options.pings} pings; ` +
        `↑ higher is better, ↓ lower is better; ratio = cladnet / anchor`,
    );
    lines.push('');
    const ratioCols = ANCHORS.filter((a) => res.ratios[`cladnet/${a}`] !== undefined);
    const header = ['metric', '', 'unit', ...impls, ...ratioCols.map((a) => `cladnet/${a === 'wireguard-go' ? 'wg-go' : a}`)];
    const rows: string[][] = [header];
    for (const def of METRICS) {
      const row = [def.label, def.better === 'higher' ? '↑' : '↓', def.unit];
      for (const n of impls) {
        const r = res.implementations[n]!;
        row.push(r.status === 'missing' ? 'missing' : num(r.median[def.key]));
      }
      for (const a of ratioCols) {
        const v = def.ratio ? res.ratios[`cladnet/${a}`]![def.key] : undefined;
        row.push(v === undefined || v === null ? '-' : `${v.toFixed(2)}x`);
      }
      rows.push(row);
    }
    lines.push(table(rows, 3));
    const notes = impls.filter((n) => res.implementations[n]!.status !== 'ok');
    if (notes.length) lines.push('');
    for (const n of notes) {
      const r = res.implementations[n]!;
      const why = (r.reason ?? '').replace(/\s*\n\s*/g, ' | ');
      lines.push(`${n}: ${r.status}: ${why.length > 300 ? why.slice(0, 300) + '... (full text in the JSON)' : why}`);
    }
  }
  if (res.micro) {
    const mi = res.micro;
    lines.push('');
    lines.push(`micro-benchmark (no kernel, one thread, ${mi.aead}, batches of ${mi.batch}, ${mi.statistic}): ns per packet, ↓`);
    const sizes = MICRO_SIZES.map(String);
    const rows: string[][] = [['', ...sizes.map((s) => `${s} B`)]];
    const add = (label: string, rec: Record<string, number | null>) => rows.push([label, ...sizes.map((s) => num(rec[s]))]);
    add('AEAD seal', mi.sealNs);
    add('AEAD open', mi.openNs);
    add('Outbound -> Inbound stages', mi.stagesNs);
    add('  of which not seal/open', mi.stageOverheadNs);
    lines.push(table(rows, 1));
    for (const e of mi.errors) lines.push(`micro: ${e}`);
  }
  return lines.join('\n');
}

/** ISO time made safe for file names on every system: 2025-01-02T03-04-05Z. */
export function stamp(iso: string): string {
  return iso.replace(/\.\d+Z$/, 'Z').replace(/:/g, '-');
}

/** Writes `<dir>/<stamp>.json` and `<dir>/<latest>` (each through a .tmp file); returns the first path. */
export function writeResults(dir: string, res: BenchResults): string {
  fs.mkdirSync(dir, { recursive: true });
  const text = JSON.stringify(res, null, 2) + '\n';
  const file = path.join(dir, `${stamp(res.startedAt)}${res.kind === 'micro' ? '-micro' : ''}.json`);
  const latest = path.join(dir, res.kind === 'micro' ? 'latest-micro.json' : 'latest.json');
  for (const f of [file, latest]) {
    fs.writeFileSync(`${f}.tmp`, text);
    fs.renameSync(`${f}.tmp`, f);
  }
  return file;
}

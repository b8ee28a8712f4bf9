/**
 * Ping latency, interleaved: every tunnel up at once between the same two hosts, then blocks of
 * pings over each tunnel in turn (the order rotates every block), so that each tunnel is sampled
 * across the same minutes of the machine's life.
 *
 * Why: the rounds measure one tunnel after another, minutes apart, and on this 2-vCPU VM the
 * latency of every tunnel drifts on that scale (docs/performance.md, "Interleaved latency": the
 * same tunnel's p50 moved 0.45 -> 0.72 ms and wireguard-go-new's p99 0.77 -> 11.7 ms within one
 * hour). A ratio of two such numbers measures the hour as much as the tunnels. Interleaved blocks
 * put the drift into both sides of the ratio.
 *
 * The tunnels do not share anything but the hosts: each has its own device, overlay /24 and UDP
 * port (cladnet 100.64.0.0/24 and 51820, wireguard-go-new 100.64.1.0/24 and 51821 (Debian's
 * wireguard-go would take the same address and port, so it is not in this step), nebula 100.64.2.0/24 and 4242). The ones not being
 * pinged sit idle.
 */
import { median, percentile, ratio, sig } from './stats';
import { pingRtts } from './probes';
import { checkTunnel } from './suite';
import type { BenchContext, ImplName, Implementation, Tunnel } from './tunnels/types';

/** Pings per block: 2 s at 10 ms apart, short against the drift, long enough for a p50. */
export const PAIRED_BLOCK_PINGS = 200;
/** Blocks per tunnel: 1,000 pings each, like --latency's rounds, so the pooled p99 has ten above it. */
export const DEFAULT_PAIRED_BLOCKS = 5;
/** The tunnels this step can hold up together (wireguard-go and wireguard-go-new share a device name). */
export const PAIRED_IMPLS: readonly ImplName[] = ['veth', 'cladnet', 'wireguard-go-new', 'nebula'];

export interface PairedTunnel {
  sent: number;
  received: number;
  p50: number | null;
  p90: number | null;
  p99: number | null;
  p999: number | null;
  /** Each block's p50 and p99 (nearest rank over its replies), in block order. */
  blockP50: (number | null)[];
  blockP99: (number | null)[];
}

export interface PairedLatency {
  blocks: number;
  pingsPerBlock: number;
  intervalMs: number;
  /** The order the tunnels were pinged in, per block. */
  order: ImplName[][];
  tunnels: Partial<Record<ImplName, PairedTunnel>>;
  /**
   * cladnet / anchor: p50 and p99 of the pooled replies, and the median over the blocks of the
   * blocks' p50 ratios (each a pair measured within seconds of each other).
   */
  ratios: Record<string, { p50: number | null; p99: number | null; blockP50Median: number | null }>;
  errors: string[];
}

/** Block b's order: the list rotated by b, so no tunnel is always first after a switch. */
export function blockOrder<T>(names: readonly T[], b: number): T[] {
  const k = names.length === 0 ? 0 : b % names.length;
  return [...names.slice(k), ...names.slice(0, k)];
}

function summary(blocks: readonly (readonly number[])[], sent: number): PairedTunnel {
  const all = blocks.flat().sort((a, b) => a - b);
  const per = blocks.map((x) => [...x].sort((a, b) => a - b));
  return {
    sent,
    received: all.length,
    p50: percentile(all, 50),
    p90: percentile(all, 90),
    p99: percentile(all, 99),
    p999: percentile(all, 99.9),
    blockP50: per.map((x) => percentile(x, 50)),
    blockP99: per.map((x) => percentile(x, 99)),
  };
}

/**
 * The step's numbers from each tunnel's replies per block (RTTs in ms; `sentPerBlock` pings sent
 * in each block). Pure: the unit tests feed it made-up series.
 */
export function summarisePaired(
  rtts: Partial<Record<ImplName, (readonly number[])[]>>,
  sentPerBlock: number,
  anchors: readonly ImplName[],
): Pick<PairedLatency, 'tunnels' | 'ratios'> {
  const tunnels: PairedLatency['tunnels'] = {};
  for (const [name, blocks] of Object.entries(rtts) as [ImplName, (readonly number[])[]][]) {
    tunnels[name] = summary(blocks, sentPerBlock * blocks.length);
  }
  const ratios: PairedLatency['ratios'] = {};
  const c = tunnels.cladnet;
  for (const a of anchors) {
    const t = tunnels[a];
    if (!c || !t) continue;
    const r = (x: number | null, y: number | null): number | null => {
      const v = ratio(x, y);
      return v === null ? null : sig(v, 3);
    };
    const perBlock = c.blockP50.map((x, i) => ratio(x, t.blockP50[i] ?? null));
    const m = median(perBlock);
    ratios[`cladnet/${a}`] = { p50: r(c.p50, t.p50), p99: r(c.p99, t.p99), blockP50Median: m === null ? null : sig(m, 3) };
  }
  return { tunnels, ratios };
}

/**
 * Starts `impls` together, checks each carries a ping, then `blocks` rounds of PAIRED_BLOCK_PINGS
 * pings over each in turn. Every tunnel is stopped at the end, also on failure. A tunnel that does
 * not start is left out (noted in errors); the rest go on.
 */
export async function measurePairedLatency(
  ctx: BenchContext,
  impls: readonly Implementation[],
  opts: { blocks: number; intervalMs: number; anchors: readonly ImplName[] },
): Promise<PairedLatency> {
  const up: { name: ImplName; t: Tunnel }[] = [];
  const errors: string[] = [];
  const rtts: Partial<Record<ImplName, number[][]>> = {};
  const order: ImplName[][] = [];
  try {
    for (const impl of impls) {
      let t: Tunnel;
      try {
        t = await impl.start(ctx);
      } catch (e) {
        errors.push(`${impl.name}: did not start: ${(e as Error).message}`);
        continue;
      }
      up.push({ name: impl.name, t });
      try {
        await checkTunnel(ctx, t);
      } catch (e) {
        errors.push(`${impl.name}: check failed: ${(e as Error).message}`);
        up.pop();
        await t.stop();
      }
    }
    ctx.log(`  interleaved ping: ${up.map((x) => x.name).join(', ')} up together; ${opts.blocks} blocks of ${PAIRED_BLOCK_PINGS} pings each`);
    for (let b = 0; b < opts.blocks; b++) {
      const turn = blockOrder(up, b);
      order.push(turn.map((x) => x.name));
      for (const { name, t } of turn) {
        (rtts[name] ??= []).push(await pingRtts(ctx.topo, t.a.ns, t.b.ip, PAIRED_BLOCK_PINGS, opts.intervalMs));
      }
    }
  } finally {
    for (const { t } of up.reverse()) await t.stop();
  }
  const s = summarisePaired(rtts, PAIRED_BLOCK_PINGS, opts.anchors);
  return { blocks: opts.blocks, pingsPerBlock: PAIRED_BLOCK_PINGS, intervalMs: opts.intervalMs, order, ...s, errors };
}

/** The step under the table: each tunnel's pooled percentiles and cladnet's ratios. */
export function formatPairedLatency(p: PairedLatency): string[] {
  const lines = ['', `ping, interleaved (all tunnels up together, ${p.blocks} blocks of ${p.pingsPerBlock} pings over each in turn, ${p.intervalMs} ms apart), ms, ↓:`];
  const names = Object.keys(p.tunnels) as ImplName[];
  const width = Math.max(...names.map((n) => n.length), 6);
  const f = (x: number | null): string => (x === null ? '-' : String(sig(x, 3)));
  for (const n of names) {
    const t = p.tunnels[n]!;
    lines.push(`  ${n.padEnd(width)}  p50 ${f(t.p50)}  p90 ${f(t.p90)}  p99 ${f(t.p99)}  p99.9 ${f(t.p999)}  (${t.received}/${t.sent}; block p50s ${t.blockP50.map(f).join(' ')})`);
  }
  for (const [k, r] of Object.entries(p.ratios)) {
    const x = (v: number | null): string => (v === null ? '-' : `${v.toFixed(2)}x`);
    lines.push(`  ${k}: p50 ${x(r.p50)} (median of the blocks' pairs ${x(r.blockP50Median)}), p99 ${x(r.p99)}`);
  }
  for (const e of p.errors) lines.push(`  ${e}`);
  return lines;
}

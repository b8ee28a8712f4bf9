/**
 * Issue 15's "a 100-rule policy costs under 5 % of throughput", measured in pairs.
 *
 * The cladnet-policy variant of the rounds starts its own agents minutes after plain cladnet's,
 * and this 2-core machine drifts by +-10 % between such runs: a 1 % cost cannot show there. So
 * this step keeps ONE pair of agents running and swaps only the policy between back-to-back
 * iperf3 tests: open (any -> any: the filter is off, as with no policy) and POLICY_100. Pairs
 * run in ABBA order (open first in odd pairs, the policy first in even ones) so a slow drift
 * falls on both sides alike. Each pair gives a throughput ratio and a CPU-per-byte ratio (both
 * agents' CPU); the report gives their medians and every pair.
 */
import { cpuSeconds, iperf, parseIperfTcp } from './probes';
import { median, sig } from './stats';
import { cladnet, OPEN_POLICY, POLICY_100, setPolicyApplied, type PolicyRule } from './tunnels/cladnet';
import type { BenchContext } from './tunnels/types';

/** One iperf3 test under one policy. */
export interface PolicyLeg {
  readonly mbps: number;
  /** CPU seconds of both agents per GB received. */
  readonly cpuPerGb: number;
  readonly retransmits: number | null;
}

export interface PolicyPair {
  readonly open: PolicyLeg;
  readonly policy: PolicyLeg;
  /** policy / open throughput (↑, 1.0 = free). */
  readonly mbpsRatio: number;
  /** policy / open CPU per GB (↓, 1.0 = free). */
  readonly cpuRatio: number;
}

export interface PolicyPairs {
  readonly seconds: number;
  readonly rules: number;
  readonly pairs: PolicyPair[];
  readonly medianMbpsRatio: number | null;
  readonly medianCpuRatio: number | null;
  readonly errors: string[];
}

/** Issue 15: the policy may cost at most 5 % of throughput. */
export const POLICY_BUDGET = 0.95;

/** The pair's ratios from its two legs (pure; rounded for the JSON). */
export function pairOf(open: PolicyLeg, policy: PolicyLeg): PolicyPair {
  return { open, policy, mbpsRatio: sig(policy.mbps / open.mbps, 4), cpuRatio: sig(policy.cpuPerGb / open.cpuPerGb, 4) };
}

/** The summary of measured pairs (pure). */
export function summarisePairs(seconds: number, rules: number, pairs: PolicyPair[], errors: string[]): PolicyPairs {
  const m = (v: number | null) => (v === null ? null : sig(v, 3));
  return {
    seconds,
    rules,
    pairs,
    medianMbpsRatio: m(median(pairs.map((p) => p.mbpsRatio))),
    medianCpuRatio: m(median(pairs.map((p) => p.cpuRatio))),
    errors,
  };
}

/** The lines the report prints for the step. */
export function formatPolicyPairs(p: PolicyPairs): string[] {
  const lines = ['', `policy cost, paired (one agent pair, the policy swapped between back-to-back ${p.seconds} s TCP tests, ABBA order; issue 15 asks >= ${POLICY_BUDGET.toFixed(2)}x):`];
  const r = p.medianMbpsRatio;
  lines.push(
    `  ${p.rules}-rule policy / open policy, TCP 1 stream ↑  ${r === null ? '-' : `${r.toFixed(3)}x`}` +
      (r === null ? '' : r >= POLICY_BUDGET ? '  met' : '  NOT met') +
      `   CPU per GB ↓  ${p.medianCpuRatio === null ? '-' : `${p.medianCpuRatio.toFixed(3)}x`}   (medians of ${p.pairs.length} pairs)`,
  );
  if (p.pairs.length > 0) {
    lines.push(`  per pair, Mbit/s open -> policy (ratio; CPU ratio): ` + p.pairs.map((x) => `${x.open.mbps.toFixed(0)} -> ${x.policy.mbps.toFixed(0)} (${x.mbpsRatio.toFixed(3)}; ${x.cpuRatio.toFixed(3)})`).join(', '));
  }
  for (const e of p.errors) lines.push(`  error: ${e}`);
  return lines;
}

/** Runs the step on the context's mesh bed: starts plain cladnet, measures `pairs` pairs, stops it. */
export async function measurePolicyPairs(ctx: BenchContext, opts: { pairs: number; seconds: number }): Promise<PolicyPairs> {
  const bed = ctx.bed;
  const errors: string[] = [];
  const pairs: PolicyPair[] = [];
  if (!bed) return summarisePairs(opts.seconds, POLICY_100.length, pairs, ['needs the etcd mesh bed']);
  const tunnel = await cladnet.start(ctx);
  try {
    const pids = tunnel.procs.map((p) => p.pid);
    const leg = async (rules: PolicyRule[]): Promise<PolicyLeg> => {
      await setPolicyApplied(bed, rules);
      let cpu0 = 0;
      let cpu1 = 0;
      const cpu = () => pids.reduce((n, pid) => n + cpuSeconds(pid), 0);
      const out = await iperf(ctx.topo, {
        serverNs: tunnel.b.ns,
        clientNs: tunnel.a.ns,
        serverIp: tunnel.b.ip,
        seconds: opts.seconds,
        around: { before: () => (cpu0 = cpu()), after: () => (cpu1 = cpu()) },
      });
      const r = parseIperfTcp(out);
      return { mbps: sig(r.gbps * 1e3), cpuPerGb: sig((cpu1 - cpu0) / (r.bytes / 1e9)), retransmits: r.retransmits };
    };
    for (let k = 0; k < opts.pairs; k++) {
      try {
        const openFirst = k % 2 === 0;
        const first = await leg(openFirst ? OPEN_POLICY : POLICY_100);
        const second = await leg(openFirst ? POLICY_100 : OPEN_POLICY);
        const p = openFirst ? pairOf(first, second) : pairOf(second, first);
        pairs.push(p);
        ctx.log(`  policy pair ${k + 1}/${opts.pairs}: open ${p.open.mbps} Mbit/s, 100 rules ${p.policy.mbps} Mbit/s (${p.mbpsRatio}x, CPU ${p.cpuRatio}x)`);
      } catch (e) {
        errors.push(`pair ${k + 1}: ${(e as Error).message}`);
        ctx.log(`  policy pair ${k + 1} FAILED: ${(e as Error).message}`);
      }
    }
  } finally {
    await tunnel.stop();
  }
  return summarisePairs(opts.seconds, POLICY_100.length, pairs, errors);
}

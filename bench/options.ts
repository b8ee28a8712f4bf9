import { parseArgs } from 'node:util';
import { DEFAULT_PAIRED_BLOCKS } from './latency-paired';
import { IMPLEMENTATIONS, type ImplName } from './tunnels/types';

export interface BenchOptions {
  /** Implementations to measure, in table order. */
  readonly only: readonly ImplName[];
  /** Run the kernel-free micro-benchmark. */
  readonly micro: boolean;
  /** Only the agent's idle RSS with what each MiB is (rss-probe.ts), --rounds runs. */
  readonly rss: boolean;
  /** Only the ping series of each round (no RSS, TCP or UDP tests), LATENCY_PINGS pings by default. */
  readonly latency: boolean;
  readonly rounds: number;
  /** Seconds per iperf3 test. */
  readonly seconds: number;
  readonly pings: number;
  readonly pingIntervalMs: number;
  readonly nebulaCipher: 'aes' | 'chachapoly';
  /** Back-to-back open/100-rule policy pairs on one agent pair (policy-pairs.ts); 0: none. */
  readonly policyPairs: number;
  /** Blocks of the interleaved ping step (latency-paired.ts); 0: none. */
  readonly pairedBlocks: number;
  /** The newest wireguard-go's binary (--wireguard-go-new); null: $CLADNET_BENCH_WG_NEW, else the project's anchor. */
  readonly wgNewPath: string | null;
  /** Print the results JSON on stdout instead of the table. */
  readonly json: boolean;
  readonly help: boolean;
}

/** Single rounds vary by about 10 % on a shared 2-core machine: the table shows medians of three. */
export const DEFAULT_ROUNDS = 3;

export const USAGE = `usage: npm run bench -- [options]

  --only LIST        comma-separated subset of: ${IMPLEMENTATIONS.join(', ')}, micro
                     (default: all of them)
  --micro            only the micro-benchmark (AEAD and stage path, no namespaces)
  --rss              only cladnet's idle RSS with one peer and what each MiB is (bench/rss-probe.ts:
                     --rounds fresh 2-host beds, each read 10 s after both agents are up; then
                     each dependency's cost in bare node; issue 14's target line)
  --latency          only the ping series in each round (no RSS, TCP, UDP), 1000 pings unless
                     --pings says otherwise (the p99 of 200 pings has only two replies above it)
  --rounds N         rounds over every implementation; medians are reported (default 3)
  --seconds S        length of each iperf3 test (default 8)
  --pings N          pings for the RTT percentiles, 10 ms apart (default 200)
  --policy-pairs N   with cladnet-policy: N back-to-back pairs of TCP tests on one agent pair,
                     open policy vs 100 rules, the policy's cost as a paired ratio (default 6; 0: off)
  --paired-blocks N  the interleaved ping step after the rounds: cladnet, the newest wireguard-go,
                     nebula and veth up together, N blocks of 200 pings over each in turn; its
                     ratios are the ones issue 14's ping targets are judged by (default 5; 0: off)
  --nebula-cipher C  aes (nebula's default) or chachapoly (default aes)
  --wireguard-go-new PATH
                     upstream's newest wireguard-go to measure as wireguard-go-new
                     (default: $CLADNET_BENCH_WG_NEW, else ../shared/anchors/wireguard-go/wireguard-go
                     next to the checkout; noted as missing when absent)
  --json             print the results JSON instead of the table (progress goes to stderr)
  -h, --help         this text

Results go to bench/results/<timestamp>.json and bench/results/latest.json
(latest-micro.json for --micro). Needs root: it builds network namespaces.`;

export class OptionsError extends Error {
  readonly code = 'EUSAGE';
  readonly transient = false;
  constructor(message: string) {
    super(message);
    this.name = 'OptionsError';
  }
}

function int(name: string, v: string | undefined, def: number, min: number, max: number): number {
  if (v === undefined) return def;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min || n > max) throw new OptionsError(`--${name}: "${v}" must be an integer from ${min} to ${max}`);
  return n;
}

/**
 * Pings per round with --latency: the p99 (nearest rank) of 1,000 replies has ten slower than it,
 * so it measures a tail, where the p99 of the default 200 has two slower: three stray replies
 * decide it. 10 s at 10 ms apart.
 */
export const LATENCY_PINGS = 1_000;

/** Six pairs (twelve 8 s tests, about 2.5 min): the median pair ratio is steady to about 1 %. */
export const DEFAULT_POLICY_PAIRS = 6;

/** Parses argv (without node and script); throws OptionsError naming the bad flag. */
export function parseOptions(argv: readonly string[]): BenchOptions {
  let values;
  try {
    ({ values } = parseArgs({
      args: [...argv],
      options: {
        only: { type: 'string' },
        micro: { type: 'boolean', default: false },
        rss: { type: 'boolean', default: false },
        latency: { type: 'boolean', default: false },
        rounds: { type: 'string' },
        seconds: { type: 'string' },
        pings: { type: 'string' },
        'nebula-cipher': { type: 'string' },
        'policy-pairs': { type: 'string' },
        'paired-blocks': { type: 'string' },
        'wireguard-go-new': { type: 'string' },
        json: { type: 'boolean', default: false },
        help: { type: 'boolean', short: 'h', default: false },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (e) {
    throw new OptionsError((e as Error).message);
  }
  let only: ImplName[] = [...IMPLEMENTATIONS];
  let micro = true;
  if (values.only !== undefined) {
    const names = values.only.split(',').map((s) => s.trim()).filter(Boolean);
    for (const n of names) {
      if (n !== 'micro' && !(IMPLEMENTATIONS as readonly string[]).includes(n)) {
        throw new OptionsError(`--only: unknown "${n}" (choose from ${IMPLEMENTATIONS.join(', ')}, micro)`);
      }
    }
    if (names.length === 0) throw new OptionsError('--only: empty list');
    only = IMPLEMENTATIONS.filter((n) => names.includes(n));
    micro = names.includes('micro');
  }
  if (values.micro) {
    if (values.only !== undefined) throw new OptionsError('--micro and --only do not go together (--only micro is the same as --micro)');
    only = [];
    micro = true;
  }
  const rss = values.rss ?? false;
  if (rss && (values.only !== undefined || values.micro)) throw new OptionsError('--rss goes alone (it measures only cladnet\'s idle RSS)');
  if (rss) only = [];
  const latency = values.latency ?? false;
  if (latency && (rss || values.micro)) throw new OptionsError('--latency measures tunnels: not with --rss or --micro');
  if (latency) micro = false;
  const cipher = values['nebula-cipher'] ?? 'aes';
  if (cipher !== 'aes' && cipher !== 'chachapoly') throw new OptionsError(`--nebula-cipher: "${cipher}" must be aes or chachapoly`);
  const wgNew = values['wireguard-go-new'] ?? null;
  if (wgNew !== null && wgNew.trim() === '') throw new OptionsError('--wireguard-go-new: empty path');
  return Object.freeze({
    only: Object.freeze(only),
    micro: rss ? false : micro,
    rss,
    latency,
    rounds: int('rounds', values.rounds, DEFAULT_ROUNDS, 1, 20),
    seconds: int('seconds', values.seconds, 8, 1, 120),
    pings: int('pings', values.pings, latency ? LATENCY_PINGS : 200, 10, 10_000),
    pingIntervalMs: 10,
    nebulaCipher: cipher,
    policyPairs: int('policy-pairs', values['policy-pairs'], DEFAULT_POLICY_PAIRS, 0, 50),
    pairedBlocks: int('paired-blocks', values['paired-blocks'], DEFAULT_PAIRED_BLOCKS, 0, 50),
    wgNewPath: wgNew,
    json: values.json ?? false,
    help: values.help ?? false,
  });
}

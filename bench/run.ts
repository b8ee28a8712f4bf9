/**
 * `npm run bench`: cladnet beside wireguard-go, nebula and a bare veth path, between two host
 * namespaces of the test bed, plus a kernel-free micro-benchmark. cladnet-rekey is cladnet with
 * its agents rekeying every second (the handshake's cost). See options.ts for the flags.
 *
 *   1. options     parsed and checked before anything touches the host
 *   2. preflight   root, /dev/net/tun, the commands each implementation needs (missing -> noted)
 *   3. test bed    two hosts behind the router namespace; etcd and a network when cladnet or
 *                  cladnet-rekey runs (both use the same one)
 *   4. rounds      for each round, for each implementation: start it, check it carries traffic,
 *                  measure (suite.ts), stop it
 *   5. teardown    everything the test bed made (also on Ctrl-C, via the test bed's hooks)
 *   6. micro       AEAD and stage path on this thread (micro.ts)
 *   7. report      medians, ratios, the table; JSON under bench/results/
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { startMeshBed, type MeshBed } from '../src/testbed/mesh';
import { run } from '../src/testbed/run';
import { createTopology, type Topology } from '../src/testbed/topology';
import { COUNT_UNITS, emptyMetrics, METRICS } from './metrics';
import { runMicro } from './micro';
import { OptionsError, parseOptions, USAGE, type BenchOptions } from './options';
import { ANCHORS, computeRatios, formatReport, stamp, writeResults, type BenchResults, type ImplResult } from './report';
import { measurePairedLatency, PAIRED_IMPLS, type PairedLatency } from './latency-paired';
import { measurePolicyPairs } from './policy-pairs';
import { formatProbe, probeRss } from './rss-probe';
import { checkTunnel, measureRound, type RoundResult } from './suite';
import { median, sig } from './stats';
import { cladnet, CLADNET_CIDR, CLADNET_NETWORK, cladnetPolicy, cladnetRekey, MESH_IMPLS } from './tunnels/cladnet';
import { nebula } from './tunnels/nebula';
import type { BenchContext, ImplName, Implementation } from './tunnels/types';
import { veth } from './tunnels/veth';
import { defaultWgNewPath, WG_NEW_ENV, wireguardGo, wireguardGoNew } from './tunnels/wireguard';

const REPO = path.resolve(__dirname, '..', '..');

/** Every implementation, the newest wireguard-go at the path the options (or environment) give. */
function allImplementations(opts: BenchOptions): Record<ImplName, Implementation> {
  const wgNew = opts.wgNewPath ?? process.env[WG_NEW_ENV] ?? defaultWgNewPath(REPO);
  return {
    veth,
    cladnet,
    'cladnet-rekey': cladnetRekey,
    'cladnet-policy': cladnetPolicy,
    'wireguard-go-new': wireguardGoNew(path.resolve(wgNew)),
    'wireguard-go': wireguardGo,
    nebula,
  };
}
const RESULTS_DIR = path.join(REPO, 'bench', 'results');

const t0 = Date.now();
function log(msg: string): void {
  process.stderr.write(`[bench ${((Date.now() - t0) / 1000).toFixed(0).padStart(3)}s] ${msg}\n`);
}

async function commandExists(cmd: string): Promise<boolean> {
  return (await run(['sh', '-c', 'command -v "$1"', 'sh', cmd], { timeoutMs: 5_000 })).code === 0;
}

async function machine(): Promise<BenchResults['machine']> {
  const ip = await run(['iperf3', '--version'], { timeoutMs: 5_000 });
  const m = /iperf (\S+)/.exec(ip.stdout);
  return {
    kernel: os.release(),
    cpus: os.cpus().length,
    cpuModel: os.cpus()[0]?.model.trim() ?? '?',
    node: process.version,
    iperf3: m ? m[1]! : null,
  };
}

function missing(reason: string, version: string | null = null): ImplResult {
  return { status: 'missing', reason, version, notes: {}, median: emptyMetrics(), rounds: [] };
}

/** Step 2: which of the selected implementations can run here, and why not the others. */
async function preflight(
  opts: BenchOptions,
  all: Record<ImplName, Implementation>,
  results: BenchResults['implementations'],
): Promise<Implementation[]> {
  const runnable: Implementation[] = [];
  if (opts.only.length === 0) return runnable;
  if (process.getuid?.() !== 0) throw new Error('the bench builds network namespaces: run it as root');
  const tun = fs.existsSync('/dev/net/tun');
  for (const name of opts.only) {
    const impl = all[name];
    const absent: string[] = [];
    for (const c of impl.needs) if (!(await commandExists(c))) absent.push(c);
    const unavailable = impl.available ? await impl.available() : null;
    const version = unavailable === null ? await impl.version().catch(() => null) : null;
    if (absent.length > 0) {
      results[name] = missing(`not installed: ${absent.join(', ')} (scripts/setup.sh bench installs them)`, version);
    } else if (unavailable !== null) {
      results[name] = missing(unavailable, version);
    } else if (name !== 'veth' && !tun) {
      results[name] = missing('/dev/net/tun is missing', version);
    } else {
      results[name] = { status: 'ok', version, notes: {}, median: emptyMetrics(), rounds: [] };
      runnable.push(impl);
    }
    if (results[name]!.status === 'missing') {
      const loud = ANCHORS.includes(name as (typeof ANCHORS)[number]) ? ' (!! NO RATIO AGAINST THIS ANCHOR IN THIS RUN !!)' : '';
      log(`${name}: MISSING${loud}: ${results[name]!.reason}`);
    }
  }
  return runnable;
}

const usesMeshBed = (i: Implementation): boolean => MESH_IMPLS.includes(i.name);

/**
 * Step 3: the mesh bed when cladnet or cladnet-rekey runs (etcd + network, agents started per
 * round; both share it), else a bare topology.
 */
async function testBed(runnable: Implementation[], results: BenchResults['implementations']): Promise<{ topo: Topology; bed: MeshBed | null }> {
  const spec = { hosts: 2 };
  if (runnable.some(usesMeshBed)) {
    try {
      const bed = await startMeshBed({ topology: spec, network: CLADNET_NETWORK, cidr: CLADNET_CIDR, agents: 0, waitUp: false });
      return { topo: bed.topo, bed };
    } catch (e) {
      const reason = `test bed with etcd failed: ${(e as Error).message.split('\n')[0]}`;
      for (const impl of runnable.filter(usesMeshBed)) {
        log(`${impl.name}: missing: ${reason}`);
        results[impl.name] = missing(reason, results[impl.name]?.version ?? null);
        runnable.splice(runnable.indexOf(impl), 1);
      }
    }
  }
  return { topo: await createTopology(spec), bed: null };
}

/** Step 4 for one implementation and round. */
async function oneRound(ctx: BenchContext, impl: Implementation, opts: BenchOptions): Promise<RoundResult | { error: string }> {
  let tunnel;
  try {
    tunnel = await impl.start(ctx);
  } catch (e) {
    const error = `did not start: ${(e as Error).message}`;
    log(`${impl.name}: ${error}`);
    return { error };
  }
  try {
    await checkTunnel(ctx, tunnel);
    log(`${impl.name}: up (${tunnel.a.ip} -> ${tunnel.b.ip} via ${tunnel.a.dev})`);
    const r = await measureRound(ctx, tunnel, { seconds: opts.seconds, pings: opts.pings, pingIntervalMs: opts.pingIntervalMs, latencyOnly: opts.latency });
    if (tunnel.extra) {
      try {
        r.detail['extra'] = await tunnel.extra();
      } catch (e) {
        r.errors.push(`extra: ${(e as Error).message}`);
      }
    }
    return { ...r, detail: { notes: tunnel.notes, ...r.detail } };
  } catch (e) {
    const error = `check failed: ${(e as Error).message}`;
    log(`${impl.name}: ${error}`);
    return { error };
  } finally {
    await tunnel.stop();
  }
}

function summarise(r: ImplResult): void {
  const ok = r.rounds.filter((x): x is RoundResult => !('error' in x));
  for (const m of METRICS) {
    const v = median(ok.map((x) => x.metrics[m.key]));
    r.median[m.key] = v === null ? null : COUNT_UNITS.includes(m.unit) ? Math.round(v) : sig(v);
  }
  const first = ok[0];
  if (first) r.notes = (first.detail['notes'] as Record<string, string | number>) ?? {};
  for (const x of ok) delete x.detail['notes']; // kept once, above
  // Rekeys during the 1-stream TCP test, per round (cladnet only; null where a round has none).
  const rekeys = r.rounds.map((x) => ('error' in x ? null : ((x.detail['tcp1'] as { rekeys?: { delta: Record<string, number> } } | undefined)?.rekeys?.delta ?? null)));
  if (rekeys.some((x) => x !== null)) r.tcp1Rekeys = rekeys;
  const errors = r.rounds.flatMap((x) => ('error' in x ? [x.error] : x.errors));
  if (ok.length === 0) {
    r.status = 'missing';
    r.reason = errors[0] ?? 'no round ran';
  } else if (errors.length > 0) {
    r.status = 'partial';
    r.reason = errors[0];
  }
}

async function main(): Promise<number> {
  // 1. options
  let opts: BenchOptions;
  try {
    opts = parseOptions(process.argv.slice(2));
  } catch (e) {
    if (e instanceof OptionsError) {
      process.stderr.write(`bench: ${e.message}\n\n${USAGE}\n`);
      return 2;
    }
    throw e;
  }
  if (opts.help) {
    process.stdout.write(USAGE + '\n');
    return 0;
  }
  // The test bed starts agents from dist/cli.js of this checkout (built by `npm run build`).
  process.env['CLADNET_CLI'] ??= path.join(REPO, 'dist', 'cli.js');
  if (opts.rss) return idleRss(opts);
  if (opts.only.some((n) => MESH_IMPLS.includes(n)) && !fs.existsSync(process.env['CLADNET_CLI'])) {
    throw new Error(`${process.env['CLADNET_CLI']} is missing: run npm run build first`);
  }

  const startedAt = new Date().toISOString();
  const implementations: BenchResults['implementations'] = {};
  let policyPairs: BenchResults['policyPairs'] = null;
  let pairedLatency: PairedLatency | null = null;

  // 2. preflight
  const runnable = await preflight(opts, allImplementations(opts), implementations);

  // 3.-5. test bed, rounds, teardown
  if (runnable.length > 0) {
    log(`test bed: 2 hosts${runnable.some(usesMeshBed) ? ' + etcd' : ''}`);
    const { topo, bed } = await testBed(runnable, implementations);
    try {
      const [a, b] = topo.hosts as [(typeof topo.hosts)[0], (typeof topo.hosts)[0]];
      const ctx: BenchContext = { topo, bed, a, b, nebulaCipher: opts.nebulaCipher, log };
      for (let round = 1; round <= opts.rounds; round++) {
        for (const impl of runnable) {
          log(`round ${round}/${opts.rounds}: ${impl.name}`);
          implementations[impl.name]!.rounds.push(await oneRound(ctx, impl, opts));
        }
      }
      // The interleaved ping step: cladnet and at least one anchor up together (latency-paired.ts).
      const together = runnable.filter((i) => PAIRED_IMPLS.includes(i.name));
      if (opts.pairedBlocks > 0 && together.some((i) => i.name === 'cladnet') && together.some((i) => (ANCHORS as readonly string[]).includes(i.name))) {
        log(`interleaved ping: ${together.map((i) => i.name).join(', ')}`);
        pairedLatency = await measurePairedLatency(ctx, together, { blocks: opts.pairedBlocks, intervalMs: opts.pingIntervalMs, anchors: ANCHORS });
      }
      if (opts.policyPairs > 0 && bed && runnable.some((i) => i.name === 'cladnet-policy')) {
        log(`policy pairs: ${opts.policyPairs} x (open, 100 rules) on one agent pair`);
        policyPairs = await measurePolicyPairs(ctx, { pairs: opts.policyPairs, seconds: opts.seconds });
      }
    } finally {
      log('tearing down the test bed');
      await (bed ? bed.destroy() : topo.destroy());
    }
  }
  for (const name of opts.only) {
    const r = implementations[name]!;
    if (r.rounds.length > 0) summarise(r);
  }

  // 6. micro
  let micro = null;
  if (opts.micro) {
    log('micro-benchmark');
    micro = await runMicro(log);
  }

  // 7. report
  const finishedAt = new Date().toISOString();
  const res: BenchResults = {
    version: 1,
    kind: opts.only.length === 0 ? 'micro' : 'full',
    startedAt,
    finishedAt,
    durationS: sig((Date.now() - Date.parse(startedAt)) / 1000, 3),
    options: {
      rounds: opts.rounds,
      seconds: opts.seconds,
      pings: opts.pings,
      latency: opts.latency,
      pingIntervalMs: opts.pingIntervalMs,
      only: [...opts.only, ...(opts.micro ? ['micro'] : [])],
      nebulaCipher: opts.nebulaCipher,
      policyPairs: opts.policyPairs,
      pairedBlocks: opts.pairedBlocks,
    },
    machine: await machine(),
    metrics: METRICS,
    implementations,
    ratios: computeRatios(implementations),
    policyPairs,
    pairedLatency,
    micro,
  };
  const file = writeResults(RESULTS_DIR, res);
  if (opts.json) process.stdout.write(JSON.stringify(res, null, 2) + '\n');
  else process.stdout.write('\n' + formatReport(res) + '\n\n');
  log(`results: ${path.relative(process.cwd(), file)} (and ${res.kind === 'micro' ? 'latest-micro' : 'latest'}.json)`);
  return 0;
}

/** --rss: the idle-RSS probe alone, its breakdown and the target line; JSON under bench/results/. */
async function idleRss(opts: BenchOptions): Promise<number> {
  const startedAt = new Date().toISOString();
  const o = { runs: opts.rounds, settleS: 10, env: {}, extraArgs: [], maps: false, holdS: 0, label: 'cladnet', heap: true, modules: true, log };
  const res = await probeRss(o);
  fs.mkdirSync(RESULTS_DIR, { recursive: true });
  const file = path.join(RESULTS_DIR, `${stamp(startedAt)}-rss.json`);
  fs.writeFileSync(file, JSON.stringify({ version: 1, kind: 'rss', startedAt, machine: await machine(), ...res }, null, 2) + '\n');
  fs.copyFileSync(file, path.join(RESULTS_DIR, 'latest-rss.json'));
  if (opts.json) process.stdout.write(JSON.stringify(res, null, 2) + '\n');
  else process.stdout.write('\n' + formatProbe(res, o) + '\n\n');
  log(`results: ${path.relative(process.cwd(), file)} (and latest-rss.json)`);
  return 0;
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    process.stderr.write(`bench: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    process.exitCode = 1;
  },
);

/**
 * `npm run bench:swarm`: the control plane at scale (issue 11). N virtual agents, each a real
 * Registry with its own etcd connection and the agent's peer-table work behind it
 * (bench/swarm/consumer.ts), spread over a few worker processes, against one real local etcd.
 * Only the data plane and the address source are simulated.
 *
 *   1. options    checked first (bench/swarm.ts)
 *   2. preflight  etcd binary, compiled worker, open-file limit raised for N connections
 *   3. runs       for each N: a fresh etcd and swarm (bench/swarm/run.ts, harness.ts)
 *   4. report     table, ratios against the targets, growth of CPU per change;
 *                 JSON under bench/results/swarm-<start time>.json
 *
 * Exits 1 when a run fails: an agent's final peer set differs from etcd, a cold start that never
 * completes, deliveries that never happen. Missed targets are reported, not failures.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { CONSUMER_KINDS, type ConsumerKind } from './swarm/consumer';
import { openFileLimits, raiseOpenFiles } from './swarm/procstat';
import { growthCurve, growthLines, table, targetLines, TARGETS } from './swarm/report';
import { runSwarm, type RunResult } from './swarm/run';
import { stamp } from './report';

const REPO = path.resolve(__dirname, '..', '..');
const RESULTS_DIR = path.join(REPO, 'bench', 'results');
const DEFAULT_NS = [100, 250, 500, 1000];

const USAGE = `usage: npm run bench:swarm -- [options]
  --n LIST             comma-separated swarm sizes (default ${DEFAULT_NS.join(',')}; --quick: 20)
  --quick              smoke test: N=20, 2 workers, 5 changes, 5 s at 10/s, 2 s idle
  --agents K           run K virtual agents in a network of N hosts (the others published by the
                       bench, alive on its lease); default all N
  --workers N          worker processes (default 4)
  --changes N          one-change phase: changes, each waited for by every agent
                       (default 3000/N, at least 5 and at most 40: 30 at N=100, 5 at N=1000)
  --sustain-seconds S  sustained phase length (default 180; 0 skips it)
  --rate R             sustained changes per second (default 10)
  --idle-seconds S     idle CPU window (default 10)
  --drain-seconds S    how long to wait for the sustained phase's backlog to drain (default 120)
  --cold-start-limit S how long to wait for the cold start before going on (default 1800)
  --settle-seconds S   final check: how long agents may take to agree with etcd (default 300)
  --no-cache           agents keep no peer cache file (the agent keeps one)
  --consumer KIND      what sits behind each registry: ${CONSUMER_KINDS.join(', ')} (default peer-table)
  --json               print the JSON document instead of the table
  -h, --help`;

interface SwarmBenchOptions {
  readonly ns: readonly number[];
  readonly quick: boolean;
  readonly workers: number;
  /** Virtual agents per run (at most N); null: all. */
  readonly agents: number | null;
  /** null: by N (changesFor). */
  readonly changes: number | null;
  readonly sustainSeconds: number;
  readonly rate: number;
  readonly idleSeconds: number;
  readonly drainSeconds: number;
  readonly coldStartLimitSeconds: number;
  readonly settleSeconds: number;
  readonly cache: boolean;
  readonly consumer: ConsumerKind;
  readonly json: boolean;
  readonly help: boolean;
}

class OptionsError extends Error {
  readonly code = 'EUSAGE';
}

function num(flag: string, v: string | undefined, def: number, min: number, max: number, integer = true): number {
  if (v === undefined) return def;
  const n = Number(v);
  if (!Number.isFinite(n) || (integer && !Number.isInteger(n)) || n < min || n > max) {
    throw new OptionsError(`--${flag}: "${v}" must be ${integer ? 'an integer' : 'a number'} from ${min} to ${max}`);
  }
  return n;
}

function parseSwarmOptions(argv: readonly string[]): SwarmBenchOptions {
  let values;
  try {
    ({ values } = parseArgs({
      args: [...argv],
      options: {
        n: { type: 'string' },
        quick: { type: 'boolean', default: false },
        workers: { type: 'string' },
        agents: { type: 'string' },
        changes: { type: 'string' },
        'sustain-seconds': { type: 'string' },
        rate: { type: 'string' },
        'idle-seconds': { type: 'string' },
        'drain-seconds': { type: 'string' },
        'cold-start-limit': { type: 'string' },
        'settle-seconds': { type: 'string' },
        'no-cache': { type: 'boolean', default: false },
        consumer: { type: 'string' },
        json: { type: 'boolean', default: false },
        help: { type: 'boolean', short: 'h', default: false },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (e) {
    throw new OptionsError((e as Error).message);
  }
  const quick = values.quick ?? false;
  let ns = quick ? [20] : DEFAULT_NS;
  if (values.n !== undefined) {
    const list = values.n.split(',').map((s) => s.trim()).filter(Boolean);
    if (list.length === 0) throw new OptionsError('--n: empty list');
    ns = list.map((s) => num('n', s, 0, 2, 5000));
  }
  const consumer = values.consumer ?? 'peer-table';
  if (!(CONSUMER_KINDS as readonly string[]).includes(consumer)) throw new OptionsError(`--consumer: "${consumer}" is not one of ${CONSUMER_KINDS.join(', ')}`);
  return Object.freeze({
    ns: Object.freeze(ns),
    quick,
    workers: num('workers', values.workers, quick ? 2 : 4, 1, 64),
    agents: values.agents === undefined ? null : num('agents', values.agents, 0, 2, 5000),
    changes: values.changes === undefined ? (quick ? 5 : null) : num('changes', values.changes, 0, 0, 10_000),
    sustainSeconds: num('sustain-seconds', values['sustain-seconds'], quick ? 5 : 180, 0, 3600),
    rate: num('rate', values.rate, 10, 0.1, 1000, false),
    idleSeconds: num('idle-seconds', values['idle-seconds'], quick ? 2 : 10, 1, 600),
    drainSeconds: num('drain-seconds', values['drain-seconds'], 120, 1, 3600),
    coldStartLimitSeconds: num('cold-start-limit', values['cold-start-limit'], 1800, 1, 36_000),
    settleSeconds: num('settle-seconds', values['settle-seconds'], 300, 0, 36_000),
    cache: !(values['no-cache'] ?? false),
    consumer: consumer as ConsumerKind,
    json: values.json ?? false,
    help: values.help ?? false,
  });
}

/** One-change phase length by N: each change costs every agent, so fewer at large N (p99 over 5 x 999 deliveries still). */
function changesFor(n: number): number {
  return Math.min(40, Math.max(5, Math.round(3000 / n)));
}

const t0 = Date.now();
function log(msg: string): void {
  process.stderr.write(`[swarm ${((Date.now() - t0) / 1000).toFixed(0).padStart(4)}s] ${msg}\n`);
}

async function main(): Promise<number> {
  // 1. options
  let opts: SwarmBenchOptions;
  try {
    opts = parseSwarmOptions(process.argv.slice(2));
  } catch (e) {
    if (e instanceof OptionsError) {
      process.stderr.write(`bench:swarm: ${e.message}\n\n${USAGE}\n`);
      return 2;
    }
    throw e;
  }
  if (opts.help) {
    process.stdout.write(USAGE + '\n');
    return 0;
  }

  // 2. preflight
  if (!fs.existsSync('/usr/bin/etcd')) throw new Error('/usr/bin/etcd is missing (scripts/setup.sh installs it)');
  const maxN = Math.max(...opts.ns);
  const want = 4 * maxN + 4096; // agents' sockets and etcd's (one connection per agent on each side), files, slack
  const soft = raiseOpenFiles(want);
  if (soft < 2 * maxN + 1024) throw new Error(`open files limit ${soft} is too low for N=${maxN} (need about ${want}); run as root or raise ulimit -n`);
  log(`open files limit ${soft} (${JSON.stringify(openFileLimits())}); ${os.cpus().length} cpus, load average ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}`);

  // 3. runs
  const startedAt = new Date().toISOString();
  const results: RunResult[] = [];
  for (const n of opts.ns) {
    const r = await runSwarm({
      n,
      agents: opts.agents === null ? undefined : Math.min(opts.agents, n),
      workers: opts.workers,
      changes: opts.changes ?? changesFor(n),
      sustainSeconds: opts.sustainSeconds,
      rate: opts.rate,
      idleSeconds: opts.idleSeconds,
      drainSeconds: opts.drainSeconds,
      coldStartLimitSeconds: opts.coldStartLimitSeconds,
      settleSeconds: opts.settleSeconds,
      cache: opts.cache,
      consumer: opts.consumer,
      log,
    });
    for (const f of r.failures) log(`N=${n}: FAILED: ${f}`);
    results.push(r);
    write(document(opts, startedAt, results)); // after every N: a long run keeps what it measured
  }

  // 4. report
  const doc = document(opts, startedAt, results);
  const file = write(doc);
  if (opts.json) process.stdout.write(JSON.stringify(doc, null, 2) + '\n');
  else {
    process.stdout.write(['', table(results), '', 'Targets (issue 11, for N = 1000; measured / target):', ...targetLines(results), '', ...growthLines(results), ''].join('\n') + '\n');
  }
  log(`results: ${path.relative(process.cwd(), file)}`);
  const failed = results.filter((r) => !r.ok);
  for (const r of failed) process.stderr.write(`bench:swarm: N=${r.n} FAILED: ${r.failures.join('; ')}\n`);
  return failed.length > 0 ? 1 : 0;
}

function document(opts: SwarmBenchOptions, startedAt: string, results: readonly RunResult[]) {
  return {
    version: 1,
    kind: 'swarm',
    startedAt,
    finishedAt: new Date().toISOString(),
    options: { ...opts, help: undefined, json: undefined },
    commit: gitCommit(),
    machine: { cpus: os.cpus().length, cpuModel: os.cpus()[0]?.model ?? null, memMiB: Math.round(os.totalmem() / 2 ** 20), loadAverageAtEnd: os.loadavg(), node: process.version },
    targets: Object.fromEntries(TARGETS.map((t) => [t.key, { limit: t.limit, unit: t.unit, atN: Object.fromEntries(results.map((r) => [r.n, t.value(r)])) }])),
    growth: growthCurve(results),
    results,
  };
}

/** The commit that ran, with "+dirty" when the work tree has changes; null outside git. */
function gitCommit(): string | null {
  try {
    const head = execFileSync('git', ['-C', REPO, 'rev-parse', '--short', 'HEAD'], { encoding: 'utf8' }).trim();
    const dirty = execFileSync('git', ['-C', REPO, 'status', '--porcelain', '--', 'src', 'bench'], { encoding: 'utf8' }).trim() !== '';
    return dirty ? `${head}+dirty` : head;
  } catch {
    return null;
  }
}

/** bench/results/swarm-<start time>.json, through a .tmp file; returns its path. */
function write(doc: ReturnType<typeof document>): string {
  fs.mkdirSync(RESULTS_DIR, { recursive: true });
  const file = path.join(RESULTS_DIR, `swarm-${stamp(doc.startedAt)}.json`);
  fs.writeFileSync(`${file}.tmp`, JSON.stringify(doc, null, 2) + '\n');
  fs.renameSync(`${file}.tmp`, file);
  return file;
}

// Ctrl-C or a kill: exit through 'exit', whose hooks stop etcd and remove the temp dirs (the
// workers follow when their IPC channel closes).
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.once(sig, () => {
    process.stderr.write(`bench:swarm: ${sig}, stopping\n`);
    process.exit(130);
  });
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    process.stderr.write(`bench:swarm: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    process.exitCode = 1;
  },
);

/**
 * `npm run bench:roam`: how fast the overlay carries traffic again after what clouds do to a VM
 * (issue 5), between a host on the internet and one behind a NAT gateway of the test bed.
 *
 *   1. options     --only CASES, --suspend-ms, --limit-ms, --json, --help; checked first
 *   2. preflight   root, /dev/net/tun, dist/cli.js, conntrack
 *   3. cases       for each: a fresh mesh bed (etcd + two agents), the case (src/testbed/roamcases.ts:
 *                  pings every 10 ms and a paced TCP stream from the other host toward the moving
 *                  host's overlay address, the change, the wait), teardown
 *   4. report      the table; JSON under bench/results/roam-<start time>.json
 *
 * A case the agent does not recover from within the limit is reported as such, never hidden.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { startMeshBed } from '../src/testbed/mesh';
import { ROAM_CASES, ROAM_CASE_SPECS, ROAM_TOPOLOGY, recoveryText, roamCaseFailure, runRoamCase, type RoamCaseName, type RoamCaseResult } from '../src/testbed/roamcases';
import { run } from '../src/testbed/run';
import { stamp } from './report';

const REPO = path.resolve(__dirname, '..', '..');
const RESULTS_DIR = path.join(REPO, 'bench', 'results');

const USAGE = `usage: npm run bench:roam -- [options]
  --only CASES      comma-separated subset of ${ROAM_CASES.join(', ')} (default all)
  --suspend-ms N    how long the suspend case keeps the agent stopped (default 30000)
  --limit-ms N      how long to wait for recovery before calling it failed (default 10000)
  --json            print the JSON document instead of the table
  --help`;

interface RoamOptions {
  only: RoamCaseName[];
  suspendMs: number;
  limitMs: number;
  json: boolean;
  help: boolean;
}

class OptionsError extends Error {}

function parseOptions(argv: readonly string[]): RoamOptions {
  const o: RoamOptions = { only: [...ROAM_CASES], suspendMs: 30_000, limitMs: 10_000, json: false, help: false };
  const int = (flag: string, v: string | undefined, min: number): number => {
    const n = Number(v);
    if (v === undefined || !Number.isInteger(n) || n < min) throw new OptionsError(`${flag}: "${v ?? ''}" is not an integer >= ${min}`);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--help' || a === '-h') o.help = true;
    else if (a === '--json') o.json = true;
    else if (a === '--suspend-ms') o.suspendMs = int(a, argv[++i], 1_000);
    else if (a === '--limit-ms') o.limitMs = int(a, argv[++i], 1_000);
    else if (a === '--only') {
      const list = (argv[++i] ?? '').split(',').filter(Boolean);
      const bad = list.filter((c) => !(ROAM_CASES as readonly string[]).includes(c));
      if (list.length === 0 || bad.length > 0) throw new OptionsError(`--only: unknown case "${bad[0] ?? ''}" (cases: ${ROAM_CASES.join(', ')})`);
      o.only = list as RoamCaseName[];
    } else throw new OptionsError(`unknown option "${a}"`);
  }
  return o;
}

const t0 = Date.now();
function log(msg: string): void {
  process.stderr.write(`[roam ${((Date.now() - t0) / 1000).toFixed(0).padStart(3)}s] ${msg}\n`);
}

function table(results: readonly RoamCaseResult[]): string {
  const ms = (v: number | null) => (v === null ? '-' : `${v.toFixed(0)} ms`);
  const rows = results.map((r) => [
    r.name,
    recoveryText(r),
    ms(r.longestGapMs),
    ms(r.tcpRecoveryMs),
    r.transfer === null ? '-' : r.transfer.ok ? `ok (${(r.transfer.sent!.bytes / 1e6).toFixed(1)} MB, sha256 match)` : `FAILED: ${r.transfer.error ?? ''}`,
    `< ${r.targetMs / 1000} s${r.name === 'suspend' ? ' after resume' : ''}: ${r.metTarget ? 'met' : 'MISSED'}`,
  ]);
  const head = ['case', 'recovery', 'longest gap', 'tcp resumed', 'transfer', 'target'];
  const width = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: readonly string[]) => cells.map((c, i) => c.padEnd(width[i]!)).join('  ').trimEnd();
  const notes = results.map((r) => {
    const pings = r.pings ? `pings ${r.pings.received}/${r.pings.sent} answered, one every ${r.pings.meanIntervalMs?.toFixed(1) ?? '?'} ms; ` : '';
    return `  ${r.name}: ${r.description}; ${pings}${Object.entries(r.detail).map(([k, v]) => `${k}=${v}`).join(', ')}`;
  });
  return [line(head), line(width.map((w) => '-'.repeat(w))), ...rows.map(line), '', ...notes].join('\n');
}

async function main(): Promise<number> {
  // 1. options
  let opts: RoamOptions;
  try {
    opts = parseOptions(process.argv.slice(2));
  } catch (e) {
    if (e instanceof OptionsError) {
      process.stderr.write(`bench:roam: ${e.message}\n\n${USAGE}\n`);
      return 2;
    }
    throw e;
  }
  if (opts.help) {
    process.stdout.write(USAGE + '\n');
    return 0;
  }

  // 2. preflight
  if (process.getuid?.() !== 0) throw new Error('bench:roam builds network namespaces: run it as root');
  if (!fs.existsSync('/dev/net/tun')) throw new Error('/dev/net/tun is missing');
  process.env['CLADNET_CLI'] ??= path.join(REPO, 'dist', 'cli.js');
  if (!fs.existsSync(process.env['CLADNET_CLI'])) throw new Error(`${process.env['CLADNET_CLI']} is missing: run npm run build first`);
  if ((await run(['sh', '-c', 'command -v conntrack'])).code !== 0) throw new Error('conntrack is not installed (scripts/setup.sh bench installs it)');

  // 3. cases
  const startedAt = new Date().toISOString();
  const results: RoamCaseResult[] = [];
  for (const [i, name] of opts.only.entries()) {
    log(`case ${name}: ${ROAM_CASE_SPECS[name].description}; building the bed`);
    let bed;
    try {
      bed = await startMeshBed({ topology: ROAM_TOPOLOGY, network: 'roam', cidr: '100.64.0.0/24' });
    } catch (e) {
      const error = `the bed did not come up: ${(e as Error).message.split('\n')[0]}`;
      log(`case ${name}: ${error}`);
      results.push(roamCaseFailure(name, error, opts.limitMs));
      continue;
    }
    try {
      const r = await runRoamCase(bed, name, { limitMs: opts.limitMs, suspendMs: opts.suspendMs, streamPort: 7300 + i, log });
      log(`case ${name}: ${recoveryText(r)}; transfer ${r.transfer?.ok ? 'ok' : `not ok: ${r.transfer?.error ?? r.error ?? ''}`}`);
      results.push(r);
    } finally {
      await bed.destroy();
    }
  }

  // 4. report
  const doc = {
    version: 1,
    kind: 'roam',
    startedAt,
    finishedAt: new Date().toISOString(),
    options: { only: opts.only, suspendMs: opts.suspendMs, limitMs: opts.limitMs, pingIntervalMs: 10 },
    topology: ROAM_TOPOLOGY,
    results,
  };
  fs.mkdirSync(RESULTS_DIR, { recursive: true });
  const file = path.join(RESULTS_DIR, `roam-${stamp(startedAt)}.json`);
  fs.writeFileSync(`${file}.tmp`, JSON.stringify(doc, null, 2) + '\n');
  fs.renameSync(`${file}.tmp`, file);
  if (opts.json) process.stdout.write(JSON.stringify(doc, null, 2) + '\n');
  else process.stdout.write('\n' + table(results) + '\n\n');
  log(`results: ${path.relative(process.cwd(), file)}`);
  return 0;
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    process.stderr.write(`bench:roam: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    process.exitCode = 1;
  },
);

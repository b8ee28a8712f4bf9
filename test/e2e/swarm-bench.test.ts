import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Swarm } from '../../bench/swarm/harness';
import { runSwarm, type RunResult } from '../../bench/swarm/run';

/**
 * The swarm bench (`npm run bench:swarm`, issue 11) end to end at a small N against a real etcd:
 * 20 virtual agents in 2 worker processes, every phase in its quick form, and the final check of
 * every agent's peer set against etcd, which must also catch an expected set that is wrong.
 *
 * The workers run compiled JavaScript: the worker and what it imports are compiled into a
 * directory of its own under dist-bench/ first (not dist-bench/bench/, which a bench run may be using).
 */

const REPO = path.resolve(__dirname, '..', '..');
const N = 20;
let outDir: string;
let workerScript: string;

beforeAll(async () => {
  // inside the repository, so the compiled files find node_modules/
  fs.mkdirSync(path.join(REPO, 'dist-bench'), { recursive: true });
  outDir = fs.mkdtempSync(path.join(REPO, 'dist-bench', 'swarm-test-'));
  const tsconfig = path.join(outDir, 'tsconfig.json');
  fs.writeFileSync(
    tsconfig,
    JSON.stringify({
      extends: path.join(REPO, 'bench', 'tsconfig.json'),
      compilerOptions: { rootDir: REPO, outDir, incremental: false, tsBuildInfoFile: null, typeRoots: [path.join(REPO, 'node_modules', '@types')] },
      files: [path.join(REPO, 'bench', 'swarm', 'worker.ts')],
      include: [],
    }),
  );
  // async: a synchronous compile would block vitest's worker past its RPC timeout
  await promisify(execFile)(path.join(REPO, 'node_modules', '.bin', 'tsc'), ['-p', tsconfig]);
  workerScript = path.join(outDir, 'bench', 'swarm', 'worker.js');
  expect(fs.existsSync(workerScript)).toBe(true);
}, 180_000);

afterAll(() => {
  if (outDir) fs.rmSync(outDir, { recursive: true, force: true });
});

const alive = (pid: number) => fs.existsSync(`/proc/${pid}`);

describe('bench:swarm in quick mode', () => {
  let result: RunResult;
  let pids: number[] = [];
  const checks: Record<string, Awaited<ReturnType<Swarm['verify']>>> = {};
  let etcdView = new Map<string, number>();

  it('runs 20 agents through cold start, single changes and 10 changes/s, and every final peer set matches etcd', async () => {
    result = await runSwarm({
      n: N,
      workers: 2,
      changes: 5,
      sustainSeconds: 3,
      rate: 10,
      idleSeconds: 1,
      drainSeconds: 30,
      coldStartLimitSeconds: 60,
      settleSeconds: 30,
      cache: true,
      consumer: 'peer-table',
      workerScript,
      log: (m) => console.log(m),
      beforeClose: async (swarm) => {
        pids = swarm.pids();
        etcdView = await swarm.expectedFromEtcd();
        const first = [...etcdView.keys()].sort()[3]!;
        const dropped = new Map(etcdView);
        dropped.delete(first);
        const stale = new Map(etcdView).set(first, etcdView.get(first)! - 1);
        const phantom = new Map(etcdView).set('s9999', 1);
        checks['same'] = await swarm.verify(etcdView);
        checks['dropped'] = await swarm.verify(dropped);
        checks['stale'] = await swarm.verify(stale);
        checks['phantom'] = await swarm.verify(phantom);
      },
    });
    expect(result.failures).toEqual([]);
    expect(result.ok).toBe(true);
    expect(pids).toHaveLength(2);

    // every phase measured something
    expect(result.coldStart!.ms).toBeGreaterThan(0);
    expect(result.coldStart!.incomplete).toBe(0);
    expect(result.oneChange!.samples).toBe(5 * (N - 1));
    expect(result.oneChange!.undelivered).toBe(0);
    expect(result.oneChange!.p50Ms).toBeGreaterThan(0);
    expect(result.oneChange!.maxMs).toBeGreaterThanOrEqual(result.oneChange!.p99Ms!);
    expect(result.oneChange!.revisionsPerChange).toBe(1); // one txn per republish
    expect(result.oneChange!.etcdSentBytesPerChange).toBeGreaterThan(0);
    expect(result.sustained!.changes).toBe(30);
    expect(result.sustained!.samples).toBe(30 * (N - 1));
    expect(result.sustained!.undelivered).toBe(0);
    expect(result.idle!.etcdPct).not.toBeNull();
    expect(result.verify).toMatchObject({ ok: true, agents: N, mismatched: 0, etcdHosts: N });
    expect(result.agentStats).toMatchObject({ peersMin: N - 1, peersMax: N - 1, connected: N, invalidRecords: 0 });
  }, 240_000);

  it('the final check fails on an expected set that differs from what the agents hold', () => {
    expect(etcdView.size).toBe(N);
    expect(checks['same']).toMatchObject({ ok: true, mismatched: 0 });
    // one host missing from the expected set: every other agent holds it as an extra peer
    expect(checks['dropped']).toMatchObject({ ok: false, mismatched: N - 1 });
    expect(checks['dropped']!.examples[0]).toMatch(/extra s\d{4}/);
    // an older epoch than the agents hold
    expect(checks['stale']).toMatchObject({ ok: false, mismatched: N - 1 });
    expect(checks['stale']!.examples.join(' ')).toMatch(/at epoch \d+, etcd has \d+/);
    // a host nobody holds
    expect(checks['phantom']).toMatchObject({ ok: false, mismatched: N });
    expect(checks['phantom']!.examples[0]).toMatch(/missing s9999/);
  });

  it('leaves no worker process behind', () => {
    expect(pids.filter(alive)).toEqual([]);
  });
});

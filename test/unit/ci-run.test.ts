import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

/**
 * .ci/run in a throwaway git repository, with CLADNET_CI_TEST_CMD standing in for `npm test`: a
 * fake test command writes vitest's JSON report and, in one case, leaves a file behind or rewrites
 * a tracked one. CI must fail on a dirty tree and still end with its "N passed, N failed" line.
 */
const CI_RUN = path.resolve(__dirname, '..', '..', '.ci', 'run');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'cladnet-ci-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

function sh(cmd: string, args: string[], cwd: string, env: NodeJS.ProcessEnv = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const c = spawn(cmd, args, { cwd, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    c.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    c.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    c.once('error', reject);
    c.once('close', (code) => resolve({ code, stdout, stderr }));
  });
}

let n = 0;
/** A fresh repo holding .ci/run, a tracked package-lock.json and the usual .gitignore. */
async function repo(): Promise<string> {
  const dir = path.join(tmp, `r${n++}`);
  fs.mkdirSync(path.join(dir, '.ci'), { recursive: true });
  fs.copyFileSync(CI_RUN, path.join(dir, '.ci', 'run'));
  fs.writeFileSync(path.join(dir, '.gitignore'), 'test-results.json\n');
  fs.writeFileSync(path.join(dir, 'package-lock.json'), '{"lockfileVersion": 3}\n');
  const g = (...a: string[]) => sh('git', ['-c', 'user.name=t', '-c', 'user.email=t@example.invalid', ...a], dir);
  expect((await g('init', '-q')).code).toBe(0);
  await g('add', '-A');
  expect((await g('commit', '-qm', 'init')).code).toBe(0);
  return dir;
}

const REPORT = `echo '{"numPassedTests":3,"numFailedTests":0,"numFailedTestSuites":0,"success":true}' > test-results.json`;
const lastLine = (s: string) => s.trimEnd().split('\n').at(-1);

describe('.ci/run', () => {
  it('passes a run that leaves the tree clean', async () => {
    const dir = await repo();
    const r = await sh('bash', ['.ci/run'], dir, { CLADNET_CI_TEST_CMD: REPORT });
    expect(lastLine(r.stdout)).toBe('3 passed, 0 failed');
    expect(r.code).toBe(0);
  });

  it('fails a run whose tests all passed but which rewrote a tracked file, naming it', async () => {
    const dir = await repo();
    const r = await sh('bash', ['.ci/run'], dir, {
      CLADNET_CI_TEST_CMD: `${REPORT}; echo '{}' > package-lock.json`,
    });
    expect(lastLine(r.stdout)).toBe('3 passed, 0 failed');
    expect(r.stderr).toMatch(/not clean after the run/);
    expect(r.stderr).toMatch(/ M package-lock\.json/);
    expect(r.code).toBe(1);
  });

  it('fails a run that left an untracked file behind', async () => {
    const dir = await repo();
    const r = await sh('bash', ['.ci/run'], dir, { CLADNET_CI_TEST_CMD: `${REPORT}; touch stray.out` });
    expect(lastLine(r.stdout)).toBe('3 passed, 0 failed');
    expect(r.stderr).toMatch(/\?\? stray\.out/);
    expect(r.code).toBe(1);
  });
});

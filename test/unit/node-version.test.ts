import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

/**
 * bin/cladnet.js, the installed command: an older Node than 20 gets one clear message and exit 1,
 * never a stack trace. The check is tested directly, and end to end by running the entry with a
 * preload that makes process.versions say 18 (as Debian 12's node would).
 */
const ENTRY = path.resolve(__dirname, '..', '..', 'bin', 'cladnet.js');
// eslint-disable-next-line @typescript-eslint/no-require-imports
const entry = require(ENTRY) as { nodeVersionProblem(v: string, execPath: string): string | null; MIN_MAJOR: number };
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'cladnet-nodever-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

function runAs(version: string | null, args: string[]): { code: number | null; stdout: string; stderr: string } {
  const pre: string[] = [];
  if (version !== null) {
    const file = path.join(tmp, `fake-${version}.js`);
    fs.writeFileSync(
      file,
      `Object.defineProperty(process, 'versions', { value: Object.assign({}, process.versions, { node: ${JSON.stringify(version)} }) });\n`,
    );
    pre.push('--require', file);
  }
  const r = spawnSync(process.execPath, [...pre, ENTRY, ...args], { encoding: 'utf8', timeout: 30_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe('bin/cladnet.js Node version check', () => {
  it('accepts 20 and newer, refuses older ones with a message naming both versions', () => {
    expect(entry.MIN_MAJOR).toBe(20);
    for (const v of ['20.0.0', '20.19.2', '22.11.0', '24.1.0']) expect(entry.nodeVersionProblem(v, '/usr/bin/node')).toBeNull();
    for (const v of ['18.19.0', '16.20.2', '12.22.12', '0.10.48']) {
      expect(entry.nodeVersionProblem(v, '/usr/bin/node')).toMatch(
        new RegExp(`^cladnet: needs Node\\.js 20 or newer, but /usr/bin/node is Node\\.js ${v.replaceAll('.', '\\.')}\\.\\n`),
      );
    }
  });

  it('tells a Node 18 user what to do in one message, exit 1, no stack trace, before loading anything else', () => {
    const r = runAs('18.19.0', ['--help']);
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(/^cladnet: needs Node\.js 20 or newer, but .* is Node\.js 18\.19\.0\./);
    expect(r.stderr).toMatch(/Debian 12 ships Node\.js 18/);
    expect(r.stderr).not.toMatch(/\n\s+at /);
  });

  it('runs the program on this Node (the check does not get in the way)', () => {
    const r = runAs(null, ['--help']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^Usage: cladnet/);
    expect(r.stdout).toMatch(/\bagent\b/);
  });
});

import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';

/**
 * What the agent's main thread holds in memory (issue 14, docs/performance.md "Memory"): every
 * module it loads stays in its heap (source, functions, top-level code) for the life of the
 * process, so modules the agent does not run are not loaded: the data plane's stages (they run in
 * the worker), the enrolment without a token, the metrics server and instance metadata unless
 * asked for, the CLI's other commands, the dashboard and the test bed. Runs the built dist/ (the
 * build comes first in `npm test`).
 */
const DIST = path.join(__dirname, '..', '..', 'dist');

function mainThreadModules(entry: string): string[] {
  const script = `require(${JSON.stringify(entry)}); process.stdout.write(JSON.stringify(Object.keys(require.cache)));`;
  const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8' });
  expect(r.status, r.stderr).toBe(0);
  return (JSON.parse(r.stdout) as string[]).filter((f) => f.startsWith(DIST + path.sep)).map((f) => path.relative(DIST, f));
}

describe('the agent loads only what it runs', () => {
  it('the build exists (npm run build)', () => {
    expect(fs.existsSync(path.join(DIST, 'agent', 'agent.js'))).toBe(true);
  });

  it("the agent's module graph leaves out the worker's stages, enrolment, metrics, metadata, CLI commands, dashboard and test bed", () => {
    const mods = mainThreadModules(path.join(DIST, 'agent', 'agent.js'));
    // what it does load (so that an empty list cannot pass)
    for (const m of ['agent/agent.js', 'control/registry.js', 'dataplane/engine.js', 'dataplane/peer.js', 'agent/enrol.js']) expect(mods).toContain(m);
    const unwanted = [
      'dataplane/worker.js',
      'dataplane/outbound.js',
      'dataplane/inbound.js',
      'dataplane/duplex.js',
      'crypto/aead.js',
      'control/enroll.js',
      'control/token.js',
      'control/issuance.js',
      'status/metrics-server.js',
      'control/metadata.js',
    ];
    expect(mods.filter((m) => unwanted.includes(m) || /^(cli|dashboard|testbed|demo)\//.test(m))).toEqual([]);
  });

  it("the built JavaScript makes no copies of node's modules for `import * as` (no esModuleInterop helpers)", () => {
    // With esModuleInterop, each `import * as fs from 'node:fs'` copied fs's ~100 exports into a new
    // object of getter closures, once per importing module and thread.
    const files = ['agent/agent.js', 'control/registry.js', 'dataplane/worker.js', 'os/ffi/libc.js', 'os/tun/tun.js'];
    for (const f of files) expect(fs.readFileSync(path.join(DIST, f), 'utf8'), f).not.toMatch(/__importStar|__importDefault/);
  });

  it('the built JavaScript carries no comments (each module source stays in the heap)', () => {
    const src = fs.readFileSync(path.join(DIST, 'agent', 'agent.js'), 'utf8');
    // agent.ts opens with a long doc comment and documents most members
    expect(src).not.toMatch(/^\s*\/\*\*/m);
    expect(src).not.toMatch(/^\s*\/\/ /m);
  });
});

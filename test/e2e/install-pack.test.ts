import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

/**
 * The install path a VM takes: `npm pack` (its prepack script builds dist/ from scratch) gives a
 * tarball; `npm install -g --prefix P` of that tarball gives a working `cladnet` command. The
 * pack runs in a copy of this working tree (tracked and new files, node_modules linked) so the
 * prepack's clean rebuild never touches the dist/ other tests run. The install resolves the
 * dependencies through npm's cache first (--prefer-offline: a machine that ran `npm ci` needs no
 * network).
 */
const REPO = path.resolve(__dirname, '..', '..');
const pkg = JSON.parse(fs.readFileSync(path.join(REPO, 'package.json'), 'utf8')) as { name: string; version: string };

/** Runs a command without blocking this process (a long npm run must not stall vitest's worker). */
function run(cmd: string, args: string[], cwd: string, timeoutMs = 300_000): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const c = spawn(cmd, args, { cwd, env: { ...process.env, npm_config_update_notifier: 'false' }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    c.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    c.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const t = setTimeout(() => c.kill('SIGKILL'), timeoutMs);
    c.once('error', (e) => {
      clearTimeout(t);
      reject(e);
    });
    c.once('close', (code) => {
      clearTimeout(t);
      resolve({ code, stdout, stderr });
    });
  });
}

describe('npm pack, npm install -g, cladnet', () => {
  let tmp: string;
  let tarball: string;
  let packed: string[];
  let bin: string;

  beforeAll(async () => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'cladnet-pack-'));
    const tree = path.join(tmp, 'tree');
    const ls = await run('git', ['ls-files', '-z', '--cached', '--others', '--exclude-standard'], REPO);
    expect(ls.code).toBe(0);
    for (const f of ls.stdout.split('\0').filter(Boolean)) {
      if (!fs.existsSync(path.join(REPO, f))) continue; // deleted in the working tree
      fs.mkdirSync(path.dirname(path.join(tree, f)), { recursive: true });
      fs.copyFileSync(path.join(REPO, f), path.join(tree, f));
    }
    fs.symlinkSync(path.join(REPO, 'node_modules'), path.join(tree, 'node_modules'));
    const p = await run('npm', ['pack', '--json', '--pack-destination', tmp], tree);
    if (p.code !== 0) throw new Error(`npm pack failed (${p.code}):\n${p.stderr}`);
    const info = JSON.parse(p.stdout.slice(p.stdout.indexOf('['))) as { filename: string; files: { path: string }[] }[];
    tarball = path.join(tmp, info[0]!.filename);
    packed = info[0]!.files.map((f) => f.path);
    const prefix = path.join(tmp, 'prefix');
    const i = await run('npm', ['install', '-g', '--prefix', prefix, '--prefer-offline', '--no-audit', '--no-fund', tarball], tmp);
    if (i.code !== 0) throw new Error(`npm install -g failed (${i.code}):\n${i.stderr}`);
    bin = path.join(prefix, 'bin', 'cladnet');
  }, 600_000);

  afterAll(() => {
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  });

  it('packs the built program, the entry, the unit and the example config, and no sources or tests', () => {
    expect(path.basename(tarball)).toBe(`${pkg.name}-${pkg.version}.tgz`);
    for (const f of ['package.json', 'bin/cladnet.js', 'dist/cli.js', 'dist/agent/agent.js', 'dist/dataplane/worker.js', 'dist/os/notify.js', 'systemd/cladnet.service', 'docs/config.example.json']) {
      expect(packed).toContain(f);
    }
    expect(packed.filter((f) => /^(src|test|bench|scripts)\//.test(f) || f.endsWith('.ts'))).toEqual([]);
  });

  it('packs the batch AEAD helper the prepack built, and the installed agent loads it from the install', async () => {
    // A VM installed from the tarball has no compiler: without the prebuilt helper its data plane
    // would fall back to one koffi call per packet (docs/performance.md).
    expect(packed).toContain('native/build/libcladnet_fast.so');
    const root = path.join(tmp, 'prefix', 'lib', 'node_modules', 'cladnet');
    const probe = `const r = require(${JSON.stringify(path.join(root, 'dist', 'os', 'ffi', 'fast.js'))}).loadFast();
      process.stdout.write(JSON.stringify({ path: r.lib ? r.lib.path : null, error: r.error }));`;
    const env = { ...process.env, CLADNET_FAST_LIB: '' };
    const r = await new Promise<{ code: number | null; out: string }>((resolve) => {
      const c = spawn(process.execPath, ['-e', probe], { cwd: tmp, env, stdio: ['ignore', 'pipe', 'inherit'] });
      let out = '';
      c.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
      c.once('close', (code) => resolve({ code, out }));
    });
    expect(r.code).toBe(0);
    expect(JSON.parse(r.out)).toEqual({ path: path.join(root, 'native', 'build', 'libcladnet_fast.so'), error: null });
  });

  it('installs a cladnet command that runs: --help and --version', async () => {
    expect(fs.realpathSync(bin)).toMatch(/lib\/node_modules\/cladnet\/bin\/cladnet\.js$/);
    const help = await run(bin, ['--help'], tmp, 30_000);
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/^Usage: cladnet/);
    for (const cmd of ['agent', 'status', 'network', 'host']) expect(help.stdout).toMatch(new RegExp(`\\n\\s+${cmd}\\b`));
    const ver = await run(bin, ['--version'], tmp, 30_000);
    expect(ver.stdout.trim()).toBe(pkg.version);
  });

  it('says clearly that no agent answers on a missing status socket (exit 1, no stack trace)', async () => {
    const sock = path.join(tmp, 'missing', 'cladnet.sock');
    const r = await run(bin, ['status', '--socket', sock], tmp, 30_000);
    expect(r.code).toBe(1);
    expect(r.stderr).toBe(`cladnet: cannot reach the agent at ${sock}: connect ENOENT ${sock} (is cladnet agent running?) [ESTATUS]\n`);
  });

  it('loads its native parts from the install (the agent re-execs through koffi, then names the bad config field)', async () => {
    const cfg = path.join(tmp, 'config.json');
    fs.writeFileSync(cfg, JSON.stringify({ network: 'mesh', etcd: ['http://127.0.0.1:2379'], mtu: 'big' }));
    const r = await run(bin, ['agent', '--config', cfg], tmp, 30_000);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^cladnet: .*\[ECONFIG\]\n$/);
    expect(r.stderr).not.toMatch(/\n\s+at /);
  });
});

import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startMeshBed, type MeshBed } from '../../src/testbed/mesh';
import { waitUntil, type Agent } from '../../src/testbed/agents';

/**
 * What a local unprivileged user on a member host can reach (docs/security.md, threat model): a
 * running agent's files and local API, tried as uid/gid 65534 (nobody). The test opens the path
 * down to the state dir for everyone, so what stops the user is each file's own mode, not a
 * parent directory the test bed happened to make private.
 */
const isRoot = process.getuid?.() === 0;
const NOBODY = 65534;

/** Runs `script` as nobody; it prints one JSON line. */
function asNobody(script: string, args: string[]): Record<string, string> {
  const r = spawnSync(process.execPath, ['-e', script, ...args], { uid: NOBODY, gid: NOBODY, encoding: 'utf8', timeout: 10_000 });
  if (r.status !== 0) throw new Error(`as nobody: exit ${r.status}: ${r.stderr}`);
  return JSON.parse(r.stdout) as Record<string, string>;
}

const TRY_FILES = `
const fs = require('fs'); const out = {};
for (const f of process.argv.slice(1)) { try { fs.readFileSync(f); out[f] = 'read'; } catch (e) { out[f] = e.code; } }
console.log(JSON.stringify(out));`;

const TRY_SOCKET = `
const net = require('net'); const s = net.connect(process.argv[1]);
s.on('connect', () => { console.log(JSON.stringify({ socket: 'connected' })); s.destroy(); });
s.on('error', (e) => console.log(JSON.stringify({ socket: e.code })));`;

describe.skipIf(!isRoot)('a local unprivileged user on a member host', () => {
  let bed: MeshBed;
  let agent: Agent;
  const opened: { p: string; mode: number }[] = [];

  beforeAll(async () => {
    bed = await startMeshBed({ topology: { hosts: 2 } });
    // The agent that answered the first handshake has every state file (the handshake timestamps
    // are written, within a second, by a responder); wait for the cache and state writes too.
    const files = (a: Agent) => ['hs-timestamps.json', 'peers.json', 'state.json'].every((f) => fs.existsSync(path.join(a.stateDir, f)));
    await waitUntil('an agent with all its state files', async () => bed.agents.find(files) ?? false, { timeoutMs: 10_000, intervalMs: 100 });
    agent = bed.agents.find(files)!;
    // Let everyone traverse the test bed's own directories above the state dir.
    for (let d = path.dirname(agent.stateDir); d.startsWith(bed.topo.workDir); d = path.dirname(d)) {
      opened.push({ p: d, mode: fs.statSync(d).mode & 0o777 });
      fs.chmodSync(d, 0o755);
    }
  }, 60_000);
  afterAll(async () => {
    for (const o of opened) fs.chmodSync(o.p, o.mode);
    await bed?.destroy();
  });

  it('cannot enter the state dir (0700)', () => {
    expect((fs.statSync(agent.stateDir).mode & 0o777).toString(8)).toBe('700');
    const r = asNobody(TRY_FILES, [path.join(agent.stateDir, 'private.key')]);
    expect(Object.values(r)).toEqual(['EACCES']);
  });

  it('cannot read the private key, handshake timestamps, peer cache or saved state even with the dir open, nor use the status socket', () => {
    const secret = ['private.key', 'hs-timestamps.json', 'peers.json', 'state.json'].map((f) => path.join(agent.stateDir, f));
    for (const f of secret) expect((fs.statSync(f).mode & 0o777).toString(8), f).toBe('600');
    expect((fs.statSync(agent.socket).mode & 0o777).toString(8)).toBe('600');
    const mode = fs.statSync(agent.stateDir).mode & 0o777;
    fs.chmodSync(agent.stateDir, 0o711); // as if the operator had loosened it
    try {
      const files = asNobody(TRY_FILES, secret);
      expect(files).toEqual(Object.fromEntries(secret.map((f) => [f, 'EACCES'])));
      expect(asNobody(TRY_SOCKET, [agent.socket])).toEqual({ socket: 'EACCES' });
      // The certificate is public: readable once the dir is open (nothing in it is secret).
      expect(Object.values(asNobody(TRY_FILES, [path.join(agent.stateDir, 'host.cert')]))).toEqual(['read']);
    } finally {
      fs.chmodSync(agent.stateDir, mode);
    }
  });

  it("cannot read the agent's environment or memory, and its command line holds no secret", () => {
    const pid = agent.proc.pid!;
    const r = asNobody(TRY_FILES, [`/proc/${pid}/environ`, `/proc/${pid}/mem`]);
    expect(r).toEqual({ [`/proc/${pid}/environ`]: 'EACCES', [`/proc/${pid}/mem`]: 'EACCES' });
    const cmdline = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    expect(cmdline.some((a) => /password|private|secret/i.test(a))).toBe(false);
  });
});

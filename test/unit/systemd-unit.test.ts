import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { AGENT_NODE_FLAGS } from '../../src/agent/node-flags';

/**
 * systemd/cladnet.service as systemd itself judges it: `systemd-analyze verify` (Debian's systemd
 * package; scripts/setup.sh installs it) must be silent, and `systemd-analyze security
 * --offline=yes` must rate it 2.5 or better ("OK"). No systemd needs to run for either.
 *
 * verify checks that ExecStart's program exists. The unit names the installed layout
 * (/usr/bin/node, /opt/cladnet), which a build machine need not have, so verify runs on a copy
 * whose node is the one running these tests and whose /opt/cladnet is this checkout; nothing
 * else in the copy changes.
 */
const REPO = path.resolve(__dirname, '..', '..');
const UNIT = path.join(REPO, 'systemd', 'cladnet.service');
const MAX_EXPOSURE = 2.5;
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'cladnet-unit-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

function analyze(args: string[]): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync('systemd-analyze', args, { encoding: 'utf8', timeout: 60_000, env: { ...process.env, SYSTEMD_COLORS: '0', SYSTEMD_PAGER: '' } });
  if (r.error) throw new Error(`systemd-analyze: ${r.error.message} (scripts/setup.sh test installs the systemd package)`);
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** A copy of the unit (same file name, so the unit name stays cladnet.service) with `edit` applied. */
function copyUnit(dir: string, edit: (text: string) => string): string {
  fs.mkdirSync(path.join(tmp, dir), { recursive: true });
  const file = path.join(tmp, dir, 'cladnet.service');
  fs.writeFileSync(file, edit(fs.readFileSync(UNIT, 'utf8')));
  return file;
}

const localPaths = (t: string): string =>
  t.replace(/^ExecStart=\/usr\/bin\/node /m, `ExecStart=${process.execPath} `).replaceAll('/opt/cladnet/', `${REPO}/`);

function exposure(out: string): number {
  const m = /Overall exposure level for cladnet\.service: (\d+(?:\.\d+)?) (\S+)/.exec(out);
  if (!m) throw new Error(`no exposure level in systemd-analyze output:\n${out}`);
  return Number(m[1]);
}

const unit = fs.readFileSync(UNIT, 'utf8');
const settings = (key: string): string[] =>
  [...unit.matchAll(new RegExp(`^${key}=(.*)$`, 'gm'))].map((m) => m[1]!.trim());

describe('systemd/cladnet.service', () => {
  it('passes systemd-analyze verify with nothing on stderr', () => {
    const file = copyUnit('ok', localPaths);
    expect(fs.readFileSync(file, 'utf8')).toContain(`ExecStart=${process.execPath} `);
    const r = analyze(['verify', file]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
  });

  it('would fail verify with a misspelt key (the check above can fail)', () => {
    const file = copyUnit('typo', (t) => localPaths(t).replace(/^NoNewPrivileges=/m, 'NoNewPrivilege='));
    const r = analyze(['verify', file]);
    expect(r.stderr).toMatch(/Unknown key 'NoNewPrivilege'/);
  });

  it(`is rated at most ${MAX_EXPOSURE} (OK) by systemd-analyze security --offline=yes`, () => {
    const r = analyze(['security', '--offline=yes', UNIT]);
    const level = exposure(r.stdout);
    console.log(`systemd-analyze security --offline=yes: exposure ${level}`);
    expect(level).toBeLessThanOrEqual(MAX_EXPOSURE);
    // And the same scale rates the unit without its hardening far worse (the number measures it).
    const bare = copyUnit('bare', (t) => t.slice(0, t.indexOf('# --- Hardening')) + '\n[Install]\nWantedBy=multi-user.target\n');
    expect(exposure(analyze(['security', '--offline=yes', bare]).stdout)).toBeGreaterThan(9);
  });

  it('is Type=notify with a watchdog, and only the main process may notify', () => {
    expect(settings('Type')).toEqual(['notify']);
    expect(settings('NotifyAccess')).toEqual(['main']);
    expect(settings('WatchdogSec')).toEqual(['20s']);
  });

  it('keeps CAP_NET_ADMIN only, the TUN device only, and the address families the agent uses', () => {
    expect(settings('CapabilityBoundingSet')).toEqual(['CAP_NET_ADMIN']);
    expect(settings('DevicePolicy')).toEqual(['closed']);
    expect(settings('DeviceAllow')).toEqual(['/dev/net/tun rw']);
    expect(settings('RestrictAddressFamilies')).toEqual(['AF_UNIX AF_INET AF_INET6 AF_NETLINK']);
    expect(settings('ProtectSystem')).toEqual(['strict']);
    // Writable besides StateDirectory/RuntimeDirectory: only the overlay's disable_ipv6 switch.
    expect(settings('ReadWritePaths')).toEqual(['-/proc/sys/net/ipv6/conf']);
    expect(settings('UMask')).toEqual(['0077']);
  });

  it('leaves out MemoryDenyWriteExecute (kills V8) and any allow-list syscall filter (SIGSYS on a call outside it)', () => {
    expect(settings('MemoryDenyWriteExecute')).toEqual([]);
    for (const f of settings('SystemCallFilter')) expect(f.startsWith('~')).toBe(true);
    expect(settings('SystemCallFilter').join(' ')).not.toMatch(/@system-service|@resources/);
  });

  it('starts node with exactly the agent\'s own Node flags (no re-exec needed under systemd)', () => {
    const exec = settings('ExecStart')[0]!.split(/\s+/);
    const script = exec.findIndex((a) => a === '/opt/cladnet/bin/cladnet.js');
    expect(script).toBeGreaterThan(0);
    const flags = exec.slice(1, script);
    expect(flags).toEqual([...AGENT_NODE_FLAGS]);
  });
});

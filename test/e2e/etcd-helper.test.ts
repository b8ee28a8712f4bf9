import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { createEtcd } from '../../src/control/etcd';
import { EtcdHandle, startEtcd } from '../helpers/etcd';

/** The test helper itself: fresh dirs and ports, restart on the same data, cleanup, netns mode. */

const handles: EtcdHandle[] = [];
afterAll(async () => {
  for (const h of handles) await h.stop();
});

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

describe('startEtcd', () => {
  it('gives each call its own data dir and ports, keeps data across a restart, and cleans up', async () => {
    const [a, b] = await Promise.all([startEtcd(), startEtcd()]);
    handles.push(a, b);
    expect(a.dataDir).not.toBe(b.dataDir);
    expect(new Set([a.clientPort, a.peerPort, b.clientPort, b.peerPort]).size).toBe(4);

    const client = createEtcd({ endpoints: [a.endpoint], dialTimeoutMs: 1000 });
    try {
      await client.put('k').value('v');
      const pid = a.pid()!;
      await a.stopProcess();
      expect(alive(pid)).toBe(false);
      expect(a.pid()).toBeNull();
      await a.startProcess();
      expect(a.pid()).not.toBe(pid);
      expect(await client.get('k').string()).toBe('v');
    } finally {
      client.close();
    }

    const pid = b.pid()!;
    await b.stop();
    expect(alive(pid)).toBe(false);
    expect(existsSync(b.dataDir)).toBe(false);
    await b.stop(); // twice is fine
  });

  const canNetns = process.getuid?.() === 0 && existsSync('/usr/sbin/ip');
  it.skipIf(!canNetns)('runs inside a network namespace', async () => {
    const ns = `cnetcd-${randomBytes(3).toString('hex')}`;
    execFileSync('ip', ['netns', 'add', ns]);
    try {
      execFileSync('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
      const h = await startEtcd({ netns: ns, host: '127.0.0.1' });
      handles.push(h);
      const health = execFileSync('ip', ['netns', 'exec', ns, 'curl', '-s', `${h.endpoint}/health`]).toString();
      expect(JSON.parse(health)).toMatchObject({ health: 'true' });
      const pid = h.pid()!;
      await h.stop();
      expect(alive(pid)).toBe(false);
    } finally {
      execFileSync('ip', ['netns', 'del', ns]);
    }
  });
});

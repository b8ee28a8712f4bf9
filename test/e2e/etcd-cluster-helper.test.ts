import { execFileSync } from 'node:child_process';
import { afterAll, describe, expect, it } from 'vitest';
import { createEtcd } from '../../src/control/etcd';
import { waitFor } from '../helpers/etcd';
import { EtcdCluster, startEtcdCluster } from '../helpers/etcd-cluster';

/** The 3-member cluster helper itself: leader lookup, kill/restart, partition/heal, cleanup. */

let cluster: EtcdCluster | null = null;
afterAll(async () => {
  await cluster?.stop();
});

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

describe('startEtcdCluster', () => {
  it('runs three members in their own namespaces; kill, restart, partition and heal do what they say; stop leaves nothing', async () => {
    const c = (cluster = await startEtcdCluster());
    expect(new Set(c.endpoints).size).toBe(3);
    const client = createEtcd({ endpoints: [...c.endpoints], dialTimeoutMs: 1000 });
    try {
      await client.put('k').value('v1');
      const first = await c.waitLeader();

      // Kill the leader: the other two elect a new one and still take writes.
      await c.kill(first);
      expect(c.pid(first)).toBeNull();
      const second = await c.waitLeader(5000);
      expect(second).not.toBe(first);
      await waitFor(() => client.put('k').value('v2').then(() => true, () => false), 5000, 'a write after the leader kill');
      await c.restart(first);
      await waitFor(async () => (await c.status(first))?.leader === (await c.status(second))?.memberId || null, 5000, 'the restarted member to follow');

      // Cut a follower off: it loses the leader, the other two keep theirs; healed, it follows again.
      const follower = [0, 1, 2].find((i) => i !== second)!;
      await c.partition(follower);
      await waitFor(async () => (await c.status(follower))?.leader === '0' || null, 5000, 'the cut-off member to lose its leader');
      expect(await c.leader()).not.toBe(follower);
      await c.heal(follower);
      await waitFor(async () => ((await c.status(follower))?.leader ?? '0') !== '0' || null, 5000, 'the healed member to find a leader');
      expect(await client.get('k').string()).toBe('v2');
    } finally {
      client.close();
    }

    const pids = [0, 1, 2].map((i) => c.pid(i)!);
    await c.stop();
    for (const pid of pids) expect(alive(pid)).toBe(false);
    const netns = execFileSync('ip', ['netns', 'list']).toString();
    for (const ns of c.namespaces) expect(netns).not.toContain(ns);
    expect(execFileSync('ip', ['-br', 'link']).toString()).not.toContain(c.bridge);
    await c.stop(); // twice is fine
  }, 60_000);
});

import { EventEmitter } from 'node:events';
import type { Etcd3 } from 'etcd3';
import { describe, expect, it } from 'vitest';
import { EtcdLink } from '../../src/control/etcd-link';
import { Liveness, type KeepaliveRoute } from '../../src/control/liveness';
import { createRootLogger } from '../../src/log';

/**
 * Liveness with `via` (several etcd members): keepalives go to the member the route holds, and a
 * move to another member ends a hung keepalive and retries it there at once.
 */

interface Member {
  name: string;
  hung: boolean;
  writes: Array<{ id: string; at: number }>;
  client: Etcd3;
}

function member(name: string, hung: boolean, t0: number): Member {
  const m: Member = { name, hung, writes: [], client: null as unknown as Etcd3 };
  m.client = {
    leaseClient: {
      leaseKeepAlive: async () => {
        const stream = new EventEmitter() as EventEmitter & { write(req: { ID: string }): void; end(): void };
        stream.write = (req) => {
          m.writes.push({ id: req.ID, at: Date.now() - t0 });
          if (!m.hung) setImmediate(() => stream.emit('data', { ID: req.ID, TTL: '3' }));
        };
        stream.end = () => undefined;
        return stream;
      },
    },
  } as unknown as Etcd3;
  return m;
}

/** The pooled client: grants lease 42 and puts the key; its own keepalive must not be used. */
function pooledClient(): { client: Etcd3; pooledKeepalives: () => number } {
  let pooled = 0;
  const lease = {
    on: () => lease,
    grant: async () => '42',
    put: () => ({ value: () => ({ exec: async () => ({}) }) }),
    keepaliveOnce: async () => void pooled++,
    release: () => undefined,
    revoke: async () => undefined,
  };
  return { client: { lease: () => lease } as unknown as Etcd3, pooledKeepalives: () => pooled };
}

describe('Liveness via a member route', () => {
  it('sends keepalives to the route’s member and, when the route moves, retries a hung one on the new member at once', async () => {
    const t0 = Date.now();
    const log = createRootLogger('silent');
    const link = new EtcdLink({ log });
    const a = member('a', true, t0);
    const b = member('b', false, t0);
    let current = a;
    const listeners = new Set<() => void>();
    const via: KeepaliveRoute = {
      client: () => current.client,
      onMove: (fn) => {
        listeners.add(fn);
        return () => void listeners.delete(fn);
      },
    };
    const { client, pooledKeepalives } = pooledClient();
    const alive = new Liveness({ client, key: '/k', value: () => 'v', ttlSec: 3, log, link, via, callTimeoutMs: 5000 });
    try {
      await alive.start();
      // First keepalive after TTL/3 = 1 s, to member a, which hangs.
      await new Promise((r) => setTimeout(r, 1300));
      expect(a.writes).toHaveLength(1);
      expect(a.writes[0]!.id).toBe('42');
      expect(b.writes).toHaveLength(0);
      const movedAt = Date.now() - t0;
      current = b;
      for (const fn of [...listeners]) fn();
      await new Promise((r) => setTimeout(r, 100));
      expect(b.writes).toHaveLength(1);
      expect(b.writes[0]!.at - movedAt).toBeLessThan(100); // at once, not after another TTL/3
      expect(link.state()).not.toBe('down'); // a move is not an etcd outage
      expect(listeners.size).toBe(0); // the hung exchange let go of its subscription
      // Then the normal rhythm on b.
      await new Promise((r) => setTimeout(r, 1100));
      expect(b.writes.length).toBe(2);
      expect(pooledKeepalives()).toBe(0);
    } finally {
      await alive.stop();
      link.close();
    }
  });
});

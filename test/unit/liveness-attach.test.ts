import type { Etcd3 } from 'etcd3';
import { describe, expect, it } from 'vitest';
import { EtcdLink } from '../../src/control/etcd-link';
import { Liveness } from '../../src/control/liveness';
import { createRootLogger } from '../../src/log';

/**
 * Keys attached to the liveness lease (the agent's view, /views/<name>): written beside the alive
 * key, fire and forget, nothing while etcd is down, coalesced to the newest value, written again
 * on a new lease, and gone with the lease on stop.
 */
interface Put {
  lease: string;
  key: string;
  value: string;
}

function fakeClient() {
  const puts: Put[] = [];
  let grants = 0;
  let hold: Promise<void> | null = null;
  let lostNext = false;
  let refuse = false;
  let attempts = 0;
  const revoked: string[] = [];
  const client = {
    lease: () => {
      const id = String(++grants);
      const lease = {
        on: () => lease,
        grant: async () => id,
        put: (key: string) => ({
          value: (value: string) => ({
            exec: async () => {
              if (key !== '/alive/h1') attempts++;
              if (refuse && key !== '/alive/h1') throw new Error('etcdserver: permission denied');
              if (hold && key !== '/alive/h1') await hold;
              puts.push({ lease: id, key, value });
              return {};
            },
          }),
        }),
        keepaliveOnce: async () => {
          if (lostNext) {
            lostNext = false;
            const e = new Error('lease expired');
            e.name = 'EtcdLeaseInvalidError';
            throw e;
          }
        },
        release: () => undefined,
        revoke: async () => void revoked.push(id),
      };
      return lease;
    },
  } as unknown as Etcd3;
  return {
    client,
    puts,
    revoked,
    hold(): () => void {
      let release!: () => void;
      hold = new Promise((r) => (release = r));
      return () => {
        hold = null;
        release();
      };
    },
    loseLease: () => (lostNext = true),
    refuse: (on: boolean) => (refuse = on),
    attempts: () => attempts,
  };
}

const settle = () => new Promise((r) => setTimeout(r, 20));
const viewPuts = (puts: Put[]) => puts.filter((p) => p.key === '/views/h1').map((p) => `${p.lease}:${p.value}`);

describe('Liveness.attach', () => {
  it('writes an attached key on the lease after the alive key, and only the newest of values given while one write is in flight', async () => {
    const log = createRootLogger('silent');
    const f = fakeClient();
    const alive = new Liveness({ client: f.client, key: '/alive/h1', value: () => 'a', ttlSec: 30, log, link: new EtcdLink({ log }) });
    try {
      alive.attach('/views/h1', 'v0');
      await alive.start();
      await settle();
      expect(f.puts.map((p) => `${p.lease}:${p.key}`)).toEqual(['1:/alive/h1', '1:/views/h1']);
      const release = f.hold();
      alive.attach('/views/h1', 'v1'); // in flight, held
      alive.attach('/views/h1', 'v2');
      alive.attach('/views/h1', 'v3');
      await settle();
      release();
      await settle();
      expect(viewPuts(f.puts)).toEqual(['1:v0', '1:v1', '1:v3']);
    } finally {
      await alive.stop();
    }
    expect(f.revoked).toEqual(['1']); // the view goes with the lease
    alive.attach('/views/h1', 'after stop');
    await settle();
    expect(viewPuts(f.puts)).toEqual(['1:v0', '1:v1', '1:v3']);
  });

  it('writes nothing while the etcd link is down, and the newest value after the next keepalive gets through', async () => {
    const log = createRootLogger('silent');
    const f = fakeClient();
    const link = new EtcdLink({ log });
    const alive = new Liveness({ client: f.client, key: '/alive/h1', value: () => 'a', ttlSec: 3, log, link });
    try {
      await alive.start();
      link.failed(new Error('etcd unreachable'));
      alive.attach('/views/h1', 'v1');
      alive.attach('/views/h1', 'v2');
      await settle();
      expect(viewPuts(f.puts)).toEqual([]);
      link.ok(); // another loop got through; our keepalive (every TTL/3 = 1 s) sends the held value
      await new Promise((r) => setTimeout(r, 1200));
      expect(viewPuts(f.puts)).toEqual(['1:v2']);
    } finally {
      await alive.stop();
    }
  });

  it('writes the attached key again on a new lease when the old one is lost', async () => {
    const log = createRootLogger('silent');
    const f = fakeClient();
    const alive = new Liveness({ client: f.client, key: '/alive/h1', value: () => 'a', ttlSec: 3, log, link: new EtcdLink({ log }) });
    try {
      await alive.start();
      alive.attach('/views/h1', 'v1');
      await settle();
      f.loseLease();
      await new Promise((r) => setTimeout(r, 1200));
      expect(f.puts.map((p) => `${p.lease}:${p.key}`)).toEqual(['1:/alive/h1', '1:/views/h1', '2:/alive/h1', '2:/views/h1']);
      expect(viewPuts(f.puts)).toEqual(['1:v1', '2:v1']);
    } finally {
      await alive.stop();
    }
  });

  it('tries a key etcd refuses (no RBAC grant) once per value, not after every keepalive', async () => {
    const log = createRootLogger('silent');
    const f = fakeClient();
    const alive = new Liveness({ client: f.client, key: '/alive/h1', value: () => 'a', ttlSec: 3, log, link: new EtcdLink({ log }) });
    try {
      await alive.start();
      f.refuse(true);
      alive.attach('/views/h1', 'v1');
      await new Promise((r) => setTimeout(r, 2300)); // two keepalives
      expect(f.attempts()).toBe(1);
      f.refuse(false);
      alive.attach('/views/h1', 'v2');
      await settle();
      expect(f.attempts()).toBe(2);
      expect(viewPuts(f.puts)).toEqual(['1:v2']);
    } finally {
      await alive.stop();
    }
  });
});

import type { Etcd3 } from 'etcd3';
import { describe, expect, it } from 'vitest';
import { Publisher } from '../../src/control/publisher';
import type { HostRecord, NetworkSpec } from '../../src/control/records';
import { isCladnetError } from '../../src/errors';
import { silentLogger } from '../../src/log';
import { parseOverlayCidr } from '../../src/util/ipv4';

/**
 * Publisher.abort(): a publish whose etcd call went out on a connection that died with our old
 * address must not hold up the next publish (issue 16, "address-change recovery is bimodal").
 * The fake client below answers reads and transactions like etcd's single key, and can hang
 * its next call until released (a call on the dead connection); later calls pass (fresh ones).
 */

const spec: NetworkSpec = { version: 1, name: 'demo', cidr: '100.64.0.0/16', mtu: 1420, port: 51820, created: '2026-11-21T00:00:00.000Z' };
const record = (endpoint: string): HostRecord => ({
  version: 1,
  name: 'a',
  network: 'demo',
  overlayIp: '100.64.0.5',
  publicKey: Buffer.alloc(32, 7).toString('base64'),
  endpoints: [endpoint],
  hostCidrs: [],
  listenPort: 51820,
  epoch: 1,
  updated: '2026-12-02T00:00:00.000Z',
  session: '0123456789abcdef',
});

function fakeEtcd() {
  let stored: { value: Buffer; mod: number } | null = null;
  let revision = 10;
  let hangOne = false;
  const hung: Array<() => void> = [];
  /** The first call after hangNext() waits until release(). */
  const gate = async (): Promise<void> => {
    if (!hangOne) return;
    hangOne = false;
    await new Promise<void>((r) => hung.push(r));
  };
  const client = {
    get: () => ({
      exec: async () => {
        await gate();
        return { kvs: stored ? [{ value: stored.value, mod_revision: String(stored.mod) }] : [] };
      },
    }),
    put: () => ({ value: (v: string) => ({ v }) }),
    if: (_k: string, field: 'Mod' | 'Create', _op: string, want: string | number) => ({
      then: (put: { v: string }) => ({
        commit: async () => {
          await gate();
          const ok = field === 'Create' ? stored === null : stored !== null && String(stored.mod) === String(want);
          if (ok) stored = { value: Buffer.from(put.v), mod: ++revision };
          return { succeeded: ok, header: { revision: String(revision) } };
        },
      }),
    }),
  };
  return {
    client: client as unknown as Etcd3,
    stored: () => (stored ? (JSON.parse(stored.value.toString('utf8')) as HostRecord) : null),
    hangNext: () => void (hangOne = true),
    release: () => {
      for (const r of hung.splice(0)) r();
    },
  };
}

function publisher(client: Etcd3): Publisher {
  return new Publisher({ client, network: spec, cidr: parseOverlayCidr(spec.cidr), self: 'a', log: silentLogger, now: Date.now, closed: () => false });
}

describe('Publisher.abort', () => {
  it('rejects the publish stuck on a dead call at once (EABORTED), and the next publish lands without waiting for it', async () => {
    const etcd = fakeEtcd();
    const pub = publisher(etcd.client);
    await pub.publish(record('198.18.1.2:51820'));
    expect(etcd.stored()?.endpoints).toEqual(['198.18.1.2:51820']);

    etcd.hangNext();
    const stuck = pub.publish(record('198.18.1.2:51820'));
    const stuckOutcome = stuck.then(
      () => 'resolved',
      (e: unknown) => (isCladnetError(e, 'EABORTED') ? 'EABORTED' : `other: ${String(e)}`),
    );
    await new Promise((r) => setTimeout(r, 10));
    expect(pub.abort()).toBe(true);
    expect(await stuckOutcome).toBe('EABORTED');

    // The abandoned call still hangs (a dead connection) while the next publish lands.
    const res = await pub.publish(record('198.18.1.3:51820'));
    expect(res.written).toBe(true);
    expect(etcd.stored()?.endpoints).toEqual(['198.18.1.3:51820']);
    etcd.release();
  });

  it('a late answer to the abandoned call changes nothing: its transaction loses to the newer write', async () => {
    const etcd = fakeEtcd();
    const pub = publisher(etcd.client);
    await pub.publish(record('198.18.1.2:51820'));
    const first = etcd.stored()!.epoch;
    // Hang the read of a publish of the old endpoint, abandon it, publish the new endpoint.
    etcd.hangNext();
    const stuck = pub.publish(record('198.18.1.2:51820')).catch(() => undefined);
    await new Promise((r) => setTimeout(r, 10));
    pub.abort();
    await stuck;
    etcd.release(); // the abandoned read answers now; nothing acts on it any more
    await pub.publish(record('198.18.1.3:51820'));
    await new Promise((r) => setTimeout(r, 10));
    expect(etcd.stored()?.endpoints).toEqual(['198.18.1.3:51820']);
    expect(etcd.stored()!.epoch).toBeGreaterThan(first);
  });

  it('abort() with nothing in flight is a no-op (false)', async () => {
    const etcd = fakeEtcd();
    const pub = publisher(etcd.client);
    expect(pub.abort()).toBe(false);
    await pub.publish(record('198.18.1.2:51820'));
    expect(pub.abort()).toBe(false);
  });
});

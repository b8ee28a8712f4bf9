import type { Etcd3 } from 'etcd3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createEtcd } from '../../src/control/etcd';
import { leaseKey } from '../../src/control/keys';
import { leaseOverlayIp, listLeases, releaseOverlayIp } from '../../src/control/leases';
import { createNetwork } from '../../src/control/networks';
import { NetworkSpec } from '../../src/control/records';
import { CladnetError } from '../../src/errors';
import { contains, parseIpv4, parsePrefix } from '../../src/util/ipv4';
import { EtcdHandle, startEtcd } from '../helpers/etcd';

const key = (n: number) => Buffer.alloc(32, n).toString('base64');

let etcd: EtcdHandle;
let client: Etcd3;

beforeAll(async () => {
  etcd = await startEtcd();
  client = createEtcd({ endpoints: [etcd.endpoint] });
});

afterAll(async () => {
  client?.close();
  await etcd?.stop();
});

describe('overlay IP leases against a real etcd', () => {
  let spec: NetworkSpec;
  beforeAll(async () => {
    spec = await createNetwork(client, { name: 'demo', cidr: '100.64.0.0/24' });
  });

  it('eight agents on eight clients, started at once, get eight distinct usable IPs', async () => {
    const clients = Array.from({ length: 8 }, () => createEtcd({ endpoints: [etcd.endpoint] }));
    try {
      const ips = await Promise.all(clients.map((c, i) => leaseOverlayIp(c, spec, `node-${i}`, key(i))));
      expect(new Set(ips).size).toBe(8);
      const prefix = parsePrefix('100.64.0.0/24')!;
      for (const ip of ips) {
        expect(contains(prefix, parseIpv4(ip)!)).toBe(true);
        expect(ip).not.toBe('100.64.0.0');
        expect(ip).not.toBe('100.64.0.255');
      }
      const leases = await listLeases(client, 'demo');
      expect(leases.size).toBe(8);
      for (let i = 0; i < 8; i++) expect(leases.get(ips[i]!)!.record).toMatchObject({ version: 1, host: `node-${i}`, publicKey: key(i) });
    } finally {
      for (const c of clients) c.close();
    }
  });

  it('eight agents racing for a /29 (6 addresses): six win distinct IPs, two get EEXHAUSTED', async () => {
    const small = await createNetwork(client, { name: 'tiny', cidr: '100.64.1.0/29' });
    const clients = Array.from({ length: 8 }, () => createEtcd({ endpoints: [etcd.endpoint] }));
    try {
      // Same-looking names make start-point collisions likely; the txn must still keep them apart.
      const results = await Promise.allSettled(clients.map((c, i) => leaseOverlayIp(c, small, `h${i}`, key(i))));
      const won = results.filter((r): r is PromiseFulfilledResult<string> => r.status === 'fulfilled').map((r) => r.value);
      expect(new Set(won).size).toBe(6);
      expect(won.length).toBe(6);
      for (const r of results) {
        if (r.status === 'rejected') {
          expect((r.reason as CladnetError).code).toBe('EEXHAUSTED');
          expect((r.reason as Error).message).toBe('network tiny (100.64.1.0/29) has no free overlay address: 6 of 6 leased');
        }
      }
    } finally {
      for (const c of clients) c.close();
    }
  });

  it('a restarted host (same name, new client) gets its IP back', async () => {
    const first = await leaseOverlayIp(client, spec, 'web', key(20));
    const again = createEtcd({ endpoints: [etcd.endpoint] });
    try {
      expect(await leaseOverlayIp(again, spec, 'web', key(20))).toBe(first);
      // Reinstalled with a new key: same IP, and the lease records the new key.
      expect(await leaseOverlayIp(again, spec, 'web', key(21))).toBe(first);
      expect((await listLeases(client, 'demo')).get(first)!.record!.publicKey).toBe(key(21));
    } finally {
      again.close();
    }
  });

  it('an unreadable lease still occupies its address', async () => {
    const net = await createNetwork(client, { name: 'junk', cidr: '100.64.2.0/30' }); // .1 and .2 usable
    await client.put(leaseKey('junk', '100.64.2.1')).value('not json');
    expect(await leaseOverlayIp(client, net, 'a', key(1))).toBe('100.64.2.2');
    await expect(leaseOverlayIp(client, net, 'b', key(2))).rejects.toMatchObject({
      code: 'EEXHAUSTED',
      message: 'network junk (100.64.2.0/30) has no free overlay address: 2 of 2 leased',
    });
  });

  it('releaseOverlayIp frees only that host\'s lease, and the address can be leased again', async () => {
    const net = await createNetwork(client, { name: 'rel', cidr: '100.64.3.0/30' });
    const a = await leaseOverlayIp(client, net, 'a', key(1));
    const b = await leaseOverlayIp(client, net, 'b', key(2));
    await expect(leaseOverlayIp(client, net, 'c', key(3))).rejects.toMatchObject({ code: 'EEXHAUSTED' });
    expect(await releaseOverlayIp(client, 'rel', 'a')).toEqual([a]);
    expect(await releaseOverlayIp(client, 'rel', 'a')).toEqual([]);
    expect(await leaseOverlayIp(client, net, 'c', key(3))).toBe(a);
    expect((await listLeases(client, 'rel')).get(b)!.record!.host).toBe('b');
  });

  it('refuses a malformed public key with EKEY before touching etcd', async () => {
    await expect(leaseOverlayIp(client, spec, 'k', 'short')).rejects.toMatchObject({ code: 'EKEY', field: 'publicKey' });
    expect([...(await listLeases(client, 'demo')).values()].some((l) => l.record?.host === 'k')).toBe(false);
  });
});

import type { Etcd3 } from 'etcd3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createEtcd } from '../../src/control/etcd';
import { hostKey, leaseKey, networkKey } from '../../src/control/keys';
import { createNetwork, deleteNetwork, getNetwork, listNetworks } from '../../src/control/networks';
import { CladnetError, isCladnetError } from '../../src/errors';
import { EtcdHandle, freePort, startEtcd } from '../helpers/etcd';

let etcd: EtcdHandle;
let client: Etcd3;
const clock = () => new Date('2026-11-21T01:02:03.000Z');

beforeAll(async () => {
  etcd = await startEtcd();
  client = createEtcd({ endpoints: [etcd.endpoint] });
});

afterAll(async () => {
  client?.close();
  await etcd?.stop();
});

async function rejection(p: Promise<unknown>): Promise<CladnetError> {
  try {
    await p;
  } catch (e) {
    if (e instanceof CladnetError) return e;
    throw e;
  }
  throw new Error('expected a rejection');
}

describe('networks against a real etcd', () => {
  it('creates with defaults, gets, and lists', async () => {
    const spec = await createNetwork(client, { name: 'demo', cidr: '100.64.0.0/24' }, clock);
    // serial: the creation time in Unix seconds (nextSpecSerial)
    const serial = Date.parse('2026-11-21T01:02:03.000Z') / 1000;
    expect(spec).toEqual({ version: 1, name: 'demo', cidr: '100.64.0.0/24', mtu: 1420, port: 51820, created: '2026-11-21T01:02:03.000Z', serial });
    expect(await getNetwork(client, 'demo')).toEqual(spec);
    expect(JSON.parse((await client.get(networkKey('demo')).string())!)).toEqual(spec);

    const other = await createNetwork(client, { name: 'alpha', cidr: '10.8.0.0/16', mtu: 1380, port: 4000 }, clock);
    expect(other.mtu).toBe(1380);
    expect(other.port).toBe(4000);
    expect((await listNetworks(client)).map((n) => n.name)).toEqual(['alpha', 'demo']);
  });

  it('lists only keys with one path segment after networks/ (children share the prefix)', async () => {
    await client.put(hostKey('demo', 'a')).value('{"not":"a spec"}');
    await client.put(leaseKey('demo', '100.64.0.5')).value('{}');
    await client.put('/cladnet/v1/networks/demo/hosts/x/deeper').value('junk');
    expect((await listNetworks(client)).map((n) => n.name)).toEqual(['alpha', 'demo']);
  });

  it('skips an invalid stored spec in the list, and getNetwork names the bad field', async () => {
    await client.put(networkKey('broken')).value(JSON.stringify({ version: 1, name: 'broken', cidr: '8.8.0.0/16', mtu: 1420, port: 1, created: '2026-11-21T00:00:00Z' }));
    expect((await listNetworks(client)).map((n) => n.name)).toEqual(['alpha', 'demo']);
    const err = await rejection(getNetwork(client, 'broken'));
    expect(err.code).toBe('ERECORD');
    expect(err.message).toMatch(/cidr: 8\.8\.0\.0\/16 is not inside a private/);
    await client.delete().key(networkKey('broken'));
  });

  it('refuses a duplicate name with ENETEXISTS and leaves the first spec alone', async () => {
    const err = await rejection(createNetwork(client, { name: 'demo', cidr: '10.9.0.0/16' }));
    expect(err.code).toBe('ENETEXISTS');
    expect((await getNetwork(client, 'demo')).cidr).toBe('100.64.0.0/24');
  });

  it('creating the same name concurrently succeeds exactly once', async () => {
    const results = await Promise.allSettled(
      Array.from({ length: 6 }, (_, i) => createNetwork(client, { name: 'race', cidr: `10.${20 + i}.0.0/16` })),
    );
    const ok = results.filter((r) => r.status === 'fulfilled');
    expect(ok).toHaveLength(1);
    for (const r of results) if (r.status === 'rejected') expect(isCladnetError(r.reason, 'ENETEXISTS')).toBe(true);
    expect((await getNetwork(client, 'race')).cidr).toBe((ok[0] as PromiseFulfilledResult<{ cidr: string }>).value.cidr);
    await deleteNetwork(client, 'race');
  });

  it.each([
    ['malformed', '100.64.0.0/33', /^cidr: "100\.64\.0\.0\/33" is not a valid IPv4 CIDR/],
    ['not a cidr', 'banana', /^cidr: "banana" is not a valid IPv4 CIDR: expected a\.b\.c\.d\/len/],
    ['public', '8.8.0.0/16', /^cidr: 8\.8\.0\.0\/16 is not inside a private/],
    ['host bits set', '10.1.2.3/16', /^cidr: .*host bits are set \(did you mean 10\.1\.0\.0\/16\?\)/],
    ['too small', '10.1.2.0/31', /^cidr: prefix length \/31/],
  ])('refuses a %s CIDR with ECIDR naming the field, writing nothing', async (_what, cidr, re) => {
    const err = await rejection(createNetwork(client, { name: 'bad', cidr }));
    expect(err.code).toBe('ECIDR');
    expect(err.field).toBe('cidr');
    expect(err.message).toMatch(re);
    expect(await client.get(networkKey('bad')).string()).toBeNull();
  });

  it('refuses bad names, mtu and port with ECONFIG naming the field', async () => {
    for (const [input, field] of [
      [{ name: 'Bad', cidr: '10.1.0.0/16' }, 'name'],
      [{ name: 'ok', cidr: '10.1.0.0/16', mtu: 100 }, 'mtu'],
      [{ name: 'ok', cidr: '10.1.0.0/16', port: 0 }, 'port'],
    ] as const) {
      const err = await rejection(createNetwork(client, input));
      expect([err.code, err.field]).toEqual(['ECONFIG', field]);
    }
  });

  it('getNetwork of an unknown name is ENONET', async () => {
    expect((await rejection(getNetwork(client, 'nope'))).code).toBe('ENONET');
  });

  it('deletes the spec and its whole subtree, but not a network whose name extends it', async () => {
    await createNetwork(client, { name: 'demo2', cidr: '10.30.0.0/16' });
    await client.put(hostKey('demo2', 'keep')).value('x');
    await deleteNetwork(client, 'demo');
    expect((await rejection(getNetwork(client, 'demo'))).code).toBe('ENONET');
    expect(await client.getAll().prefix('/cladnet/v1/networks/demo/').keys()).toEqual([]);
    expect(await client.get(hostKey('demo2', 'keep')).string()).toBe('x');
    expect((await listNetworks(client)).map((n) => n.name)).toEqual(['alpha', 'demo2']);
    expect((await rejection(deleteNetwork(client, 'demo'))).code).toBe('ENONET');
  });

  it('an unreachable etcd is a transient EETCD within the dial timeout', async () => {
    const port = await freePort();
    const dead = createEtcd({ endpoints: [`127.0.0.1:${port}`], dialTimeoutMs: 1000 });
    try {
      const t0 = Date.now();
      const err = await rejection(getNetwork(dead, 'demo'));
      expect(err.code).toBe('EETCD');
      expect(err.transient).toBe(true);
      expect(Date.now() - t0).toBeLessThan(5000);
    } finally {
      dead.close();
    }
  });
});

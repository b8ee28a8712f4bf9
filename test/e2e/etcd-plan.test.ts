import type { Etcd3 } from 'etcd3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createEtcd } from '../../src/control/etcd';
import { hostKey } from '../../src/control/keys';
import { createNetwork } from '../../src/control/networks';
import { recommend } from '../../src/control/plan';
import { HostRecord, serializeHostRecord } from '../../src/control/records';
import { overlaps, parsePrefix } from '../../src/util/ipv4';
import { EtcdHandle, startEtcd } from '../helpers/etcd';

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

function host(network: string, name: string, overlayIp: string, hostCidrs: string[], endpoints: string[]): HostRecord {
  return {
    version: 1,
    name,
    network,
    overlayIp,
    publicKey: Buffer.alloc(32, 3).toString('base64'),
    endpoints,
    hostCidrs,
    listenPort: 51820,
    epoch: 1,
    updated: '2026-11-21T00:00:00Z',
    session: '0123456789abcdef',
  };
}

describe('recommend against a real etcd', () => {
  it('with an empty etcd proposes the first CGNAT /16s', async () => {
    expect(await recommend(client)).toEqual({
      prefixLen: 16,
      candidates: ['100.64.0.0/16', '100.65.0.0/16', '100.66.0.0/16', '100.67.0.0/16', '100.68.0.0/16'],
      used: [],
      skippedRecords: 0,
    });
  });

  it('avoids existing networks, host networks and endpoint addresses; skips unreadable records', async () => {
    await createNetwork(client, { name: 'one', cidr: '100.64.0.0/15' });
    await createNetwork(client, { name: 'two', cidr: '10.1.0.0/16' });
    await client.put(hostKey('one', 'a')).value(serializeHostRecord(host('one', 'a', '100.64.0.1', ['100.66.0.0/20', '10.2.0.0/16'], ['100.67.1.1:51820'])));
    await client.put(hostKey('one', 'b')).value(serializeHostRecord(host('one', 'b', '100.64.0.2', ['192.168.7.0/24'], [])));
    await client.put(hostKey('two', 'bad')).value('{"version":1}');
    const r = await recommend(client, { prefixLen: 16, limit: 4 });
    expect(r.candidates).toEqual(['100.68.0.0/16', '100.69.0.0/16', '100.70.0.0/16', '100.71.0.0/16']);
    expect(r.used).toEqual(['10.1.0.0/16', '10.2.0.0/16', '100.64.0.0/15', '100.64.0.1/32', '100.64.0.2/32', '100.66.0.0/20', '100.67.1.1/32', '192.168.7.0/24']);
    expect(r.skippedRecords).toBe(1);
    for (const c of r.candidates) for (const u of r.used) expect(overlaps(parsePrefix(c)!, parsePrefix(u)!)).toBe(false);
  });

  it('validates prefixLen', async () => {
    await expect(recommend(client, { prefixLen: 4 })).rejects.toMatchObject({ code: 'ECONFIG', field: 'prefixLen' });
  });
});

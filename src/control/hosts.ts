/** Read-only listing of a network's hosts, for `cladnet network show`. */
import type { Etcd3 } from 'etcd3';
import { etcdPages, readPrefix } from './range';
import { networkPrefix, parseKey } from './keys';
import { parseHostRecord, type HostRecord } from './records';

export interface HostListing extends HostRecord {
  alive: boolean;
}

export async function listHosts(client: Etcd3, net: string): Promise<HostListing[]> {
  const res = await readPrefix(etcdPages(client), networkPrefix(net));
  const records: HostRecord[] = [];
  const alive = new Set<string>();
  for (const kv of res.kvs) {
    const k = parseKey(kv.key);
    if (k?.kind === 'alive') alive.add(k.name);
    if (k?.kind !== 'host') continue;
    const r = parseHostRecord(kv.value, { network: net, name: k.name });
    if (r.ok) records.push(r.value);
  }
  return records.sort((a, b) => a.name.localeCompare(b.name)).map((r) => ({ ...r, alive: alive.has(r.name) }));
}

import type { Etcd3 } from 'etcd3';
import { CladnetError } from '../errors';
import type { Logger } from '../log';
import { formatPrefix, parseOverlayCidr } from '../util/ipv4';
import { etcdCall } from './etcd';
import { etcdPages, readPrefix } from './range';
import { checkName, networkKey, networkPrefix, NETWORKS_ROOT, parseKey, viewsPrefix } from './keys';
import { DEFAULT_MTU, DEFAULT_PORT, isBase64Of, MTU_MAX, MTU_MIN, NetworkSpec, parseNetworkSpec, serializeNetworkSpec } from './records';

/** Network specs: create (atomically, refusing an existing name), get, list, delete. */

export interface CreateNetworkInput {
  name: string;
  cidr: string;
  mtu?: number;
  port?: number;
  /** base64 Ed25519 public key of the network key (`cladnet network create` always sets one). */
  trustAnchor?: string;
}

function checkInt(v: number, field: string, min: number, max: number): number {
  if (!Number.isInteger(v) || v < min || v > max) {
    throw new CladnetError('ECONFIG', `${field}: ${String(v)} must be an integer in ${min}..${max}`, { field });
  }
  return v;
}

/**
 * The serial for a spec signed at `now` that replaces `stored`: the time in Unix seconds, or one
 * more than the stored serial when that is already as large. Time keeps serials growing even when
 * the stored spec is an earlier one an etcd writer put back (the operator signs over it), and
 * after a network is deleted and made again under the same name and key.
 */
export function nextSpecSerial(stored: NetworkSpec | null, now: Date): number {
  return Math.max((stored?.serial ?? 0) + 1, Math.floor(now.getTime() / 1000));
}

/** Builds and validates a spec without touching etcd (throws ECONFIG / ECIDR naming the field). */
export function buildNetworkSpec(input: CreateNetworkInput, clock: () => Date = () => new Date()): NetworkSpec {
  const now = clock();
  const name = checkName(input.name, 'name');
  const prefix = parseOverlayCidr(input.cidr, 'cidr');
  const spec: NetworkSpec = {
    version: 1,
    name,
    cidr: formatPrefix(prefix),
    mtu: checkInt(input.mtu ?? DEFAULT_MTU, 'mtu', MTU_MIN, MTU_MAX),
    port: checkInt(input.port ?? DEFAULT_PORT, 'port', 1, 65535),
    created: now.toISOString(),
    serial: nextSpecSerial(null, now),
  };
  if (input.trustAnchor !== undefined) {
    if (!isBase64Of(input.trustAnchor, 32)) {
      throw new CladnetError('ECONFIG', 'trustAnchor: not base64 of a 32-byte Ed25519 public key', { field: 'trustAnchor' });
    }
    spec.trustAnchor = input.trustAnchor;
  }
  return Object.freeze(spec);
}

/** `seal` signs the spec before it is written (`createNetworkWithKey` passes the network key's). */
export async function createNetwork(
  client: Etcd3,
  input: CreateNetworkInput,
  clock?: () => Date,
  seal?: (spec: NetworkSpec) => NetworkSpec,
): Promise<NetworkSpec> {
  const built = buildNetworkSpec(input, clock);
  const spec = seal ? seal(built) : built;
  const key = networkKey(spec.name);
  const res = await etcdCall(`create network ${spec.name}`, () =>
    client.if(key, 'Create', '==', 0).then(client.put(key).value(serializeNetworkSpec(spec))).commit(),
  );
  if (!res.succeeded) {
    throw new CladnetError('ENETEXISTS', `network ${spec.name} already exists`, { field: 'name' });
  }
  return spec;
}

/** Throws ENONET when absent, ERECORD when the stored spec is invalid. */
export async function getNetwork(client: Etcd3, name: string): Promise<NetworkSpec> {
  checkName(name, 'network');
  const raw = await etcdCall(`get network ${name}`, () => client.get(networkKey(name)).buffer());
  if (raw === null) throw new CladnetError('ENONET', `network ${name} does not exist`, { field: 'network' });
  const parsed = parseNetworkSpec(raw, { name });
  if (!parsed.ok) throw new CladnetError('ERECORD', `network ${name}: stored spec is invalid: ${parsed.error}`);
  return parsed.value;
}

/**
 * All networks, sorted by name. Only keys with exactly one segment after `networks/` are specs
 * (the children share the prefix). Invalid specs are skipped and reported through `log`.
 */
export async function listNetworks(client: Etcd3, log?: Logger): Promise<NetworkSpec[]> {
  const res = await readPrefix(etcdPages(client), NETWORKS_ROOT);
  const out: NetworkSpec[] = [];
  for (const kv of res.kvs) {
    const parsedKey = parseKey(kv.key);
    if (parsedKey?.kind !== 'network') continue;
    const parsed = parseNetworkSpec(kv.value, { name: parsedKey.network });
    if (parsed.ok) out.push(parsed.value);
    else log?.warn({ key: kv.key.toString(), error: parsed.error }, 'skipping invalid network spec');
  }
  return out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

/**
 * Deletes the spec and everything under it (hosts, leases, alive keys), and the hosts' views, in one transaction.
 * Throws ENONET when there was no spec (orphaned children are removed anyway).
 */
export async function deleteNetwork(client: Etcd3, name: string): Promise<void> {
  const key = networkKey(name);
  const res = await etcdCall(`delete network ${name}`, () =>
    client
      .if(key, 'Create', '>', 0)
      .then(client.delete().key(key), client.delete().prefix(networkPrefix(name)), client.delete().prefix(viewsPrefix(name)))
      .else(client.delete().prefix(networkPrefix(name)), client.delete().prefix(viewsPrefix(name)))
      .commit(),
  );
  if (!res.succeeded) throw new CladnetError('ENONET', `network ${name} does not exist`, { field: 'network' });
}

import type { Etcd3 } from 'etcd3';
import { CladnetError } from '../errors';
import type { Logger } from '../log';
import { formatIpv4, parseIpv4, parseOverlayCidr, Prefix, prefixSize } from '../util/ipv4';
import { etcdCall } from './etcd';
import { etcdPages, readPrefix } from './range';
import { checkName, leaseKey, leasesPrefix, parseKey } from './keys';
import { isPublicKey, LeaseRecord, NetworkSpec, parseLeaseRecord, serializeLeaseRecord } from './records';

/**
 * Overlay IP leases.
 *
 * 1. Pure allocator: the usable addresses of a prefix (no network, no broadcast address), and a
 *    picker that starts at a hash of the host name and walks forward, wrapping, to the first free
 *    address, so agents starting together rarely try the same address.
 * 2. `leaseOverlayIp`: reuse this host name's lease if there is one (a restart keeps its IP), else
 *    claim a free address with a create-if-absent transaction on /leases/<ip>, moving on when
 *    another host won the race. Addresses in `reserved` (held by another host's certificate, for
 *    `host issue`) are never handed out, even when this host's lease names one.
 * 3. `releaseOverlayIp`: for `host remove`; never called on a normal shutdown.
 */

/** Usable host addresses of a prefix, as an inclusive range of uint32. /8../30 always has some. */
export interface AddressRange {
  readonly first: number;
  readonly last: number;
  readonly count: number;
}

export function candidateAddresses(prefix: Prefix): AddressRange {
  const size = prefixSize(prefix);
  if (size < 4) throw new CladnetError('ECIDR', `/${prefix.len} has no host addresses besides network and broadcast`);
  const first = prefix.base + 1;
  const last = prefix.base + size - 2;
  return Object.freeze({ first, last, count: last - first + 1 });
}

/** FNV-1a 32-bit of the name: the allocator's starting point for this host. */
export function nameHint(name: string): number {
  let h = 0x811c9dc5;
  for (const b of Buffer.from(name, 'utf8')) {
    h ^= b;
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h >>> 0;
}

/**
 * First free usable address at or after `first + (hint mod count)`, wrapping around; null when all
 * are taken. `taken` holds uint32 addresses (entries outside the prefix are ignored).
 */
export function pickAddress(prefix: Prefix, taken: ReadonlySet<number>, preferredHint: number): number | null {
  const { first, count } = candidateAddresses(prefix);
  const start = ((preferredHint % count) + count) % count;
  for (let i = 0; i < count; i++) {
    const ip = first + ((start + i) % count);
    if (!taken.has(ip)) return ip;
  }
  return null;
}

export interface LeaseEntry {
  readonly ip: string;
  readonly record: LeaseRecord | null; // null when the stored value is invalid (the IP stays taken)
  readonly modRevision: string;
  readonly error?: string;
}

/** Every lease of a network, keyed by IP. Invalid values still occupy their address. */
export async function listLeases(client: Etcd3, net: string): Promise<Map<string, LeaseEntry>> {
  const res = await readPrefix(etcdPages(client), leasesPrefix(net));
  const out = new Map<string, LeaseEntry>();
  for (const kv of res.kvs) {
    const k = parseKey(kv.key);
    if (k?.kind !== 'lease' || k.network !== net) continue;
    const parsed = parseLeaseRecord(kv.value);
    out.set(
      k.ip,
      parsed.ok
        ? { ip: k.ip, record: parsed.value, modRevision: kv.mod_revision }
        : { ip: k.ip, record: null, modRevision: kv.mod_revision, error: parsed.error },
    );
  }
  return out;
}

/** The lowest IP leased to `host` and not reserved, if any (there is normally at most one). */
function leaseOf(leases: ReadonlyMap<string, LeaseEntry>, host: string, reserved?: ReadonlyMap<string, string>): LeaseEntry | undefined {
  let best: LeaseEntry | undefined;
  for (const e of leases.values()) {
    if (e.record?.host !== host || reserved?.has(e.ip)) continue;
    if (!best || parseIpv4(e.ip)! < parseIpv4(best.ip)!) best = e;
  }
  return best;
}

export interface LeaseOptions {
  /** Claims that may lose a race before giving up with a transient EETCD (default 32). */
  maxAttempts?: number;
  clock?: () => Date;
  log?: Logger;
  /**
   * Addresses this host must not get, whatever the leases say (ip -> who holds it): `host issue`
   * passes those held by another host's valid certificate (issuance.ts). A lease of this host on
   * one of them is passed over, and the search for a free address skips them.
   */
  reserved?: ReadonlyMap<string, string>;
}

/** Returns this host's overlay IP in the network, leasing one if it has none. */
export async function leaseOverlayIp(
  client: Etcd3,
  spec: NetworkSpec,
  hostName: string,
  publicKey: string,
  opts: LeaseOptions = {},
): Promise<string> {
  checkName(hostName, 'host');
  if (!isPublicKey(publicKey)) throw new CladnetError('EKEY', 'publicKey: not base64 of a 32-byte key', { field: 'publicKey' });
  const prefix = parseOverlayCidr(spec.cidr, 'cidr');
  const range = candidateAddresses(prefix);
  const hint = nameHint(hostName);
  const maxAttempts = opts.maxAttempts ?? 32;
  const clock = opts.clock ?? (() => new Date());
  const net = spec.name;

  for (let attempt = 0; attempt < maxAttempts; attempt++) {
    const leases = await listLeases(client, net);

    const reserved = opts.reserved;
    if (reserved) {
      for (const e of leases.values()) {
        if (e.record?.host === hostName && reserved.has(e.ip)) {
          opts.log?.warn({ network: net, host: hostName, overlayIp: e.ip, heldBy: reserved.get(e.ip) }, 'passing over a lease on an address another certificate holds');
        }
      }
    }
    const mine = leaseOf(leases, hostName, reserved);
    if (mine) {
      if (mine.record!.publicKey !== publicKey) await refreshLeaseKey(client, net, mine, publicKey, opts.log);
      return mine.ip;
    }

    const taken = new Set<number>();
    for (const ip of leases.keys()) taken.add(parseIpv4(ip)!);
    let heldOnly = 0; // reserved addresses without a lease
    for (const ip of reserved?.keys() ?? []) {
      const v = parseIpv4(ip);
      if (v === null || taken.has(v)) continue;
      taken.add(v);
      if (v >= range.first && v <= range.last) heldOnly++;
    }
    const ip = pickAddress(prefix, taken, hint);
    if (ip === null) {
      let leased = 0;
      for (const v of taken) if (v >= range.first && v <= range.last) leased++;
      leased -= heldOnly;
      const held = heldOnly > 0 ? `, ${heldOnly} more held by certificates without a lease` : '';
      throw new CladnetError(
        'EEXHAUSTED',
        `network ${net} (${spec.cidr}) has no free overlay address: ${leased} of ${range.count} leased${held}`,
      );
    }
    const ipText = formatIpv4(ip);
    const key = leaseKey(net, ipText);
    const value = serializeLeaseRecord({ version: 1, host: hostName, publicKey, created: clock().toISOString() });
    const res = await etcdCall(`claim ${ipText} in ${net}`, () =>
      client.if(key, 'Create', '==', 0).then(client.put(key).value(value)).commit(),
    );
    if (res.succeeded) {
      opts.log?.info({ network: net, host: hostName, overlayIp: ipText }, 'leased overlay address');
      return ipText;
    }
    // Another host claimed it between our read and our write: read again (that also notices a
    // concurrent claim under our own name) and move on.
    opts.log?.debug({ network: net, overlayIp: ipText }, 'lost the race for an overlay address; retrying');
  }
  throw new CladnetError('EETCD', `network ${net}: gave up leasing an overlay address after ${maxAttempts} lost races`, {
    transient: true,
  });
}

/** The host kept its name but has a new key (reinstalled): record the new key in its lease. */
async function refreshLeaseKey(client: Etcd3, net: string, entry: LeaseEntry, publicKey: string, log?: Logger): Promise<void> {
  const key = leaseKey(net, entry.ip);
  const value = serializeLeaseRecord({ ...entry.record!, publicKey });
  const res = await etcdCall(`update lease ${entry.ip} in ${net}`, () =>
    client.if(key, 'Mod', '==', entry.modRevision).then(client.put(key).value(value)).commit(),
  );
  if (res.succeeded) log?.info({ network: net, host: entry.record!.host, overlayIp: entry.ip }, 'lease now carries a new public key');
}

/** Deletes every lease held by `name`; returns the released IPs. A lease re-claimed meanwhile is kept. */
export async function releaseOverlayIp(client: Etcd3, net: string, name: string): Promise<string[]> {
  checkName(net, 'network');
  checkName(name, 'host');
  const leases = await listLeases(client, net);
  const released: string[] = [];
  for (const e of leases.values()) {
    if (e.record?.host !== name) continue;
    const key = leaseKey(net, e.ip);
    const res = await etcdCall(`release ${e.ip} in ${net}`, () =>
      client.if(key, 'Mod', '==', e.modRevision).then(client.delete().key(key)).commit(),
    );
    if (res.succeeded) released.push(e.ip);
  }
  return released;
}

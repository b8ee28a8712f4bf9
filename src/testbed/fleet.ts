/**
 * A fleet of signed hosts that exist only in etcd: records with real certificates from the
 * network key, alive keys and address leases, endpoints that nobody answers. One real agent
 * among them sees a large network at the cost of one process (issue 11: one agent with 999 peers).
 *
 *   fleetRecord(i, ...)   host i's record (pure; its X25519 key and addresses follow from i)
 *   seedFleet(...)        writes hosts [from, to) to etcd in transactions
 *
 * Run as a script inside the namespace that reaches etcd (the test bed's router):
 *   node dist/testbed/fleet.js --etcd URL --network NET --network-key FILE --count N
 *        [--first I] [--base 100.64.4.0] [--endpoints 198.19.128.0]
 * Addresses: overlay `base` + i, endpoint `endpoints` + i, port 51820 (both must leave room for
 * N addresses; only the documentation and test ranges of DESIGN.md section 6 are meant here).
 */
import type { Etcd3 } from 'etcd3';
import { issueCert } from '../control/cert';
import { readNetworkKey } from '../control/credentials';
import { createEtcd } from '../control/etcd';
import { aliveKey, hostKey, leaseKey, networkKey } from '../control/keys';
import { serializeHostRecord, serializeLeaseRecord, type HostCert, type HostRecord } from '../control/records';
import { loadEd25519, type Ed25519 } from '../crypto/sign';
import { formatIpv4, parseIpv4 } from '../util/ipv4';

export interface FleetOptions {
  network: string;
  /** Overlay address of host 0 (host i gets base + i). */
  overlayBase: string;
  /** Underlay endpoint address of host 0 (host i gets base + i, port 51820), unless `endpoints` says otherwise. */
  endpointBase: string;
  /** Host i's name (default fleetName). */
  name?: (i: number) => string;
  /** Fill byte of the X25519 keys (default 0x5a): fleets in one etcd keep their keys apart with it. */
  keyFill?: number;
  /** Host i's endpoints and host networks (default: one endpoint from endpointBase, no networks). */
  endpoints?: (i: number) => string[];
  hostCidrs?: (i: number) => string[];
  /** The NAT kind the records announce (default: none said). */
  nat?: HostRecord['nat'];
  /** The records' `updated` and the leases' `created` time (default: now). */
  updated?: string;
}

export const fleetName = (i: number): string => `fleet${String(i).padStart(5, '0')}`;

/** Host i's X25519 public key: 32 bytes, fixed per i (nobody holds the private half). */
export function fleetKey(i: number, fill = 0x5a): string {
  const b = Buffer.alloc(32, fill);
  b.writeUInt32BE(i, 0);
  return b.toString('base64');
}

function plus(base: string, i: number, field: string): string {
  const ip = parseIpv4(base);
  if (ip === null) throw new Error(`${field}: ${JSON.stringify(base)} is not an IPv4 address`);
  return formatIpv4((ip + i) >>> 0);
}

/** Host i's identity in the fleet: name, overlay address and public key. */
export function fleetHost(i: number, o: FleetOptions): { name: string; overlayIp: string; publicKey: string } {
  return { name: (o.name ?? fleetName)(i), overlayIp: plus(o.overlayBase, i, 'overlayBase'), publicKey: fleetKey(i, o.keyFill) };
}

/** Host i's certificate, signed by `secretKey` (the network key). */
export function fleetCert(ed: Ed25519, secretKey: Uint8Array, i: number, o: FleetOptions): HostCert {
  return issueCert(ed, secretKey, { network: o.network, ...fleetHost(i, o) });
}

/** Host i's record carrying `cert` (fleetCert's when not given). */
export function fleetRecord(ed: Ed25519, secretKey: Uint8Array, i: number, o: FleetOptions, cert = fleetCert(ed, secretKey, i, o)): HostRecord {
  const h = fleetHost(i, o);
  return {
    version: 1,
    name: h.name,
    network: o.network,
    overlayIp: h.overlayIp,
    publicKey: h.publicKey,
    endpoints: o.endpoints ? o.endpoints(i) : [`${plus(o.endpointBase, i, 'endpointBase')}:51820`],
    hostCidrs: o.hostCidrs ? o.hostCidrs(i) : [],
    listenPort: 51820,
    epoch: 1_764_000_000_000 + i,
    updated: o.updated ?? new Date().toISOString(),
    session: '0123456789abcdef',
    ...(o.nat ? { nat: o.nat } : {}),
    cert,
  };
}

/**
 * Writes hosts [from, to): record, alive key (no etcd lease: it stays) and address lease, 40 hosts
 * per transaction. `certOf` supplies certificates issued earlier (default: signs each now).
 * Returns the bytes of the values written.
 */
export async function seedFleet(
  client: Etcd3,
  ed: Ed25519,
  secretKey: Uint8Array,
  from: number,
  to: number,
  o: FleetOptions,
  certOf?: (i: number) => HostCert,
): Promise<number> {
  const PER_TXN = 40; // 3 puts each: under etcd's default 128 operations per transaction
  let bytes = 0;
  for (let i = from; i < to; i += PER_TXN) {
    const puts = [];
    for (let j = i; j < Math.min(to, i + PER_TXN); j++) {
      const r = fleetRecord(ed, secretKey, j, o, certOf?.(j));
      const host = serializeHostRecord(r);
      const lease = serializeLeaseRecord({ version: 1, host: r.name, publicKey: r.publicKey, created: r.updated });
      const alive = '{"version":1}';
      bytes += Buffer.byteLength(host) + Buffer.byteLength(lease) + alive.length;
      puts.push(
        client.put(hostKey(o.network, r.name)).value(host),
        client.put(aliveKey(o.network, r.name)).value(alive),
        client.put(leaseKey(o.network, r.overlayIp)).value(lease),
      );
    }
    // (the network spec exists, so the condition always holds; a txn writes the batch at once)
    await client.if(networkKey(o.network), 'Create', '>', 0).then(...puts).commit();
  }
  return bytes;
}

async function main(argv: string[]): Promise<void> {
  const arg = (name: string, dflt?: string): string => {
    const k = argv.indexOf(`--${name}`);
    const v = k >= 0 ? argv[k + 1] : dflt;
    if (v === undefined) throw new Error(`--${name} is required`);
    return v;
  };
  const count = Number(arg('count'));
  const first = Number(arg('first', '0'));
  if (!Number.isInteger(count) || count < 0) throw new Error(`--count: ${arg('count')} is not a count`);
  if (!Number.isInteger(first) || first < 0) throw new Error(`--first: ${arg('first')} is not an index`);
  const ed = await loadEd25519();
  const key = readNetworkKey(arg('network-key'), ed);
  const client = createEtcd({ endpoints: [arg('etcd')] });
  try {
    const o = { network: arg('network'), overlayBase: arg('base', '100.64.4.0'), endpointBase: arg('endpoints', '198.19.128.0') };
    await seedFleet(client, ed, key.secretKey, first, first + count, o);
    process.stdout.write(`seeded ${count} hosts\n`);
  } finally {
    client.close();
  }
}

if (require.main === module) {
  main(process.argv.slice(2)).catch((e: unknown) => {
    process.stderr.write(`fleet: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exit(1);
  });
}

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
import { serializeHostRecord, serializeLeaseRecord, type HostRecord } from '../control/records';
import { loadEd25519, type Ed25519 } from '../crypto/sign';
import { formatIpv4, parseIpv4 } from '../util/ipv4';

export interface FleetOptions {
  network: string;
  /** Overlay address of host 0 (host i gets base + i). */
  overlayBase: string;
  /** Underlay endpoint address of host 0 (host i gets base + i, port 51820). */
  endpointBase: string;
}

export const fleetName = (i: number): string => `fleet${String(i).padStart(5, '0')}`;

/** Host i's X25519 public key: 32 bytes, fixed per i (nobody holds the private half). */
export function fleetKey(i: number): string {
  const b = Buffer.alloc(32, 0x5a);
  b.writeUInt32BE(i, 0);
  return b.toString('base64');
}

function plus(base: string, i: number, field: string): string {
  const ip = parseIpv4(base);
  if (ip === null) throw new Error(`${field}: ${JSON.stringify(base)} is not an IPv4 address`);
  return formatIpv4((ip + i) >>> 0);
}

/** Host i's record, signed by `secretKey` (the network key). */
export function fleetRecord(ed: Ed25519, secretKey: Uint8Array, i: number, o: FleetOptions): HostRecord {
  const name = fleetName(i);
  const overlayIp = plus(o.overlayBase, i, 'overlayBase');
  const cert = issueCert(ed, secretKey, { network: o.network, name, publicKey: fleetKey(i), overlayIp });
  return {
    version: 1,
    name,
    network: o.network,
    overlayIp,
    publicKey: fleetKey(i),
    endpoints: [`${plus(o.endpointBase, i, 'endpointBase')}:51820`],
    hostCidrs: [],
    listenPort: 51820,
    epoch: 1_764_000_000_000 + i,
    updated: new Date().toISOString(),
    session: '0123456789abcdef',
    cert,
  };
}

/** Writes hosts [from, to): record, alive key (no etcd lease: it stays) and address lease. */
export async function seedFleet(client: Etcd3, ed: Ed25519, secretKey: Uint8Array, from: number, to: number, o: FleetOptions): Promise<void> {
  const PER_TXN = 40; // 3 puts each: under etcd's default 128 operations per transaction
  for (let i = from; i < to; i += PER_TXN) {
    const puts = [];
    for (let j = i; j < Math.min(to, i + PER_TXN); j++) {
      const r = fleetRecord(ed, secretKey, j, o);
      puts.push(
        client.put(hostKey(o.network, r.name)).value(serializeHostRecord(r)),
        client.put(aliveKey(o.network, r.name)).value('{"version":1}'),
        client.put(leaseKey(o.network, r.overlayIp)).value(serializeLeaseRecord({ version: 1, host: r.name, publicKey: r.publicKey, created: r.updated })),
      );
    }
    // (the network spec exists, so the condition always holds; a txn writes the batch at once)
    await client.if(networkKey(o.network), 'Create', '>', 0).then(...puts).commit();
  }
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

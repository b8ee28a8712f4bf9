import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Etcd3 } from 'etcd3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readNetworkKey, type NetworkKey } from '../../src/control/credentials';
import { createEtcd } from '../../src/control/etcd';
import { listHosts } from '../../src/control/hosts';
import { aliveKey, hostKey, leaseKey, networkPrefix } from '../../src/control/keys';
import { createNetworkWithKey } from '../../src/control/membership';
import { etcdPages, readPrefix } from '../../src/control/range';
import { HostCert, NetworkSpec, RECORD_CAPS } from '../../src/control/records';
import { PeerSnapshot, Registry } from '../../src/control/registry';
import { loadEd25519, type Ed25519 } from '../../src/crypto/sign';
import { createRootLogger, Logger } from '../../src/log';
import { fleetCert, fleetHost, seedFleet, type FleetOptions } from '../../src/testbed/fleet';
import { EtcdHandle, startEtcd, waitFor } from '../helpers/etcd';

/**
 * Issue 10, hole 5: a network larger than gRPC's 4 MiB default receive limit, and a member that
 * stuffs its own keys with values near etcd's 1.5 MiB request limit, against a real etcd.
 *
 * 5,000 hosts with real certificates signed by the network key (every one a peer), each with an
 * alive key and a lease: about 5 MB of values. Registries here run on clients whose receive limit is the
 * old 4 MiB (or less), so the test shows that paging, not the raised limit, is what loads them.
 */

const NET = 'big';
const N = 5000;
const MiB = 1024 * 1024;
const STUFFED = 1_400_000; // under etcd's default --max-request-bytes (1.5 MiB), over every cap

interface LogLine {
  level: number;
  msg: string;
  [k: string]: unknown;
}

let etcd: EtcdHandle;
let admin: Etcd3;
let dir: string;
let ed: Ed25519;
let netKey: NetworkKey;
let spec: NetworkSpec;
const certs: HostCert[] = [];
const closers: { close(): unknown }[] = [];

const hostName = (i: number) => `h${String(i).padStart(5, '0')}`;
const octets = (i: number) => `${(i >> 8) & 255}.${i & 255}`;
const fleet: FleetOptions = {
  network: NET,
  name: hostName,
  overlayBase: '100.64.1.0',
  endpointBase: '198.18.0.0',
  endpoints: (i) => [`198.18.${octets(i)}:51820`, `198.19.${octets(i)}:51820`],
  hostCidrs: (i) => [`198.18.${(i >> 8) & 255}.0/24`, `198.19.${(i >> 8) & 255}.0/24`],
  nat: 'eim',
  updated: '2026-12-02T11:00:00.000Z',
};
const overlayIp = (i: number) => fleetHost(i, fleet).overlayIp;

function client(maxReceiveBytes?: number): Etcd3 {
  const c = createEtcd({ endpoints: [etcd.endpoint], ...(maxReceiveBytes ? { maxReceiveBytes } : {}) });
  closers.push(c);
  return c;
}

function memoryLogger(): { log: Logger; lines: LogLine[] } {
  const lines: LogLine[] = [];
  return { log: createRootLogger('debug', { write: (s: string) => void lines.push(JSON.parse(s) as LogLine) }), lines };
}

function registry(self: number, c: Etcd3) {
  const { log, lines } = memoryLogger();
  const reg = new Registry({ client: c, network: spec, self: hostName(self), log, selfCert: certs[self] });
  closers.unshift(reg); // registries close before clients
  let last: PeerSnapshot = new Map();
  const watch = () => reg.watch((p) => void (last = p));
  return { reg, lines, watch, peers: () => last };
}

function issue(i: number): HostCert {
  return (certs[i] = fleetCert(ed, netKey.secretKey, i, fleet));
}

/** Writes host records, alive keys and leases of hosts [from, to) with their issued certificates; returns the bytes of values. */
const putHosts = (from: number, to: number) => seedFleet(admin, ed, netKey.secretKey, from, to, fleet, (i) => certs[i]!);

function warnings(lines: LogLine[], msg: string, etcdKey: string): LogLine[] {
  return lines.filter((l) => l.msg === msg && l['etcdKey'] === etcdKey);
}

beforeAll(async () => {
  etcd = await startEtcd();
  admin = createEtcd({ endpoints: [etcd.endpoint] });
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cladnet-large-net-'));
  ed = await loadEd25519();
  const keyFile = path.join(dir, `${NET}.netkey`);
  spec = await createNetworkWithKey(admin, { name: NET, cidr: '100.64.0.0/16' }, keyFile);
  netKey = readNetworkKey(keyFile, ed);
  let t = performance.now();
  for (let i = 0; i < N; i++) issue(i);
  console.log(`signed ${N} certificates in ${(performance.now() - t).toFixed(0)} ms`);
  t = performance.now();
  const bytes = await putHosts(0, N);
  console.log(`wrote ${N} hosts (record, alive key, lease: ${(bytes / MiB).toFixed(2)} MiB of values, ${(bytes / N).toFixed(0)} B per host) in ${(performance.now() - t).toFixed(0)} ms`);
});

afterAll(async () => {
  for (const c of closers.splice(0)) await c.close();
  admin?.close();
  await etcd?.stop();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

describe('a network larger than one gRPC message', () => {
  let watching: ReturnType<typeof registry>;

  it('holds more than 4 MiB: one unpaginated read on a 4 MiB client fails, the paged read returns every key', async () => {
    const paged = await readPrefix(etcdPages(admin), networkPrefix(NET));
    const bytes = paged.kvs.reduce((n, kv) => n + kv.key.length + kv.value.length, 0);
    console.log(`network prefix: ${paged.kvs.length} keys, ${(bytes / MiB).toFixed(2)} MiB, read in ${paged.pages} pages`);
    expect(bytes).toBeGreaterThan(4 * MiB);
    expect(paged.kvs).toHaveLength(3 * N);
    expect(paged.pages).toBe(Math.ceil((3 * N) / 500));
    const old = client(4 * MiB); // gRPC's default, what every agent had before
    await expect(old.getAll().prefix(networkPrefix(NET)).exec()).rejects.toThrow(/larger than max/i);
  });

  it('a registry on a 4 MiB client loads all 5,000 hosts as peers, and network show lists them', async () => {
    watching = registry(0, client(4 * MiB));
    const t = performance.now();
    expect(await watching.watch()).toBe('etcd');
    const ms = performance.now() - t;
    const st = watching.reg.stats();
    console.log(`registry load of ${N} hosts: ${ms.toFixed(0)} ms, ${st.loadPages} pages, ${st.peers} peers`);
    expect(watching.peers().size).toBe(N - 1);
    expect(watching.peers().has(hostName(N - 1))).toBe(true);
    expect(st).toMatchObject({ peers: N - 1, invalidRecords: 0, untrustedRecords: 0, oversizedRecords: 0, reloads: 1, connected: true });
    expect(st.loadPages).toBe(Math.ceil((3 * N) / 500));

    const listed = await listHosts(client(4 * MiB), NET);
    expect(listed).toHaveLength(N);
    expect(listed.every((h) => h.alive)).toBe(true);
  });

  it('a member stuffing 1.4 MiB into each of its own keys is skipped, by the watching registry and by a new one, and nobody stalls', async () => {
    const evil = 1;
    const stuffed = 'S'.repeat(STUFFED);
    expect(STUFFED).toBeGreaterThan(RECORD_CAPS.host);
    const at = performance.now();
    await admin.put(hostKey(NET, hostName(evil))).value(stuffed);
    await admin.put(aliveKey(NET, hostName(evil))).value(stuffed);
    await admin.put(leaseKey(NET, overlayIp(evil))).value(stuffed);

    // The watching registry: the record is skipped with a warning naming the cap; the host stays a
    // member on its last valid record (membership is the certificate, roster.ts); others stay.
    await waitFor(() => watching.reg.etcdView(hostName(evil))?.record === 'invalid', 20_000, 'the stuffed record to be refused');
    console.log(`stuffed record refused by the watching registry after ${(performance.now() - at).toFixed(0)} ms`);
    const hk = hostKey(NET, hostName(evil));
    await waitFor(() => watching.reg.stats().oversizedRecords === 2, 20_000, 'the stuffed alive key to be skipped too');
    expect(warnings(watching.lines, 'skipping invalid host record', hk).at(-1)?.['error']).toBe(`host record is ${STUFFED} bytes, more than ${RECORD_CAPS.host}`);
    expect(warnings(watching.lines, 'skipping oversized record', aliveKey(NET, hostName(evil)))).toHaveLength(1);
    expect(watching.reg.etcdView(hostName(evil))).toEqual({ record: 'invalid', alive: false });
    expect(watching.peers().get(hostName(evil))?.overlayIp).toBe(overlayIp(evil));
    expect(watching.peers().size).toBe(N - 1);
    expect(watching.reg.stats()).toMatchObject({ connected: true, invalidRecords: 2, oversizedRecords: 2 });

    // Still following etcd: a host added afterwards arrives.
    issue(N);
    const added = performance.now();
    await putHosts(N, N + 1);
    await waitFor(() => watching.peers().has(hostName(N)), 20_000, 'a host added after the stuffing');
    console.log(`a host added afterwards reached the watching registry in ${(performance.now() - added).toFixed(0)} ms`);
    expect(watching.peers().size).toBe(N);

    // A new agent starts: its load completes on a 4 MiB client and skips the same records.
    const fresh = registry(2, client(4 * MiB));
    const t = performance.now();
    expect(await fresh.watch()).toBe('etcd');
    console.log(`fresh registry load with the stuffed member: ${(performance.now() - t).toFixed(0)} ms, ${fresh.reg.stats().loadPages} pages`);
    expect(fresh.peers().size).toBe(N - 1); // N + 1 hosts, minus self, minus the stuffed one
    expect(fresh.peers().has(hostName(evil))).toBe(false);
    expect(fresh.reg.stats()).toMatchObject({ invalidRecords: 2, oversizedRecords: 2, reloads: 1 });
  });

  it('stuffed values next to each other: the default client reads the page whole, a 4 MiB one halves pages, a 1 MiB one steps over each value', async () => {
    // Three more stuffed host records, adjacent in key order (members without per-key RBAC, or three compromised ones).
    for (const i of [2, 3, 4]) await admin.put(hostKey(NET, hostName(i))).value('T'.repeat(STUFFED));
    const stuffedKeys = [aliveKey(NET, hostName(1)), ...[1, 2, 3, 4].map((i) => hostKey(NET, hostName(i))), leaseKey(NET, overlayIp(1))].sort();
    const total = 3 * (N + 1);

    const whole = await readPrefix(etcdPages(client()), networkPrefix(NET));
    expect(whole).toMatchObject({ refusedPages: 0, unreadable: [] });
    expect(whole.kvs).toHaveLength(total);

    const halved = await readPrefix(etcdPages(client(4 * MiB)), networkPrefix(NET));
    console.log(`4 MiB client: ${halved.pages} pages, ${halved.refusedPages} refused`);
    expect(halved.refusedPages).toBeGreaterThan(0);
    expect(halved.unreadable).toEqual([]);
    expect(halved.kvs).toHaveLength(total);
    expect(halved.revision).toBe(whole.revision);

    const t = performance.now();
    const stepped = await readPrefix(etcdPages(client(1 * MiB)), networkPrefix(NET));
    console.log(`1 MiB client: ${stepped.pages} pages, ${stepped.refusedPages} refused, ${stepped.unreadable.length} unreadable, ${(performance.now() - t).toFixed(0)} ms`);
    expect(stepped.unreadable.map((kv) => kv.key.toString()).sort()).toEqual(stuffedKeys);
    expect(stepped.kvs).toHaveLength(total - stuffedKeys.length);
  });

  it('a watch message larger than the client accepts: the registry reloads in pages and keeps following', async () => {
    const small = registry(0, client(1 * MiB));
    expect(await small.watch()).toBe('etcd');
    expect(small.peers().size).toBe(N + 1 - 1 - 4); // hosts 1-4 are stuffed
    const loadsBefore = small.reg.stats().reloads;

    await admin.put(hostKey(NET, hostName(5))).value('U'.repeat(STUFFED)); // one event, 1.4 MiB: over this client's limit
    await waitFor(() => small.lines.some((l) => l.msg.startsWith('etcd watch message too large')), 20_000, 'the too-large watch message');
    // Refused after the reload; host 5 stays a member on the record this registry saw valid.
    await waitFor(() => small.reg.etcdView(hostName(5))?.record === 'invalid', 30_000, 'the stuffed record to be refused after the reload');
    expect(small.peers().has(hostName(5))).toBe(true);
    expect(small.reg.stats().reloads).toBeGreaterThan(loadsBefore);

    issue(N + 1);
    await putHosts(N + 1, N + 2);
    await waitFor(() => small.peers().has(hostName(N + 1)), 30_000, 'a host added after the too-large message');
    expect(small.reg.stats().connected).toBe(true);
    expect(small.peers().size).toBe(N + 2 - 1 - 4);
  });
});

/**
 * Micro-measurement (issue 11): time one host's republish costs a registry that holds N hosts,
 * from the etcd watch event to the peer callback, with a peer cache file. Fake etcd (in memory),
 * real certificates and trust checks.
 *
 *   npx vite-node test/perf/registry-change.ts [N=1000] [changes=300]
 *
 * Uses `watchChanges` when the registry has it (the delta API), else `watch` (a full snapshot).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { issueCert } from '../../src/control/cert';
import { aliveKey, hostKey } from '../../src/control/keys';
import { serializeHostRecord, type HostCert, type HostRecord, type NetworkSpec } from '../../src/control/records';
import { Registry } from '../../src/control/registry';
import { createRootLogger } from '../../src/log';
import { formatIpv4 } from '../../src/util/ipv4';
import { FakeEtcd } from '../helpers/fake-etcd';
import { DAY, T0, trustFixture } from '../helpers/trust';

async function main(): Promise<void> {
  const N = Number(process.argv[2] ?? 1000);
  const CHANGES = Number(process.argv[3] ?? 300);
  const fx = await trustFixture();
  const spec: NetworkSpec = { version: 1, name: 'demo', cidr: '100.64.0.0/16', mtu: 1420, port: 51820, created: '2026-11-21T00:00:00.000Z', trustAnchor: fx.anchor.publicKey };
  const certs: HostCert[] = [];
  const rec = (i: number, epoch: number): HostRecord => ({
    version: 1,
    name: certs[i]!.name,
    network: 'demo',
    overlayIp: certs[i]!.overlayIp,
    publicKey: certs[i]!.publicKey,
    endpoints: [`198.18.${(i >> 8) & 255}.${i & 255}:${51820 + (epoch % 1000)}`],
    hostCidrs: [],
    listenPort: 51820,
    epoch,
    updated: '2026-11-21T00:00:00.000Z',
    session: '0123456789abcdef',
    cert: certs[i]!,
  });
  const fake = new FakeEtcd();
  for (let i = 0; i < N; i++) {
    const key = Buffer.alloc(32, 0x11);
    key.writeUInt32BE(i + 1, 0);
    certs.push(issueCert(fx.ed, fx.net.secretKey, { network: 'demo', name: `h${i}`, publicKey: key.toString('base64'), overlayIp: formatIpv4((100 << 24) + (64 << 16) + 256 + i), now: new Date(T0) }));
    fake.put(hostKey('demo', `h${i}`), serializeHostRecord(rec(i, 10)));
    fake.put(aliveKey('demo', `h${i}`), '{"version":1}');
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cladnet-micro-'));
  const reg = new Registry({ client: fake.client(), network: spec, self: 'me', log: createRootLogger('silent'), now: () => T0 + DAY, trust: fx.anchor, selfCert: fx.certFor('me'), cacheFile: path.join(dir, 'peers.json') });
  let calls = 0;
  const r = reg as unknown as { watchChanges?: (cb: () => void) => Promise<unknown> };
  const api = r.watchChanges ? 'watchChanges' : 'watch';
  if (r.watchChanges) await r.watchChanges(() => void calls++);
  else await reg.watch(() => void calls++);
  const times: number[] = [];
  const cpu0 = process.cpuUsage();
  for (let k = 0; k < CHANGES; k++) {
    const i = (k * 7919) % N;
    const before = calls;
    const t = performance.now();
    fake.put(hostKey('demo', `h${i}`), serializeHostRecord(rec(i, 11 + k)));
    while (calls === before) await new Promise((res) => setImmediate(res));
    times.push(performance.now() - t);
  }
  const cpu = process.cpuUsage(cpu0);
  await reg.close();
  fs.rmSync(dir, { recursive: true, force: true });
  times.sort((a, b) => a - b);
  const q = (p: number) => times[Math.min(times.length - 1, Math.floor(p * times.length))]!.toFixed(3);
  console.log(
    `N=${N} changes=${CHANGES} api=${api}: per change p50 ${q(0.5)} ms, p99 ${q(0.99)} ms, max ${q(1)} ms; CPU ${((cpu.user + cpu.system) / 1000 / CHANGES).toFixed(3)} ms per change`,
  );
}

void main();

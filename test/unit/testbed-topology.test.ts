import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { startTestbedEtcd } from '../../src/testbed/etcd';
import { runSync } from '../../src/testbed/run';
import { cleanupStale, createTopology, MARKER_DIR, type Topology } from '../../src/testbed/topology';
import { ping, repeated, sendUdp, startCapture, tcpTransfer, udpDatagrams, writeRandomFile } from '../../src/testbed/traffic';

/**
 * The test bed itself on real namespaces (no agent involved): building, reaching etcd, NAT sites,
 * the traffic helpers, and that teardown leaves nothing behind. Needs root.
 */
const isRoot = process.getuid?.() === 0;
const namespaces = () => runSync(['ip', 'netns', 'list']).stdout.split('\n').map((l) => l.split(' ')[0]!).filter(Boolean);

describe.skipIf(!isRoot)('test bed on real namespaces', () => {
  const made: Topology[] = [];
  afterAll(async () => {
    for (const t of made) await t.destroy();
  });

  it('builds hosts behind a router, runs etcd there, and removes everything on destroy', async () => {
    const t = await createTopology({ hosts: 2 });
    made.push(t);
    expect(namespaces()).toEqual(expect.arrayContaining([...t.plan.namespaces]));
    expect(fs.existsSync(path.join(MARKER_DIR, `${t.id}.json`))).toBe(true);
    const [h1, h2] = t.hosts;
    expect((await ping(t, h1!.ns, h2!.underlayIp, { count: 1 })).ok).toBe(true);

    const etcd = await startTestbedEtcd(t);
    expect(etcd.endpoint).toBe('http://198.18.0.1:2379');
    const put = await t.exec(h2!.ns, ['etcdctl', `--endpoints=${etcd.endpoint}`, 'put', 'k', 'v'], { env: { ...process.env, ETCDCTL_API: '3' } });
    expect(put.stdout.trim()).toBe('OK');

    // A stray process inside a namespace is ended too, and a second destroy() is harmless.
    t.spawn(h1!.ns, ['sleep', '60']);
    await t.destroy();
    await t.destroy();
    expect(namespaces().filter((n) => n.startsWith(`${t.id}-`))).toEqual([]);
    expect(fs.existsSync(t.workDir)).toBe(false);
    expect(fs.existsSync(path.join(MARKER_DIR, `${t.id}.json`))).toBe(false);
    expect(runSync(['pgrep', '-f', etcd.dataDir]).stdout).toBe('');
  });

  it('NATs a masquerade site: the outside sees the site address, and replies come back', async () => {
    const t = await createTopology({
      hosts: [{ name: 'pub' }, { name: 'lan', site: 'home' }],
      sites: [{ name: 'home', nat: 'masquerade' }],
    });
    made.push(t);
    const pub = t.host('pub');
    const lan = t.host('lan');
    expect(lan.underlayIp).toBe('198.19.1.2');
    const cap = await startCapture(t, pub.ns, { file: path.join(t.workDir, 'nat.pcap'), filter: ['udp', 'port', '9999'] });
    await sendUdp(t, lan.ns, pub.underlayIp, 9999, [Buffer.from('via-nat')]);
    const seen = udpDatagrams(await cap.stop());
    expect(seen.map((d) => [d.src, d.payload.toString()])).toEqual([['198.18.2.2', 'via-nat']]);
    expect((await ping(t, lan.ns, pub.underlayIp, { count: 1 })).ok).toBe(true);
    // Nothing on the internet routes into a NATed LAN.
    expect((await ping(t, pub.ns, lan.underlayIp, { count: 1, waitS: 0.3 })).ok).toBe(false);
    await t.destroy();
  });

  it('moves a file over TCP and checks it by sha256; a router capture of plain TCP shows its marker', async () => {
    // The positive control for the e2e encryption check: the same capture-and-grep finds
    // plaintext when there is plaintext to find.
    const t = await createTopology({ hosts: 2 });
    made.push(t);
    const [a, b] = t.hosts;
    const file = path.join(t.workDir, 'f.bin');
    const sha = writeRandomFile(file, 1 << 20, repeated('CLADNET-MARKER-control-', 64 * 1024));
    const cap = await startCapture(t, t.routerNs, { file: path.join(t.workDir, 'plain.pcap') });
    const r = await tcpTransfer(t, { fromNs: a!.ns, toNs: b!.ns, toIp: b!.underlayIp, file, outFile: path.join(t.workDir, 'g.bin') });
    const pcap = await cap.stop();
    expect(r).toMatchObject({ bytes: 1 << 20, sentSha256: sha, receivedSha256: sha });
    expect(cap.kernelDrops).toBe(0);
    expect(pcap.includes('CLADNET-MARKER')).toBe(true);
    await t.destroy();
  });

  it('cleans up after a run whose process died, and leaves live runs alone', async () => {
    // A child process builds a topology and is SIGKILLed: no hooks run, the marker stays.
    const dist = path.resolve(__dirname, '../../dist/testbed/topology.js');
    if (!fs.existsSync(dist)) return; // the build runs before vitest in `npm test`
    const script = `
      const { createTopology } = require(${JSON.stringify(dist)});
      createTopology({ hosts: 1 }).then((t) => { console.log(t.id); setInterval(() => {}, 1000); });`;
    const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    const id = await new Promise<string>((resolve) => child.stdout.once('data', (b: Buffer) => resolve(b.toString().trim())));
    const live = await createTopology({ hosts: 1 });
    made.push(live);
    expect(cleanupStale()).toEqual([]); // the child is alive: nothing is stale yet
    expect(namespaces()).toContain(`${id}-router`);
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
    const removed = cleanupStale();
    expect(removed.sort()).toEqual([`${id}-h1`, `${id}-router`]);
    expect(namespaces().filter((n) => n.startsWith(`${id}-`))).toEqual([]);
    expect(namespaces()).toContain(live.routerNs);
    await live.destroy();
  });
});

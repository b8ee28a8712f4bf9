import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startMeshBed, type MeshBed } from '../../src/testbed/mesh';
import { ping, repeated, startCapture, tcpTransfer, udpDatagrams, writeRandomFile } from '../../src/testbed/traffic';

/**
 * Three agents in three namespaces behind a router: every pair reaches every other over the
 * overlay, 20 MB cross intact, and nothing a tap on the "internet" sees is plaintext.
 */
const isRoot = process.getuid?.() === 0;
const MARKER = 'CLADNET-MARKER-7f3c9a-the-quick-brown-fox-';

describe.skipIf(!isRoot)('mesh of three hosts', () => {
  let bed: MeshBed;
  const ips = new Map<string, string>();

  beforeAll(async () => {
    // (started by hand, without the Node flags: each agent re-executes itself with them)
    bed = await startMeshBed({ topology: { hosts: 3 }, agentOptions: { reexec: true } });
    for (const [name, doc] of await bed.waitUp()) ips.set(name, doc.self.overlayIp);
  });
  afterAll(async () => {
    await bed?.destroy();
  });

  it('gives each host a distinct overlay IP inside the network and shows every peer up', async () => {
    expect(new Set(ips.values()).size).toBe(3);
    for (const ip of ips.values()) expect(ip).toMatch(/^100\.64\.0\.\d+$/);
    const doc = await bed.agent('h1').statusCli();
    expect(doc.version).toBe(1);
    expect(doc.etcd.connected).toBe(true);
    // the batch AEAD helper (native/build/libcladnet_fast.so, built by scripts/setup.sh) is in use,
    // calling the OpenSSL primitives node exports directly
    expect(doc.self.crypto).toBe('libsodium+openssl-ffi+batch+direct');
    expect(doc.peers.map((p) => [p.name, p.state]).sort()).toEqual([
      ['h2', 'up'],
      ['h3', 'up'],
    ]);
  });

  it('runs each agent with its memory flags, re-executed in place (same pid, log still flowing)', () => {
    for (const a of bed.agents) {
      expect(a.proc.spawnargs).not.toContain('--optimize-for-size');
      const argv = fs.readFileSync(`/proc/${a.proc.pid}/cmdline`, 'utf8').split('\0');
      expect(argv).toEqual(expect.arrayContaining(['--optimize-for-size', '--v8-pool-size=1', '--no-node-snapshot', '--single-threaded-gc', 'agent']));
      expect(a.logTail(50)).toMatch(/"msg":"agent up"/);
    }
  });

  it('pings every ordered pair over the overlay', async () => {
    const failures: string[] = [];
    for (const a of bed.agents) {
      for (const b of bed.agents) {
        if (a === b) continue;
        const r = await ping(bed.topo, a.host.ns, ips.get(b.name)!, { count: 3, intervalS: 0.1 });
        if (r.received !== 3) failures.push(`${a.name} -> ${b.name}: ${r.received}/3`);
      }
    }
    expect(failures).toEqual([]);
  });

  it('moves 20 MB over TCP from h1 to h3 with a matching sha256', async () => {
    const file = path.join(bed.topo.workDir, 'twenty.bin');
    writeRandomFile(file, 20 * 1024 * 1024);
    const r = await tcpTransfer(bed.topo, {
      fromNs: bed.topo.host('h1').ns,
      toNs: bed.topo.host('h3').ns,
      toIp: ips.get('h3')!,
      file,
      outFile: path.join(bed.topo.workDir, 'twenty.received'),
    });
    console.log(`20 MiB h1 -> h3 over the overlay: ${r.mbitPerS.toFixed(0)} Mbit/s (${r.ms.toFixed(0)} ms)`);
    expect(r.bytes).toBe(20 * 1024 * 1024);
    expect(r.receivedSha256).toBe(r.sentSha256);
  });

  it('moved that transfer with the offloads: UDP GSO runs from h1, GRO buffers and coalesced TUN writes at h3', async () => {
    await new Promise((r) => setTimeout(r, 200)); // the worker copies its counters out every 50 ms
    const tx = (await bed.agent('h1').statusCli()).dataplane.offloads!;
    const rx = (await bed.agent('h3').statusCli()).dataplane.offloads!;
    console.log(`offloads h1 ${JSON.stringify(tx)}; h3 ${JSON.stringify(rx)}`);
    expect(tx.udpGso).toBe(true);
    expect(tx.gsoRefused).toBe(0);
    // 20 MiB is about 14,800 datagrams: most of them leave in runs
    expect(tx.gsoMessages).toBeGreaterThan(0);
    expect(tx.gsoDatagrams).toBeGreaterThan(10_000);
    expect(rx.groMessages).toBeGreaterThan(0);
    expect(rx.groDatagrams).toBeGreaterThan(2 * rx.groMessages);
    expect(rx.tunSuperPackets).toBeGreaterThan(0);
    expect(rx.tunCoalesced).toBeGreaterThan(2 * rx.tunSuperPackets);
  });

  it('shows the router only ciphertext: a marker sent over the overlay never appears in a capture', async () => {
    const file = path.join(bed.topo.workDir, 'marker.bin');
    const received = path.join(bed.topo.workDir, 'marker.received');
    writeRandomFile(file, 1024 * 1024 + 64 * 1024, repeated(MARKER, 64 * 1024));
    const pcapFile = path.join(bed.topo.workDir, 'router.pcap');
    const cap = await startCapture(bed.topo, bed.topo.routerNs, { file: pcapFile, iface: 'any' });
    const r = await tcpTransfer(bed.topo, {
      fromNs: bed.topo.host('h1').ns,
      toNs: bed.topo.host('h2').ns,
      toIp: ips.get('h2')!,
      port: 7778,
      file,
      outFile: received,
    });
    const pcap = await cap.stop();
    expect(cap.kernelDrops, 'packets tcpdump missed').toBe(0);

    // The transfer arrived, and the marker is in what arrived...
    expect(r.receivedSha256).toBe(r.sentSha256);
    expect(fs.readFileSync(received).includes(MARKER)).toBe(true);
    // ...and the capture really saw the tunnel carry it (at least the file's size in UDP to the agent's port;
    // with -i any each datagram is seen twice, entering and leaving the router)...
    const tunnelBytes = udpDatagrams(pcap)
      .filter((d) => d.dstPort === 51820 && d.dst === bed.topo.host('h2').underlayIp)
      .reduce((n, d) => n + d.payload.length, 0);
    expect(tunnelBytes).toBeGreaterThan(fs.statSync(file).size);
    // ...but not a single copy of the marker, nor a chunk of it, in clear.
    expect(pcap.includes(MARKER)).toBe(false);
    expect(pcap.includes('CLADNET-MARKER')).toBe(false);
  });

  it("puts only Node's own helper threads under SCHED_IDLE: the main thread and the data-plane worker keep SCHED_NORMAL", async () => {
    const threadsOf = (pid: number) =>
      fs.readdirSync(`/proc/${pid}/task`).map((tid) => {
        const stat = fs.readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
        const f = stat.slice(stat.lastIndexOf(')') + 2).split(' '); // f[k] is field k + 3 of proc(5)
        return { tid: Number(tid), cpu: Number(f[11]) + Number(f[12]), policy: Number(f[38]) };
      });
    // The data-plane worker is the thread whose CPU time grows most while a transfer runs through it.
    const [h1, h3] = [bed.agent('h1'), bed.agent('h3')];
    const before = new Map([h1, h3].map((a) => [a.name, threadsOf(a.proc.pid!)]));
    const file = path.join(bed.topo.workDir, 'sched.bin');
    writeRandomFile(file, 40 * 1024 * 1024);
    const r = await tcpTransfer(bed.topo, {
      fromNs: bed.topo.host('h1').ns,
      toNs: bed.topo.host('h3').ns,
      toIp: ips.get('h3')!,
      port: 7779,
      file,
      outFile: path.join(bed.topo.workDir, 'sched.received'),
    });
    expect(r.receivedSha256).toBe(r.sentSha256);
    for (const a of bed.agents) {
      const pid = a.proc.pid!;
      const threads = threadsOf(pid);
      const idle = threads.filter((t) => t.policy === 5); // SCHED_IDLE
      expect(threads.find((t) => t.tid === pid)?.policy, `${a.name}: main thread`).toBe(0);
      expect(threads.filter((t) => t.policy !== 0 && t.policy !== 5), `${a.name}: other policies`).toEqual([]);
      // Node starts its helpers before the agent's first line runs (a few threads; libuv's pool comes later)
      expect(idle.length, `${a.name}: helper threads`).toBeGreaterThanOrEqual(1);
      expect(idle.length, `${a.name}: helper threads`).toBeLessThanOrEqual(4);
      const was = before.get(a.name);
      if (!was) continue;
      const grew = (t: { tid: number; cpu: number }) => t.cpu - (was.find((w) => w.tid === t.tid)?.cpu ?? 0);
      const worker = threads.filter((t) => t.tid !== pid).reduce((x, y) => (grew(y) > grew(x) ? y : x));
      expect(grew(worker), `${a.name}: the worker ran`).toBeGreaterThan(0);
      expect(worker.policy, `${a.name}: data-plane worker`).toBe(0);
      expect(Math.max(...idle.map((t) => t.tid)), `${a.name}: only threads older than the worker`).toBeLessThan(worker.tid);
    }
  });
});

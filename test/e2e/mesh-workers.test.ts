import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { waitUntil, type Agent, type AgentStatus } from '../../src/testbed/agents';
import { startMeshBed, type MeshBed } from '../../src/testbed/mesh';
import { nonceRepeats, rekeyEverySecond } from '../helpers/nonces';
import type { Topology } from '../../src/testbed/topology';
import { ping, sendUdp, startCapture, startPacedStream, tcpTransfer, udpDatagrams, writeRandomFile } from '../../src/testbed/traffic';

/**
 * Several data-plane workers per agent (`--workers 2`, docs/design.md "Many cores"): a TUN queue
 * and a steered UDP socket each, shared send counters. h1 and h2 run two workers, h3 one:
 * pings both ways between every pair (one worker meshes with two), 20 MB intact, iperf3 -P 4
 * moving packets through both of h1's workers, a replayed datagram still dropped. A second bed
 * rekeys every second under two-way load with two workers on both ends and checks on the wire that
 * no (receiver index, counter) pair repeats.
 */
const isRoot = process.getuid?.() === 0;
const PORT = 51820;
const TWO = ['--workers', '2'];

/** Inbound drops as the status counts them (outbound reasons left out; handshake refusals in). */
const OUTBOUND_REASONS = new Set(['noRoute', 'noSession', 'notIpv4', 'sendFailed', 'sealFailed']);
const inboundDrops = (d: AgentStatus) =>
  Object.entries(d.dataplane.drops).reduce((n, [reason, v]) => (OUTBOUND_REASONS.has(reason) ? n : n + v), 0) +
  Object.values(d.handshake?.drops ?? {}).reduce((n, v) => n + v, 0);

/** iperf3 -P `streams` for `seconds` from clientNs to serverIp (a one-off server in serverNs); returns bits per second received. */
async function iperf(topo: Topology, serverNs: string, serverIp: string, clientNs: string, streams: number, seconds: number): Promise<number> {
  const port = 5201 + Math.floor(Math.random() * 500);
  const server = topo.spawn(serverNs, ['iperf3', '-s', '-1', '--forceflush', '-p', String(port), '-B', serverIp], { stdio: ['ignore', 'pipe', 'pipe'] });
  try {
    await new Promise<void>((resolve, reject) => {
      let out = '';
      const t = setTimeout(() => reject(new Error(`iperf3 server did not start: ${out}`)), 5_000);
      server.stdout?.on('data', (b: Buffer) => {
        out += b.toString();
        if (out.includes('Server listening')) {
          clearTimeout(t);
          resolve();
        }
      });
    });
    const args = ['iperf3', '-c', serverIp, '-p', String(port), '-t', String(seconds), '-P', String(streams), '-J', '--connect-timeout', '3000'];
    const r = await topo.tryExec(clientNs, args, { timeoutMs: (seconds + 20) * 1000 });
    const j = JSON.parse(r.stdout) as { end?: { sum_received?: { bits_per_second?: number } }; error?: string };
    if (j.error) throw new Error(`iperf3: ${j.error}`);
    return j.end?.sum_received?.bits_per_second ?? 0;
  } finally {
    if (server.exitCode === null) server.kill('SIGKILL');
  }
}

const workersOf = (d: AgentStatus) => d.self.workers ?? [];

describe.skipIf(!isRoot)('agents with two data-plane workers, and one with one', () => {
  let bed: MeshBed;
  const ips = new Map<string, string>();

  beforeAll(async () => {
    bed = await startMeshBed({ topology: { hosts: 3 }, agents: 0, waitUp: false });
    const [h1, h2, h3] = bed.topo.hosts;
    await Promise.all([bed.start(h1!, { extraArgs: TWO }), bed.start(h2!, { extraArgs: TWO }), bed.start(h3!)]);
    for (const [name, doc] of await bed.waitUp()) ips.set(name, doc.self.overlayIp);
  }, 60_000);
  afterAll(async () => {
    await bed?.destroy();
  });

  it('runs two workers on h1 and h2 (a TUN queue and a socket each) and one on h3; every peer is up', async () => {
    const [d1, d2, d3] = await Promise.all(['h1', 'h2', 'h3'].map((n) => bed.agent(n).statusCli()));
    expect(workersOf(d1!)).toHaveLength(2);
    expect(workersOf(d2!)).toHaveLength(2);
    expect(d3!.self.workers).toBeUndefined();
    for (const d of [d1!, d2!, d3!]) expect(d.peers.map((p) => p.state)).toEqual(['up', 'up']);
    // the kernel sees a multi-queue TUN with two queues at h1
    const tun = d1!.self.interface;
    const q = await bed.topo.exec(bed.topo.host('h1').ns, ['sh', '-c', `ls /sys/class/net/${tun}/queues | grep -c rx-`]);
    expect(Number(q.stdout.trim())).toBe(2);
  });

  it('pings every ordered pair, both ways between two-worker and one-worker agents', async () => {
    const failures: string[] = [];
    for (const a of bed.agents) {
      for (const b of bed.agents) {
        if (a === b) continue;
        const r = await ping(bed.topo, a.host.ns, ips.get(b.name)!, { count: 5, intervalS: 0.05 });
        if (r.received !== 5) failures.push(`${a.name} -> ${b.name}: ${r.received}/5`);
      }
    }
    expect(failures).toEqual([]);
  });

  it('moves 20 MB from h1 to h2 (two workers each) and 20 MB from h3 (one) to h1, sha256 equal', async () => {
    const file = path.join(bed.topo.workDir, 'twenty.bin');
    writeRandomFile(file, 20 * 1024 * 1024);
    for (const [from, to, port] of [['h1', 'h2', 7801], ['h3', 'h1', 7802]] as const) {
      const r = await tcpTransfer(bed.topo, {
        fromNs: bed.topo.host(from).ns,
        toNs: bed.topo.host(to).ns,
        toIp: ips.get(to)!,
        port,
        file,
        outFile: path.join(bed.topo.workDir, `twenty.${from}.${to}`),
      });
      console.log(`20 MiB ${from} -> ${to}: ${r.mbitPerS.toFixed(0)} Mbit/s`);
      expect(r.bytes).toBe(20 * 1024 * 1024);
      expect(r.receivedSha256).toBe(r.sentSha256);
    }
  });

  it('spreads iperf3 -P 4 over both of h1\'s workers (the TUN queue is picked per flow), and status sums them', async () => {
    const a = bed.agent('h1');
    let spread = false;
    const seen: string[] = [];
    // Four flows land on one queue of two with probability 1/8: new flows (new hashes) up to three times.
    for (let attempt = 0; attempt < 3 && !spread; attempt++) {
      const before = workersOf(await a.statusCli());
      const bps = await iperf(bed.topo, bed.topo.host('h2').ns, ips.get('h2')!, a.host.ns, 4, 3);
      await new Promise((r) => setTimeout(r, 200));
      const after = await a.statusCli();
      const tx = workersOf(after).map((w, k) => w.txPackets - before[k]!.txPackets);
      seen.push(`${(bps / 1e6).toFixed(0)} Mbit/s, h1 workers sent ${tx.join(' + ')} datagrams`);
      expect(bps).toBeGreaterThan(0);
      spread = tx.every((n) => n > 1_000);
      // the status document's totals are the workers' sums
      const w = workersOf(after);
      expect(after.dataplane.txPackets).toBe(w.reduce((n, x) => n + x.txPackets, 0));
      expect(after.dataplane.rxPackets).toBe(w.reduce((n, x) => n + x.rxPackets, 0));
    }
    console.log(`iperf3 -P 4 h1 -> h2: ${seen.join('; ')}`);
    expect(spread, seen.join('; ')).toBe(true);
  }, 90_000);

  it('still drops a replayed datagram (captured from h1 to h2, sent again twice from h3)', async () => {
    const target = bed.agent('h2');
    const targetIp = target.host.underlayIp;
    const cap = await startCapture(bed.topo, bed.topo.routerNs, {
      file: path.join(bed.topo.workDir, 'replay.pcap'),
      iface: `${bed.topo.id}-r2`,
      filter: ['udp', 'and', 'dst', 'host', targetIp, 'and', 'dst', 'port', String(PORT), 'and', 'src', 'host', bed.topo.host('h1').underlayIp],
    });
    const p = await ping(bed.topo, bed.topo.host('h1').ns, ips.get('h2')!, { count: 5, intervalS: 0.1 });
    expect(p.ok).toBe(true);
    const real = udpDatagrams(await cap.stop())
      .map((d) => d.payload)
      .filter((d) => d[0] === 4);
    expect(real.length).toBeGreaterThanOrEqual(5);
    const payloads = [...real, ...real];
    const before = await target.statusCli();
    expect(await sendUdp(bed.topo, bed.topo.host('h3').ns, targetIp, PORT, payloads)).toBe(payloads.length);
    let after = before;
    await waitUntil(
      'replays counted',
      async () => {
        after = await target.statusCli();
        return inboundDrops(after) - inboundDrops(before) >= payloads.length;
      },
      { timeoutMs: 5_000, intervalMs: 200 },
    ).catch(() => undefined);
    expect(after.dataplane.drops['replay']! - before.dataplane.drops['replay']!).toBe(payloads.length);
    expect(after.peers.every((x) => x.state === 'up')).toBe(true);
  });
});

describe.skipIf(!isRoot)('two workers on both ends under constant rekeying', () => {
  const SECONDS = 20;
  let bed: MeshBed;
  let a: Agent;
  let b: Agent;
  let restoreEnv = () => {};

  beforeAll(async () => {
    restoreEnv = rekeyEverySecond();
    // UDP GSO off: each datagram's header crosses the capture on its own (as in mesh-nonce)
    bed = await startMeshBed({ topology: { hosts: 2 }, agentOptions: { extraArgs: [...TWO, '--udp-offload', 'false'] } });
    [a, b] = [bed.agent('h1'), bed.agent('h2')];
  }, 60_000);
  afterAll(async () => {
    restoreEnv();
    await bed?.destroy();
  });

  it(`${SECONDS} s of two-way traffic over four flows with a rekey every second repeats no (receiver index, counter) pair`, async () => {
    const cap = await startCapture(bed.topo, a.host.ns, {
      file: path.join(bed.topo.workDir, 'nonces.pcap'),
      filter: ['udp', 'port', String(PORT)],
      snapLen: 96,
    });
    const [sa0, sb0] = [await a.status(), await b.status()];
    const streams = await Promise.all(
      [7841, 7842, 7843, 7844].map((port, i) =>
        i % 2 === 0
          ? startPacedStream(bed.topo, { fromNs: a.host.ns, toNs: b.host.ns, toIp: sb0.self.overlayIp, port, bytesPerS: 1_500_000 })
          : startPacedStream(bed.topo, { fromNs: b.host.ns, toNs: a.host.ns, toIp: sa0.self.overlayIp, port, bytesPerS: 1_500_000 }),
      ),
    );
    await new Promise((r) => setTimeout(r, SECONDS * 1000));
    const results = await Promise.all(streams.map((s) => s.finish()));
    const [sa1, sb1] = [await a.status(), await b.status()];
    const datagrams = udpDatagrams(await cap.stop());
    const { data, repeats, indices } = nonceRepeats(datagrams);
    const moved = (x: AgentStatus, y: AgentStatus) => workersOf(y).map((w, k) => w.txPackets - workersOf(x)[k]!.txPackets);
    console.log(
      `two workers, rekey every second: ${data} data datagrams under ${indices} receiver indices, ${repeats.length} repeated; ` +
        `rekeys h1 ${sa1.handshake!.rekeys - sa0.handshake!.rekeys}, h2 ${sb1.handshake!.rekeys - sb0.handshake!.rekeys}; ` +
        `sent per worker h1 ${moved(sa0, sa1).join('+')}, h2 ${moved(sb0, sb1).join('+')}; capture drops ${cap.kernelDrops}`,
    );
    expect(repeats.slice(0, 5)).toEqual([]);
    for (const r of results) expect(r.ok, r.error).toBe(true);
    expect(data).toBeGreaterThan(SECONDS * 1_000);
    expect(sa1.handshake!.rekeys - sa0.handshake!.rekeys).toBeGreaterThan(SECONDS / 2);
    expect(indices).toBeGreaterThan(SECONDS);
  }, (SECONDS + 90) * 1000);
});

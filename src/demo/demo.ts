import * as path from 'node:path';
import { createNetwork, startAgent, totalDrops, waitMeshUp, type Agent, type AgentStatus } from '../testbed/agents';
import { startTestbedEtcd, type TestbedEtcd } from '../testbed/etcd';
import { createTopology, type Topology } from '../testbed/topology';
import { ping, tcpTransfer, writeRandomFile } from '../testbed/traffic';

/**
 * `cladnet demo`: a whole mesh on this machine in under a minute. Network namespaces play VMs
 * on the internet (see src/testbed), a throwaway etcd runs in the "internet" router, one agent per
 * host; then pings over the overlay, a 20 MB file checked by sha256, and the drop counters.
 * Everything is removed at the end, on error, and on Ctrl-C.
 */
export interface DemoOptions {
  /** Number of hosts (2..8, default 3). */
  hosts?: number;
  log?: (line: string) => void;
}

const NETWORK = 'demo';
const CIDR = '100.64.0.0/24';
const TRANSFER_BYTES = 20 * 1024 * 1024;

export async function runDemo(opts: DemoOptions = {}): Promise<void> {
  const n = opts.hosts ?? 3;
  if (!Number.isInteger(n) || n < 2 || n > 8) throw new Error(`demo: hosts must be 2..8, got ${n}`);
  const log = opts.log ?? ((l: string) => console.log(l));
  const t0 = Date.now();
  const step = (msg: string) => log(`[${((Date.now() - t0) / 1000).toFixed(1).padStart(4)}s] ${msg}`);
  const section = (title: string) => log(`\n-- ${title} ${'-'.repeat(Math.max(0, 60 - title.length))}`);

  let topo: Topology | undefined;
  let etcd: TestbedEtcd | undefined;
  const agents: Agent[] = [];
  try {
    topo = await createTopology({ hosts: n });
    const t = topo;
    step(`test bed ${t.id}: router ${t.routerIp}, ${t.hosts.map((h) => `${h.name} ${h.underlayIp}`).join(', ')}`);

    etcd = await startTestbedEtcd(t);
    step(`etcd listening on ${etcd.endpoint} (inside the router namespace)`);

    await createNetwork(t, { name: NETWORK, cidr: CIDR, etcd: etcd.endpoint });
    step(`network "${NETWORK}" created with ${CIDR}; its network key (in the run's work dir) certifies each host`);

    const endpoint = etcd.endpoint;
    agents.push(...(await Promise.all(t.hosts.map((h) => startAgent(t, h, { etcd: endpoint, network: NETWORK })))));
    const mesh = await waitMeshUp(agents, 30_000);
    const ipOf = (a: Agent) => mesh.get(a.name)!.self.overlayIp;
    step(`${n} agents up, full mesh: ${agents.map((a) => `${a.name} ${ipOf(a)}`).join(', ')}`);

    section(`cladnet status on ${agents[0]!.name}`);
    log((await agents[0]!.statusText()).trimEnd());

    section('ping over the overlay (3 each)');
    let pingFailures = 0;
    for (const a of agents) {
      for (const b of agents) {
        if (a === b) continue;
        const r = await ping(t, a.host.ns, ipOf(b), { count: 3, intervalS: 0.2 });
        if (!r.ok) pingFailures++;
        const rtt = r.rtt ? `rtt avg ${r.rtt.avg.toFixed(2)} ms (min ${r.rtt.min.toFixed(2)}, max ${r.rtt.max.toFixed(2)})` : 'no reply';
        log(`  ${a.name} -> ${b.name} ${ipOf(b).padEnd(15)} ${r.received}/${r.sent}  ${rtt}`);
      }
    }

    const from = agents[0]!;
    const to = agents[agents.length - 1]!;
    section(`20 MB of random bytes over TCP, ${from.name} -> ${to.name} (${ipOf(to)})`);
    const file = path.join(t.workDir, 'demo-20MB.bin');
    writeRandomFile(file, TRANSFER_BYTES);
    const tr = await tcpTransfer(t, {
      fromNs: from.host.ns,
      toNs: to.host.ns,
      toIp: ipOf(to),
      file,
      outFile: path.join(t.workDir, 'demo-20MB.received'),
    });
    const same = tr.sentSha256 === tr.receivedSha256 && tr.bytes === TRANSFER_BYTES;
    log(`  sent     sha256 ${tr.sentSha256}`);
    log(`  received sha256 ${tr.receivedSha256}  ${same ? 'MATCH' : 'MISMATCH'}`);
    log(`  ${(tr.bytes / 1048576).toFixed(1)} MiB in ${(tr.ms / 1000).toFixed(2)} s = ${tr.mbitPerS.toFixed(0)} Mbit/s`);

    section('data plane counters');
    const docs = await Promise.all(agents.map((a) => a.status()));
    for (const d of docs) log(`  ${d.self.name}: ${formatCounters(d)}`);

    log('');
    if (!same) throw new Error('demo: the file arrived damaged (sha256 mismatch)');
    if (pingFailures > 0) throw new Error(`demo: ${pingFailures} ping pair(s) got no reply`);
  } finally {
    if (topo) {
      const codes = await Promise.all(agents.map((a) => a.stop()));
      const unclean = codes.filter((c) => c.code !== 0).length;
      await etcd?.stop();
      await topo.destroy();
      step(`torn down: ${agents.length} agents stopped${unclean ? ` (${unclean} not cleanly)` : ''}, etcd stopped, namespaces removed`);
    }
  }
}

function formatCounters(d: AgentStatus): string {
  const dp = d.dataplane;
  if (!dp) return '(no dataplane counters)';
  const drops = Object.entries(dp.drops).filter(([, v]) => v > 0);
  const dropText = drops.length ? drops.map(([k, v]) => `${k} ${v}`).join(', ') : 'none';
  return `rx ${dp.rxPackets} pkts / ${fmtBytes(dp.rxBytes)}, tx ${dp.txPackets} pkts / ${fmtBytes(dp.txBytes)}, drops ${totalDrops(d)} (${dropText})`;
}

function fmtBytes(b: number): string {
  if (b >= 1048576) return `${(b / 1048576).toFixed(1)} MiB`;
  if (b >= 1024) return `${(b / 1024).toFixed(1)} KiB`;
  return `${b} B`;
}

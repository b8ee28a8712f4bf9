import * as path from 'node:path';
import { createNetwork, startAgent, totalDrops, waitMeshUp, type Agent, type AgentStatus } from '../testbed/agents';
import { startTestbedEtcd, type TestbedEtcd } from '../testbed/etcd';
import { replaceAddressTimed } from '../testbed/roam';
import { createTopology, type HostSpec, type Topology } from '../testbed/topology';
import { ping, recoveryMs, startPings, tcpTransfer, writeRandomFile } from '../testbed/traffic';

/**
 * `cladnet demo`: a whole mesh on this machine in under a minute. Network namespaces play VMs
 * (see src/testbed): all but the last sit on the internet, the last one in another "cloud" behind
 * a NAT gateway, not knowing its public address. A throwaway etcd runs in the "internet" router,
 * one agent per host; then pings over the overlay, a 20 MB file checked by sha256, a host whose
 * address changes under a running ping, and the drop counters. Everything is removed at the end,
 * on error, and on Ctrl-C.
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
    const hosts: HostSpec[] = Array.from({ length: n }, (_, i) => (i === n - 1 ? { site: 'cloud-b' } : {}));
    topo = await createTopology({ hosts, sites: [{ name: 'cloud-b', nat: 'masquerade' }] });
    const t = topo;
    const nat = t.plan.sites[0]!;
    step(
      `test bed ${t.id}: router ${t.routerIp}, ${t.hosts.map((h) => `${h.name} ${h.underlayIp}${h.site ? ` (behind the NAT of ${h.site}, public ${nat.wanIp})` : ''}`).join(', ')}`,
    );

    etcd = await startTestbedEtcd(t);
    step(`etcd listening on ${etcd.endpoint} (inside the router namespace)`);

    await createNetwork(t, { name: NETWORK, cidr: CIDR, etcd: etcd.endpoint });
    step(`network "${NETWORK}" created with ${CIDR}; its network key (in the run's work dir) certifies each host`);

    const endpoint = etcd.endpoint;
    agents.push(...(await Promise.all(t.hosts.map((h) => startAgent(t, h, { etcd: endpoint, network: NETWORK })))));
    const mesh = await waitMeshUp(agents, 30_000);
    const ipOf = (a: Agent) => mesh.get(a.name)!.self.overlayIp;
    step(`${n} agents up, full mesh: ${agents.map((a) => `${a.name} ${ipOf(a)}`).join(', ')}`);

    const natted = agents[agents.length - 1]!;
    for (let i = 0; i < 20 && !(await natted.status()).self.reflexive; i++) await new Promise((r) => setTimeout(r, 100));
    section(`cladnet status on ${natted.name} (behind NAT: it learned its public address from its peers)`);
    log((await natted.statusText()).trimEnd());

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

    const mover = agents[0]!;
    section(`roaming: ${mover.name}'s underlay address changes while ${natted.name} pings it every 10 ms`);
    const pings = startPings(t, natted.host.ns, ipOf(mover), { intervalMs: 10 });
    await pings.waitReplyAfter(Date.now(), 5_000);
    const moved = await replaceAddressTimed(t, mover.host.name);
    await pings.waitReplyAfter(moved.at, 10_000);
    await new Promise((r) => setTimeout(r, 300));
    const series = await pings.stop();
    const rec = recoveryMs(series.replies, moved.at);
    const seen = (await natted.status()).peers.find((p) => p.name === mover.name);
    log(`  ${mover.name}: ${mover.host.underlayIp} -> ${moved.ip}; ${natted.name} now sends to ${seen?.endpoint ?? '?'} (${seen?.path ?? '?'})`);
    log(`  pings answered again after ${rec === null ? 'no reply within 10 s' : `${rec.toFixed(0)} ms`} (${series.replies.length} replies)`);

    section('data plane counters');
    const docs = await Promise.all(agents.map((a) => a.status()));
    for (const d of docs) log(`  ${d.self.name}: ${formatCounters(d)}`);

    log('');
    if (!same) throw new Error('demo: the file arrived damaged (sha256 mismatch)');
    if (pingFailures > 0) throw new Error(`demo: ${pingFailures} ping pair(s) got no reply`);
    if (rec === null) throw new Error(`demo: ${natted.name} did not reach ${mover.name} again after its address changed`);
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

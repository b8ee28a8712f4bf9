/**
 * One round of measurements over one running tunnel, in this order:
 *
 *   1. check     the tunnel processes are the ones we think; each end routes the other's
 *                address through the tunnel device; ping gets through; the implementation
 *                says it is up (cladnet: both agents list the peer as up)
 *   2. idle RSS  VmRSS of every tunnel process after a short settle, before any load
 *   3. RTT       N pings at a short interval over the tunnel, each RTT parsed
 *   4. TCP x1    iperf3, receiver goodput; tunnel CPU (utime + stime of every tunnel process,
 *                all threads) sampled around it gives CPU seconds per GB received; cladnet's
 *                handshake rekeys per host read before and after it (`status --json`)
 *   5. TCP x4    iperf3 -P 4
 *   6. UDP       iperf3 -u -b 0 -l 1372 (1400-byte IP packets): datagrams received per second, loss
 *
 * Around each of 4.-6., each host's kernel UDP counters (/proc/net/snmp, read inside its namespace
 * just before and just after the test): the test's socket drops (metrics.ts), beside iperf3's TCP
 * retransmits. Also recorded, since packets the kernel drops before a tunnel reads them appear in no tunnel
 * counter: the receive-buffer drops of each end's tunnel socket (/proc/net/udp, for the life of the
 * socket, i.e. this round), the rx/tx drops of each end's tunnel device over the round (a TUN's tx
 * drops are packets its process did not read in time), and each host's UDP buffer errors over the
 * round (/proc/net/snmp, per namespace; these include iperf3's own socket in the UDP test).
 *
 * An iperf3 test that fails is retried once. A failing measurement is recorded (null metric plus the
 * error) and the round goes on; a failing
 * check fails the round, since nothing measured after it would mean anything.
 */
import { ping } from '../src/testbed/traffic';
import { sleep, waitUntil } from '../src/testbed/agents';
import { emptyMetrics, type Metrics } from './metrics';
import {
  cpuSeconds,
  iperf,
  linkDrops,
  parseIperfTcp,
  parseIperfUdp,
  pingSeries,
  procComm,
  rssBytes,
  udpCounters,
  udpDrops,
  udpSocketBuffers,
  udpSocketDrops,
  type IperfUdp,
  type RttSummary,
  type Snmp,
  type UdpDrops,
} from './probes';
import { sig } from './stats';
import type { BenchContext, Tunnel, TunnelProc } from './tunnels/types';

export const UDP_PAYLOAD = 1372; // + 8 UDP + 20 IPv4 = 1400-byte packets inside the tunnel

export interface SuiteOptions {
  readonly seconds: number;
  readonly pings: number;
  readonly pingIntervalMs: number;
  /** Only the ping series (bench --latency). */
  readonly latencyOnly?: boolean;
}

export interface RoundResult {
  readonly metrics: Metrics;
  /** Raw numbers behind the metrics (small): bytes, CPU seconds, per-process RSS, ... */
  readonly detail: Record<string, unknown>;
  readonly errors: string[];
}

export async function checkTunnel(ctx: BenchContext, t: Tunnel): Promise<void> {
  for (const p of t.procs) {
    const comm = procComm(p.pid);
    if (comm !== p.comm) throw new Error(`process ${p.pid} on ${p.host} is "${comm ?? 'gone'}", expected "${p.comm}"`);
  }
  for (const [from, to] of [
    [t.a, t.b],
    [t.b, t.a],
  ] as const) {
    const r = await ctx.topo.exec(from.ns, ['ip', '-o', 'route', 'get', to.ip]);
    if (!new RegExp(`\\bdev ${from.dev}\\b`).test(r.stdout)) {
      throw new Error(`${from.ns}: ${to.ip} is not routed through ${from.dev}: ${r.stdout.trim()}`);
    }
  }
  await waitUntil(`ping ${t.a.ns} -> ${t.b.ip}`, async () => (await ping(ctx.topo, t.a.ns, t.b.ip, { count: 1, waitS: 1 })).ok, {
    timeoutMs: 20_000,
    intervalMs: 200,
  });
  if (t.ready) await waitUntil('the tunnel to report itself up', async () => (await t.ready!(), true), { timeoutMs: 10_000 });
}

function cpuOf(procs: readonly TunnelProc[]): number {
  return procs.reduce((s, p) => s + cpuSeconds(p.pid), 0);
}

function alive(procs: readonly TunnelProc[]): void {
  const dead = procs.filter((p) => procComm(p.pid) !== p.comm);
  if (dead.length) throw new Error(`tunnel process died during the test: ${dead.map((p) => `${p.comm} on ${p.host}`).join(', ')}`);
}

export async function measureRound(ctx: BenchContext, t: Tunnel, opts: SuiteOptions): Promise<RoundResult> {
  const metrics = emptyMetrics();
  const detail: Record<string, unknown> = {};
  const errors: string[] = [];
  const step = async (name: string, f: () => Promise<void>) => {
    try {
      await f();
    } catch (e) {
      errors.push(`${name}: ${(e as Error).message}`);
      ctx.log(`  ${name} FAILED: ${(e as Error).message}`);
    }
    await sleep(300);
  };
  // An iperf3 test that fails is run once more (iperf3 occasionally loses its control connection
  // under load); the first failure is kept in detail.retries.
  const retries: string[] = [];
  const twice = (name: string, f: () => Promise<void>) => async () => {
    try {
      await f();
    } catch (e) {
      retries.push(`${name}: ${(e as Error).message}`);
      ctx.log(`  ${name} failed (${(e as Error).message}); once more`);
      await sleep(1_000);
      await f();
    }
  };
  const tcp = { serverNs: t.b.ns, clientNs: t.a.ns, serverIp: t.b.ip, seconds: opts.seconds };
  // Each test's kernel UDP drops on both hosts (before and after it, inside each namespace).
  const dropsAround = async <T>(f: () => Promise<T>): Promise<{ value: T; drops: UdpDrops }> => {
    const before = await Promise.all([t.a.ns, t.b.ns].map((ns) => udpCounters(ctx.topo, ns)));
    const value = await f();
    const after = await Promise.all([t.a.ns, t.b.ns].map((ns) => udpCounters(ctx.topo, ns)));
    return { value, drops: udpDrops(before as [Snmp, Snmp], after as [Snmp, Snmp]) };
  };
  // Kernel UDP drops on each host over the round (socket buffers full: loss the tunnel never saw).
  const hosts = [t.a.ns, t.b.ns];
  const udp0 = await Promise.all(hosts.map((ns) => udpCounters(ctx.topo, ns).catch(() => null)));
  const ends = [t.a, t.b];
  const link0 = await Promise.all(ends.map((e) => linkDrops(ctx.topo, e.ns, e.dev).catch(() => null)));

  // The tunnel sockets' buffer sizes as the kernel has them (an anchor's tuning took effect or not).
  if (t.udpPort !== undefined) {
    const port = t.udpPort;
    const bufs = await Promise.all(hosts.map((ns) => udpSocketBuffers(ctx.topo, ns, port).catch(() => null)));
    detail['socketBuffers'] = { a: bufs[0], b: bufs[1] };
  }

  const full = !opts.latencyOnly;
  // 2. idle RSS
  if (full && t.procs.length > 0) {
    await sleep(1_000);
    await step('rss', async () => {
      const rss = t.procs.map((p) => rssBytes(p.pid));
      metrics.rssMiB = sig(rss.reduce((a, b) => a + b, 0) / rss.length / 2 ** 20);
      detail['rssMiB'] = Object.fromEntries(t.procs.map((p, i) => [p.host, sig(rss[i]! / 2 ** 20)]));
    });
  }

  // 3. RTT
  await step('ping', async () => {
    const r: RttSummary = await pingSeries(ctx.topo, t.a.ns, t.b.ip, opts.pings, opts.pingIntervalMs);
    if (r.received === 0) throw new Error('no ping replies');
    metrics.rttP50Ms = r.p50;
    metrics.rttP99Ms = r.p99;
    detail['ping'] = { ...r, mean: r.mean === null ? null : sig(r.mean) };
    ctx.log(`  ping      p50 ${r.p50} ms  p90 ${r.p90} ms  p99 ${r.p99} ms  p99.9 ${r.p999} ms  (${r.received}/${r.sent} replies)`);
  });

  // 4. TCP, one stream, with CPU (and, for cladnet, the rekeys during it)
  const readRekeys = async (): Promise<Record<string, number> | null> => {
    if (!t.rekeys) return null;
    try {
      return await t.rekeys();
    } catch (e) {
      errors.push(`tcp1 rekeys: ${(e as Error).message}`);
      return null;
    }
  };
  if (full) await step('tcp1', twice('tcp1', async () => {
    const rk0 = await readRekeys();
    let cpu0 = 0;
    let cpu1 = 0;
    let t0 = 0n;
    let wall = 0;
    const around = {
      before: () => {
        cpu0 = cpuOf(t.procs);
        t0 = process.hrtime.bigint();
      },
      after: () => {
        cpu1 = cpuOf(t.procs);
        wall = Number(process.hrtime.bigint() - t0) / 1e9;
      },
    };
    const { value: out, drops } = await dropsAround(() => iperf(ctx.topo, { ...tcp, around }));
    const rk1 = await readRekeys();
    alive(t.procs);
    const r = parseIperfTcp(out);
    metrics.tcp1Mbps = sig(r.gbps * 1e3);
    metrics.tcp1Retrans = r.retransmits;
    metrics.tcp1Drops = drops.total;
    const cpu = cpu1 - cpu0;
    if (t.procs.length > 0) metrics.cpuSPerGb = sig(cpu / (r.bytes / 1e9));
    const rekeys = rk0 && rk1 ? { before: rk0, after: rk1, delta: Object.fromEntries(Object.keys(rk1).map((h) => [h, rk1[h]! - (rk0[h] ?? 0)])) } : undefined;
    detail['tcp1'] = {
      bytes: r.bytes,
      seconds: sig(r.seconds),
      retransmits: r.retransmits,
      udpDrops: drops,
      tunnelCpuS: sig(cpu),
      tunnelCpuPct: sig((100 * cpu) / wall, 3),
      ...(rekeys ? { rekeys } : {}),
    };
    ctx.log(
      `  tcp x1    ${(r.gbps * 1e3).toFixed(0)} Mbit/s, ${r.retransmits ?? '?'} retransmits, ${drops.total} socket drops` +
        (t.procs.length ? `, tunnel CPU ${cpu.toFixed(2)} s (${((100 * cpu) / wall).toFixed(0)}% of one core)` : '') +
        (rekeys ? `, rekeys ${Object.entries(rekeys.delta).map(([h, n]) => `${h} ${n}`).join(', ')}` : ''),
    );
  }));

  // 5. TCP, four streams
  if (full) await step('tcp4', twice('tcp4', async () => {
    const { value: out, drops } = await dropsAround(() => iperf(ctx.topo, { ...tcp, streams: 4 }));
    const r = parseIperfTcp(out);
    alive(t.procs);
    metrics.tcp4Mbps = sig(r.gbps * 1e3);
    metrics.tcp4Retrans = r.retransmits;
    metrics.tcp4Drops = drops.total;
    detail['tcp4'] = { bytes: r.bytes, seconds: sig(r.seconds), retransmits: r.retransmits, udpDrops: drops };
    ctx.log(`  tcp x4    ${(r.gbps * 1e3).toFixed(0)} Mbit/s, ${r.retransmits ?? '?'} retransmits, ${drops.total} socket drops`);
  }));

  // 6. UDP flood of 1400-byte packets
  if (full) await step('udp', twice('udp', async () => {
    const { value: out, drops } = await dropsAround(() => iperf(ctx.topo, { ...tcp, udpLen: UDP_PAYLOAD }));
    const r: IperfUdp = parseIperfUdp(out, UDP_PAYLOAD);
    alive(t.procs);
    metrics.udpKpps = sig(r.rxPps / 1e3);
    metrics.udpLossPct = sig(r.lossPct, 3);
    metrics.udpDrops = drops.total;
    detail['udp'] = {
      rxKpps: sig(r.rxPps / 1e3),
      txKpps: sig(r.txPps / 1e3),
      lossPct: sig(r.lossPct, 3),
      rxGbps: sig(r.gbps),
      payload: UDP_PAYLOAD,
      udpDrops: drops,
    };
    ctx.log(`  udp       ${(r.rxPps / 1e3).toFixed(1)} kpps received of ${(r.txPps / 1e3).toFixed(1)} kpps sent (loss ${r.lossPct.toFixed(1)}%)`);
  }));

  if (retries.length > 0) detail['retries'] = retries;
  const udp1 = await Promise.all(hosts.map((ns) => udpCounters(ctx.topo, ns).catch(() => null)));
  if (t.udpPort !== undefined) {
    const port = t.udpPort;
    const drops = await Promise.all(hosts.map((ns) => udpSocketDrops(ctx.topo, ns, port).catch(() => null)));
    detail['tunnelSocketDrops'] = { a: drops[0], b: drops[1] };
  }
  const link1 = await Promise.all(ends.map((e) => linkDrops(ctx.topo, e.ns, e.dev).catch(() => null)));
  detail['deviceDrops'] = Object.fromEntries(
    ends.map((e, i) => {
      const [x, y] = [link0[i], link1[i]];
      return [i === 0 ? 'a' : 'b', x && y ? { dev: e.dev, rx: y.rxDropped - x.rxDropped, tx: y.txDropped - x.txDropped } : null];
    }),
  );
  detail['kernelUdpDrops'] = Object.fromEntries(
    hosts.map((ns, i) => {
      const [x, y] = [udp0[i], udp1[i]];
      const d = (k: string) => (x && y ? (y[k] ?? 0) - (x[k] ?? 0) : null);
      return [i === 0 ? 'a' : 'b', { rcvbufErrors: d('RcvbufErrors'), sndbufErrors: d('SndbufErrors'), inErrors: d('InErrors') }];
    }),
  );

  return { metrics, detail, errors };
}

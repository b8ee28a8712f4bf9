/**
 * What the bench measures with, each split into a pure parser (easy to check against saved output)
 * and a runner that uses the test bed: iperf3 client/server, ping RTT series, and the CPU time and
 * resident memory of a process from /proc.
 */
import type { ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import { runSync } from '../src/testbed/run';
import type { Topology } from '../src/testbed/topology';
import { percentile } from './stats';

// ---- iperf3 ------------------------------------------------------------------------------------

export const IPERF_PORT = 5201;

export interface IperfTcp {
  /** Receiver-side goodput. */
  readonly gbps: number;
  /** Bytes the receiver got. */
  readonly bytes: number;
  readonly seconds: number;
  readonly retransmits: number | null;
}

export interface IperfUdp {
  /** Datagrams the receiver got per second. */
  readonly rxPps: number;
  /** Datagrams the sender wrote per second (to its own socket: what it offered the tunnel). */
  readonly txPps: number;
  readonly lossPct: number;
  /** Receiver-side payload goodput. */
  readonly gbps: number;
  readonly seconds: number;
}

interface IperfSum {
  seconds?: number;
  bytes?: number;
  bits_per_second?: number;
  retransmits?: number;
  packets?: number;
  lost_packets?: number;
}

interface IperfJson {
  error?: string;
  end?: { sum_sent?: IperfSum; sum_received?: IperfSum };
}

function parseIperfJson(stdout: string): IperfJson {
  let j: IperfJson;
  try {
    j = JSON.parse(stdout) as IperfJson;
  } catch {
    throw new Error(`iperf3 printed no JSON: ${stdout.trim().slice(0, 200) || '(nothing)'}`);
  }
  if (j.error) throw new Error(`iperf3: ${j.error}`);
  return j;
}

/** Receiver-side numbers of `iperf3 -c ... -J` for a TCP test. */
export function parseIperfTcp(stdout: string): IperfTcp {
  const j = parseIperfJson(stdout);
  const rx = j.end?.sum_received;
  if (!rx || typeof rx.bytes !== 'number' || typeof rx.seconds !== 'number' || rx.seconds <= 0) {
    throw new Error('iperf3 JSON has no end.sum_received');
  }
  return {
    gbps: (rx.bytes * 8) / rx.seconds / 1e9,
    bytes: rx.bytes,
    seconds: rx.seconds,
    retransmits: j.end?.sum_sent?.retransmits ?? null,
  };
}

/**
 * Receiver-side numbers of `iperf3 -c ... -u -l LEN -J`. iperf3's `packets` on the receiver is the
 * highest sequence number seen, so datagrams received = packets - lost_packets.
 */
export function parseIperfUdp(stdout: string, payloadLen: number): IperfUdp {
  const j = parseIperfJson(stdout);
  const rx = j.end?.sum_received;
  const tx = j.end?.sum_sent;
  if (!rx || typeof rx.bytes !== 'number' || typeof rx.seconds !== 'number' || rx.seconds <= 0) {
    throw new Error('iperf3 JSON has no end.sum_received');
  }
  const got = rx.bytes / payloadLen;
  const total = rx.packets ?? 0;
  const lost = rx.lost_packets ?? 0;
  const txSeconds = tx?.seconds && tx.seconds > 0 ? tx.seconds : rx.seconds;
  return {
    rxPps: got / rx.seconds,
    txPps: (tx?.packets ?? 0) / txSeconds,
    lossPct: total > 0 ? (100 * lost) / total : 0,
    gbps: (rx.bytes * 8) / rx.seconds / 1e9,
    seconds: rx.seconds,
  };
}

/** Waits for `child` to print `text` on stdout (or exit, or time out). */
function waitForOutput(child: ChildProcess, text: string, ms: number, what: string): Promise<void> {
  return new Promise((resolve, reject) => {
    let out = '';
    const onData = (b: Buffer) => {
      out += b.toString();
      if (out.includes(text)) done(() => resolve());
    };
    const onExit = () => done(() => reject(new Error(`${what} exited (${child.exitCode ?? child.signalCode}): ${out.trim()}`)));
    const t = setTimeout(() => done(() => reject(new Error(`${what}: not ready in ${ms} ms`))), ms);
    const done = (f: () => void) => {
      clearTimeout(t);
      child.stdout?.off('data', onData);
      child.off('exit', onExit);
      f();
    };
    child.stdout?.on('data', onData);
    child.once('exit', onExit);
  });
}

export function stopChild(child: ChildProcess, graceMs = 3_000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const t = setTimeout(() => child.kill('SIGKILL'), graceMs);
    child.once('exit', () => {
      clearTimeout(t);
      resolve();
    });
    child.kill('SIGTERM');
  });
}

export interface IperfRun {
  readonly serverNs: string;
  readonly clientNs: string;
  readonly serverIp: string;
  readonly seconds: number;
  /** TCP parallel streams (default 1). */
  readonly streams?: number;
  /** UDP at unlimited rate with this payload length; TCP when absent. */
  readonly udpLen?: number;
  /** Called right before the client starts and right after it ends (CPU sampling). */
  readonly around?: { before(): void; after(): void };
}

/** Runs one iperf3 test (a one-off server in `serverNs`, the client in `clientNs`); returns the client's JSON. */
export async function iperf(topo: Topology, r: IperfRun): Promise<string> {
  const server = topo.spawn(r.serverNs, ['iperf3', '-s', '-1', '--forceflush', '-p', String(IPERF_PORT), '-B', r.serverIp], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let serverOut = '';
  server.stdout?.on('data', (b: Buffer) => (serverOut += b.toString()));
  server.stderr?.on('data', (b: Buffer) => (serverOut += b.toString()));
  try {
    await waitForOutput(server, 'Server listening', 5_000, 'iperf3 server');
    const args = ['iperf3', '-c', r.serverIp, '-p', String(IPERF_PORT), '-t', String(r.seconds), '-J', '--connect-timeout', '3000'];
    if (r.streams && r.streams > 1) args.push('-P', String(r.streams));
    if (r.udpLen !== undefined) args.push('-u', '-b', '0', '-l', String(r.udpLen));
    r.around?.before();
    const res = await topo.tryExec(r.clientNs, args, { timeoutMs: (r.seconds + 20) * 1000 });
    r.around?.after();
    const serverSays = () => serverOut.trim().split('\n').filter((l) => /error|terminat|unable/i.test(l)).slice(-3).join(' | ');
    if (res.code !== 0 && !res.stdout.trim().startsWith('{')) {
      throw new Error(`iperf3 client failed (exit ${res.code}): ${(res.stderr || res.stdout).trim().slice(0, 300)}; server: ${serverSays() || '-'}`);
    }
    const error = /"error":\s*"([^"]*)"/.exec(res.stdout);
    if (error) throw new Error(`iperf3: ${error[1]}; server: ${serverSays() || '-'}`);
    return res.stdout;
  } finally {
    await stopChild(server, 1_000);
  }
}

// ---- ping ----------------------------------------------------------------------------------------

export interface RttSummary {
  readonly sent: number;
  readonly received: number;
  readonly p50: number | null;
  readonly p99: number | null;
  /** p90 and p99.9 (nearest rank; p99.9 of fewer than 1,000 replies is the worst one). */
  readonly p90: number | null;
  readonly p999: number | null;
  /** The ten slowest replies, slowest first, with their icmp_seq: is the tail spread out or bunched? */
  readonly slowest: readonly { seq: number; ms: number }[];
  readonly min: number | null;
  readonly max: number | null;
  readonly mean: number | null;
}

/** Every reply of ping's output with its icmp_seq (-1 when the lines carry none), in output order. */
export function pingReplies(out: string): { seq: number; ms: number }[] {
  const bySeq: { seq: number; ms: number }[] = [];
  for (const m of out.matchAll(/icmp_seq=(\d+) .*? time=([\d.]+) ms/g)) bySeq.push({ seq: Number(m[1]), ms: Number(m[2]) });
  if (bySeq.length === 0) for (const m of out.matchAll(/ time=([\d.]+) ms/g)) bySeq.push({ seq: -1, ms: Number(m[1]) });
  return bySeq;
}

/** Every `time=X ms` of ping's per-reply lines, summarised. */
export function parsePingRtts(out: string, sent: number): RttSummary {
  const rtts: number[] = [];
  const bySeq = pingReplies(out);
  for (const x of bySeq) rtts.push(x.ms);
  rtts.sort((a, b) => a - b);
  const n = rtts.length;
  return {
    sent,
    received: n,
    p50: percentile(rtts, 50),
    p99: percentile(rtts, 99),
    p90: percentile(rtts, 90),
    p999: percentile(rtts, 99.9),
    slowest: [...bySeq].sort((a, b) => b.ms - a.ms).slice(0, 10),
    min: n ? rtts[0]! : null,
    max: n ? rtts[n - 1]! : null,
    mean: n ? rtts.reduce((a, b) => a + b, 0) / n : null,
  };
}

/** ping's output for `count` pings `intervalMs` apart from `ns` to `ip` (intervals under 200 ms need root). */
async function pingOutput(topo: Topology, ns: string, ip: string, count: number, intervalMs: number): Promise<string> {
  const r = await topo.tryExec(ns, ['ping', '-n', '-c', String(count), '-i', String(intervalMs / 1000), '-W', '1', ip], {
    timeoutMs: count * intervalMs + 10_000,
  });
  return r.stdout;
}

export async function pingSeries(topo: Topology, ns: string, ip: string, count: number, intervalMs: number): Promise<RttSummary> {
  return parsePingRtts(await pingOutput(topo, ns, ip, count, intervalMs), count);
}

/** Every reply's RTT in ms, in the order they came. */
export async function pingRtts(topo: Topology, ns: string, ip: string, count: number, intervalMs: number): Promise<number[]> {
  return pingReplies(await pingOutput(topo, ns, ip, count, intervalMs)).map((x) => x.ms);
}

// ---- kernel UDP counters ------------------------------------------------------------------------

/** The `Udp:` counters of /proc/net/snmp text (per network namespace), by name. */
export function parseSnmpUdp(snmp: string): Record<string, number> {
  const lines = snmp.split('\n').filter((l) => l.startsWith('Udp: '));
  if (lines.length < 2) throw new Error('no Udp lines in /proc/net/snmp');
  const names = lines[0]!.split(/\s+/).slice(1);
  const values = lines[1]!.split(/\s+/).slice(1).map(Number);
  return Object.fromEntries(names.map((n, i) => [n, values[i] ?? 0]));
}

/** The Udp: counters of one namespace, by name (InDatagrams, InErrors, RcvbufErrors, SndbufErrors, ...). */
export type Snmp = Record<string, number>;

/** UDP counters of namespace `ns` (its own /proc/net/snmp: the counters are per network namespace). */
export async function udpCounters(topo: Topology, ns: string): Promise<Snmp> {
  return parseSnmpUdp((await topo.exec(ns, ['cat', '/proc/net/snmp'])).stdout);
}

export interface HostUdpDrops {
  readonly rcvbufErrors: number;
  readonly sndbufErrors: number;
  readonly inErrors: number;
}

/** One test's kernel UDP drops on hosts a and b, and their total (see metrics.ts). */
export interface UdpDrops {
  readonly a: HostUdpDrops;
  readonly b: HostUdpDrops;
  /**
   * InErrors + SndbufErrors over both hosts. The kernel counts a datagram dropped for a full
   * receive buffer in both RcvbufErrors and InErrors, so RcvbufErrors is not added again.
   */
  readonly total: number;
}

/** The differences of two readings of both hosts' counters (before, after). */
export function udpDrops(before: readonly [Snmp, Snmp], after: readonly [Snmp, Snmp]): UdpDrops {
  const host = (x: Snmp, y: Snmp): HostUdpDrops => {
    const d = (k: string) => (y[k] ?? 0) - (x[k] ?? 0);
    return { rcvbufErrors: d('RcvbufErrors'), sndbufErrors: d('SndbufErrors'), inErrors: d('InErrors') };
  };
  const a = host(before[0], after[0]);
  const b = host(before[1], after[1]);
  return { a, b, total: a.inErrors + a.sndbufErrors + b.inErrors + b.sndbufErrors };
}

/**
 * Sum of the `drops` column of /proc/net/udp text over the sockets bound to local `port`: datagrams
 * the kernel dropped because that socket's receive buffer was full (counted for the socket's life).
 */
export function parseUdpSocketDrops(procNetUdp: string, port: number): number | null {
  let found = false;
  let drops = 0;
  for (const line of procNetUdp.split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 13) continue;
    const local = f[1]!.split(':')[1];
    if (local === undefined || parseInt(local, 16) !== port) continue;
    found = true;
    drops += Number(f[f.length - 1]) || 0;
  }
  return found ? drops : null;
}

/**
 * Receive-buffer drops of the UDP socket(s) on `port` in namespace `ns`, IPv4 and IPv6 sockets
 * (nebula's is a dual-stack IPv6 one); null when none is bound.
 */
export async function udpSocketDrops(topo: Topology, ns: string, port: number): Promise<number | null> {
  const counts = await Promise.all(
    ['/proc/net/udp', '/proc/net/udp6'].map(async (f) => parseUdpSocketDrops((await topo.exec(ns, ['cat', f])).stdout, port)),
  );
  const found = counts.filter((c): c is number => c !== null);
  return found.length > 0 ? found.reduce((a, b) => a + b, 0) : null;
}

/** A UDP socket's buffer sizes as the kernel holds them (after its doubling of what was asked). */
export interface SocketBuffers {
  readonly rcvbuf: number;
  readonly sndbuf: number;
}

/**
 * rb and tb of the first socket in `ss -H -u -a -m -n` output (`skmem:(r0,rb8388608,t0,tb8388608,...)`):
 * what the tunnel's UDP socket really got, to show an anchor's buffer tuning took effect.
 */
export function parseSsSkmem(out: string): SocketBuffers | null {
  const m = /skmem:\([^)]*\brb(\d+),[^)]*\btb(\d+)/.exec(out);
  return m ? { rcvbuf: Number(m[1]), sndbuf: Number(m[2]) } : null;
}

/** Buffer sizes of the UDP socket bound to `port` in `ns` (null when none is). */
export async function udpSocketBuffers(topo: Topology, ns: string, port: number): Promise<SocketBuffers | null> {
  return parseSsSkmem((await topo.exec(ns, ['ss', '-H', '-u', '-a', '-m', '-n', `sport = :${port}`])).stdout);
}

export interface LinkDrops {
  readonly rxDropped: number;
  readonly txDropped: number;
}

/** rx/tx `dropped` of the first link in `ip -j -s link show` output. */
export function parseLinkDrops(json: string): LinkDrops {
  const [link] = JSON.parse(json) as { stats64?: { rx?: { dropped?: number }; tx?: { dropped?: number } } }[];
  const st = link?.stats64;
  if (!st) throw new Error('no stats64 in ip -j -s link output');
  return { rxDropped: st.rx?.dropped ?? 0, txDropped: st.tx?.dropped ?? 0 };
}

/** Drop counters of device `dev` in `ns` (for a TUN, tx = towards the tunnel process, whose queue was full). */
export async function linkDrops(topo: Topology, ns: string, dev: string): Promise<LinkDrops> {
  return parseLinkDrops((await topo.exec(ns, ['ip', '-j', '-s', 'link', 'show', 'dev', dev])).stdout);
}

// ---- /proc -----------------------------------------------------------------------------------------

let clockTicks: number | undefined;

/** sysconf(_SC_CLK_TCK), the unit of /proc/PID/stat times. */
export function clkTck(): number {
  if (clockTicks === undefined) {
    const n = Number(runSync(['getconf', 'CLK_TCK']).stdout.trim());
    clockTicks = Number.isInteger(n) && n > 0 ? n : 100;
  }
  return clockTicks;
}

/** utime + stime in clock ticks from the text of /proc/PID/stat (all threads of the process). */
export function parseStatTicks(stat: string): number {
  // Field 2 (comm) may contain spaces and parentheses: fields after the last ')' are plain.
  const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // rest[0] is field 3 (state); utime is field 14, stime field 15.
  const utime = Number(rest[11]);
  const stime = Number(rest[12]);
  if (!Number.isFinite(utime) || !Number.isFinite(stime)) throw new Error('unparsable /proc/PID/stat');
  return utime + stime;
}

/** CPU seconds (user + system, all threads) used so far by `pid`. */
export function cpuSeconds(pid: number): number {
  return parseStatTicks(fs.readFileSync(`/proc/${pid}/stat`, 'utf8')) / clkTck();
}

/** VmRSS in bytes from the text of /proc/PID/status. */
export function parseVmRss(status: string): number {
  const m = /^VmRSS:\s+(\d+) kB/m.exec(status);
  if (!m) throw new Error('no VmRSS in /proc/PID/status');
  return Number(m[1]) * 1024;
}

export function rssBytes(pid: number): number {
  return parseVmRss(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
}

/** The process name (/proc/PID/comm), or null when it is gone. */
export function procComm(pid: number): string | null {
  try {
    return fs.readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
  } catch {
    return null;
  }
}

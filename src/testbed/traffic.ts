import type { ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import type { Topology } from './topology';

/**
 * Traffic inside the test bed: ping, a TCP file transfer checked by sha256, a raw UDP sender and a
 * tcpdump capture. The TCP and UDP ends are small node scripts run with `ip netns exec NS node -e`,
 * so nothing beyond node and iputils is needed.
 */

// ---- ping ----------------------------------------------------------------------------------------

export interface PingResult {
  readonly ok: boolean;
  readonly sent: number;
  readonly received: number;
  /** Round-trip times in ms (null when nothing came back). */
  readonly rtt: { readonly min: number; readonly avg: number; readonly max: number } | null;
  readonly output: string;
}

/** `ping -c COUNT` from `ns` to `ip`; never throws. */
export async function ping(
  topo: Topology,
  ns: string,
  ip: string,
  opts: { count?: number; intervalS?: number; waitS?: number; source?: string } = {},
): Promise<PingResult> {
  const count = opts.count ?? 3;
  const r = await topo.tryExec(
    ns,
    ['ping', '-n', '-q', '-c', String(count), '-i', String(opts.intervalS ?? 0.2), '-W', String(opts.waitS ?? 1), ...(opts.source ? ['-I', opts.source] : []), ip],
    { timeoutMs: (count * (opts.intervalS ?? 0.2) + (opts.waitS ?? 1) + 5) * 1000 },
  );
  return parsePing(r.stdout, r.code);
}

export function parsePing(out: string, code: number): PingResult {
  const m = /(\d+) packets transmitted, (\d+) (?:packets )?received/.exec(out);
  const sent = m ? Number(m[1]) : 0;
  const received = m ? Number(m[2]) : 0;
  const t = /= ([\d.]+)\/([\d.]+)\/([\d.]+)\//.exec(out);
  const rtt = t ? { min: Number(t[1]), avg: Number(t[2]), max: Number(t[3]) } : null;
  return { ok: code === 0 && received > 0, sent, received, rtt, output: out };
}

/**
 * Pings `ip` from `ns` every `intervalS` until the first reply (or `deadlineS`), and returns the
 * wall-clock time (ms since the epoch) of that reply, read from ping's own -D timestamps.
 * Start it before the target exists to measure "time until reachable".
 */
export function firstReply(topo: Topology, ns: string, ip: string, opts: { intervalS?: number; deadlineS?: number } = {}) {
  const child = topo.spawn(
    ns,
    ['ping', '-n', '-D', '-i', String(opts.intervalS ?? 0.05), '-W', '1', '-w', String(opts.deadlineS ?? 10), '-c', '1', ip],
    { stdio: ['ignore', 'pipe', 'ignore'] },
  );
  return new Promise<number | null>((resolve) => {
    let out = '';
    child.stdout!.on('data', (b: Buffer) => (out += b.toString()));
    child.once('close', () => {
      const m = /^\[(\d+\.\d+)\] \d+ bytes from/m.exec(out);
      resolve(m ? Math.round(Number(m[1]) * 1000) : null);
    });
  });
}

// ---- files ---------------------------------------------------------------------------------------

/** Writes `bytes` random bytes (optionally starting with `prefix`) to `file`; returns its sha256. */
export function writeRandomFile(file: string, bytes: number, prefix?: Buffer): string {
  const h = createHash('sha256');
  const fd = fs.openSync(file, 'w');
  try {
    let left = bytes;
    if (prefix) {
      const p = prefix.subarray(0, left);
      fs.writeSync(fd, p);
      h.update(p);
      left -= p.length;
    }
    while (left > 0) {
      const chunk = randomBytes(Math.min(left, 1 << 20));
      fs.writeSync(fd, chunk);
      h.update(chunk);
      left -= chunk.length;
    }
  } finally {
    fs.closeSync(fd);
  }
  return h.digest('hex');
}

export function sha256File(file: string): string {
  return createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}

/** `text` repeated to exactly `bytes` bytes, e.g. a marker to look for in a capture. */
export function repeated(text: string, bytes: number): Buffer {
  const unit = Buffer.from(text);
  const b = Buffer.alloc(bytes);
  for (let off = 0; off < bytes; off += unit.length) unit.copy(b, off);
  return b;
}

// ---- TCP transfer ----------------------------------------------------------------------------

const RECEIVER = `
const net = require('net'), fs = require('fs'), crypto = require('crypto');
const [port, out, bind] = process.argv.slice(1);
const srv = net.createServer((s) => {
  srv.close();
  const h = crypto.createHash('sha256'), w = fs.createWriteStream(out);
  const t0 = process.hrtime.bigint(); let n = 0;
  s.on('data', (d) => { n += d.length; h.update(d); if (!w.write(d)) { s.pause(); w.once('drain', () => s.resume()); } });
  s.on('end', () => w.end(() => {
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    console.log(JSON.stringify({ bytes: n, sha256: h.digest('hex'), ms }));
  }));
  s.on('error', (e) => { console.error(e.message); process.exit(1); });
});
srv.listen(Number(port), bind, () => console.log('LISTENING'));
setTimeout(() => { console.error('receiver timeout'); process.exit(2); }, 120000).unref();
`;

const SENDER = `
const net = require('net'), fs = require('fs');
const [host, port, file] = process.argv.slice(1);
const s = net.connect(Number(port), host, () => fs.createReadStream(file).pipe(s));
s.setTimeout(30000, () => { console.error('sender: idle timeout'); process.exit(2); });
s.on('error', (e) => { console.error('sender: ' + e.message); process.exit(1); });
s.on('close', () => process.exit(0));
`;

export interface TransferResult {
  readonly bytes: number;
  readonly sentSha256: string;
  readonly receivedSha256: string;
  readonly ms: number;
  readonly mbitPerS: number;
}

/**
 * Sends `file` over TCP from namespace `fromNs` to `toIp:port`, where a receiver in `toNs` writes
 * it to `outFile`. Hashes are computed by each side independently. Throws if either side fails.
 */
export async function tcpTransfer(
  topo: Topology,
  opts: { fromNs: string; toNs: string; toIp: string; port?: number; file: string; outFile: string; timeoutMs?: number },
): Promise<TransferResult> {
  const port = opts.port ?? 7777;
  const sentSha256 = sha256File(opts.file);
  const receiver = topo.spawn(opts.toNs, [process.execPath, '-e', RECEIVER, String(port), opts.outFile, opts.toIp], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines = collectLines(receiver);
  try {
    await lines.waitFor((l) => l === 'LISTENING', 10_000, 'the receiver to listen');
    const send = await topo.tryExec(opts.fromNs, [process.execPath, '-e', SENDER, opts.toIp, String(port), opts.file], {
      timeoutMs: opts.timeoutMs ?? 60_000,
    });
    if (send.code !== 0) throw new Error(`sender failed (exit ${send.code}): ${send.stderr.trim()}`);
    const line = await lines.waitFor((l) => l.startsWith('{'), 10_000, 'the receiver to finish');
    const r = JSON.parse(line) as { bytes: number; sha256: string; ms: number };
    return { bytes: r.bytes, sentSha256, receivedSha256: r.sha256, ms: r.ms, mbitPerS: (r.bytes * 8) / 1e6 / (r.ms / 1000) };
  } finally {
    if (receiver.exitCode === null && receiver.signalCode === null) receiver.kill('SIGKILL');
  }
}

/** Lines a child prints on stdout, and a wait for one of them (fails once the child is gone without it). */
export function collectLines(child: ChildProcess) {
  const lines: string[] = [];
  let err = '';
  let buf = '';
  const waiters = new Set<() => void>();
  child.stdout!.on('data', (b: Buffer) => {
    buf += b.toString();
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      lines.push(buf.slice(0, i));
      buf = buf.slice(i + 1);
    }
    waiters.forEach((w) => w());
  });
  child.stderr?.on('data', (b: Buffer) => (err += b.toString()));
  // 'close', not 'exit': a process that prints its last line and exits at once can be reported
  // exited before that line has come through its stdout pipe ('exit' may come first). 'close'
  // comes after its stdio streams have ended, so every line it wrote is in `lines` by then.
  let closed = false;
  child.once('close', () => {
    closed = true;
    waiters.forEach((w) => w());
  });
  return {
    waitFor(pred: (l: string) => boolean, ms: number, what: string): Promise<string> {
      return new Promise((resolve, reject) => {
        const check = () => {
          const hit = lines.find(pred);
          if (hit !== undefined) done(() => resolve(hit));
          else if (closed) done(() => reject(new Error(`waiting for ${what}: process exited (${child.exitCode ?? child.signalCode}) ${err.trim()}`)));
        };
        const t = setTimeout(() => done(() => reject(new Error(`timed out waiting for ${what} ${err.trim()}`))), ms);
        const done = (f: () => void) => {
          clearTimeout(t);
          waiters.delete(check);
          f();
        };
        waiters.add(check);
        check();
      });
    },
  };
}

// ---- raw UDP ---------------------------------------------------------------------------------

const UDP_SENDER = `
const dgram = require('dgram');
const [host, port, gap] = process.argv.slice(1);
let input = '';
process.stdin.on('data', (d) => (input += d));
process.stdin.on('end', async () => {
  const s = dgram.createSocket('udp4');
  let n = 0;
  for (const hex of input.split('\\n').slice(0, -1)) {
    await new Promise((r) => s.send(Buffer.from(hex, 'hex'), Number(port), host, r));
    n++;
    if (Number(gap) > 0) await new Promise((r) => setTimeout(r, Number(gap)));
  }
  s.close();
  console.log(n);
});
`;

/** Sends each payload as one UDP datagram from namespace `ns` to `host:port`; returns the count sent. */
export async function sendUdp(
  topo: Topology,
  ns: string,
  host: string,
  port: number,
  payloads: readonly Buffer[],
  gapMs = 1,
): Promise<number> {
  const input = payloads.map((p) => p.toString('hex') + '\n').join('');
  const r = await topo.exec(ns, [process.execPath, '-e', UDP_SENDER, host, String(port), String(gapMs)], { input, timeoutMs: 30_000 });
  return Number(r.stdout.trim());
}

// ---- capture ---------------------------------------------------------------------------------

export interface Capture {
  readonly file: string;
  /** Stops tcpdump (it flushes on SIGTERM) and returns the pcap bytes. */
  stop(): Promise<Buffer>;
  /** After stop(): packets the kernel dropped before tcpdump read them (as tcpdump reports). */
  readonly kernelDrops: number | null;
}

/** Starts `tcpdump -U -w FILE -i IFACE FILTER` inside `ns` and waits until it is listening. */
export async function startCapture(
  topo: Topology,
  ns: string,
  opts: { file: string; iface?: string; filter?: readonly string[]; count?: number; snapLen?: number },
): Promise<Capture> {
  // snapLen: bytes kept of each packet (headers only makes a long capture small)
  const args = ['tcpdump', '-n', '-U', '--immediate-mode', '-B', '65536', '-s', String(opts.snapLen ?? 65535), '-i', opts.iface ?? 'any', '-w', opts.file];
  if (opts.count !== undefined) args.push('-c', String(opts.count));
  const child = topo.spawn(ns, [...args, ...(opts.filter ?? [])], { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  await new Promise<void>((resolve, reject) => {
    const onExit = () => {
      clearTimeout(t);
      reject(new Error(`tcpdump exited: ${err.trim()}`));
    };
    const t = setTimeout(() => {
      child.off('exit', onExit);
      reject(new Error(`tcpdump did not start: ${err}`));
    }, 10_000);
    child.stderr!.on('data', (b: Buffer) => {
      err += b.toString();
      if (/listening on/.test(err)) {
        clearTimeout(t);
        child.off('exit', onExit);
        resolve();
      }
    });
    child.once('exit', onExit);
  });
  const gone = new Promise<void>((r) => child.once('close', () => r()));
  const cap = {
    file: opts.file,
    kernelDrops: null as number | null,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      await gone;
      const m = /(\d+) packets? dropped by kernel/.exec(err);
      cap.kernelDrops = m ? Number(m[1]) : null;
      return fs.readFileSync(opts.file);
    },
  };
  return cap;
}

export interface UdpDatagram {
  readonly src: string;
  readonly dst: string;
  readonly srcPort: number;
  readonly dstPort: number;
  readonly payload: Buffer;
}

/**
 * The IPv4/UDP datagrams in a classic pcap file (link types Ethernet, raw IP, Linux SLL and
 * SLL2, i.e. what `tcpdump -i DEV` and `-i any` write). Fragments and other protocols are skipped.
 * A payload is what was captured of it (a short snap length cuts it).
 */
export function udpDatagrams(pcap: Buffer): UdpDatagram[] {
  if (pcap.length < 24) return [];
  const magic = pcap.readUInt32LE(0);
  const le = magic === 0xa1b2c3d4 || magic === 0xa1b23c4d;
  if (!le && pcap.readUInt32BE(0) !== 0xa1b2c3d4 && pcap.readUInt32BE(0) !== 0xa1b23c4d) throw new Error('not a pcap file');
  const u32 = (o: number) => (le ? pcap.readUInt32LE(o) : pcap.readUInt32BE(o));
  const linkType = u32(20);
  const out: UdpDatagram[] = [];
  for (let off = 24; off + 16 <= pcap.length; ) {
    const capLen = u32(off + 8);
    const pkt = pcap.subarray(off + 16, off + 16 + capLen);
    off += 16 + capLen;
    let ipOff: number;
    let etherType: number;
    switch (linkType) {
      case 1: // Ethernet
        ipOff = 14;
        etherType = pkt.length >= 14 ? pkt.readUInt16BE(12) : 0;
        break;
      case 113: // Linux cooked v1
        ipOff = 16;
        etherType = pkt.length >= 16 ? pkt.readUInt16BE(14) : 0;
        break;
      case 276: // Linux cooked v2
        ipOff = 20;
        etherType = pkt.length >= 20 ? pkt.readUInt16BE(0) : 0;
        break;
      case 101: // raw IP
      case 12:
        ipOff = 0;
        etherType = 0x0800;
        break;
      default:
        throw new Error(`unsupported pcap link type ${linkType}`);
    }
    if (etherType !== 0x0800 || pkt.length < ipOff + 20 || pkt[ipOff]! >> 4 !== 4 || pkt[ipOff + 9] !== 17) continue;
    const ihl = (pkt[ipOff]! & 15) * 4;
    const frag = pkt.readUInt16BE(ipOff + 6) & 0x3fff;
    if (frag !== 0) continue;
    const u = ipOff + ihl;
    if (pkt.length < u + 8) continue;
    const udpLen = pkt.readUInt16BE(u + 4);
    const ip = (o: number) => `${pkt[o]}.${pkt[o + 1]}.${pkt[o + 2]}.${pkt[o + 3]}`;
    out.push({
      src: ip(ipOff + 12),
      dst: ip(ipOff + 16),
      srcPort: pkt.readUInt16BE(u),
      dstPort: pkt.readUInt16BE(u + 2),
      payload: Buffer.from(pkt.subarray(u + 8, Math.min(pkt.length, u + udpLen))),
    });
  }
  return out;
}

// ---- timed TCP streams, hashed on both ends ------------------------------------------------------

const STREAM_RECEIVER = `
const net = require('net'), crypto = require('crypto');
const [streams, port, bind] = process.argv.slice(1).map((x, i) => (i < 2 ? Number(x) : x));
let done = 0; const results = [];
const srv = net.createServer((s) => {
  const h = crypto.createHash('sha256'); let n = 0;
  s.on('data', (d) => { n += d.length; h.update(d); });
  s.on('end', () => { results.push({ bytes: n, sha256: h.digest('hex') }); if (++done === streams) { console.log(JSON.stringify(results)); srv.close(); } });
  s.on('error', (e) => { console.error(e.message); process.exit(1); });
});
srv.listen(port, bind, () => console.log('LISTENING'));
`;

// Each stream sends a 1 MiB random block again and again with its number and a running counter
// in front, for the given seconds, hashing exactly what it wrote.
const STREAM_SENDER = `
const net = require('net'), crypto = require('crypto');
const [host, port, streams, seconds] = process.argv.slice(1);
const block = crypto.randomBytes(1 << 20); const results = []; let done = 0;
for (let k = 0; k < Number(streams); k++) {
  const h = crypto.createHash('sha256'); let n = 0, seq = 0; const end = Date.now() + Number(seconds) * 1000;
  const s = net.connect(Number(port), host, () => {
    const pump = () => {
      while (Date.now() < end) {
        const b = Buffer.from(block); b.writeUInt32BE(k, 0); b.writeUInt32BE(seq++, 4);
        h.update(b); n += b.length;
        if (!s.write(b)) return s.once('drain', pump);
      }
      s.end();
    };
    pump();
  });
  s.on('close', () => { results[k] = { bytes: n, sha256: h.digest('hex') }; if (++done === Number(streams)) console.log(JSON.stringify(results)); });
  s.on('error', (e) => { console.error('sender: ' + e.message); process.exit(1); });
}
`;

export interface StreamResult {
  readonly bytes: number;
  readonly sha256: string;
}

/**
 * Runs `streams` TCP connections from `fromNs` to `toIp:port` in `toNs` for `seconds`; each end
 * hashes what it sent or received. Returns both sides' (bytes, sha256) per stream (the receiver's
 * in arrival order) and the wall time.
 */
export async function streamTransfer(
  topo: Topology,
  opts: { fromNs: string; toNs: string; toIp: string; port: number; streams: number; seconds: number },
): Promise<{ sent: StreamResult[]; received: StreamResult[]; secs: number }> {
  const limit = (opts.seconds + 60) * 1000;
  const receiver = topo.spawn(opts.toNs, [process.execPath, '-e', STREAM_RECEIVER, String(opts.streams), String(opts.port), opts.toIp], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const rlines = collectLines(receiver);
  try {
    await rlines.waitFor((l) => l === 'LISTENING', 10_000, 'the stream receiver to listen');
    const t0 = Date.now();
    const send = await topo.tryExec(
      opts.fromNs,
      [process.execPath, '-e', STREAM_SENDER, opts.toIp, String(opts.port), String(opts.streams), String(opts.seconds)],
      { timeoutMs: limit },
    );
    if (send.code !== 0) throw new Error(`stream sender failed (exit ${send.code}): ${send.stderr.trim()}`);
    const line = await rlines.waitFor((l) => l.startsWith('['), 30_000, 'the stream receiver to finish');
    const secs = (Date.now() - t0) / 1000;
    const sent = JSON.parse(send.stdout.trim().split('\n').at(-1)!) as StreamResult[];
    return { sent, received: JSON.parse(line) as StreamResult[], secs };
  } finally {
    if (receiver.exitCode === null && receiver.signalCode === null) receiver.kill('SIGKILL');
  }
}

// ---- ping series: the wall-clock time of every reply ---------------------------------------------

export interface PingReply {
  readonly seq: number;
  /** When the reply arrived: ms since the epoch, from ping's own -D timestamp. */
  readonly at: number;
  readonly rttMs: number;
}

export interface PingSeries {
  readonly dst: string;
  readonly intervalMs: number;
  /** Date.now() when ping was started and when it was stopped. */
  readonly startedAt: number;
  readonly stoppedAt: number;
  /** Echo requests ping says it sent. */
  readonly sent: number;
  /** Replies in arrival order, duplicates left out. */
  readonly replies: readonly PingReply[];
}

const REPLY_RE = /^\[(\d+(?:\.\d+)?)\] \d+ bytes from [^:]+: icmp_seq=(\d+) .*?time=([\d.]+) ms(.*)$/;
const SEQ_RE = /^\[\d+(?:\.\d+)?\] (?:no answer yet for icmp_seq|From \S+ icmp_seq)=(\d+)/;

/**
 * The replies in the output of `ping -D [-O]` (duplicates, errors and "no answer yet" lines left
 * out) and the number of requests sent: the summary's count, else the highest sequence seen.
 * icmp_seq wraps at 65536, so keep a series under ten minutes at 10 ms.
 */
export function parsePingReplies(out: string): { replies: PingReply[]; sent: number } {
  const replies: PingReply[] = [];
  let maxSeq = 0;
  for (const line of out.split('\n')) {
    const m = REPLY_RE.exec(line);
    if (m) {
      const seq = Number(m[2]);
      maxSeq = Math.max(maxSeq, seq);
      if (!m[4]!.includes('DUP!')) replies.push({ seq, at: Number(m[1]) * 1000, rttMs: Number(m[3]) });
      continue;
    }
    const s = SEQ_RE.exec(line);
    if (s) maxSeq = Math.max(maxSeq, Number(s[1]));
  }
  const summary = /(\d+) packets transmitted/.exec(out);
  return { replies, sent: summary ? Number(summary[1]) : maxSeq };
}

/**
 * Time from `changeAt` (ms since the epoch) to the first reply to a request sent at or after it
 * (sent = arrival - rtt), so a reply already under way at the change does not count as recovery.
 * Null when no such reply came.
 */
export function recoveryMs(replies: readonly PingReply[], changeAt: number): number | null {
  for (const r of replies) if (r.at - r.rttMs >= changeAt) return r.at - changeAt;
  return null;
}

/**
 * The longest stretch without a reply between `from` and `to` (ms since the epoch): between two
 * replies, or from `from` to the first, or from the last to `to`.
 */
export function longestGapMs(replies: readonly PingReply[], from: number, to: number): number {
  let last = from;
  let gap = 0;
  for (const r of replies) {
    if (r.at < from || r.at > to) continue;
    gap = Math.max(gap, r.at - last);
    last = r.at;
  }
  return Math.max(gap, to - last);
}

export interface PingRun {
  readonly startedAt: number;
  /** The replies so far. */
  replies(): readonly PingReply[];
  /** Resolves with the first reply to a request sent at or after `t`, or null after `timeoutMs`. */
  waitReplyAfter(t: number, timeoutMs: number): Promise<PingReply | null>;
  /** Stops ping (SIGINT, so it prints its summary) and returns the whole series. */
  stop(): Promise<PingSeries>;
}

/**
 * Starts `ping -n -D -O -i INTERVAL` from `ns` to `dst`; it runs until stop(). At 10 ms this
 * machine's ping actually sends about every 15 ms: the series records what it got.
 */
export function startPings(topo: Topology, ns: string, dst: string, opts: { intervalMs?: number } = {}): PingRun {
  const intervalMs = opts.intervalMs ?? 10;
  const startedAt = Date.now();
  const child = topo.spawn(ns, ['ping', '-n', '-D', '-O', '-W', '1', '-i', String(intervalMs / 1000), dst], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let partial = '';
  const replies: PingReply[] = [];
  const waiters = new Set<() => void>();
  child.stdout!.on('data', (b: Buffer) => {
    out += b.toString();
    partial += b.toString();
    const nl = partial.lastIndexOf('\n');
    if (nl < 0) return;
    replies.push(...parsePingReplies(partial.slice(0, nl + 1)).replies);
    partial = partial.slice(nl + 1);
    waiters.forEach((w) => w());
  });
  child.stderr!.on('data', (b: Buffer) => (out += b.toString()));
  // (gone means 'close', not 'exit': its last lines may still be in the pipe at 'exit')
  let gone = false;
  const closed = new Promise<void>((r) =>
    child.once('close', () => {
      gone = true;
      r();
    }),
  );
  let stopped: Promise<PingSeries> | undefined;
  return {
    startedAt,
    replies: () => [...replies],
    waitReplyAfter(t, timeoutMs) {
      return new Promise((resolve) => {
        const check = () => {
          const hit = replies.find((r) => r.at - r.rttMs >= t);
          if (hit) finish(hit);
          else if (gone) finish(null);
        };
        const timer = setTimeout(() => finish(null), timeoutMs);
        const finish = (v: PingReply | null) => {
          clearTimeout(timer);
          waiters.delete(check);
          resolve(v);
        };
        waiters.add(check);
        void closed.then(check);
        check();
      });
    },
    stop() {
      stopped ??= (async () => {
        const stoppedAt = Date.now();
        if (child.exitCode === null && child.signalCode === null) child.kill('SIGINT');
        const t = setTimeout(() => child.kill('SIGKILL'), 3_000);
        await closed;
        clearTimeout(t);
        const all = parsePingReplies(out);
        return { dst, intervalMs, startedAt, stoppedAt, sent: all.sent, replies: all.replies };
      })();
      return stopped;
    },
  };
}

/** Pings `dst` from `ns` every `intervalMs` for `durationMs` and returns every reply's time. */
export async function pingSeries(
  topo: Topology,
  ns: string,
  dst: string,
  opts: { intervalMs?: number; durationMs: number },
): Promise<PingSeries> {
  const run = startPings(topo, ns, dst, opts);
  await new Promise((r) => setTimeout(r, opts.durationMs));
  return run.stop();
}

// ---- a paced TCP stream that runs across a change, hashed on both ends ---------------------------

const PACED_RECEIVER = `
const net = require('net'), crypto = require('crypto');
const [port, bind, stallMs] = process.argv.slice(1);
const srv = net.createServer((s) => {
  srv.close();
  const h = crypto.createHash('sha256'); let n = 0, last = Date.now(); const stalls = [];
  s.on('data', (d) => {
    const now = Date.now();
    if (now - last >= Number(stallMs)) stalls.push([last, now]);
    last = now; n += d.length; h.update(d);
  });
  s.on('end', () => { console.log(JSON.stringify({ bytes: n, sha256: h.digest('hex'), stalls })); process.exit(0); });
  s.on('error', (e) => { console.error('receiver: ' + e.message); process.exit(1); });
});
srv.listen(Number(port), bind, () => console.log('LISTENING'));
`;

// Writes a fresh random 16 KiB chunk every tick (a counter in front) while the socket drains,
// until stdin closes; then ends the stream and reports what it wrote once the peer has it all.
const PACED_SENDER = `
const net = require('net'), crypto = require('crypto');
const [host, port, bytesPerS] = process.argv.slice(1);
const CHUNK = 16384, h = crypto.createHash('sha256'); let n = 0, seq = 0, owed = 0, ending = false;
const s = net.connect(Number(port), host, () => {
  console.log('CONNECTED');
  let prev = Date.now();
  const tick = setInterval(() => {
    const now = Date.now(); owed = Math.min(owed + ((now - prev) * Number(bytesPerS)) / 1000, 4 * 1048576); prev = now;
    while (!ending && owed >= CHUNK && s.writableLength < 1048576) {
      const b = crypto.randomBytes(CHUNK); b.writeUInt32BE(seq++, 0);
      h.update(b); n += b.length; owed -= CHUNK; s.write(b);
    }
  }, 10);
  process.stdin.on('end', () => { ending = true; clearInterval(tick); s.end(); });
  process.stdin.resume();
});
s.setKeepAlive(false);
s.on('close', (hadError) => { if (!hadError) console.log(JSON.stringify({ bytes: n, sha256: h.digest('hex') })); process.exit(hadError ? 1 : 0); });
s.on('error', (e) => { console.error('sender: ' + e.message); process.exit(1); });
`;

export interface PacedStreamResult {
  /** Both ends finished and the receiver's byte count and sha256 equal the sender's. */
  readonly ok: boolean;
  readonly sent: StreamResult | null;
  readonly received: StreamResult | null;
  /** Stretches of at least `stallMs` without data at the receiver, as [from, to] epoch ms. */
  readonly stalls: readonly (readonly [number, number])[];
  /** Why not ok, when not. */
  readonly error?: string;
}

export interface PacedStream {
  /** Stops writing, ends the stream and waits (up to `timeoutMs`, default 60 s) for both ends. */
  finish(opts?: { timeoutMs?: number }): Promise<PacedStreamResult>;
}

/**
 * Starts one TCP stream from `fromNs` to `toIp:port` (a receiver in `toNs`) that writes about
 * `bytesPerS` (default 2 MB/s, little next to the 2 cores) of random data until finish(). Each end
 * hashes what it wrote or read, so a stream that crossed an outage can be checked for integrity.
 */
export async function startPacedStream(
  topo: Topology,
  opts: { fromNs: string; toNs: string; toIp: string; port: number; bytesPerS?: number; stallMs?: number },
): Promise<PacedStream> {
  const receiver = topo.spawn(opts.toNs, [process.execPath, '-e', PACED_RECEIVER, String(opts.port), opts.toIp, String(opts.stallMs ?? 200)], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const rlines = collectLines(receiver);
  let sender: ChildProcess | undefined;
  const kill = () => {
    for (const c of [receiver, sender]) if (c && c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  };
  try {
    await rlines.waitFor((l) => l === 'LISTENING', 10_000, 'the paced receiver to listen');
    sender = topo.spawn(opts.fromNs, [process.execPath, '-e', PACED_SENDER, opts.toIp, String(opts.port), String(opts.bytesPerS ?? 2_000_000)], {
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    sender.stdin!.on('error', () => {});
    const slines = collectLines(sender);
    await slines.waitFor((l) => l === 'CONNECTED', 10_000, 'the paced sender to connect');
    const s = sender;
    return {
      async finish(o = {}) {
        const timeoutMs = o.timeoutMs ?? 60_000;
        s.stdin!.end();
        const [sl, rl] = await Promise.allSettled([
          slines.waitFor((l) => l.startsWith('{'), timeoutMs, 'the paced sender to finish'),
          rlines.waitFor((l) => l.startsWith('{'), timeoutMs, 'the paced receiver to finish'),
        ]);
        kill();
        const sent = sl.status === 'fulfilled' ? (JSON.parse(sl.value) as StreamResult) : null;
        const r = rl.status === 'fulfilled' ? (JSON.parse(rl.value) as StreamResult & { stalls: [number, number][] }) : null;
        const received = r ? { bytes: r.bytes, sha256: r.sha256 } : null;
        const errors = [sl, rl].flatMap((x) => (x.status === 'rejected' ? [(x.reason as Error).message] : []));
        if (sent && received && (sent.bytes !== received.bytes || sent.sha256 !== received.sha256)) {
          errors.push(`received ${received.bytes} bytes (sha256 ${received.sha256.slice(0, 12)}), sent ${sent.bytes} (${sent.sha256.slice(0, 12)})`);
        }
        return { ok: errors.length === 0, sent, received, stalls: r?.stalls ?? [], ...(errors.length ? { error: errors.join('; ') } : {}) };
      },
    };
  } catch (e) {
    kill();
    throw e;
  }
}

// ---- a UDP endpoint driven from the test -----------------------------------------------------

const UDP_ENDPOINT = `
const dgram = require('dgram'), readline = require('readline');
const s = dgram.createSocket('udp4');
s.on('message', (m, r) => console.log(JSON.stringify({ from: r.address, port: r.port, text: m.toString(), at: Date.now() })));
s.on('error', (e) => { console.error(e.message); process.exit(1); });
s.bind(Number(process.argv[1]), () => {
  console.log('BOUND');
  readline.createInterface({ input: process.stdin }).on('line', (l) => {
    const [host, port, ...text] = l.split(' ');
    s.send(text.join(' '), Number(port), host, (e) => console.log(e ? 'ERR ' + e.message : 'SENT'));
  }).on('close', () => process.exit(0));
});
`;

export interface UdpMessage {
  readonly from: string;
  readonly port: number;
  readonly text: string;
  /** Date.now() at arrival. */
  readonly at: number;
}

export interface UdpEndpoint {
  readonly ns: string;
  readonly port: number;
  /** Sends one datagram `text` to `host:port` and waits until the socket has sent it. */
  send(host: string, port: number, text: string): Promise<void>;
  /** What arrived so far. */
  messages(): readonly UdpMessage[];
  /** The first message (so far or later) matching `pred`, or null after `timeoutMs`. */
  waitFor(pred: (m: UdpMessage) => boolean, timeoutMs: number): Promise<UdpMessage | null>;
  close(): Promise<void>;
}

/** A UDP socket bound to `0.0.0.0:port` inside `ns` (a node process), for NAT experiments. */
export async function startUdpEndpoint(topo: Topology, ns: string, port: number): Promise<UdpEndpoint> {
  const child = topo.spawn(ns, [process.execPath, '-e', UDP_ENDPOINT, String(port)], { stdio: ['pipe', 'pipe', 'pipe'] });
  child.stdin!.on('error', () => {});
  const msgs: UdpMessage[] = [];
  const acks: ((err: string | null) => void)[] = [];
  const waiters = new Set<() => void>();
  let bound: (() => void) | undefined;
  let err = '';
  let buf = '';
  child.stderr!.on('data', (b: Buffer) => (err += b.toString()));
  child.stdout!.on('data', (b: Buffer) => {
    buf += b.toString();
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      if (line === 'BOUND') bound?.();
      else if (line === 'SENT') acks.shift()?.(null);
      else if (line.startsWith('ERR ')) acks.shift()?.(line.slice(4));
      else if (line.startsWith('{')) msgs.push(JSON.parse(line) as UdpMessage);
    }
    waiters.forEach((w) => w());
  });
  const closed = new Promise<void>((r) => child.once('close', () => r()));
  void closed.then(() => acks.splice(0).forEach((a) => a(`endpoint exited ${err.trim()}`)));
  await new Promise<void>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`udp endpoint in ${ns}:${port} did not bind: ${err.trim()}`)), 10_000);
    bound = () => {
      clearTimeout(t);
      resolve();
    };
    void closed.then(() => {
      clearTimeout(t);
      reject(new Error(`udp endpoint in ${ns}:${port} exited: ${err.trim()}`));
    });
  });
  return {
    ns,
    port,
    send(host, p, text) {
      return new Promise((resolve, reject) => {
        acks.push((e) => (e ? reject(new Error(`udp send from ${ns}:${port} to ${host}:${p}: ${e}`)) : resolve()));
        child.stdin!.write(`${host} ${p} ${text}\n`);
      });
    },
    messages: () => [...msgs],
    waitFor(pred, timeoutMs) {
      return new Promise((resolve) => {
        const check = () => {
          const hit = msgs.find(pred);
          if (hit) finish(hit);
        };
        const t = setTimeout(() => finish(null), timeoutMs);
        const finish = (m: UdpMessage | null) => {
          clearTimeout(t);
          waiters.delete(check);
          resolve(m);
        };
        waiters.add(check);
        check();
      });
    },
    async close() {
      child.stdin!.end();
      const t = setTimeout(() => child.kill('SIGKILL'), 2_000);
      await closed;
      clearTimeout(t);
    },
  };
}

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
  opts: { count?: number; intervalS?: number; waitS?: number } = {},
): Promise<PingResult> {
  const count = opts.count ?? 3;
  const r = await topo.tryExec(
    ns,
    ['ping', '-n', '-q', '-c', String(count), '-i', String(opts.intervalS ?? 0.2), '-W', String(opts.waitS ?? 1), ip],
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

function collectLines(child: ChildProcess) {
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
  child.once('exit', () => waiters.forEach((w) => w()));
  return {
    waitFor(pred: (l: string) => boolean, ms: number, what: string): Promise<string> {
      return new Promise((resolve, reject) => {
        const check = () => {
          const hit = lines.find(pred);
          if (hit !== undefined) done(() => resolve(hit));
          else if (child.exitCode !== null || child.signalCode !== null)
            done(() => reject(new Error(`waiting for ${what}: process exited (${child.exitCode ?? child.signalCode}) ${err.trim()}`)));
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
  opts: { file: string; iface?: string; filter?: readonly string[]; count?: number },
): Promise<Capture> {
  const args = ['tcpdump', '-n', '-U', '--immediate-mode', '-B', '65536', '-s', '65535', '-i', opts.iface ?? 'any', '-w', opts.file];
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

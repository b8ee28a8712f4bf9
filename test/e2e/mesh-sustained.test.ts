import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ChildProcess } from 'node:child_process';
import { startMeshBed, type MeshBed } from '../../src/testbed/mesh';

/**
 * Sustained load: four TCP streams through the tunnel at full speed for a minute (shorten with
 * CLADNET_SUSTAIN_S). Each side hashes every byte it sends or receives, independently; the
 * hashes and byte counts must match per stream, and the agents must drop nothing for crypto or
 * replay reasons while the segmentation and coalescing offloads run flat out.
 */
const isRoot = process.getuid?.() === 0;
const SECONDS = Number(process.env.CLADNET_SUSTAIN_S ?? 60);
const STREAMS = 4;
const PORT = 7811;

const RECEIVER = `
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

// Each stream sends a 1 MiB random block again and again with a running counter in front, for
// the given seconds, hashing exactly what it wrote.
const SENDER = `
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

function output(child: ChildProcess, timeoutMs: number): Promise<string[]> {
  return new Promise((resolve, reject) => {
    let out = '';
    let err = '';
    const timer = setTimeout(() => reject(new Error(`timed out; stderr: ${err}`)), timeoutMs);
    child.stdout!.on('data', (b: Buffer) => (out += b.toString()));
    child.stderr!.on('data', (b: Buffer) => (err += b.toString()));
    child.once('exit', (code) => {
      clearTimeout(timer);
      if (code === 0) resolve(out.trim().split('\n'));
      else reject(new Error(`exit ${code}: ${err}`));
    });
  });
}

describe.skipIf(!isRoot)(`sustained ${STREAMS}-stream transfer`, () => {
  let bed: MeshBed;
  beforeAll(async () => {
    bed = await startMeshBed({ topology: { hosts: 2 } });
    await bed.waitUp();
  });
  afterAll(async () => {
    await bed?.destroy();
  });

  it(`moves ${STREAMS} streams for ${SECONDS} s with every byte intact`, async () => {
    const [a, b] = bed.agents;
    const bIp = (await b!.status()).self.overlayIp;
    const before = await b!.status();
    const receiver = bed.topo.spawn(b!.host.ns, [process.execPath, '-e', RECEIVER, String(STREAMS), String(PORT), bIp], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const received = output(receiver, (SECONDS + 60) * 1000);
    await new Promise<void>((resolve) => {
      const onData = (d: Buffer) => {
        if (d.toString().includes('LISTENING')) {
          receiver.stdout!.off('data', onData);
          resolve();
        }
      };
      receiver.stdout!.on('data', onData);
    });
    const sender = bed.topo.spawn(a!.host.ns, [process.execPath, '-e', SENDER, bIp, String(PORT), String(STREAMS), String(SECONDS)], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const t0 = Date.now();
    const [sentLines, recvLines] = await Promise.all([output(sender, (SECONDS + 60) * 1000), received]);
    const secs = (Date.now() - t0) / 1000;
    const sent = JSON.parse(sentLines.at(-1)!) as { bytes: number; sha256: string }[];
    const got = JSON.parse(recvLines.at(-1)!) as { bytes: number; sha256: string }[];
    const total = sent.reduce((n, s) => n + s.bytes, 0);
    console.log(`sustained: ${STREAMS} streams, ${(total / 2 ** 30).toFixed(2)} GiB in ${secs.toFixed(1)} s = ${((total * 8) / 1e9 / secs).toFixed(2)} Gbit/s`);
    // Streams may finish in any order at the receiver: compare as sets of (bytes, hash).
    const key = (r: { bytes: number; sha256: string }) => `${r.bytes}:${r.sha256}`;
    expect(got.map(key).sort()).toEqual(sent.map(key).sort());
    expect(total).toBeGreaterThan(STREAMS * (1 << 20));
    const after = await b!.status();
    for (const reason of ['auth', 'replay', 'malformed', 'spoofed', 'unknownPeer', 'badType', 'short'] as const) {
      expect(after.dataplane.drops[reason] - before.dataplane.drops[reason], `drops.${reason}`).toBe(0);
    }
  }, (SECONDS + 120) * 1000);
});

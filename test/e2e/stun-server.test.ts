import { spawn, type ChildProcess } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as dgram from 'node:dgram';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { StunClient } from '../../src/control/stun-client';
import { encodeStun } from '../../src/control/stun';
import { parseIpv4 } from '../../src/util/ipv4';

/**
 * `cladnet stun-server` as a real process on loopback, asked by a StunClient over a real UDP
 * socket. Nothing leaves 127.0.0.1. Needs the build (`npm test` builds first; by hand:
 * `npx tsc -p tsconfig.json`).
 */
const ROOT = path.resolve(__dirname, '..', '..');
const CLI = path.join(ROOT, 'dist', 'cli.js');
const LOOPBACK = parseIpv4('127.0.0.1')!;

/** A UDP port nobody holds right now on loopback (bound, read, released). */
async function freePort(): Promise<number> {
  const s = dgram.createSocket('udp4');
  await new Promise<void>((resolve, reject) => {
    s.once('error', reject);
    s.bind(0, '127.0.0.1', () => resolve());
  });
  const port = s.address().port;
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return port;
}

/** Resolves when `text` appears in what the child wrote to stderr; rejects if it exits first. */
function waitForStderr(child: ChildProcess, text: string, ms: number): Promise<void> {
  return new Promise((resolve, reject) => {
    let seen = '';
    const timer = setTimeout(() => reject(new Error(`no "${text}" within ${ms} ms; stderr: ${seen}`)), ms);
    const onData = (d: Buffer) => {
      seen += d.toString();
      if (seen.includes(text)) {
        clearTimeout(timer);
        child.stderr!.off('data', onData);
        resolve();
      }
    };
    child.stderr!.on('data', onData);
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`stun-server exited with ${code}; stderr: ${seen}`));
    });
  });
}

describe.skipIf(!fs.existsSync(CLI))('cladnet stun-server on loopback', () => {
  let server: ChildProcess | undefined;
  let serverPort = 0;
  let stderr = '';
  let sock: dgram.Socket;
  let client: StunClient;

  beforeAll(async () => {
    serverPort = await freePort();
    server = spawn(process.execPath, [CLI, 'stun-server', '--listen', `127.0.0.1:${serverPort}`, '--log-level', 'debug'], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    server.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    await waitForStderr(server, 'stun-server listening', 15_000);

    sock = dgram.createSocket('udp4');
    await new Promise<void>((resolve) => sock.bind(0, '127.0.0.1', () => resolve()));
    const timers = new Set<NodeJS.Timeout>();
    client = new StunClient({
      send: (data, ip, port) => {
        if (ip !== LOOPBACK) throw new Error('this test sends to loopback only');
        sock.send(data, port, '127.0.0.1');
      },
      now: () => performance.now(),
      setTimer: (fn, ms) => {
        const t = setTimeout(() => {
          timers.delete(t);
          fn();
        }, ms);
        timers.add(t);
        return { cancel: () => (clearTimeout(t), timers.delete(t)) };
      },
      random: (n) => crypto.randomBytes(n),
    });
    sock.on('message', (msg, rinfo) => {
      client.receive(msg, parseIpv4(rinfo.address)!, rinfo.port);
    });
  });

  afterAll(async () => {
    client?.close();
    sock?.close();
    if (server && server.exitCode === null && server.signalCode === null) {
      const exited = new Promise<void>((resolve) => server!.once('exit', () => resolve()));
      server.kill('SIGTERM');
      const timer = setTimeout(() => server!.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(timer);
    }
  });

  it('answers a binding request with the client\'s own address and port', async () => {
    const mapped = await client.query({ ip: LOOPBACK, port: serverPort });
    expect(mapped).not.toBeNull();
    expect([mapped!.ip, mapped!.port]).toEqual([LOOPBACK, sock.address().port]);
  });

  it('survives garbage, truncated STUN and non-requests, and still answers', async () => {
    const junk = dgram.createSocket('udp4');
    await new Promise<void>((resolve) => junk.bind(0, '127.0.0.1', () => resolve()));
    const txId = crypto.randomBytes(12);
    const datagrams = [
      Buffer.alloc(0),
      Buffer.from('hello, stun server'),
      crypto.randomBytes(1200),
      encodeStun({ method: 1, cls: 'request', txId }).subarray(0, 24), // truncated
      encodeStun({ method: 1, cls: 'success', txId }), // not a request
      encodeStun({ method: 3, cls: 'request', txId }), // another method
      Buffer.concat([Buffer.from([1, 0, 0, 0]), crypto.randomBytes(144)]), // a cladnet handshake shape
    ];
    for (const d of datagrams) await new Promise<void>((resolve) => junk.send(d, serverPort, '127.0.0.1', () => resolve()));
    // none of these may be answered
    const answered = await new Promise<boolean>((resolve) => {
      junk.once('message', () => resolve(true));
      setTimeout(() => resolve(false), 300);
    });
    junk.close();
    expect(answered).toBe(false);
    expect(server!.exitCode).toBeNull();
    const mapped = await client.query({ ip: LOOPBACK, port: serverPort });
    expect(mapped && [mapped.ip, mapped.port]).toEqual([LOOPBACK, sock.address().port]);
  });

  it('counts what it answered and ignored, and stops cleanly on SIGTERM', async () => {
    const exited = new Promise<number | null>((resolve) => server!.once('exit', (code) => resolve(code)));
    server!.kill('SIGTERM');
    expect(await exited).toBe(0);
    const stopped = stderr.split('\n').find((l) => l.includes('stun-server stopped'));
    expect(stopped, stderr).toBeDefined();
    const doc = JSON.parse(stopped!) as { answered: number; ignored: number };
    expect(doc.answered).toBeGreaterThanOrEqual(2);
    expect(doc.ignored).toBeGreaterThanOrEqual(7);
  });
});

/**
 * What each MiB of an agent's RSS is (issue 14), for bench/rss-probe.ts:
 *
 *   1. file-backed   /proc/PID/smaps by file; the node binary split by ELF section from the
 *                    present bits of /proc/PID/pagemap (root) and `readelf -SW` (code, read-only
 *                    data, the dynamic symbol tables that symbol lookups page in)
 *   2. anonymous     each thread's V8 heap (physical size, by space) as the rss-heap.ts preload
 *                    wrote it; the main malloc arena ([heap]); the rest (thread arenas, stacks, koffi)
 *   3. modules       the cost of each dependency on its own: bare node with the agent's flags,
 *                    adding one module after another in the order the agent loads them, each step a
 *                    fresh process read after a settle (median of a few), so the agent's reading
 *                    minus the last step is cladnet's own code and state
 *
 * Only reads /proc and spawns plain node processes; no namespaces.
 */
import { execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { AGENT_NODE_FLAGS } from '../src/agent/node-flags';
import type { ThreadHeap } from './rss-heap';

const KIB = 1024;
const PAGE = 4096;
export const r1 = (x: number | undefined): number => Math.round((x ?? NaN) * 10) / 10;

export interface Part {
  name: string;
  /** MiB */
  mib: number;
  /** what it holds, where that is known */
  note?: string;
  parts?: Part[];
}

/** RSS by mapping name (anonymous mappings as [anon PERMS]), MiB, largest first. */
export function rssByMapping(pid: number): Map<string, number> {
  const by = new Map<string, number>();
  let name = '';
  for (const line of fs.readFileSync(`/proc/${pid}/smaps`, 'utf8').split('\n')) {
    const head = /^[0-9a-f]+-[0-9a-f]+ (\S+) \S+ \S+ \d+\s*(.*)$/.exec(line);
    if (head) {
      name = head[2] || `[anon ${head[1]}]`;
      continue;
    }
    const m = /^Rss:\s+(\d+) kB/.exec(line);
    if (m) by.set(name, (by.get(name) ?? 0) + Number(m[1]) / KIB);
  }
  return new Map([...by.entries()].sort((a, b) => b[1] - a[1]));
}

interface Section {
  name: string;
  off: number;
  size: number;
}

function elfSections(file: string): Section[] {
  try {
    const out = execFileSync('readelf', ['-SW', file], { encoding: 'utf8', maxBuffer: 4 << 20 });
    const secs: Section[] = [];
    for (const line of out.split('\n')) {
      const m = /^\s*\[\s*\d+\]\s+(\S+)\s+\S+\s+[0-9a-f]+\s+([0-9a-f]+)\s+([0-9a-f]+)/.exec(line);
      if (m && m[1] !== 'NULL') secs.push({ name: m[1]!, off: parseInt(m[2]!, 16), size: parseInt(m[3]!, 16) });
    }
    return secs;
  } catch {
    return []; // no readelf (binutils): the binary stays one line
  }
}

const SECTION_GROUPS: [RegExp, string, string][] = [
  [/^\.text$/, 'code (.text)', 'V8, its compilers and the C++ runtime, touched as they run'],
  [/^\.rodata$/, 'read-only data (.rodata)', 'JS sources of the builtin modules it compiles, ICU data, tables'],
  [/^\.(dynsym|dynstr|gnu\.hash|gnu\.version.*)$/, 'dynamic symbol tables', 'paged in by symbol lookups (ld.so, addons, koffi)'],
];

/**
 * The resident pages of `file`'s mappings in `pid`, by section group (MiB), from /proc/PID/pagemap's
 * present bit. null when pagemap is not readable or the file has no sections.
 */
export function residentBySection(pid: number, file: string): Part[] | null {
  const secs = elfSections(file);
  if (secs.length === 0) return null;
  const sum = new Map<string, number>();
  let fd: number;
  try {
    fd = fs.openSync(`/proc/${pid}/pagemap`, 'r');
  } catch {
    return null;
  }
  try {
    for (const line of fs.readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n')) {
      const m = /^([0-9a-f]+)-([0-9a-f]+) \S+ ([0-9a-f]+) \S+ \d+\s+(.*)$/.exec(line);
      if (!m || m[4] !== file) continue;
      const start = parseInt(m[1]!, 16);
      const pages = (parseInt(m[2]!, 16) - start) / PAGE;
      const entries = Buffer.alloc(pages * 8);
      fs.readSync(fd, entries, 0, entries.length, (start / PAGE) * 8);
      for (let i = 0; i < pages; i++) {
        if ((entries.readUInt32LE(i * 8 + 4) & 0x80000000) === 0) continue; // bit 63: present
        const off = parseInt(m[3]!, 16) + i * PAGE;
        const sec = secs.find((s) => off >= s.off && off < s.off + s.size)?.name ?? '';
        const group = SECTION_GROUPS.find(([re]) => re.test(sec))?.[1] ?? 'other sections and headers';
        sum.set(group, (sum.get(group) ?? 0) + PAGE / 2 ** 20);
      }
    }
  } finally {
    fs.closeSync(fd);
  }
  return [...sum.entries()]
    .sort((a, b) => b[1] - a[1])
    .map(([name, mib]) => ({ name, mib: r1(mib), note: SECTION_GROUPS.find(([, n]) => n === name)?.[2] }));
}

/** The preload's latest sample of each thread of `pid`, main thread first. */
export function threadHeaps(dir: string, pid: number): ThreadHeap[] {
  let files: string[];
  try {
    files = fs.readdirSync(dir).filter((f) => f.startsWith(`${pid}-`) && f.endsWith('.json'));
  } catch {
    return [];
  }
  return files.map((f) => JSON.parse(fs.readFileSync(path.join(dir, f), 'utf8')) as ThreadHeap).sort((a, b) => a.threadId - b.threadId);
}

function heapPart(h: ThreadHeap): Part {
  const spaces = Object.entries(h.spaces)
    .filter(([, v]) => v >= 0.05)
    .sort((a, b) => b[1] - a[1])
    .map(([k, v]) => `${k.replace(/_space$/, '')} ${v}`)
    .join(', ');
  return {
    name: h.threadId === 0 ? 'V8 heap, main thread' : `V8 heap, data-plane worker (thread ${h.threadId}${h.atExit ? ', sampled as it exited' : ''})`,
    mib: r1(h.physical),
    note: `${spaces}; live ${h.used}, of it bytecode ${h.code.bytecode}, code ${h.code.code}`,
  };
}

/** What section 1 and 2 need from /proc, read at the moment of the reading. */
export interface ProcSnapshot {
  status: Record<string, number>;
  rollup: Record<string, number>;
  maps: Map<string, number>;
  exe: string;
  /** the node binary's resident pages by section group, null when unknown */
  exeSections: Part[] | null;
}

export function snapshotProc(pid: number, status: Record<string, number>, rollup: Record<string, number>): ProcSnapshot {
  const exe = fs.readlinkSync(`/proc/${pid}/exe`);
  return { status, rollup, maps: rssByMapping(pid), exe, exeSections: residentBySection(pid, exe) };
}

/** Sections 1 and 2: file-backed and anonymous RSS, each split as far as known. */
export function breakdown(snap: ProcSnapshot, heaps: ThreadHeap[]): Part[] {
  const { maps, exe, status, rollup } = snap;
  const files: Part[] = [];
  let fileSum = 0;
  for (const [name, mib] of maps) {
    if (name.startsWith('[')) continue;
    fileSum += mib;
    if (mib < 0.1) continue;
    files.push({ name: name === exe ? `${name} (the node binary)` : path.basename(name), mib: r1(mib), parts: name === exe ? snap.exeSections ?? undefined : undefined });
  }
  const smallFiles = fileSum - files.reduce((s, p) => s + p.mib, 0);
  if (smallFiles >= 0.05) files.push({ name: 'other files, each < 0.1', mib: r1(smallFiles) });

  const anon: Part[] = heaps.map(heapPart);
  const brk = maps.get('[heap]') ?? 0;
  anon.push({ name: 'malloc, main arena ([heap])', mib: r1(brk), note: 'node, V8 outside its heap, OpenSSL, nghttp2 (etcd\'s HTTP/2), koffi' });
  const anonTotal = status['RssAnon'] ?? 0;
  const rest = anonTotal - brk - heaps.reduce((s, h) => s + h.physical, 0);
  anon.push({
    name: heaps.length > 0 ? 'the rest' : 'the rest (V8 heaps not sampled: run with the preload)',
    mib: r1(rest),
    note: 'malloc arenas of the other threads, thread stacks, V8 pages not in a space, ArrayBuffers and native batches',
  });
  return [
    {
      name: 'file-backed: clean pages of files, shared with every process mapping them',
      mib: r1(status['RssFile']),
      note: `Pss_File ${r1(rollup['Pss_File'])}: this process's share`,
      parts: files,
    },
    { name: 'anonymous: this process\'s own memory', mib: r1(anonTotal), parts: anon },
  ];
}

/** A step of section 3: modules to require (and what else to do) in a bare node, cumulatively. */
interface ModuleStep {
  name: string;
  note: string;
  code: string;
}

/** In the order the agent loads them; each step includes the ones before it. */
export const MODULE_STEPS: readonly ModuleStep[] = [
  { name: 'node floor', note: 'node with the agent\'s flags, nothing loaded', code: '' },
  {
    // Otherwise the first module whose loading makes a function hot (pino: path's normalizeString)
    // would be charged with it.
    name: '+ TurboFan',
    note: 'the optimizing compiler\'s code, paged in at its first compile (the data plane runs on it)',
    code: 'globalThis.hot = (x) => x + 1; for (let i = 0; i < 2e6; i++) globalThis.hot(i);',
  },
  { name: '+ pino', note: 'the logger (src/log.ts)', code: "require('pino')({ level: 'info' }, require('pino').destination({ dest: 2, sync: true }));" },
  { name: '+ commander', note: 'the command line (src/cli.ts)', code: "require('commander');" },
  { name: '+ koffi', note: 'FFI, libc bound', code: "require('koffi').load('libc.so.6').func('int getpid(void)')();" },
  { name: '+ libsodium.so.23', note: 'the control plane\'s crypto through koffi', code: "require('koffi').load('libsodium.so.23').func('int sodium_init(void)')();" },
  {
    // Connected as the agent is: a lease kept alive, a key under it, a watch and a range read, on
    // the loopback etcd that moduleCosts starts ($FLOOR_ETCD). A client that never connects costs
    // about 4 MiB less (no HTTP/2 session, no parsed responses), which an earlier version measured.
    name: '+ etcd3',
    note: 'grpc-js, protobufjs, rpc.proto parsed; a client connected with a lease, a watch, a range',
    code:
      "globalThis.etcd = new (require('etcd3').Etcd3)({ hosts: process.env.FLOOR_ETCD }); " +
      "globalThis.etcd.lease(10).put('/floor/a').value('x')" +
      ".then(() => globalThis.etcd.watch().prefix('/floor/').create()).then((w) => { w.on('put', () => {}); globalThis.w = w; })" +
      ".then(() => globalThis.etcd.getAll().prefix('/floor/').strings())" +
      ".catch((e) => { console.error(String(e)); process.exit(3); });",
  },
  {
    name: '+ a worker thread',
    note: 'an isolate of its own, as the data plane\'s',
    // started after the steps below have run: the last one gives it something to load
    code: "setImmediate(() => { globalThis.w = new (require('node:worker_threads').Worker)(globalThis.workerCode ?? 'setInterval(() => {}, 1000)', { eval: true }); });",
  },
  {
    name: '+ koffi in it',
    note: 'what the data-plane worker loads of the dependencies (libc and libsodium bound)',
    code: "globalThis.workerCode = \"const k = require('koffi'); k.load('libc.so.6'); k.load('libsodium.so.23'); setInterval(() => {}, 1000)\";",
  },
];

/** Not in the agent while Debian's libsodium loads, shown for what they would cost: each from the floor. */
export const NOT_LOADED: readonly ModuleStep[] = [
  { name: 'sodium-native', note: 'the fallback without libsodium.so.23', code: "require('sodium-native');" },
  { name: 'libsodium-wrappers (WASM)', note: 'the last fallback', code: "require('libsodium-wrappers').ready.then(() => {});" },
  {
    // Not a package the project may use (etcd3 is a fixed choice): what the same calls cost without
    // grpc-js and protobufjs, through etcd's JSON gateway, so the etcd3 step can be read against it.
    name: "etcd's JSON gateway over node:http",
    note: 'the same lease, key, watch and range as the etcd3 step, no client library',
    code: [
      "const http = require('node:http'); const agent = new http.Agent({ keepAlive: true });",
      "const [host, port] = process.env.FLOOR_ETCD.replace('http://', '').split(':'); const b64 = (s) => Buffer.from(s).toString('base64');",
      'const post = (p, body) => new Promise((res, rej) => { const r = http.request({ host, port, path: p, method: "POST", agent }, (m) => { let d = ""; m.on("data", (c) => (d += c)); m.on("end", () => res(JSON.parse(d))); }); r.on("error", rej); r.end(JSON.stringify(body)); });',
      "post('/v3/lease/grant', { TTL: 10 }).then((l) => { setInterval(() => post('/v3/lease/keepalive', { ID: l.ID }), 3000).unref();",
      "  return post('/v3/kv/put', { key: b64('/floor/g'), value: b64('x'), lease: l.ID }); })",
      ".then(() => { const w = http.request({ host, port, path: '/v3/watch', method: 'POST' }, (m) => m.on('data', () => {})); w.write(JSON.stringify({ create_request: { key: b64('/floor/'), range_end: b64('/floor0') } })); globalThis.w = w; })",
      ".then(() => post('/v3/kv/range', { key: b64('/floor/'), range_end: b64('/floor0') }))",
      '.catch((e) => { console.error(String(e)); process.exit(3); });',
    ].join('\n'),
  },
];

/** The last step that is a package the agent must load in its main thread (the fixed choices'). */
export const FIXED_PACKAGES_STEP = '+ etcd3';

/** VmRSS (MiB) of a bare node running `code` with the agent's flags, `settleMs` after start. */
function measureNode(code: string, cwd: string, settleMs: number, etcd: string): Promise<number> {
  const script = `${code}\nsetTimeout(() => { const s = require('fs').readFileSync('/proc/self/status', 'utf8'); process.stdout.write(/^VmRSS:\\s+(\\d+)/m.exec(s)[1]); process.exit(0); }, ${settleMs});`;
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [...AGENT_NODE_FLAGS, '-e', script], {
      cwd,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, FLOOR_ETCD: etcd },
    });
    let out = '';
    let err = '';
    p.stdout.on('data', (d: Buffer) => (out += d.toString()));
    p.stderr.on('data', (d: Buffer) => (err += d.toString()));
    p.on('error', reject);
    p.on('close', (c) => (c === 0 && out ? resolve(Number(out) / KIB) : reject(new Error(`module step failed (${c}): ${err.slice(0, 400)}`))));
  });
}

/** A free TCP port on loopback (closed again; etcd binds it a moment later). */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

/**
 * A throwaway single-member etcd on loopback for the etcd steps, with its own data dir; stop()
 * ends it and removes the dir. Resolves when it answers a range request through its gateway.
 */
async function startLoopbackEtcd(): Promise<{ endpoint: string; stop(): Promise<void> }> {
  const [client, peer] = [await freePort(), await freePort()];
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cladnet-rss-floor-'));
  const endpoint = `http://127.0.0.1:${client}`;
  const p = spawn(
    'etcd',
    [
      `--data-dir=${dir}/data`,
      `--listen-client-urls=${endpoint}`,
      `--advertise-client-urls=${endpoint}`,
      `--listen-peer-urls=http://127.0.0.1:${peer}`,
      `--initial-advertise-peer-urls=http://127.0.0.1:${peer}`,
      `--initial-cluster=default=http://127.0.0.1:${peer}`,
      '--listen-metrics-urls=',
    ],
    { stdio: ['ignore', 'ignore', fs.openSync(`${dir}/etcd.log`, 'w')] },
  );
  const stop = async (): Promise<void> => {
    if (p.exitCode === null && p.signalCode === null) {
      const gone = new Promise<void>((r) => p.once('exit', () => r()));
      p.kill('SIGTERM');
      const t = setTimeout(() => p.kill('SIGKILL'), 3_000);
      await gone;
      clearTimeout(t);
    }
    fs.rmSync(dir, { recursive: true, force: true });
  };
  const deadline = Date.now() + 15_000;
  for (;;) {
    const up = await new Promise<boolean>((resolve) => {
      const r = http.request(`${endpoint}/v3/kv/range`, { method: 'POST', timeout: 1_000 }, (m) => {
        m.resume();
        resolve(m.statusCode === 200);
      });
      r.on('error', () => resolve(false));
      r.on('timeout', () => r.destroy());
      r.end('{"key":"AA=="}');
    });
    if (up) return { endpoint, stop };
    if (p.exitCode !== null || Date.now() > deadline) {
      const log = fs.readFileSync(`${dir}/etcd.log`, 'utf8').slice(-600);
      await stop();
      throw new Error(`the loopback etcd for the module steps did not come up: ${log}`);
    }
    await new Promise((r) => setTimeout(r, 200));
  }
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

export interface ModuleCost {
  name: string;
  note: string;
  /** VmRSS of the step, MiB (median) */
  total: number;
  /** over the step before (for NOT_LOADED: over the floor) */
  delta: number;
}

/** Section 3: each step `repeats` times (interleaved, so load on the machine falls on all alike), medians. */
export async function moduleCosts(cwd: string, repeats = 3, settleMs = 10_000): Promise<{ steps: ModuleCost[]; notLoaded: ModuleCost[] }> {
  const all = [...MODULE_STEPS.map((_, i) => MODULE_STEPS.slice(0, i + 1).map((s) => s.code).join('\n')), ...NOT_LOADED.map((s) => s.code)];
  const samples: number[][] = all.map(() => []);
  const etcd = await startLoopbackEtcd();
  try {
    // The processes of one repeat run side by side: RSS does not depend on who else runs, and at
    // the agent's 10 s settle one after another would take minutes.
    for (let r = 0; r < repeats; r++) {
      const got = await Promise.all(all.map((code) => measureNode(code, cwd, settleMs, etcd.endpoint)));
      got.forEach((v, i) => samples[i]!.push(v));
    }
  } finally {
    await etcd.stop();
  }
  const totals = samples.map(median);
  const steps = MODULE_STEPS.map((s, i) => ({ name: s.name, note: s.note, total: r1(totals[i]), delta: r1(totals[i]! - (i === 0 ? 0 : totals[i - 1]!)) }));
  const notLoaded = NOT_LOADED.map((s, i) => {
    const t = totals[MODULE_STEPS.length + i]!;
    return { name: s.name, note: s.note, total: r1(t), delta: r1(t - totals[0]!) };
  });
  return { steps, notLoaded };
}

/** Indented lines for parts (name, MiB, note). */
export function formatParts(parts: readonly Part[], indent = '  '): string[] {
  const lines: string[] = [];
  for (const p of parts) {
    const label = `${indent}${p.name}`;
    lines.push(`${label.padEnd(70)} ${String(p.mib).padStart(6)}${p.note ? `  ${p.note}` : ''}`);
    if (p.parts) lines.push(...formatParts(p.parts, indent + '  '));
  }
  return lines;
}

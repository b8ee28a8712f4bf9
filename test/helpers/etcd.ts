import { ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/**
 * A throwaway single-member etcd for tests.
 *
 *   const etcd = await startEtcd();          // fresh data dir, free loopback ports
 *   ... createEtcd({ endpoints: [etcd.endpoint] }) ...
 *   await etcd.stopProcess(); await etcd.startProcess();   // restart, same data dir and ports
 *   await etcd.stop();                       // kill and remove the data dir
 *
 * With `netns`, etcd runs as `ip netns exec <ns> /usr/bin/etcd ...` listening on `host` (required:
 * an address inside that namespace). Readiness is then taken from etcd's own log line, since the
 * calling namespace may have no route to it; without a netns `/health` is polled as well.
 *
 * Every etcd started here is SIGKILLed and its data dir removed if the test process exits without
 * calling `stop()` (a process 'exit' hook; and, where util-linux setpriv exists, a parent-death
 * signal, which also covers the test process being SIGKILLed).
 */
export interface EtcdHandle {
  /** http://host:port */
  readonly endpoint: string;
  readonly dataDir: string;
  readonly clientPort: number;
  readonly peerPort: number;
  readonly name: string;
  /** Pid of the running etcd, or null while stopped. */
  pid(): number | null;
  /** Stops the process (SIGTERM, SIGKILL after 3 s), keeping the data dir. */
  stopProcess(): Promise<void>;
  /** Starts the process again on the same data dir and ports; resolves when it serves. */
  startProcess(): Promise<void>;
  /** Stops the process and removes the data dir. Safe to call twice. */
  stop(): Promise<void>;
}

export interface StartEtcdOptions {
  netns?: string;
  host?: string;
  /** Extra etcd flags, e.g. ['--auto-compaction-retention=1']. */
  extraArgs?: string[];
}

const ETCD = '/usr/bin/etcd';
const SETPRIV = '/usr/bin/setpriv';
const READY_TIMEOUT_MS = 15_000;
const KILL_AFTER_MS = 3_000;

const live = new Map<ChildProcess, string>(); // running etcd -> data dir
const dirs = new Set<string>(); // data dirs not yet removed
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const child of live.keys()) {
      try {
        child.kill('SIGKILL');
      } catch {
        /* already gone */
      }
    }
    for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
  });
}

/** A port that was free on `host` a moment ago (bind port 0, read it, close). */
export function freePort(host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, host, () => {
      const addr = srv.address();
      srv.close(() => (typeof addr === 'object' && addr ? resolve(addr.port) : reject(new Error('no port'))));
    });
  });
}

/** Go's name for this CPU; etcd 3.4 refuses to start on architectures other than amd64/ppc64le without ETCD_UNSUPPORTED_ARCH. */
function unsupportedArch(): string | undefined {
  const goArch: Record<string, string> = { arm64: 'arm64', arm: 'arm', ia32: '386', s390x: 's390x', riscv64: 'riscv64' };
  if (process.arch === 'x64' || process.arch === 'ppc64') return undefined;
  return goArch[process.arch] ?? process.arch;
}

export async function startEtcd(opts: StartEtcdOptions = {}): Promise<EtcdHandle> {
  installExitHook();
  const host = opts.host ?? '127.0.0.1';
  if (opts.netns && !opts.host) throw new Error('startEtcd: netns needs host (an address inside the namespace)');
  const dataDir = mkdtempSync(join(tmpdir(), 'cladnet-etcd-'));
  dirs.add(dataDir);
  const name = `cladnet-test-${randomBytes(4).toString('hex')}`;
  let clientPort = 0;
  let peerPort = 0;
  let child: ChildProcess | null = null;
  let stopped = false;

  const args = (): string[] => {
    const c = `http://${host}:${clientPort}`;
    const p = `http://${host}:${peerPort}`;
    return [
      `--name=${name}`,
      `--data-dir=${join(dataDir, 'data')}`,
      `--listen-client-urls=${c}`,
      `--advertise-client-urls=${c}`,
      `--listen-peer-urls=${p}`,
      `--initial-advertise-peer-urls=${p}`,
      `--initial-cluster=${name}=${p}`,
      '--initial-cluster-state=new',
      `--initial-cluster-token=${name}`,
      '--heartbeat-interval=50',
      '--election-timeout=500',
      ...(opts.extraArgs ?? []),
    ];
  };

  const launch = async (): Promise<void> => {
    const env: NodeJS.ProcessEnv = { ...process.env };
    const arch = unsupportedArch();
    if (arch) env['ETCD_UNSUPPORTED_ARCH'] = arch;
    let argv = opts.netns ? ['ip', 'netns', 'exec', opts.netns, ETCD, ...args()] : [ETCD, ...args()];
    // setpriv execs in place (same pid); the kernel then kills etcd even if we are SIGKILLed.
    if (existsSync(SETPRIV)) argv = [SETPRIV, '--pdeathsig', 'KILL', ...argv];
    const proc = spawn(argv[0]!, argv.slice(1), { env, stdio: ['ignore', 'pipe', 'pipe'] });
    child = proc;
    live.set(proc, dataDir);
    const tail: string[] = [];
    let ready = false;
    let exited: string | null = null;
    const onLine = (chunk: Buffer) => {
      for (const line of chunk.toString('utf8').split('\n')) {
        if (!line) continue;
        tail.push(line);
        if (tail.length > 40) tail.shift();
        if (line.includes('serving insecure client requests') || line.includes('ready to serve client requests')) ready = true;
      }
    };
    proc.stdout!.on('data', onLine);
    proc.stderr!.on('data', onLine);
    proc.on('exit', (code, signal) => {
      exited = `exited with ${signal ?? code}`;
      live.delete(proc);
      if (child === proc) child = null;
    });
    proc.on('error', (e) => {
      exited = `failed to spawn: ${e.message}`;
    });

    const deadline = Date.now() + READY_TIMEOUT_MS;
    while (Date.now() < deadline) {
      if (exited) break;
      if (ready && (opts.netns || (await healthy(host, clientPort)))) return;
      await sleep(50);
    }
    const why = exited ?? `not ready after ${READY_TIMEOUT_MS} ms`;
    await killProc(proc);
    const err = new Error(`etcd ${why}\n${tail.join('\n')}`) as Error & { portInUse?: boolean };
    err.portInUse = tail.some((l) => l.includes('address already in use'));
    throw err;
  };

  const handle: EtcdHandle = {
    get endpoint() {
      return `http://${host}:${clientPort}`;
    },
    dataDir,
    get clientPort() {
      return clientPort;
    },
    get peerPort() {
      return peerPort;
    },
    name,
    pid: () => child?.pid ?? null,
    stopProcess: async () => {
      if (child) await killProc(child);
    },
    startProcess: async () => {
      if (stopped) throw new Error('etcd handle was stopped');
      if (child) return;
      await launch();
    },
    stop: async () => {
      stopped = true;
      if (child) await killProc(child);
      rmSync(dataDir, { recursive: true, force: true });
      dirs.delete(dataDir);
    },
  };

  // The free ports we found may be taken before etcd binds them: try a few times.
  for (let attempt = 0; ; attempt++) {
    clientPort = await freePort(opts.netns ? '127.0.0.1' : host);
    do peerPort = await freePort(opts.netns ? '127.0.0.1' : host);
    while (peerPort === clientPort);
    try {
      await launch();
      return handle;
    } catch (e) {
      rmSync(join(dataDir, 'data'), { recursive: true, force: true });
      if (!(e as { portInUse?: boolean }).portInUse || attempt >= 3) {
        await handle.stop();
        throw e;
      }
    }
  }
}

async function healthy(host: string, port: number): Promise<boolean> {
  try {
    const res = await fetch(`http://${host}:${port}/health`, { signal: AbortSignal.timeout(1000) });
    const body = (await res.json()) as { health?: string };
    return res.ok && body.health === 'true';
  } catch {
    return false;
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** SIGTERM, then SIGKILL after 3 s; resolves when the process is gone. */
function killProc(proc: ChildProcess): Promise<void> {
  if (proc.pid === undefined || proc.exitCode !== null || proc.signalCode !== null) {
    live.delete(proc);
    return Promise.resolve();
  }
  return new Promise((resolve) => {
    const timer = setTimeout(() => proc.kill('SIGKILL'), KILL_AFTER_MS);
    proc.once('exit', () => {
      clearTimeout(timer);
      live.delete(proc);
      resolve();
    });
    proc.kill('SIGTERM');
  });
}

/** Polls `check` every 20 ms until it returns a truthy value; throws after `timeoutMs`. */
export async function waitFor<T>(check: () => T | Promise<T>, timeoutMs: number, what: string): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v) return v as NonNullable<T>;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(20);
  }
}

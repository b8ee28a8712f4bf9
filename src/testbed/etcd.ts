import type { ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ipv6Of } from './ipv6';
import { run } from './run';
import type { Topology } from './topology';

/**
 * A throwaway single-member etcd inside the router namespace, listening on the router's own
 * address so every host reaches it through its default route. Data lives in the topology's work
 * dir; the process is tracked by the topology, so destroy() ends it even if stop() is never called.
 * stop() then start() restarts it on the same data; pid() is there to SIGSTOP it (a hung etcd).
 */
export interface TestbedEtcd {
  /** e.g. http://198.18.0.1:2379 */
  readonly endpoint: string;
  /** With an IPv6 underlay (opts.ipv6): the same member over IPv6, e.g. http://[2001:db8:1::1]:2379. */
  readonly endpoint6?: string;
  readonly dataDir: string;
  readonly logFile: string;
  /** Pid of the running etcd (for SIGSTOP/SIGCONT), null while stopped. */
  pid(): number | null;
  /** Stops the process (SIGTERM, SIGKILL after 3 s), keeping the data dir. */
  stop(): Promise<void>;
  /** Starts it again after stop(), same data dir and address; resolves when it is healthy. */
  start(): Promise<void>;
}

export async function startTestbedEtcd(
  topo: Topology,
  opts: { port?: number; timeoutMs?: number; ipv6?: boolean } = {},
): Promise<TestbedEtcd> {
  const port = opts.port ?? 2379;
  const peerPort = port + 1;
  const dataDir = path.join(topo.workDir, 'etcd');
  fs.mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const logFile = path.join(topo.workDir, 'etcd.log');
  const endpoint = `http://${topo.routerIp}:${port}`;
  const endpoint6 = opts.ipv6 ? `http://[${ipv6Of(topo.routerIp)}]:${port}` : undefined;
  const peer = `http://127.0.0.1:${peerPort}`;
  const name = `${topo.id}-etcd`;
  const args = [
    'etcd',
    `--name=${name}`,
    `--data-dir=${dataDir}`,
    `--listen-client-urls=${endpoint}${endpoint6 ? `,${endpoint6}` : ''}`,
    `--advertise-client-urls=${endpoint}`,
    `--listen-peer-urls=${peer}`,
    `--initial-advertise-peer-urls=${peer}`,
    `--initial-cluster=${name}=${peer}`,
    `--initial-cluster-token=${name}`,
    '--initial-cluster-state=new',
    '--listen-metrics-urls=',
  ];
  let child: ChildProcess | null = null;
  const alive = (c: ChildProcess | null): c is ChildProcess => c !== null && c.exitCode === null && c.signalCode === null;
  const stop = async (): Promise<void> => {
    const c = child;
    if (!alive(c)) return;
    const gone = new Promise<void>((r) => c.once('exit', () => r()));
    c.kill('SIGCONT'); // a stopped (SIGSTOP) etcd would not act on SIGTERM
    c.kill('SIGTERM');
    const t = setTimeout(() => c.kill('SIGKILL'), 3_000);
    await gone;
    clearTimeout(t);
  };
  const start = async (): Promise<void> => {
    if (alive(child)) return;
    const c = topo.spawn(topo.routerNs, args, { logFile });
    child = c;
    const deadline = Date.now() + (opts.timeoutMs ?? 15_000);
    for (;;) {
      if (!alive(c)) {
        const why = (c as ChildProcess).exitCode ?? (c as ChildProcess).signalCode;
        throw new Error(`etcd exited early (${why}); log ${logFile}:\n${tail(logFile)}`);
      }
      const r = await run(
        ['ip', 'netns', 'exec', topo.routerNs, 'etcdctl', `--endpoints=${endpoint}`, '--dial-timeout=1s', 'endpoint', 'health'],
        { timeoutMs: 3_000, env: { ...process.env, ETCDCTL_API: '3' } },
      );
      if (r.code === 0) break;
      if (Date.now() > deadline) {
        await stop();
        throw new Error(`etcd at ${endpoint} not healthy in time: ${r.stderr.trim()}\n${tail(logFile)}`);
      }
      await new Promise((res) => setTimeout(res, 150));
    }
  };
  await start();
  return { endpoint, ...(endpoint6 ? { endpoint6 } : {}), dataDir, logFile, pid: () => (alive(child) ? child.pid ?? null : null), stop, start };
}

function tail(file: string, lines = 15): string {
  try {
    return fs.readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

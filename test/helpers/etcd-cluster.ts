import { ChildProcess, spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/**
 * A throwaway 3-member etcd cluster for tests, each member in its own network namespace.
 *
 *   root namespace:  bridge cb<id>, 198.19.X.1/24   (the test process: clients reach every member)
 *        |-- veth --  namespace ce<id>-0: eth0 198.19.X.10   etcd member 0 (client :2379, peer :2380)
 *        |-- veth --  namespace ce<id>-1: eth0 198.19.X.11   etcd member 1
 *        '-- veth --  namespace ce<id>-2: eth0 198.19.X.12   etcd member 2
 *
 *   const c = await startEtcdCluster();       // fresh data dirs, unique names, waits for a leader
 *   c.endpoints                               // ['http://198.19.X.10:2379', ...]
 *   await c.kill(i); await c.restart(i);      // SIGKILL member i; start it again on its data dir
 *   c.pause(i); c.resume(i);                  // SIGSTOP / SIGCONT member i (hung, not gone)
 *   await c.partition(i); await c.heal(i);    // cut member i off from the other two (peer traffic
 *                                             // dropped, not refused); clients still reach it
 *   await c.leader()                          // index of the member the others follow, or null
 *   await c.stop()                            // kill all, remove namespaces, bridge and data dirs
 *
 * A partition is an nftables table inside the member's namespace that drops every packet to or
 * from the other members' addresses: a black hole, as a real network split looks from that member.
 *
 * Raft timing: heartbeat 50 ms, election timeout 500 ms (etcd's defaults are 100 / 1000 ms), as in
 * helpers/etcd.ts: elections after a leader kill take about half as long; the tests' timing targets
 * are for the agent's side (watch moves, write retries), which these settings do not change.
 *
 * Hygiene as in helpers/etcd.ts: every member is started under setpriv --pdeathsig KILL where that
 * exists, and a process 'exit' hook SIGKILLs what still runs and removes namespaces, bridge and
 * data dirs, so nothing is left behind when a test fails or forgets stop().
 */
export interface EtcdCluster {
  /** http://198.19.X.1i:2379 for member i. */
  readonly endpoints: readonly string[];
  /** Member addresses (198.19.X.10 + i). */
  readonly addresses: readonly string[];
  readonly size: number;
  /** The members' network namespaces and the bridge joining them (for tests of the cleanup). */
  readonly namespaces: readonly string[];
  readonly bridge: string;
  /** Pid of member i's etcd, or null while it is stopped. */
  pid(i: number): number | null;
  /** SIGKILLs member i (no goodbye to the cluster); resolves when it is gone. */
  kill(i: number): Promise<void>;
  /** Starts member i again on its data dir; resolves when it serves clients. */
  restart(i: number): Promise<void>;
  /** SIGSTOPs member i (a hung member: connections stay open, nothing answers). */
  pause(i: number): void;
  /** SIGCONTs member i. */
  resume(i: number): void;
  /** Drops all traffic between member i and the other members (clients still reach it). */
  partition(i: number): Promise<void>;
  /** Undoes partition(i). */
  heal(i: number): Promise<void>;
  /** The member the running members agree is leader, or null (none, or no agreement). */
  leader(): Promise<number | null>;
  /** Waits until the running members agree on a leader; returns it. */
  waitLeader(timeoutMs?: number): Promise<number>;
  /** member i's view: its raft term and the leader it follows (0n: none). */
  status(i: number): Promise<{ memberId: string; leader: string; raftTerm: string } | null>;
  /** Kills every member, removes namespaces, bridge and data dirs. Safe to call twice. */
  stop(): Promise<void>;
}

export interface StartEtcdClusterOptions {
  /** Extra etcd flags for every member. */
  extraArgs?: string[];
  heartbeatMs?: number;
  electionMs?: number;
}

const ETCD = '/usr/bin/etcd';
const SETPRIV = '/usr/bin/setpriv';
const SIZE = 3;
const CLIENT_PORT = 2379;
const PEER_PORT = 2380;
const READY_TIMEOUT_MS = 20_000;
const CUT_TABLE = 'cladnet_cut';

interface Leftovers {
  procs: Set<ChildProcess>;
  dirs: Set<string>;
  netns: Set<string>;
  links: Set<string>;
}
const leftovers: Leftovers = { procs: new Set(), dirs: new Set(), netns: new Set(), links: new Set() };
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const p of leftovers.procs) {
      try {
        p.kill('SIGKILL');
      } catch {
        /* gone */
      }
    }
    for (const ns of leftovers.netns) spawnSync('ip', ['netns', 'del', ns], { stdio: 'ignore' });
    for (const l of leftovers.links) spawnSync('ip', ['link', 'del', l], { stdio: 'ignore' });
    for (const d of leftovers.dirs) rmSync(d, { recursive: true, force: true });
  });
}

/** Runs a command; throws with its stderr when it fails. */
function sh(argv: string[], input?: string): string {
  const r = spawnSync(argv[0]!, argv.slice(1), { input, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${argv.join(' ')} failed (${r.status ?? r.signal}): ${r.stderr || r.error?.message || ''}`.trim());
  return r.stdout;
}

/** A 198.19.X.0/24 nothing in the root namespace routes yet (so parallel runs do not collide). */
function freeSubnet(): number {
  const routes = sh(['ip', '-4', 'route', 'show']);
  for (let attempt = 0; attempt < 64; attempt++) {
    const x = 1 + (randomBytes(1)[0]! % 254);
    if (!routes.includes(`198.19.${x}.`)) return x;
  }
  throw new Error('no free 198.19.X.0/24 for an etcd cluster');
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Go's name for this CPU (etcd 3.4 refuses other than amd64/ppc64le without ETCD_UNSUPPORTED_ARCH). */
function unsupportedArch(): string | undefined {
  const goArch: Record<string, string> = { arm64: 'arm64', arm: 'arm', ia32: '386', s390x: 's390x', riscv64: 'riscv64' };
  if (process.arch === 'x64' || process.arch === 'ppc64') return undefined;
  return goArch[process.arch] ?? process.arch;
}

interface Member {
  readonly index: number;
  readonly name: string;
  readonly ns: string;
  readonly ip: string;
  readonly dataDir: string;
  proc: ChildProcess | null;
  ready: boolean;
  tail: string[];
  exited: string | null;
}

export async function startEtcdCluster(opts: StartEtcdClusterOptions = {}): Promise<EtcdCluster> {
  installExitHook();
  const id = randomBytes(3).toString('hex');
  const x = freeSubnet();
  const bridge = `cb${id}`;
  const gw = `198.19.${x}.1`;
  const tmp = mkdtempSync(join(tmpdir(), 'cladnet-etcd-cluster-'));
  leftovers.dirs.add(tmp);
  const members: Member[] = Array.from({ length: SIZE }, (_, i) => ({
    index: i,
    name: `cl${id}-${i}`,
    ns: `ce${id}-${i}`,
    ip: `198.19.${x}.${10 + i}`,
    dataDir: join(tmp, `m${i}`),
    proc: null,
    ready: false,
    tail: [],
    exited: null,
  }));
  const initialCluster = members.map((m) => `${m.name}=http://${m.ip}:${PEER_PORT}`).join(',');
  let stopped = false;

  // Network: one bridge in the root namespace, one veth into each member's namespace.
  const setupNetwork = (): void => {
    leftovers.links.add(bridge);
    sh(['ip', 'link', 'add', bridge, 'type', 'bridge']);
    sh(['ip', 'addr', 'add', `${gw}/24`, 'dev', bridge]);
    sh(['ip', 'link', 'set', bridge, 'up']);
    for (const m of members) {
      const outer = `cv${id}${m.index}`;
      leftovers.netns.add(m.ns);
      sh(['ip', 'netns', 'add', m.ns]);
      leftovers.links.add(outer);
      sh(['ip', 'link', 'add', outer, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', m.ns]);
      sh(['ip', 'link', 'set', outer, 'master', bridge, 'up']);
      const inNs = (...a: string[]) => sh(['ip', 'netns', 'exec', m.ns, ...a]);
      inNs('ip', 'link', 'set', 'lo', 'up');
      inNs('ip', 'addr', 'add', `${m.ip}/24`, 'dev', 'eth0');
      inNs('ip', 'link', 'set', 'eth0', 'up');
      inNs('ip', 'route', 'add', 'default', 'via', gw);
    }
  };

  const args = (m: Member): string[] => {
    const c = `http://${m.ip}:${CLIENT_PORT}`;
    const p = `http://${m.ip}:${PEER_PORT}`;
    return [
      `--name=${m.name}`,
      `--data-dir=${m.dataDir}`,
      `--listen-client-urls=${c}`,
      `--advertise-client-urls=${c}`,
      `--listen-peer-urls=${p}`,
      `--initial-advertise-peer-urls=${p}`,
      `--initial-cluster=${initialCluster}`,
      '--initial-cluster-state=new',
      `--initial-cluster-token=cl${id}`,
      `--heartbeat-interval=${opts.heartbeatMs ?? 50}`,
      `--election-timeout=${opts.electionMs ?? 500}`,
      '--listen-metrics-urls=',
      ...(opts.extraArgs ?? []),
    ];
  };

  const launch = (m: Member): void => {
    const env: NodeJS.ProcessEnv = { ...process.env };
    const arch = unsupportedArch();
    if (arch) env['ETCD_UNSUPPORTED_ARCH'] = arch;
    let argv = ['ip', 'netns', 'exec', m.ns, ETCD, ...args(m)];
    if (existsSync(SETPRIV)) argv = [SETPRIV, '--pdeathsig', 'KILL', ...argv];
    const proc = spawn(argv[0]!, argv.slice(1), { env, stdio: ['ignore', 'pipe', 'pipe'] });
    m.proc = proc;
    m.ready = false;
    m.exited = null;
    m.tail = [];
    leftovers.procs.add(proc);
    const onData = (chunk: Buffer) => {
      for (const line of chunk.toString('utf8').split('\n')) {
        if (!line) continue;
        m.tail.push(line);
        if (m.tail.length > 40) m.tail.shift();
        if (line.includes('ready to serve client requests') || line.includes('serving insecure client requests')) m.ready = true;
      }
    };
    proc.stdout!.on('data', onData);
    proc.stderr!.on('data', onData);
    proc.on('exit', (code, signal) => {
      m.exited = `exited with ${signal ?? code}`;
      leftovers.procs.delete(proc);
      if (m.proc === proc) m.proc = null;
    });
    proc.on('error', (e) => void (m.exited = `failed to spawn: ${e.message}`));
  };

  const waitReady = async (list: Member[]): Promise<void> => {
    const deadline = Date.now() + READY_TIMEOUT_MS;
    for (;;) {
      const bad = list.find((m) => m.exited !== null);
      if (bad) throw new Error(`etcd member ${bad.index} ${bad.exited}\n${bad.tail.join('\n')}`);
      if (list.every((m) => m.ready)) return;
      if (Date.now() > deadline) {
        const slow = list.find((m) => !m.ready)!;
        throw new Error(`etcd member ${slow.index} not ready after ${READY_TIMEOUT_MS} ms\n${slow.tail.join('\n')}`);
      }
      await sleep(50);
    }
  };

  const killProc = (m: Member): Promise<void> => {
    const p = m.proc;
    if (!p || p.exitCode !== null || p.signalCode !== null) return Promise.resolve();
    return new Promise((resolve) => {
      p.once('exit', () => resolve());
      p.kill('SIGCONT');
      p.kill('SIGKILL');
    });
  };

  const status = async (i: number): Promise<{ memberId: string; leader: string; raftTerm: string } | null> => {
    const m = members[i]!;
    if (!m.proc) return null;
    try {
      const res = await fetch(`http://${m.ip}:${CLIENT_PORT}/v3/maintenance/status`, { method: 'POST', body: '{}', signal: AbortSignal.timeout(1000) });
      if (!res.ok) return null;
      const body = (await res.json()) as { header?: { member_id?: string }; leader?: string; raftTerm?: string };
      return { memberId: body.header?.member_id ?? '', leader: body.leader ?? '0', raftTerm: body.raftTerm ?? '0' };
    } catch {
      return null;
    }
  };

  const leader = async (): Promise<number | null> => {
    const views = await Promise.all(members.map((m) => status(m.index)));
    const ids = new Map<string, number>();
    views.forEach((v, i) => v && ids.set(v.memberId, i));
    // The leader is the member a majority of the cluster (2 of 3) follows, itself included.
    const votes = new Map<string, number>();
    for (const v of views) if (v && v.leader !== '0') votes.set(v.leader, (votes.get(v.leader) ?? 0) + 1);
    for (const [id, n] of votes) if (n * 2 > SIZE && ids.has(id)) return ids.get(id)!;
    return null;
  };

  const cluster: EtcdCluster = {
    endpoints: members.map((m) => `http://${m.ip}:${CLIENT_PORT}`),
    addresses: members.map((m) => m.ip),
    size: SIZE,
    namespaces: members.map((m) => m.ns),
    bridge,
    pid: (i) => members[i]?.proc?.pid ?? null,
    kill: async (i) => {
      await killProc(members[i]!);
    },
    restart: async (i) => {
      if (stopped) throw new Error('etcd cluster was stopped');
      const m = members[i]!;
      if (m.proc) return;
      launch(m);
      await waitReady([m]);
    },
    pause: (i) => void members[i]!.proc?.kill('SIGSTOP'),
    resume: (i) => void members[i]!.proc?.kill('SIGCONT'),
    partition: async (i) => {
      const m = members[i]!;
      const others = members.filter((o) => o !== m).map((o) => o.ip).join(', ');
      const rules = [
        `table inet ${CUT_TABLE} {`,
        `  chain input { type filter hook input priority -10; policy accept; ip saddr { ${others} } drop; }`,
        `  chain output { type filter hook output priority -10; policy accept; ip daddr { ${others} } drop; }`,
        '}',
      ].join('\n');
      sh(['ip', 'netns', 'exec', m.ns, 'nft', '-f', '-'], rules + '\n');
    },
    heal: async (i) => {
      const m = members[i]!;
      spawnSync('ip', ['netns', 'exec', m.ns, 'nft', 'delete', 'table', 'inet', CUT_TABLE], { stdio: 'ignore' });
    },
    leader,
    waitLeader: async (timeoutMs = 10_000) => {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const l = await leader();
        if (l !== null) return l;
        if (Date.now() > deadline) throw new Error(`etcd cluster: no leader after ${timeoutMs} ms`);
        await sleep(50);
      }
    },
    status,
    stop: async () => {
      if (stopped) return;
      stopped = true;
      await Promise.all(members.map(killProc));
      for (const m of members) {
        spawnSync('ip', ['netns', 'del', m.ns], { stdio: 'ignore' });
        leftovers.netns.delete(m.ns);
        const outer = `cv${id}${m.index}`;
        spawnSync('ip', ['link', 'del', outer], { stdio: 'ignore' }); // gone with the namespace, normally
        leftovers.links.delete(outer);
      }
      spawnSync('ip', ['link', 'del', bridge], { stdio: 'ignore' });
      leftovers.links.delete(bridge);
      rmSync(tmp, { recursive: true, force: true });
      leftovers.dirs.delete(tmp);
    },
  };

  try {
    setupNetwork();
    for (const m of members) launch(m);
    await waitReady(members);
    await cluster.waitLeader(READY_TIMEOUT_MS);
  } catch (e) {
    await cluster.stop();
    throw e;
  }
  return cluster;
}

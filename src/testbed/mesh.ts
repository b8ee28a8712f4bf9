import { cliPath, createNetwork, startAgent, waitMeshUp, type Agent, type AgentOptions, type AgentStatus } from './agents';
import { startTestbedEtcd, type TestbedEtcd } from './etcd';
import { ipv6UnderlayCommands, type Ipv6UnderlayOptions } from './ipv6';
import { runOk } from './run';
import { createTopology, type Topology, type TopologyHost, type TopologySpec } from './topology';

/**
 * The usual arrangement in one call: a topology, etcd in its router, one network, and agents on
 * some or all hosts. Used by the end-to-end tests and benchmarks; destroy() undoes all of it.
 */
export interface MeshBedOptions {
  readonly topology: TopologySpec;
  readonly network?: string;
  readonly cidr?: string;
  /** How many hosts (first N) get an agent right away; default all. */
  readonly agents?: number;
  /** Wait for a full mesh of the started agents (default true). */
  readonly waitUp?: boolean;
  readonly upTimeoutMs?: number;
  readonly agentOptions?: Partial<AgentOptions>;
  /** Add an IPv6 underlay (./ipv6.ts) before anything starts; etcd then listens on IPv6 too (etcd.endpoint6). */
  readonly ipv6?: Ipv6UnderlayOptions;
}

export interface MeshBed {
  readonly topo: Topology;
  readonly etcd: TestbedEtcd;
  readonly network: string;
  readonly cidr: string;
  /** Agents currently running: the initial ones in host order, later ones appended. */
  readonly agents: Agent[];
  /** Starts an agent on `host` (and adds it to `agents`). */
  start(host: TopologyHost, opts?: Partial<AgentOptions>): Promise<Agent>;
  agent(name: string): Agent;
  /** Waits for a full mesh of `agents` (default all running ones); returns status by name. */
  waitUp(agents?: readonly Agent[], timeoutMs?: number): Promise<Map<string, AgentStatus>>;
  destroy(): Promise<void>;
}

export async function startMeshBed(opts: MeshBedOptions): Promise<MeshBed> {
  const network = opts.network ?? 'mesh';
  const cidr = opts.cidr ?? '100.64.0.0/24';
  const topo = await createTopology(opts.topology);
  const agents: Agent[] = [];
  let etcd: TestbedEtcd | undefined;
  let destroying: Promise<void> | undefined;

  const destroy = (): Promise<void> =>
    (destroying ??= (async () => {
      await Promise.all(agents.map((a) => a.stop().catch(() => undefined)));
      await etcd?.stop().catch(() => undefined);
      await topo.destroy();
    })());

  try {
    if (opts.ipv6) for (const cmd of ipv6UnderlayCommands(topo.plan, opts.ipv6)) await runOk(cmd);
    etcd = await startTestbedEtcd(topo, { ipv6: opts.ipv6 !== undefined });
    await createNetwork(topo, { name: network, cidr, etcd: etcd.endpoint });
    const e = etcd;
    const bed: MeshBed = {
      topo,
      etcd: e,
      network,
      cidr,
      agents,
      async start(host, o = {}) {
        const a = await startAgent(topo, host, { etcd: e.endpoint, network, ...opts.agentOptions, ...o });
        agents.push(a);
        void a.exited.then(() => {
          const i = agents.indexOf(a);
          if (i >= 0) agents.splice(i, 1);
        });
        return a;
      },
      agent(name) {
        const a = agents.find((x) => x.name === name);
        if (!a) throw new Error(`no running agent named "${name}"`);
        return a;
      },
      waitUp(list = agents, timeoutMs = opts.upTimeoutMs ?? 20_000) {
        return waitMeshUp(list, timeoutMs);
      },
      destroy,
    };
    const first = topo.hosts.slice(0, opts.agents ?? topo.hosts.length);
    await Promise.all(first.map((h) => bed.start(h)));
    agents.sort((a, b) => topo.hosts.indexOf(a.host) - topo.hosts.indexOf(b.host)); // host order, not start order
    if (opts.waitUp ?? true) await bed.waitUp();
    return bed;
  } catch (err) {
    await destroy();
    throw err;
  }
}

export interface NatBedOptions {
  readonly topology: TopologySpec;
  /** The host on the internet that relays (`--relay`); started first. */
  readonly relay: string;
  /** Hosts to start after it, together (default: every other host of the topology). */
  readonly start?: readonly string[];
  /** Start no agent at all, only the bed and the STUN server (the test starts its own). */
  readonly noAgents?: boolean;
  /** More agent arguments for a host (besides `--stun`, and `--relay` for the relay). */
  readonly extraArgs?: (host: string) => readonly string[];
  /** A host's UDP port (default 51820): two hosts behind one Linux NAT need different ones. */
  readonly listenPort?: (host: string) => number | undefined;
  /** Wait for a full mesh of the started agents (default true, 30 s). */
  readonly waitUp?: boolean;
  /** An IPv6 underlay beside the IPv4 one (see MeshBedOptions.ipv6). */
  readonly ipv6?: Ipv6UnderlayOptions;
}

/**
 * The NAT tests' bed: a mesh bed with a STUN server in the router namespace (the internet), the
 * relay host started first with `--relay`, then the others, every agent asking that STUN server.
 * Returns the bed and the STUN server's address (for agents started later).
 */
export async function startNatBed(opts: NatBedOptions): Promise<{ bed: MeshBed; stun: string }> {
  const bed = await startMeshBed({ topology: opts.topology, agents: 0, waitUp: false, ...(opts.ipv6 ? { ipv6: opts.ipv6 } : {}) });
  try {
    const stun = `${bed.topo.routerIp}:3478`;
    bed.topo.spawn(bed.topo.routerNs, [process.execPath, cliPath(), 'stun-server', '--listen', stun]);
    const args = (host: string, own: readonly string[]): Partial<AgentOptions> => {
      const port = opts.listenPort?.(host);
      return { extraArgs: [...own, '--stun', stun, ...(opts.extraArgs?.(host) ?? [])], ...(port === undefined ? {} : { listenPort: port }) };
    };
    if (opts.noAgents) return { bed, stun };
    await bed.start(bed.topo.host(opts.relay), args(opts.relay, ['--relay']));
    const others = opts.start ?? bed.topo.plan.hosts.map((h) => h.name).filter((n) => n !== opts.relay);
    await Promise.all(others.map((n) => bed.start(bed.topo.host(n), args(n, []))));
    if (opts.waitUp !== false) await bed.waitUp(bed.agents, 30_000);
    return { bed, stun };
  } catch (e) {
    await bed.destroy();
    throw e;
  }
}

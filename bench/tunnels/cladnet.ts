import * as fs from 'node:fs';
import * as path from 'node:path';
import { run } from '../../src/testbed/run';
import { cli, networkKeyFile, waitUntil, type Agent } from '../../src/testbed/agents';
import type { MeshBed } from '../../src/testbed/mesh';
import { IPERF_PORT } from '../probes';
import { Undo } from './util';
import type { BenchContext, ImplName, Implementation } from './types';

/** The overlay the bench's cladnet network uses (the mesh bed creates it). */
export const CLADNET_CIDR = '100.64.0.0/24';
export const CLADNET_NETWORK = 'bench';

/** The agent's test knob (src/agent/handshakes.ts timersFromEnv): rekey after this many ms, erase keys at 1.5x. */
export const REKEY_ENV = 'CLADNET_REKEY_AFTER_MS';
/** The agent's default rekey interval (DEFAULT_TIMERS), for the notes. */
const DEFAULT_REKEY_MS = 120_000;
/** cladnet-rekey's interval: an 8 s iperf3 test sees about 8 rekeys per side. */
export const BENCH_REKEY_MS = 1_000;

/** The implementations that run as cladnet agents in the etcd mesh bed. */
export const MESH_IMPLS: readonly ImplName[] = ['cladnet', 'cladnet-rekey', 'cladnet-policy'];

/**
 * Runs `f` with `vars` set in process.env (undefined: unset), then puts the old values back.
 * The test bed spawns agents with the bench's own environment, and the bench starts one
 * implementation at a time, so nothing else sees the change.
 */
async function withEnv<T>(vars: Readonly<Record<string, string | undefined>>, f: () => Promise<T>): Promise<T> {
  const saved = Object.fromEntries(Object.keys(vars).map((k) => [k, process.env[k]]));
  const set = (k: string, v: string | undefined): void => {
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  };
  for (const [k, v] of Object.entries(vars)) set(k, v);
  try {
    return await f();
  } finally {
    for (const [k, v] of Object.entries(saved)) set(k, v);
  }
}

/**
 * cladnet as built in dist/: one agent per host through the test bed, peers from the bed's etcd.
 * Ready when both agents list each other as `up`. `rekeyAfterMs` null: the agent's own timers
 * (the knob is unset even when the bench's environment has it).
 */
function cladnetImpl(name: ImplName, rekeyAfterMs: number | null, policy: PolicyRule[] | null = null): Implementation {
  return {
    name,
    needs: ['etcd'],
    async version() {
      const root = path.resolve(__dirname, '..', '..', '..');
      const head = await run(['git', '-C', root, 'rev-parse', '--short', 'HEAD'], { timeoutMs: 5_000 });
      if (head.code !== 0) return null;
      const dirty = await run(['git', '-C', root, 'status', '--porcelain', '--', 'src'], { timeoutMs: 5_000 });
      return head.stdout.trim() + (dirty.stdout.trim() ? '+dirty' : '');
    },
    async start(ctx: BenchContext) {
      const bed = ctx.bed;
      if (!bed) throw new Error(`${name} needs the etcd mesh bed`);
      const undo = new Undo();
      try {
        const agents: Agent[] = [];
        await withEnv({ [REKEY_ENV]: rekeyAfterMs === null ? undefined : String(rekeyAfterMs) }, async () => {
          for (const h of [ctx.a, ctx.b]) {
            const agent = await bed.start(h, { logLevel: 'info' });
            undo.push(() => agent.stop().then(() => undefined));
            agents.push(agent);
          }
        });
        if (policy) {
          await setPolicyApplied(bed, policy, agents);
          // Back to an open policy (the filter off) afterwards: the other cladnet runs share the bed.
          undo.push(() => setPolicy(bed, OPEN_POLICY).then(() => undefined));
        }
        const docs = await bed.waitUp(agents, 20_000);
        // The AEAD each agent's data plane actually uses (its status self.crypto), not what we asked for.
        const cryptos = agents.map((ag) => docs.get(ag.name)!.self.crypto || '(none in status)');
        const crypto = cryptos.every((c) => c === cryptos[0]) ? cryptos[0]! : agents.map((ag, i) => `${ag.name}: ${cryptos[i]}`).join(', ');
        const offloads = agents.map((ag) => (docs.get(ag.name)!.self.offload ? 'on' : 'off'));
        const [ea, eb] = agents.map((ag) => {
          const d = docs.get(ag.name)!;
          return { ns: ag.host.ns, ip: d.self.overlayIp, dev: d.self.interface, mtu: d.self.mtu };
        }) as [{ ns: string; ip: string; dev: string; mtu: number }, { ns: string; ip: string; dev: string; mtu: number }];
        return {
          a: ea,
          b: eb,
          udpPort: agents[0]!.listenPort,
          procs: agents.map((ag) => ({ host: ag.host.name, pid: ag.proc.pid!, comm: 'node' })),
          notes: {
            mtu: ea.mtu,
            cipher: `chacha20-poly1305 (${crypto}, from status self.crypto)`,
            crypto,
            tunOffloads: offloads.every((o) => o === offloads[0]) ? offloads[0]! : offloads.join(', '),
            // data-plane workers per agent (status self.workers; absent: one). CLADNET_WORKERS in
            // the bench's environment reaches the agents: CLADNET_WORKERS=2 runs them with two.
            workers: agents.map((ag) => docs.get(ag.name)!.self.workers?.length ?? 1).join(', '),
            ...(process.env['CLADNET_WORKERS'] ? { workersEnv: `CLADNET_WORKERS=${process.env['CLADNET_WORKERS']}` } : {}),
            network: CLADNET_CIDR,
            ...(policy ? { policyRules: policy.length } : {}),
            rekeyAfterMs: rekeyAfterMs ?? DEFAULT_REKEY_MS,
            ...(rekeyAfterMs === null ? {} : { env: `${REKEY_ENV}=${rekeyAfterMs}` }),
          },
          async ready() {
            for (const ag of agents) {
              const d = await ag.status();
              const other = agents.find((x) => x !== ag)!;
              const p = d.peers.find((x) => x.name === other.name);
              if (!p || p.state !== 'up') throw new Error(`agent ${ag.name}: peer ${other.name} is ${p?.state ?? 'absent'}`);
            }
          },
          async extra() {
            // Data-plane counters after the round: drops point at where the data path struggled.
            const out: Record<string, unknown> = {};
            for (const ag of agents) {
              const d = await ag.status();
              const drops = Object.fromEntries(Object.entries(d.dataplane.drops).filter(([, n]) => n > 0));
              out[ag.name] = {
                rxPackets: d.dataplane.rxPackets,
                txPackets: d.dataplane.txPackets,
                ...(d.self.workers ? { workers: d.self.workers } : {}),
                drops,
                handshake: d.handshake ?? null,
              };
            }
            return out;
          },
          async rekeys() {
            // Through `cladnet status --json`, as a person would read it.
            const docs = await Promise.all(agents.map((ag) => ag.statusCli()));
            return Object.fromEntries(
              docs.map((d, i) => {
                if (!d.handshake) throw new Error(`agent ${agents[i]!.name}: status has no handshake counters`);
                return [agents[i]!.name, d.handshake.rekeys];
              }),
            );
          },
          stop: () => undo.unwind(),
        };
      } catch (e) {
        await undo.unwind();
        throw e;
      }
    },
  };
}

/** cladnet with its own timers (rekey every 120 s, never during a round). */
export const cladnet = cladnetImpl('cladnet', null);

/** The same, its agents started with CLADNET_REKEY_AFTER_MS=1000: the handshake and rekey cost under load. */
export const cladnetRekey = cladnetImpl('cladnet-rekey', BENCH_REKEY_MS);

/** A network policy rule as `cladnet policy set` reads it (src/control/policy.ts). */
export interface PolicyRule {
  from: string;
  to: string;
  proto: 'tcp' | 'udp' | 'icmp' | 'any';
  ports?: string;
}

/** Any host, any protocol: the filter is off (a policy is replaced, never removed). */
export const OPEN_POLICY: PolicyRule[] = [{ from: 'any', to: 'any', proto: 'any' }];

/**
 * Issue 15's 100-rule policy: 97 rules that match nothing the bench sends (TCP ports 10000-10096),
 * then the three that let iperf3 (TCP and UDP to its port) and ping through, so every new flow
 * scans the whole list; established flows and replies take the flow table.
 */
export const POLICY_100: PolicyRule[] = [
  ...Array.from({ length: 97 }, (_, k): PolicyRule => ({ from: 'any', to: 'any', proto: 'tcp', ports: String(10_000 + k) })),
  { from: 'any', to: 'any', proto: 'tcp', ports: String(IPERF_PORT) },
  { from: 'any', to: 'any', proto: 'udp', ports: String(IPERF_PORT) },
  { from: 'any', to: 'any', proto: 'icmp' },
];

/** Signs and stores `rules` as the bench network's policy (`cladnet policy set`); returns its serial. */
async function setPolicy(bed: MeshBed, rules: PolicyRule[]): Promise<number> {
  const file = path.join(bed.topo.workDir, `policy-${Date.now()}.json`);
  fs.writeFileSync(file, JSON.stringify({ rules }));
  const r = await cli(bed.topo, bed.topo.routerNs, [
    'policy', 'set', file, '--network', bed.network, '--network-key', networkKeyFile(bed.topo, bed.network), '--etcd', bed.etcd.endpoint, '--json',
  ]);
  if (r.code !== 0) throw new Error(`cladnet policy set: ${r.stderr.trim()}`);
  return (JSON.parse(r.stdout) as { serial: number }).serial;
}

/** Sets `rules` and waits until every one of `agents` (default: the bed's running ones) has applied them. */
export async function setPolicyApplied(bed: MeshBed, rules: PolicyRule[], agents: readonly Agent[] = bed.agents): Promise<number> {
  const serial = await setPolicy(bed, rules);
  await waitUntil(`policy ${serial} on ${agents.length} agents`, async () => (await Promise.all(agents.map((ag) => ag.status()))).every((d) => d.policy?.serial === serial), {
    timeoutMs: 10_000,
  });
  return serial;
}

/** cladnet with POLICY_100 in force on both hosts: what the security-group filter costs (issue 15: within 5 %). */
export const cladnetPolicy = cladnetImpl('cladnet-policy', null, POLICY_100);

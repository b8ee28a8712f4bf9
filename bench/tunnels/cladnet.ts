import * as path from 'node:path';
import { run } from '../../src/testbed/run';
import type { Agent } from '../../src/testbed/agents';
import { Undo } from './util';
import type { Implementation } from './types';

/** The overlay the bench's cladnet network uses (the mesh bed creates it). */
export const CLADNET_CIDR = '100.64.0.0/24';
export const CLADNET_NETWORK = 'bench';

/**
 * cladnet as built in dist/: one agent per host through the test bed, peers from the bed's etcd.
 * Ready when both agents list each other as `up`.
 */
export const cladnet: Implementation = {
  name: 'cladnet',
  needs: ['etcd'],
  async version() {
    const root = path.resolve(__dirname, '..', '..', '..');
    const head = await run(['git', '-C', root, 'rev-parse', '--short', 'HEAD'], { timeoutMs: 5_000 });
    if (head.code !== 0) return null;
    const dirty = await run(['git', '-C', root, 'status', '--porcelain', '--', 'src'], { timeoutMs: 5_000 });
    return head.stdout.trim() + (dirty.stdout.trim() ? '+dirty' : '');
  },
  async start(ctx) {
    const bed = ctx.bed;
    if (!bed) throw new Error('cladnet needs the etcd mesh bed');
    const undo = new Undo();
    try {
      const agents: Agent[] = [];
      for (const h of [ctx.a, ctx.b]) {
        const agent = await bed.start(h, { logLevel: 'info' });
        undo.push(() => agent.stop().then(() => undefined));
        agents.push(agent);
      }
      const docs = await bed.waitUp(agents, 20_000);
      const [ea, eb] = agents.map((ag) => {
        const d = docs.get(ag.name)!;
        return { ns: ag.host.ns, ip: d.self.overlayIp, dev: d.self.interface, mtu: d.self.mtu };
      }) as [{ ns: string; ip: string; dev: string; mtu: number }, { ns: string; ip: string; dev: string; mtu: number }];
      return {
        a: ea,
        b: eb,
        udpPort: agents[0]!.listenPort,
        procs: agents.map((ag) => ({ host: ag.host.name, pid: ag.proc.pid!, comm: 'node' })),
        notes: { mtu: ea.mtu, cipher: 'chacha20-poly1305 (libsodium wasm)', network: CLADNET_CIDR },
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
            out[ag.name] = { rxPackets: d.dataplane.rxPackets, txPackets: d.dataplane.txPackets, drops };
          }
          return out;
        },
        stop: () => undo.unwind(),
      };
    } catch (e) {
      await undo.unwind();
      throw e;
    }
  },
};

/**
 * TCP throughput through a 2-host cladnet mesh with and without a 100-rule network policy (issue
 * 15: within 5 %), rounds interleaved so that other load on the machine falls on both alike.
 * "Without" is an open policy (any -> any, any protocol): the filter is off, as with no policy at
 * all (a policy cannot be removed, only replaced). "With": 100 rules that all name the receiver,
 * the one allowing the stream's port last, so each new flow scans them all; the sender's ACKs
 * come back as replies to its own flow. Needs root (network namespaces, etcd). Run:
 *
 *   npm run -s build && npx tsc -p bench/tsconfig.json && node dist-bench/bench/policy-throughput.js [rounds] [seconds]
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { cli, networkKeyFile } from '../src/testbed/agents';
import { startMeshBed } from '../src/testbed/mesh';
import { streamTransfer } from '../src/testbed/traffic';

// The agents and the CLI as built in dist/ (from dist-bench/bench/ two levels up).
process.env['CLADNET_CLI'] ??= path.resolve(__dirname, '..', '..', 'dist', 'cli.js');
const NET = 'polbench';
const TICK = 100; // clock ticks per second (USER_HZ)

/** CPU seconds (user + system) a process used so far, from /proc (its threads included). */
function cpuSeconds(pid: number): number {
  const f = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = f.slice(f.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / TICK;
}
const PORT = 5201;

async function main(): Promise<void> {
  const rounds = Number(process.argv[2] ?? 3);
  const seconds = Number(process.argv[3] ?? 5);
  const bed = await startMeshBed({ topology: { hosts: 2 }, network: NET, cidr: '100.64.0.0/24' });
  try {
    const [a, b] = bed.agents as [(typeof bed.agents)[0], (typeof bed.agents)[0]];
    const bIp = (await b.status()).self.overlayIp;
    const set = async (rules: object[]): Promise<number> => {
      const file = `${bed.topo.workDir}/rules-${Date.now()}.json`;
      fs.writeFileSync(file, JSON.stringify({ rules }));
      const r = await cli(bed.topo, bed.topo.routerNs, ['policy', 'set', file, '--network', NET, '--network-key', networkKeyFile(bed.topo, NET), '--etcd', bed.etcd.endpoint, '--json']);
      if (r.code !== 0) throw new Error(`policy set: ${r.stderr}`);
      const serial = (JSON.parse(r.stdout) as { serial: number }).serial;
      for (let i = 0; i < 100; i++) {
        const docs = await Promise.all([a.status(), b.status()]);
        if (docs.every((d) => d.policy?.serial === serial)) return serial;
        await new Promise((res) => setTimeout(res, 50));
      }
      throw new Error(`policy ${serial} not applied`);
    };
    const open = [{ from: 'any', to: 'any', proto: 'any' }];
    const hundred = [
      ...Array.from({ length: 99 }, (_, k) => ({ from: `host:${a.name}`, to: `host:${b.name}`, proto: 'tcp', ports: String(10000 + k) })),
      { from: `host:${a.name}`, to: `host:${b.name}`, proto: 'tcp', ports: String(PORT) },
    ];
    const results: Record<string, number[]> = { none: [], policy100: [] };
    const cpu: Record<string, number[]> = { none: [], policy100: [] };
    for (let r = 0; r < rounds; r++) {
      for (const [label, rules] of (r % 2 === 0 ? [['none', open], ['policy100', hundred]] : [['policy100', hundred], ['none', open]]) as [string, object[]][]) {
        await set(rules);
        const c0 = cpuSeconds(a.proc.pid!) + cpuSeconds(b.proc.pid!);
        const t = await streamTransfer(bed.topo, { fromNs: a.host.ns, toNs: b.host.ns, toIp: bIp, port: PORT, streams: 1, seconds });
        const bytes = t.received.reduce((n, s) => n + s.bytes, 0);
        const gbit = (bytes * 8) / t.secs / 1e9;
        results[label]!.push(gbit);
        const perGb = (cpuSeconds(a.proc.pid!) + cpuSeconds(b.proc.pid!) - c0) / (bytes / 1e9);
        cpu[label]!.push(perGb);
        const pol = (await b.status()).policy!;
        console.log(`round ${r + 1} ${label}: ${gbit.toFixed(3)} Gbit/s, both agents ${perGb.toFixed(2)} CPU s/GB (policy serial ${pol.serial}, open ${pol.open}, denied ${pol.denied}, rule 99 packets ${pol.rules[99]?.packets ?? '-'})`);
      }
    }
    const median = (v: number[]) => [...v].sort((x, y) => x - y)[Math.floor(v.length / 2)]!;
    const none = median(results['none']!);
    const with100 = median(results['policy100']!);
    const pct = (x: number, y: number) => `${(((y - x) / x) * 100).toFixed(1)} %`;
    const [c1, c2] = [median(cpu['none']!), median(cpu['policy100']!)];
    console.log(
      `median of ${rounds}: none ${none.toFixed(3)} Gbit/s, ${c1.toFixed(2)} CPU s/GB; 100-rule policy ${with100.toFixed(3)} Gbit/s (${pct(none, with100)}), ` +
        `${c2.toFixed(2)} CPU s/GB (${pct(c1, c2)})`,
    );
  } finally {
    await bed.destroy();
  }
}

main().catch((e: unknown) => {
  console.error(e);
  process.exitCode = 1;
});
